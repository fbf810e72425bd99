"""Post-training INT8 quantisation of the image-side graphs into Q/DQ ONNX files.

Only the *image* transforms may be quantised: ``latent_synthesis`` (decoder) and, on request,
``analysis`` (encoder). The parameter graphs (``hyper_synthesis``, ``anchor_params``,
``nonanchor_params``) compute the scale indexes and means that the range coder uses; encoder and
decoder must reproduce them bit for bit, and an int8 rounding difference there turns into a corrupt
stream, so they are refused outright.

Two recipes (:mod:`ckbd.calibration.targets`, ``--target``): ``tensorrt`` (the default, described
below) and ``cpu``, which differs only in its activations (asymmetric uint8) and biases (int32).
Format choices for ``tensorrt`` (explicit quantisation, which also runs as is on ONNX Runtime):

* **QDQ format** (QuantizeLinear/DequantizeLinear around float ops), not QOperator: TensorRT only
  imports Q/DQ, and an ONNX Runtime CPU session fuses the pairs into int8 kernels itself.
* **Symmetric int8 everywhere, zero point 0**: TensorRT supports no other zero point. Weights are
  int8 in [-127, 127] (ORT's symmetric range, which is what TensorRT requires for weights),
  **per output channel** by default (axis 0 of Conv weights, axis 1 of ConvTranspose weights)
  because conv channels of learned codecs differ in scale; activations are int8 per tensor,
  symmetric.
* ``reduce_range=True`` keeps weights within 7 bits ([-64, 64]), still valid symmetric int8. It is
  for x86 CPUs without VNNI (AVX2 only), where ONNX Runtime's u8s8 int8 kernels add pairs of
  8-bit products in 16 bits and can saturate: on such a CPU, with per-channel weights, the tiny test
  model lost 4.5 dB of int8-vs-fp32 PSNR to the kernel (50.4 dB with exact Q/DQ arithmetic,
  45.9 dB from the int8 kernels); 7-bit weights gave 49.7 dB with the kernels. A briefly trained
  N=64/M=96 model showed no such loss. TensorRT has no such saturation; leave it off for GPUs.
* **Conv/ConvTranspose inputs are quantised** (TensorRT's recommended placement: Q/DQ on the
  inputs of weighted layers), **and their outputs** where another convolution follows: ONNX
  Runtime only runs a Conv as an int8 kernel when its output is re-quantised. Element-wise ops,
  depth-to-space, clipping and the uint8 output stay in float.
* **Biases stay float**: ORT's default int32 bias + DequantizeLinear is rejected by TensorRT's ONNX
  parser ("only activation types allowed as input"); TensorRT fuses a float bias itself.
* **Dedicated Q/DQ pairs per consumer**, each with its own scale initializer: TensorRT wants a
  pair per layer, and ONNX Runtime fails to fuse signed-activation convolutions that share one (see
  :func:`~ckbd.calibration.qdq_graph.private_quant_params`). The ``cpu`` recipe then quantises each
  tensor once and keeps one DequantizeLinear per Conv (:func:`~ckbd.calibration.qdq_graph.shared_quantize`).
* **Left in float** (see :mod:`ckbd.calibration.qdq_graph` for the measurements): the layer that
  reads the image (analysis) or writes it (synthesis); the latents leaving analysis; and, unless
  ``quantize_gdn=True``, the GDN/IGDN norm convolutions, whose input is a squared activation.
  All are found structurally, not by node name.

The float graph is first passed through ``quant_pre_process`` (shape inference and ONNX-standard
graph clean-ups only) so that the quantiser sees folded constants; all spatial axes stay symbolic,
which is checked: the int8 graph has the same inputs and outputs, names, types and dims, as the
float one.

Then, unless ``equalize=False``, the GDN/IGDN channels (and a latent input) are rescaled so that one
range per tensor fits them all (:mod:`ckbd.calibration.equalize`; same float function, about half the
shipped model's int8 loss).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckbd.calibration import qdq_graph
from ckbd.calibration.data import ImageFeedReader, stage_feeds
from ckbd.calibration.equalize import equalize_file
from ckbd.calibration.fine_tune import FineTuneConfig, fine_tuned_synthesis
from ckbd.calibration.targets import DEFAULT_TARGET, quant_target
from ckbd.engines.policy import FP32_STAGES, REDUCED_PRECISION_STAGES
from ckbd.errors import CkbdError, ModelError, UsageError, require
from ckbd.runtime.atomic import atomic_path
from ckbd.runtime.imageio import find_images
from ckbd.runtime.manifest import GraphEntry, Manifest, file_sha256
from ckbd.runtime.stages import ALL_STAGES, LATENT_SYNTHESIS

INT8 = "int8"
#: Stages that may be quantised, in the order they are processed (the one policy:
#: :data:`ckbd.engines.policy.REDUCED_PRECISION_STAGES`).
QUANTIZABLE_STAGES = REDUCED_PRECISION_STAGES
#: Stages that decide scale indexes and means; quantising them would desynchronise the coder
#: (:data:`ckbd.engines.policy.FP32_STAGES`).
PARAMETER_STAGES = FP32_STAGES
METHODS = ("minmax", "entropy", "percentile")
#: Shipped model, cpu target, all layers int8, 24 Kodak images: percentile -0.180 / -0.094 dB, entropy
#: -0.207 / -0.110 dB, without / with channel equalisation (docs/RESULTS.md, CPU speed).
DEFAULT_METHOD = "percentile"
#: As many images as Kodak has; calibration time grows linearly with it (about 1.7 s per
#: 481x321 image for the N=64/M=96 model on one core, both stages).
DEFAULT_COUNT = 24
#: Histogram percentile for ``method="percentile"`` (of |x|, since ranges are symmetric).
DEFAULT_PERCENTILE = 99.999


def int8_file_name(stage: str) -> str:
    return f"{stage}.{INT8}.onnx"


def check_stages(stages: Sequence[str]) -> tuple[str, ...]:
    """Validate the requested stages; refuse the parameter graphs with the reason."""
    if isinstance(stages, str):
        stages = [s for s in stages.split(",") if s]
    result: list[str] = []
    for stage in stages:
        stage = stage.strip()
        if stage in PARAMETER_STAGES:
            raise CkbdError(
                f"refusing to quantise '{stage}': the parameter graphs compute the scale indexes and "
                "means that encoder and decoder must reproduce exactly; int8 rounding there corrupts "
                f"streams. Only {', '.join(QUANTIZABLE_STAGES)} can be calibrated"
            )
        if stage not in ALL_STAGES:
            raise CkbdError(f"unknown stage '{stage}'; choose from {', '.join(QUANTIZABLE_STAGES)}")
        if stage not in result:
            result.append(stage)
    if not result:
        raise CkbdError("no stage to calibrate")
    return tuple(result)


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise CkbdError(f"unknown calibration method '{method}'; choose from {', '.join(METHODS)}")
    return method


@dataclass(frozen=True)
class QuantSettings:
    """How a stage is quantised (the knobs that change the file; see the module docstring)."""

    method: str = DEFAULT_METHOD
    per_channel: bool = True
    percentile: float = DEFAULT_PERCENTILE
    quantize_gdn: bool = False
    reduce_range: bool = False
    target: str = DEFAULT_TARGET
    #: Rescale GDN channels (and a latent input) for per-tensor ranges first (:mod:`ckbd.calibration.equalize`).
    equalize: bool = True
    #: Keep the most sensitive layers float until the PSNR loss is at most this (None: keep none).
    max_loss_db: float | None = None


def calibrate(
    model_dir: Path,
    images: Sequence[Path] | Path,
    method: str = DEFAULT_METHOD,
    count: int | None = DEFAULT_COUNT,
    stages: Sequence[str] = (LATENT_SYNTHESIS,),
    per_channel: bool = True,
    threads: int = 0,
    progress: bool = True,
    quantize_gdn: bool = False,
    reduce_range: bool = False,
    target: str = DEFAULT_TARGET,
    max_loss_db: float | None = None,
    fine_tune: FineTuneConfig | None = None,
    equalize: bool = True,
) -> Manifest:
    """Write ``<stage>.int8.onnx`` for each stage and list it in the manifest as ``int8``.

    ``images`` is a list of image files or a folder (the first ``count`` images, sorted, are
    used). ``target`` picks the recipe (:mod:`ckbd.calibration.targets`); ``max_loss_db`` keeps
    the most sensitive layers of ``latent_synthesis`` in float until its PSNR loss on the
    calibration images is within budget (:mod:`ckbd.calibration.sensitivity`); ``fine_tune`` first
    fine-tunes ``latent_synthesis`` with the int8 rounding in the loop and calibrates the result
    (:mod:`ckbd.calibration.fine_tune`; needs torch). Returns the updated
    manifest, already saved. Each graph file and then the manifest are
    replaced atomically, so a concurrent reader sees either the old or the new variant.
    """
    require("onnx", "calibration", "INT8 calibration")
    model_dir = Path(model_dir)
    stages = check_stages(stages)
    quant_target(target)
    if max_loss_db is not None and max_loss_db < 0:
        raise CkbdError(f"--max-loss-db must be at least 0, got {max_loss_db}")
    settings = QuantSettings(_check_method(method), per_channel, quantize_gdn=quantize_gdn, reduce_range=reduce_range,
                             target=target, equalize=equalize, max_loss_db=max_loss_db)
    if fine_tune is not None and LATENT_SYNTHESIS not in stages:
        raise UsageError("fine-tuning applies to latent_synthesis only; add it to --stages")
    files = _select_images(images, count)
    manifest = Manifest.load(model_dir)
    for stage in QUANTIZABLE_STAGES:
        if stage not in stages:
            continue
        float_path = _float_graph(manifest, model_dir, stage)
        reader = ImageFeedReader(files, stage_feeds(stage, model_dir, threads), f"calibrating {stage}", progress)
        out = model_dir / int8_file_name(stage)
        search = _sensitivity_search(stage, model_dir, files, threads, settings)
        with tempfile.TemporaryDirectory(prefix="ckbd-fine-tune-") as tmp:
            source, tuned = float_path, {}
            if fine_tune is not None and stage == LATENT_SYNTHESIS:
                source = Path(tmp) / float_path.name
                result = fine_tuned_synthesis(model_dir, files, source, target, fine_tune, threads, progress)
                tuned = {"fine_tune": result.to_manifest()}
            notes = quantize_stage(float_path, out, reader, settings, search, source)
        manifest = Manifest.load(model_dir)  # re-read: keep whatever else changed meanwhile
        manifest.variants.setdefault(INT8, {})[stage] = GraphEntry(out.name, file_sha256(out), INT8)
        manifest.extra.setdefault("calibration", {})[stage] = {**_provenance(settings, files), **notes, **tuned}
        manifest.save(model_dir)
    return manifest


def _select_images(images: Sequence[Path] | Path, count: int | None) -> list[Path]:
    if isinstance(images, (str, Path)):
        return find_images(Path(images), count)
    files = [Path(p) for p in images]
    if count is not None:
        if count < 1:
            raise CkbdError(f"--count must be at least 1, got {count}")
        files = files[:count]
    if not files:
        raise CkbdError("no calibration images given")
    for path in files:
        if not path.is_file():
            raise CkbdError(f"calibration image {path} does not exist")
    return files


def _float_graph(manifest: Manifest, model_dir: Path, stage: str) -> Path:
    """The fp32 graph of ``stage``, refused when its content no longer matches the manifest."""
    entry = manifest.graphs.get(stage)
    if entry is None:
        raise ModelError(f"model directory {model_dir} has no '{stage}' graph to calibrate")
    path = model_dir / entry.file
    if not path.is_file():
        raise ModelError(f"{path} is listed in the manifest but missing")
    if file_sha256(path) != entry.sha256:
        raise ModelError(f"{path} does not match its manifest hash; re-export the model before calibrating")
    return path


def _provenance(settings: QuantSettings, files: Sequence[Path]) -> dict[str, Any]:
    """What the manifest records about a calibration, so a result can be traced and repeated."""
    weights = "int8 symmetric " + ("[-64, 64] (reduce_range)" if settings.reduce_range else "[-127, 127]")
    target = quant_target(settings.target)
    return {"method": settings.method, "per_channel": settings.per_channel, "images": len(files),
            "activations": target.activations_label(), "weights": weights, "target": target.name,
            "biases": "int32" if target.quantize_bias else "float",
            "quantize_gdn": settings.quantize_gdn, "reduce_range": settings.reduce_range,
            "equalize": settings.equalize}


#: Images the sensitivity search evaluates each candidate graph on (the first of the calibration set).
SENSITIVITY_IMAGES = 4


def _sensitivity_search(stage: str, model_dir: Path, files: Sequence[Path], threads: int,
                        settings: QuantSettings) -> Any:
    """The layer search for ``stage``, or None (only synthesis pixels have a PSNR to budget)."""
    if settings.max_loss_db is None or stage != LATENT_SYNTHESIS:
        return None
    from ckbd.calibration.sensitivity import LayerSearch, synthesis_samples

    samples = synthesis_samples(model_dir, files[:SENSITIVITY_IMAGES], threads)
    return LayerSearch(samples, settings.max_loss_db, threads)


def quantize_stage(float_path: Path, target: Path, reader: ImageFeedReader, settings: QuantSettings,
                   search: Any = None, source: Path | None = None) -> dict[str, Any]:
    """Pre-process, calibrate and quantise one graph; publish it atomically at ``target``.

    ``source`` is the float graph to quantise when it is not ``float_path`` itself (a fine-tuned
    synthesis); ``float_path`` stays the reference: the search's fp32 quality and the I/O check.

    With a ``search`` (:class:`~ckbd.calibration.sensitivity.LayerSearch`), the activation ranges
    are calibrated once and the graph re-quantised with more layers left float until the budget
    holds. Returns what the search found (empty without one), for the manifest.
    """
    onnx = require("onnx", "calibration", "INT8 calibration")
    with tempfile.TemporaryDirectory(prefix="ckbd-calib-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "quantized.onnx"
        cache = Path(tmp) / "ranges.json" if search is not None else None  # ranges reused per candidate
        _pre_process(source or float_path, prepared)
        notes: dict[str, Any] = equalize_file(prepared, reader) if settings.equalize else {}
        base = float_nodes(onnx.load(str(prepared)), settings)

        def quantize(extra_float: Sequence[str]) -> Any:
            _quantize_static(prepared, quantized, reader, settings, [*base, *extra_float], cache)
            model = onnx.load(str(quantized))
            qdq_graph.float_outputs_to_graph(model)
            if quant_target(settings.target).shares_quantize:
                qdq_graph.shared_quantize(model)
            else:
                qdq_graph.private_quant_params(model)
            qdq_graph.drop_unused_opsets(model)
            return model

        if search is None:
            model = quantize([])
        else:
            result = search.run(onnx.load(str(prepared)), base, quantize, float_path)
            model, notes = quantize(result.float_convs), {**notes, **result.to_manifest()}
        with atomic_path(target) as out:
            onnx.save(model, str(out))
            check_quantized(float_path, out)
            os.chmod(out, float_path.stat().st_mode & 0o777)  # mkstemp makes 0600; match the float graph
    return notes


def float_nodes(model: Any, settings: QuantSettings) -> list[str]:
    """Convolutions left in float: the image-side layers, and GDN norms unless asked otherwise."""
    names = qdq_graph.image_side_convs(model)
    if not settings.quantize_gdn:
        names += qdq_graph.gdn_norm_convs(model)
    return names


def _pre_process(src: Path, dst: Path) -> None:
    """Shape inference + ONNX-standard clean-ups (folds the Identity/Constant chains)."""
    shape_inference = require("onnxruntime.quantization.shape_inference", "calibration", "INT8 calibration")
    with _quiet():
        shape_inference.quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


def _quantize_static(src: Path, dst: Path, reader: ImageFeedReader, settings: QuantSettings,
                     exclude: list[str], cache: Path | None = None) -> None:
    """One ``quantize_static`` call; with ``cache``, ranges are measured on the first call only."""
    q = require("onnxruntime.quantization", "calibration", "INT8 calibration")
    target = quant_target(settings.target)
    methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
               "percentile": q.CalibrationMethod.Percentile}
    extra: dict[str, Any] = {
        **target.extra_options(),
        "WeightSymmetric": True,
        "DedicatedQDQPair": True,
        # One image per collection round: histograms/ranges are merged between rounds, so memory
        # holds one image's activations instead of all of them.
        "CalibStridedMinMax": 1,
        "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "ConvTranspose": 1},
    }
    if settings.method == "percentile":
        extra["CalibPercentile"] = settings.percentile
    cached: dict[str, Any] = {}
    if cache is not None:
        _check_cache_support(q)
        cached["calibration_cache_path"] = str(cache)
    reader.rewind()
    try:
        with _quiet():
            q.quantize_static(
                str(src), str(dst), reader,
                quant_format=q.QuantFormat.QDQ,
                op_types_to_quantize=list(qdq_graph.QUANTIZED_OPS),
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                activation_type=target.activation_type(q),
                weight_type=q.QuantType.QInt8,
                nodes_to_exclude=exclude,
                calibrate_method=methods[settings.method],
                extra_options=extra,
                **cached,
            )
    finally:
        reader.close()


def _check_cache_support(q: Any) -> None:
    import inspect

    if "calibration_cache_path" not in inspect.signature(q.quantize_static).parameters:
        raise CkbdError("--max-loss-db re-quantises with cached activation ranges, which needs a newer "
                        "onnxruntime (quantize_static's calibration_cache_path); pip install -U onnxruntime")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the quantiser's prints and info logging; tqdm (stderr) and errors still show."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def check_quantized(float_path: Path, int8_path: Path) -> None:
    """Refuse an int8 file whose I/O differs from the float graph's or that has no Q/DQ nodes."""
    onnx = require("onnx", "calibration", "INT8 calibration")
    ref, model = onnx.load(str(float_path)), onnx.load(str(int8_path))
    onnx.checker.check_model(model)
    for kind in ("input", "output"):
        want = [_io_signature(v) for v in getattr(ref.graph, kind)]
        got = [_io_signature(v) for v in getattr(model.graph, kind)]
        if want != got:
            raise ModelError(f"quantised graph {int8_path.name} changed its {kind}s: {got} != {want}")
    ops = {node.op_type for node in model.graph.node}
    if not {"QuantizeLinear", "DequantizeLinear"} <= ops:
        raise ModelError(f"quantisation of {float_path.name} produced no Q/DQ nodes")


def _io_signature(value: Any) -> tuple[str, int, tuple[int | str, ...]]:
    tensor_type = value.type.tensor_type
    dims = tuple(d.dim_param if d.HasField("dim_param") else d.dim_value for d in tensor_type.shape.dim)
    return value.name, tensor_type.elem_type, dims
