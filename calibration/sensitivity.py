"""Which layers of latent synthesis cost the most quality in INT8, and how many to keep float.

Post-training quantisation spreads its error unevenly: one layer can cost more than all the others
together. ``ckbd calibrate --max-loss-db D`` measures it instead of guessing. With activation
ranges calibrated once (ONNX Runtime's calibration cache), the graph is re-quantised

1. with every candidate layer quantised: if its PSNR loss is within ``D``, that is the result;
2. once per layer with only that layer kept float: the loss left is the layer's *sensitivity*;
3. with the most sensitive layers kept float, one more at a time, until the loss is within ``D``
   (at least one layer stays int8; a budget missed even then is recorded, not an error).

A *layer* is the group of convolutions that read the same tensor: the phase convolutions of one
decomposed transposed convolution are one layer, since keeping only some of them float buys little
speed. The loss is ``PSNR(image, fp32 synthesis) - PSNR(image, int8 synthesis)`` in dB, averaged
over the first calibration images, measured on the pixels the decoder would output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ckbd.calibration import qdq_graph


@dataclass
class Sample:
    """One calibration image and the synthesis feeds the fp32 encoder produces for it."""

    image: np.ndarray
    feeds: dict[str, np.ndarray]


def synthesis_samples(model_dir: Path, files: Sequence[Path], threads: int = 0) -> list[Sample]:
    from ckbd.calibration.data import latent_feeds
    from ckbd.runtime.imageio import read_image

    feed = latent_feeds(model_dir, threads)
    images = [read_image(path, quiet=True) for path in files]
    return [Sample(image, feed(image)) for image in images]


def quantized_layers(model: Any, float_convs: Sequence[str]) -> dict[str, list[str]]:
    """Layer name (its first conv) -> the convs of that layer, for convs not already float."""
    layers: dict[str, list[str]] = {}
    by_input: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type not in qdq_graph.QUANTIZED_OPS or node.name in float_convs:
            continue
        layer = by_input.setdefault(node.input[0], node.name)
        layers.setdefault(layer, []).append(node.name)
    return layers


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def cpu_session(model: Any, threads: int) -> Any:
    """An ONNX Runtime CPU session of a graph (a ModelProto, bytes or a path) with ckbd's session options."""
    import onnxruntime as ort

    from ckbd.runtime.ort_backend import OnnxRuntimeBackend

    data = model if isinstance(model, (bytes, str)) else model.SerializeToString()
    options = OnnxRuntimeBackend(threads=threads).options
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _pixels(session: Any, sample: Sample) -> np.ndarray:
    out = session.run(None, sample.feeds)[0][0]  # (Hpad, Wpad, 3) uint8
    h, w = sample.image.shape[:2]
    return np.asarray(out[:h, :w])


@dataclass
class LayerLoss:
    layer: str
    convs: list[str]
    loss_db: float  # PSNR loss with only this layer kept float


@dataclass
class SearchResult:
    budget_db: float
    all_quantized_loss_db: float
    loss_db: float
    float_layers: list[str] = field(default_factory=list)
    float_convs: list[str] = field(default_factory=list)
    layers: list[LayerLoss] = field(default_factory=list)

    @property
    def met(self) -> bool:
        return self.loss_db <= self.budget_db

    def to_manifest(self) -> dict[str, Any]:
        """What the manifest keeps: the budget, the losses measured, the layers left float."""
        return {"max_loss_db": self.budget_db, "all_quantized_loss_db": round(self.all_quantized_loss_db, 4),
                "estimated_loss_db": round(self.loss_db, 4), "budget_met": self.met, "float_layers": self.float_layers,
                "layer_loss_db": {x.layer: round(x.loss_db, 4) for x in self.layers}}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LayerSearch:
    """Keeps the most sensitive layers float until the PSNR loss is within ``budget_db``."""

    def __init__(self, samples: Sequence[Sample], budget_db: float, threads: int = 0) -> None:
        self.samples = list(samples)
        self.budget_db = budget_db
        self.threads = threads

    def loss_db(self, reference: list[float], model: Any) -> float:
        session = cpu_session(model, self.threads)
        losses = [ref - _psnr(s.image, _pixels(session, s)) for ref, s in zip(reference, self.samples)]
        return float(np.mean(losses))

    def run(self, prepared: Any, float_convs: Sequence[str], quantize: Callable[[Sequence[str]], Any],
            float_path: Path) -> SearchResult:
        """``quantize(extra_float_convs)`` returns the int8 model with those convs also left float."""
        fp32 = cpu_session(str(float_path), self.threads)
        reference = [_psnr(s.image, _pixels(fp32, s)) for s in self.samples]
        layers = quantized_layers(prepared, float_convs)
        loss = self.loss_db(reference, quantize([]))
        result = SearchResult(self.budget_db, loss, loss)
        if loss <= self.budget_db:
            return result
        for name, convs in layers.items():
            result.layers.append(LayerLoss(name, convs, self.loss_db(reference, quantize(convs))))
        # At least one layer stays int8 (an all-float "int8" graph would only be slower): if even
        # that misses the budget, the result says so (``met``) rather than failing the calibration.
        for layer in sorted(result.layers, key=lambda x: x.loss_db)[:-1]:
            result.float_layers.append(layer.layer)
            result.float_convs += layer.convs
            result.loss_db = self.loss_db(reference, quantize(result.float_convs))
            if result.loss_db <= self.budget_db:
                break
        return result
