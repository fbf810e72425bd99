"""Stand-ins for packages CompressAI imports but the benchmark never uses.

Why this exists: ``import compressai`` imports its whole package, and with it torchvision, scipy
and a few others (for datasets, transforms, zoo downloads and point-cloud models). The models the
benchmark times (``JointAutoregressiveHierarchicalPriors``, ``MeanScaleHyperprior`` and the
checkerboard latent codec) call none of them, apart from one ``scipy.stats.norm.ppf`` that sizes
the Gaussian conditional's tables. Installing torchvision and scipy (hundreds of MB, and a
torchvision pinned to the exact torch build) only to time ``compress``/``decompress`` is not worth
it, so when CompressAI's import fails on one of these, the benchmark retries with stubs.

The stubs live only in the benchmark's process, answer only for modules that are *not installed*
(the finder sits at the end of ``sys.meta_path``), and the report names each one used.
"""

from __future__ import annotations

import sys
from typing import Any

#: The packages that may be stubbed: CompressAI imports them at package import, never on the timed paths.
STUBBABLE = frozenset({"torchvision", "scipy", "requests", "einops", "pytorch_msssim", "torch_geometric",
                       "pandas", "plotly", "pointops"})


class _Dummy:
    """Stand-in for any attribute of a stubbed module (a class, so it can also be subclassed)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Dummy:
        return _Dummy()


class _StubFinder:
    """Last-resort importer for :data:`STUBBABLE` packages that are not installed.

    ``scipy.stats.norm.ppf`` gets a real implementation: CompressAI's Gaussian conditional calls it
    once to size its tables.
    """

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        import importlib.machinery

        if fullname.split(".")[0] not in STUBBABLE:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)  # type: ignore[arg-type]

    def create_module(self, spec: Any) -> Any:
        import types

        class Stub(types.ModuleType):
            def __getattr__(self, name: str) -> Any:
                if name.startswith("__"):
                    raise AttributeError(name)
                return type(name, (_Dummy,), {})

        module = Stub(spec.name)
        module.__path__ = []
        module.__dict__["__ckbd_stub__"] = True
        return module

    def exec_module(self, module: Any) -> None:
        if module.__name__ == "scipy.stats":
            import types
            from statistics import NormalDist

            module.norm = types.SimpleNamespace(ppf=lambda q: NormalDist().inv_cdf(float(q)))


def install() -> None:
    """Put the stub finder at the end of ``sys.meta_path`` (once), after every real importer."""
    if not any(isinstance(f, _StubFinder) for f in sys.meta_path):
        sys.meta_path.append(_StubFinder())  # type: ignore[arg-type]


def stubbed() -> list[str]:
    """The :data:`STUBBABLE` packages that were imported as stubs in this process, sorted."""
    return sorted(n for n in STUBBABLE if getattr(sys.modules.get(n), "__ckbd_stub__", False))
