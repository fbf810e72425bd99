"""The two models the GPU check measures: the shipped one, and a paper-size one made on the spot.

The paper-size model (``mbt2018-ckbd``, N=192, M=320 by default) has random weights: latency does
not depend on training. It is put on the integer entropy-parameter path the way ``ckbd export``
does it (calibrated on two small crops, then quantised) but kept in memory, so no ONNX export or
file is needed and it takes seconds. It carries no known-answer vectors: the int64 reference takes
half a minute to answer them at this size; its device exactness is shown instead by decoding its
device-encoded streams on the CPU (:mod:`.latency`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ckbd.errors import CkbdError
from ckbd.runtime.package import ModelPackage

#: Calibration crops of the paper-size model: two, this side (seconds on a CPU even at N=192).
CALIBRATION_SIDE = 128
SEED = 0


@dataclass
class CheckedModel:
    """A model under test: its package and the torch model it runs from."""

    name: str  # "shipped" or "paper"
    package: ModelPackage
    model: Any  # the CheckerboardModel (torch), on the CPU; each backend gets its own copy
    build_s: float = 0.0

    def torch_copy(self) -> Any:
        """A private copy: a torch runner moves its modules to its device in place."""
        return copy.deepcopy(self.model)

    def describe(self) -> dict[str, Any]:
        m = self.package.manifest
        return {"arch": m.arch, "N": m.N, "M": m.M, "entropy_params": m.entropy_params,
                "fingerprint": m.fingerprint, "source": str(self.package.root or "random weights, in memory"),
                "build_s": round(self.build_s, 2)}


def shipped_model(model_dir: Path | None, checkpoint: Path | None) -> CheckedModel:
    """The exported model (the shipped one when None) and the checkpoint it was exported from."""
    from ckbd.models.checkpoint import load_model
    from ckbd.runtime.package import known_checkpoint

    package = ModelPackage.open(model_dir)
    source = checkpoint or (known_checkpoint(package.root) if package.root is not None else None)
    if source is None:
        raise CkbdError(f"no checkpoint for {package.label}: pass --checkpoint (torch runs from it)")
    return CheckedModel("shipped", package, load_model(Path(source)).eval())


def paper_model(N: int, M: int, photos: list[np.ndarray]) -> CheckedModel:
    """A random ``mbt2018-ckbd`` of this size on the integer path, calibrated on ``photos`` (crops)."""
    from ckbd.export.integer_quantize import quantize_model
    from ckbd.export.model_package import build_package
    from ckbd.runtime.entropy_tables import default_scale_table
    from ckbd.tools.bench.codecs.contenders import random_model

    start = time.perf_counter()
    model = random_model("mbt2018-ckbd", N, M, SEED)
    crops = [_crop(p) for p in photos[:2]]
    spec = quantize_model(model, crops, default_scale_table())
    manifest, y_tables, z_tables = build_package(model, integer_params=spec)
    package = ModelPackage(manifest, y_tables, z_tables, spec=spec)
    return CheckedModel("paper", package, model, time.perf_counter() - start)


def _crop(image: np.ndarray, side: int = CALIBRATION_SIDE) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = (h - min(h, side)) // 2, (w - min(w, side)) // 2
    return np.ascontiguousarray(image[top: top + min(h, side), left: left + min(w, side)])


def open_codec(cls: type, checked: CheckedModel, device: str, precision: str = "fp32") -> Any:
    """An Encoder or Decoder of ``checked`` on the torch backend at ``device``, owning its backend."""
    from ckbd.export.torch_backend import TorchBackend

    backend = TorchBackend(checked.torch_copy(), device=device, precision=precision)
    return cls.open(checked.package, backend, owns_backend=True)  # type: ignore[attr-defined]
