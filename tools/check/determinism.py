"""Encode with one configuration, decode with every configuration this machine has, and compare.

The command is ``ckbd check determinism MODEL_DIR IMAGES... [--checkpoint CKPT] [--json FILE]``
(:mod:`ckbd.cli.check.determinism`).
The encoder is ONNX Runtime with default settings. Each decoder configuration (ONNX Runtime at
every graph optimisation level and 1/2 threads, the torch backend, the FP16 and INT8 synthesis
variants, CUDA where present) decodes every stream and is scored on: images decoded, images
failed (a decode counts when every symbol equals the encoder's), index flips (scale indexes that
differ from the encoder's when fed the encoder's own latents: the cause of a failed decode, counted
even when decoding fails), mean flips (means that differ in any bit) and the PSNR between its
reconstruction and the reference decode. It is the first thing to run on a machine with a GPU.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ckbd.errors import CkbdError, installed
from ckbd.runtime.codec import Decoder, Encoder, Latents
from ckbd.runtime.metrics import psnr
from ckbd.runtime.stages import ANCHOR_PARAMS, HYPER_SYNTHESIS, NONANCHOR_PARAMS
from ckbd.tools.check.gpu.targets import torch_cuda_missing, torch_target

OpenDecoder = Callable[[], Decoder]


@dataclass
class ConfigResult:
    """How one decoder configuration fared on every stream."""

    name: str
    images: int = 0
    decoded: int = 0
    failed: int = 0
    index_flips: int = 0
    mean_flips: int = 0
    min_psnr_db: float | None = None  # vs the reference decode; None: identical everywhere
    errors: list[str] = field(default_factory=list)


@dataclass
class DeterminismReport:
    model_dir: str
    entropy_params: str
    encoder: str
    machine: str
    configs: list[ConfigResult]

    @property
    def all_exact(self) -> bool:
        return all(c.failed == 0 and c.index_flips == 0 and c.mean_flips == 0 for c in self.configs)

    @property
    def passed(self) -> bool:
        """Every configuration exact; on the float path differences are expected, so it always passes."""
        return self.all_exact or self.entropy_params == "float"

    def inexact(self) -> list[str]:
        return [c.name for c in self.configs if c.failed or c.index_flips or c.mean_flips]


def decoder_configs(model_dir: Path, checkpoint: Path | None) -> dict[str, OpenDecoder]:
    """Every decoder configuration available here, by name (opened lazily)."""
    import onnxruntime as ort

    from ckbd.runtime.manifest import Manifest

    manifest = Manifest.load(model_dir)
    configs: dict[str, OpenDecoder] = {}
    for level in ("disable", "basic", "all"):
        for threads in (1, 2):
            configs[f"ort-{level}-{threads}t"] = _ort(model_dir, threads=threads, optimization=level)
    for precision in ("fp16", "int8"):
        if precision in manifest.variants:
            configs[f"ort-{precision}-synthesis"] = _ort(model_dir, precision=precision)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        configs["ort-cuda"] = _ort(model_dir, device="cuda")
    if checkpoint is not None and _has_torch():
        configs["torch-cpu"] = _torch(model_dir, checkpoint, "cpu")
        if torch_cuda_missing() is None:
            configs["torch-cuda"] = _torch(model_dir, checkpoint, "cuda")
    return configs


def _ort(model_dir: Path, **options: object) -> OpenDecoder:
    return lambda: Decoder.open(model_dir, "onnxruntime", **options)


def _torch(model_dir: Path, checkpoint: Path, device: str) -> OpenDecoder:
    """The GPU check's torch target (same routing and cuDNN settings), as a plain decoder."""
    target = torch_target(model_dir, checkpoint, device)
    return lambda: target.open()[0]


def _has_torch() -> bool:
    return installed("torch")


def parameter_outputs(decoder: Decoder | Encoder, latents: Latents) -> dict[str, np.ndarray]:
    """Indexes and means this configuration computes from the encoder's own latents."""
    model = decoder.model
    hyper = model.runner(HYPER_SYNTHESIS).run({"z_symbols": latents.z_symbols})["hyper"]
    anchor = model.runner(ANCHOR_PARAMS).run({"hyper": hyper})
    nonanchor = model.runner(NONANCHOR_PARAMS).run({"hyper": hyper, "anchor_hat": latents.anchor_hat})
    return {k: np.asarray(v) for k, v in {**anchor, **nonanchor}.items()}


def run_check(model_dir: Path, images: list[np.ndarray], checkpoint: Path | None = None,
              configs: dict[str, OpenDecoder] | None = None, progress: bool = True) -> DeterminismReport:
    """Encode each image once (ONNX Runtime defaults), decode with every configuration."""
    from ckbd.progress import progress as progress_bar
    from ckbd.runtime.manifest import Manifest

    encoder = Encoder.open(model_dir)
    reference = Decoder.open(model_dir)
    streams = []
    for image in images:
        result = encoder.encode_detailed(image, estimate=False)
        streams.append((result.data, result.latents, parameter_outputs(encoder, result.latents),
                        reference.decode(result.data)))
    configs = configs if configs is not None else decoder_configs(model_dir, checkpoint)
    results = []
    for name, open_decoder in progress_bar(configs.items(), desc="configurations", unit="config",
                                           enabled=progress):
        results.append(_score(name, open_decoder, streams))
    manifest = Manifest.load(model_dir)
    return DeterminismReport(str(model_dir), manifest.entropy_params, "onnxruntime (defaults)",
                             f"{platform.machine()} {platform.processor() or platform.system()}", results)


def _score(name: str, open_decoder: OpenDecoder, streams: list) -> ConfigResult:  # type: ignore[type-arg]
    result = ConfigResult(name)
    try:
        decoder = open_decoder()
    except CkbdError as exc:
        result.errors.append(f"cannot open: {exc}")
        return result
    with decoder:  # one configuration's sessions are freed before the next one's open
        _score_streams(result, decoder, streams)
    return result


def _score_streams(result: ConfigResult, decoder: Decoder, streams: list) -> None:  # type: ignore[type-arg]
    psnrs = []
    for data, latents, expected, reference_image in streams:
        result.images += 1
        got = parameter_outputs(decoder, latents)
        for key, value in expected.items():
            differ = int(np.count_nonzero(got[key] != value))
            if key.endswith("indexes"):
                result.index_flips += differ
            else:
                result.mean_flips += differ
        try:
            decoded = decoder.decode_detailed(data)
        except CkbdError as exc:
            result.failed += 1
            result.errors.append(str(exc))
            continue
        if _same_symbols(decoded.latents, latents):
            result.decoded += 1
            psnrs.append(psnr(decoded.image, reference_image))
        else:  # the CRC would normally catch this; counted as a failure all the same
            result.failed += 1
    finite = [p for p in psnrs if math.isfinite(p)]
    result.min_psnr_db = min(finite) if finite else None


def _same_symbols(a: Latents, b: Latents) -> bool:
    """What decoding must reproduce: every coded symbol (float-path means may differ in last bits)."""
    return all(np.array_equal(getattr(a, name), getattr(b, name))
               for name in ("z_symbols", "anchor_symbols", "nonanchor_symbols"))


def format_table(report: DeterminismReport) -> str:
    lines = [f"model {report.model_dir} ({report.entropy_params} entropy parameters), encoder {report.encoder}",
             f"{'decoder':<24} {'images':>6} {'decoded':>7} {'failed':>6} {'index flips':>11} "
             f"{'mean flips':>10} {'min PSNR vs ref':>15}"]
    for c in report.configs:
        shown = "identical" if c.min_psnr_db is None and c.decoded else (
            "-" if c.min_psnr_db is None else f"{c.min_psnr_db:.2f} dB")
        lines.append(f"{c.name:<24} {c.images:>6} {c.decoded:>7} {c.failed:>6} {c.index_flips:>11} "
                     f"{c.mean_flips:>10} {shown:>15}")
    return "\n".join(lines)


def report_json(report: DeterminismReport) -> str:
    return json.dumps({**asdict(report), "all_exact": report.all_exact}, indent=2)
