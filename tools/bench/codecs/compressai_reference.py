"""CompressAI (optional) as a reference point: the same weights through its own compress/decompress.

The ckbd models' weights are renamed and permuted into CompressAI's models by
:func:`ckbd.models.compressai_import.to_compressai_state`, the inverse of the importer, so that the
two directions share one table of names and conventions.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ckbd.runtime.profiling import StageTimer
from ckbd.tools.bench.codecs import compressai_stubs
from ckbd.tools.bench.codecs.contenders import torch_module
from ckbd.tools.bench.codecs.timing import Decode, Encode, TimedCodec

#: Buffers CompressAI rebuilds in ``update(force=True)``, so they may be absent from the weights.
RECOMPUTED = ("_offset", "_quantized_cdf", "_cdf_length", "scale_table", "mask", "target", "bound", "pedestal")
LABELS = {"mbt2018-ckbd": "CompressAI checkerboard (same weights)",
          "mbt2018": "CompressAI mbt2018 serial (same weights)",
          "mbt2018-mean": "CompressAI mbt2018-mean (same weights)"}


def load_compressai() -> tuple[Any, str]:
    """(the compressai module or None, a note saying which and how it was imported).

    A missing *dependency* of CompressAI is answered with a stub, inside this process only
    (:mod:`.compressai_stubs` says why that is safe).
    """
    try:
        import compressai  # type: ignore[import-not-found]

        return compressai, f"CompressAI {getattr(compressai, '__version__', '?')}"
    except ModuleNotFoundError as exc:
        if exc.name == "compressai":
            return None, ("CompressAI is not installed: skipped (pip install --no-deps compressai, "
                          "or put it on PYTHONPATH)")
    except Exception as exc:  # a broken install: report and go on
        return None, f"CompressAI could not be imported ({type(exc).__name__}: {exc}): skipped"
    for name in [m for m in sys.modules if m == "compressai" or m.startswith("compressai.")]:
        del sys.modules[name]  # drop the half-imported package before retrying
    compressai_stubs.install()
    try:
        import compressai

        return compressai, (f"CompressAI {getattr(compressai, '__version__', '?')} (its dependencies "
                            f"{', '.join(compressai_stubs.stubbed())}, unused here, replaced by stubs inside the "
                            "benchmark)")
    except Exception as exc:  # anything CompressAI's import chain throws: report and go on
        return None, f"CompressAI could not be imported even with stubs ({type(exc).__name__}: {exc}): skipped"


def _load_into(target: Any, state: dict[str, Any]) -> None:
    """Load weights; only buffers CompressAI recomputes itself (:data:`RECOMPUTED`) may be absent.

    ``nn.Module.load_state_dict`` is called directly: CompressAI's override insists on the coding
    tables being in the state dict, and ``update(force=True)`` rebuilds them from the weights.
    """
    missing, unexpected = torch_module().nn.Module.load_state_dict(target, state, strict=False)
    bad = [k for k in missing if not k.endswith(RECOMPUTED)]
    if bad or unexpected:
        raise RuntimeError(f"weights do not map onto CompressAI: missing {bad[:5]}, unexpected {unexpected[:5]}")
    target.update(force=True)
    target.eval()


def compressai_models(compressai: Any, ckbd_model: Any, baselines: dict[str, Any], N: int, M: int) -> dict[str, Any]:
    """CompressAI models holding the same weights as ckbd's checkerboard model (when given) and baselines."""
    from compressai.entropy_models import EntropyBottleneck  # type: ignore[import-not-found]
    from compressai.models import (  # type: ignore[import-not-found]
        JointAutoregressiveHierarchicalPriors,
        MeanScaleHyperprior,
    )

    from ckbd.models.compressai_import import Conventions, to_compressai_state

    def with_bottleneck(model: Any, filters: tuple[int, ...]) -> Any:
        model.entropy_bottleneck = EntropyBottleneck(N, filters=filters)
        return model

    out = {}
    for arch, source in baselines.items():
        cls = JointAutoregressiveHierarchicalPriors if arch == "mbt2018" else MeanScaleHyperprior
        target = with_bottleneck(cls(N, M), source.config.eb_filters)
        _load_into(target, to_compressai_state(source.state_dict(), Conventions("mbt2018", arch)))
        out[arch] = target
    if ckbd_model is not None and ckbd_model.config.arch == "mbt2018-ckbd":
        minnen = with_bottleneck(JointAutoregressiveHierarchicalPriors(N, M), ckbd_model.config.eb_filters)
        out["mbt2018-ckbd"] = _compressai_checkerboard(ckbd_model, minnen)
    return out


def _compressai_checkerboard(ckbd_model: Any, minnen: Any) -> Any:
    """Minnen transforms + CompressAI's CheckerboardLatentCodec, carrying ckbd's weights.

    It is the importer's ``latent-codec`` layout: CompressAI concatenates (context, hyper) where
    ckbd concatenates (hyper, context); both chunk (scales, means).
    """
    from compressai.latent_codecs import (  # type: ignore[import-not-found]
        CheckerboardLatentCodec,
        GaussianConditionalLatentCodec,
        HyperLatentCodec,
        HyperpriorLatentCodec,
    )
    from compressai.layers import CheckerboardMaskedConv2d  # type: ignore[import-not-found]
    from compressai.models.base import SimpleVAECompressionModel  # type: ignore[import-not-found]

    from ckbd.models.compressai_import import Conventions, to_compressai_state

    config = ckbd_model.config

    class MinnenCheckerboard(SimpleVAECompressionModel):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.g_a, self.g_s = minnen.g_a, minnen.g_s
            y_codec = CheckerboardLatentCodec(
                latent_codec={"y": GaussianConditionalLatentCodec(quantizer="ste")},
                entropy_parameters=minnen.entropy_parameters,
                context_prediction=CheckerboardMaskedConv2d(config.M, 2 * config.M, kernel_size=5, stride=1,
                                                            padding=2),
                anchor_parity=config.anchor_parity,
            )
            hyper = HyperLatentCodec(entropy_bottleneck=minnen.entropy_bottleneck, h_a=minnen.h_a, h_s=minnen.h_s,
                                     quantizer="ste")
            self.latent_codec = HyperpriorLatentCodec(latent_codec={"y": y_codec, "hyper": hyper})

    target = MinnenCheckerboard()
    conventions = Conventions("latent-codec", config.arch, concat="ctx-hyper", parity=config.anchor_parity)
    _load_into(target, to_compressai_state(ckbd_model.state_dict(), conventions))
    return target


def compressai_codecs(models: dict[str, Any]) -> list[TimedCodec]:
    """CompressAI's compress/decompress, timed whole (CompressAI has no stage hooks)."""
    return [TimedCodec(f"compressai-{arch}", LABELS[arch], "torch (CompressAI)", arch, *_compressai_calls(model),
                       ("compress",), ("decompress",), serial=arch == "mbt2018", group="compressai")
            for arch, model in models.items()]


def _compressai_calls(model: Any) -> tuple[Encode, Decode]:
    torch = torch_module()
    from ckbd.runtime.codec import to_network_input  # the same edge padding as every other codec

    def encode(image: np.ndarray, timer: StageTimer) -> tuple[Any, int]:
        with torch.inference_mode(), timer.stage("compress"):
            out = model.compress(torch.from_numpy(to_network_input(image)))
        size = sum(len(s) for strings in out["strings"] for s in strings)
        return (out, image.shape[:2]), size

    def decode(payload: Any, timer: StageTimer) -> np.ndarray:
        out, (h, w) = payload
        with torch.inference_mode(), timer.stage("decompress"):
            x_hat = model.decompress(out["strings"], out["shape"])["x_hat"]
            pixels = torch.round(torch.clamp(x_hat, 0.0, 1.0) * 255.0).to(torch.uint8)
        return pixels[0].permute(1, 2, 0)[:h, :w].numpy()  # type: ignore[no-any-return]

    return encode, decode
