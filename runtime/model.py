"""A loaded model: the opened package, one runner per stage on one backend, the two coders.

This is the middle of the decode chain: open the model package → a backend loads a runner per
stage → the codec runs them around the coders. Closing it closes the backend it opened (and with
it every session, engine and device buffer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ckbd.errors import ModelError
from ckbd.runtime.backend import Backend, Runner, create_backend
from ckbd.runtime.coder import IndexedCoder
from ckbd.runtime.manifest import Manifest
from ckbd.runtime.memory import MemoryBudget
from ckbd.runtime.package import ModelPackage
from ckbd.runtime.stages import ALL_STAGES, STAGE_IO


@dataclass
class CodecModel:
    """Everything the encoder and decoder need; built once, shared by both directions."""

    package: ModelPackage
    backend: Backend
    runners: dict[str, Runner]
    #: Whether :meth:`close` also closes the backend (it does when this model created it).
    owns_backend: bool = True
    #: Peak-memory budget that decides whole-image or tiled transforms (see ckbd.runtime.memory).
    memory: MemoryBudget = field(default_factory=MemoryBudget)
    y_coder: IndexedCoder = field(init=False)
    z_coder: IndexedCoder = field(init=False)

    def __post_init__(self) -> None:
        _check_io(self.runners)
        self.y_coder = IndexedCoder(self.package.y_tables)
        self.z_coder = IndexedCoder(self.package.z_tables)

    @classmethod
    def open(cls, model: ModelPackage | Path | None = None, backend: str | Backend = "onnxruntime",
             stages: tuple[str, ...] = ALL_STAGES, owns_backend: bool | None = None,
             memory: MemoryBudget | None = None, **backend_options: object) -> CodecModel:
        """Load ``stages`` of a model (a package, a directory, or the shipped model when None) on
        ``backend``: a name from the registry (then closing the model closes it), or a backend
        object, which stays the caller's unless ``owns_backend``. ``memory``: the peak-memory budget
        (default: :class:`~ckbd.runtime.memory.MemoryBudget`'s)."""
        package = ModelPackage.of(model)
        owned = isinstance(backend, str) if owns_backend is None else owns_backend
        engine = create_backend(backend, **backend_options) if isinstance(backend, str) else backend
        try:
            runners = {stage: engine.load(package, stage) for stage in stages}
            return cls(package, engine, runners, owns_backend=owned, memory=memory or MemoryBudget())
        except BaseException:
            if owned:
                engine.close()
            raise

    @property
    def manifest(self) -> Manifest:
        return self.package.manifest

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def runner(self, stage: str) -> Runner:
        try:
            return self.runners[stage]
        except KeyError:
            raise ModelError(f"stage '{stage}' was not loaded for this codec") from None

    def close(self) -> None:
        """Free every runner (and the backend when this model opened it); idempotent."""
        for runner in self.runners.values():
            runner.close()
        self.runners = {}
        if self.owns_backend:
            self.backend.close()


def _check_io(runners: dict[str, Runner]) -> None:
    """Refuse graphs whose tensor names differ from the stage contract (e.g. a foreign ONNX file)."""
    for stage, runner in runners.items():
        want_in = {t.name for t in STAGE_IO[stage][0]}
        want_out = {t.name for t in STAGE_IO[stage][1]}
        have_in = {t.name for t in runner.inputs}
        have_out = {t.name for t in runner.outputs}
        if have_in != want_in or not want_out <= have_out:
            raise ModelError(
                f"graph '{stage}' has inputs {sorted(have_in)} / outputs {sorted(have_out)}; "
                f"expected {sorted(want_in)} / {sorted(want_out)}"
            )
