"""Which stages stay fp32, which graph each stage compiles, which engine file a backend loads.

This is the one home of the fp32-stage rule, used by the engine builder, INT8 calibration
(:mod:`ckbd.calibration.quantize`) and the runtime alike.

Precision: the graphs whose outputs decide scale indexes (hyper synthesis, anchor and non-anchor
parameters, :data:`FP32_STAGES`) must produce the same numbers in encoder and decoder, so they stay
fp32 with TF32 off unless explicitly forced, and have no int8 or fp16 variants at all. Analysis and
latent synthesis (:data:`REDUCED_PRECISION_STAGES`) may have such variants; an engine set follows
the requested precision only for latent synthesis, whose output is just pixels (analysis stays fp32
for cross-backend comparability unless forced).

Sharing: every stage that does not follow the precision compiles the same fp32 graph for every
precision set, so it is built once, as ``<stage>.fp32.engine``, and shared by all sets. Two builds
of one graph are not guaranteed to be bit-identical (TensorRT picks kernels by timing), so a
float-path stream only decodes bit-exactly with the engine files that encoded it.

Integer path: TensorRT never builds or runs the index-deciding graphs
(:func:`~ckbd.runtime.self_check.integer_stage`). They run on ONNX Runtime's CUDA provider, whose
fixed cuDNN algorithm really multiplies and adds, once they pass the model's known-answer vectors
(:mod:`ckbd.runtime.self_check`), else (or without onnxruntime-gpu) on its CPU provider.
"""

from __future__ import annotations

from pathlib import Path

from ckbd.engines.metadata import PRECISIONS, engine_path, read_metadata, sidecar_path
from ckbd.errors import CkbdError
from ckbd.runtime.manifest import Manifest
from ckbd.runtime.self_check import integer_stage
from ckbd.runtime.stages import ALL_STAGES, ANALYSIS, INDEX_STAGES, LATENT_SYNTHESIS

#: Stages that always stay fp32: their outputs decide the scale indexes of the bitstream.
FP32_STAGES = INDEX_STAGES
#: Stages that may have reduced-precision (int8, fp16) variants, in calibration order.
REDUCED_PRECISION_STAGES = (LATENT_SYNTHESIS, ANALYSIS)
#: Stages that follow the requested precision; every other stage is built fp32 unless forced.
PRECISION_FOLLOWING_STAGES = (LATENT_SYNTHESIS,)


def keeps_fp32(stage: str) -> bool:
    """Whether ``stage`` must stay fp32 whatever precision is asked for (see the module docstring)."""
    return stage in FP32_STAGES


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise CkbdError(f"unknown precision '{precision}'; choose one of: {', '.join(PRECISIONS)}")
    return precision


def stage_precision(stage: str, requested: str, force: bool = False) -> str:
    """The precision of the graph compiled for ``stage`` (and in its engine's file name).

    Index-deciding stages stay fp32 unless ``force``: a different rounding in encoder and decoder
    picks a different scale index and the rest of the bitstream decodes as noise.
    """
    check_precision(requested)
    return requested if force or stage in PRECISION_FOLLOWING_STAGES else "fp32"


def is_shared(stage: str, force: bool = False) -> bool:
    """Whether the engine of ``stage`` is the one fp32 build shared by every precision set."""
    return not force and stage not in PRECISION_FOLLOWING_STAGES


def allows_tf32(stage: str) -> bool:
    """TF32 (on by default in TensorRT) is only allowed where results need not match bit-wise."""
    return stage in PRECISION_FOLLOWING_STAGES


def available_precisions(manifest: Manifest) -> tuple[str, ...]:
    """Precisions this model can be built at: fp32, plus each with a latent-synthesis variant."""
    found = ["fp32"] if manifest.graphs else []
    found += [
        p
        for p in PRECISIONS[1:]
        if any(s in manifest.variants.get(p, {}) for s in PRECISION_FOLLOWING_STAGES)
    ]
    return tuple(found)


def exported_stages(manifest: Manifest) -> tuple[str, ...]:
    """The stages of the stage contract that the model directory has graphs for, in order."""
    return tuple(stage for stage in ALL_STAGES if stage in manifest.graphs)


def engine_stages(manifest: Manifest) -> tuple[str, ...]:
    """The exported stages TensorRT runs: all but the integer path's (run through ONNX Runtime)."""
    return tuple(s for s in exported_stages(manifest) if not integer_stage(manifest, s))


def loaded_precision(model_dir: Path, stage: str, precision: str) -> str:
    """The precision in the file name of the engine a backend at ``precision`` loads for ``stage``.

    Its own engine when the stage follows the precision or was built with ``--force-precision``;
    otherwise the shared fp32 build.
    """
    if stage in PRECISION_FOLLOWING_STAGES or precision == "fp32":
        return precision
    own = engine_path(model_dir, stage, precision)
    if own.is_file() and sidecar_path(own).is_file() and read_metadata(own).forced_precision:
        return precision
    return "fp32"
