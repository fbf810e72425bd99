"""Export a checkerboard model to a model directory: five ONNX graphs, two tables, a manifest.

Graphs are traced with the TorchScript-based exporter (``dynamo=False``), whose ``dynamic_axes``
keep every spatial size symbolic: the packing slices and reshapes are recorded as ops on the
runtime shape, so one file serves every image size. Each file is checked (``onnx.checker``, shape
inference, and its I/O names, element types and channel counts against
:data:`~ckbd.runtime.stages.STAGE_IO`) before anything is written to the target directory.

Files stay portable: constants are folded by the exporter, but no runtime-specific offline
optimisation is baked in (ONNX Runtime's optimised files depend on the CPU and the ORT version).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ckbd.errors import CkbdError, ModelError, require
from ckbd.export.cpu_graph import rewrite_synthesis
from ckbd.export.integer_stages import integer_stage_modules
from ckbd.export.known_answers import generate as generate_known_answers
from ckbd.export.model_package import build_package, save_tables
from ckbd.export.optimize import optimized_stage_modules
from ckbd.export.stage_modules import (
    check_stages,
    plain_stage_modules,
    require_checkerboard,
)
from ckbd.models.architectures import CheckerboardModel, HyperpriorModel
from ckbd.runtime.intparams import INTEGER_PARAMS_NAME, IntegerParams
from ckbd.runtime.known_answers import KNOWN_ANSWERS_NAME, KnownAnswers
from ckbd.runtime.manifest import MANIFEST_NAME, GraphEntry, Manifest, file_sha256
from ckbd.runtime.stages import ALL_STAGES, CHANNEL_SYMBOLS, LATENT_SYNTHESIS, STAGE_IO, TensorSpec, stage_shapes

DEFAULT_OPSET = 17
#: Padded image size of the example inputs used for tracing: distinct, non-square, and large
#: enough that no spatial size is 1 (a size-1 dim invites the tracer to specialise on it).
TRACE_IMAGE_SIZE = (128, 192)

_FILE_MODE = 0o644
_ONNX_TYPES = {"float32": 1, "uint8": 2, "int32": 6}  # onnx.TensorProto enum values
_TORCH_TYPES = {"float32": torch.float32, "uint8": torch.uint8, "int32": torch.int32}


def graph_file_name(stage: str, precision: str = "fp32") -> str:
    return f"{stage}.onnx" if precision == "fp32" else f"{stage}.{precision}.onnx"


class Float16Stage(nn.Module):
    """A stage computed in float16 behind the float32 contract: inputs are cast down at entry.

    TensorRT 10/11 networks are strongly typed, so an fp16 engine comes from a graph whose
    weights and activations are float16; only latent synthesis gets one (it changes pixels, never
    the scale indexes). Its output is the contract's uint8 image either way.
    """

    def __init__(self, stage_module: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(stage_module).half()

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.inner(*(x.half() for x in inputs))


def example_inputs(stage: str, N: int, M: int, size: tuple[int, int] = TRACE_IMAGE_SIZE) -> tuple[torch.Tensor, ...]:
    """Random inputs of the stage's STAGE_IO shapes and dtypes at padded image ``size``."""
    shapes = stage_shapes(stage, N, M, *size)
    generator = torch.Generator().manual_seed(0)
    tensors = []
    for spec in STAGE_IO[stage][0]:
        shape = shapes[spec.name]
        if spec.dtype == "int32":
            tensors.append(torch.randint(-3, 4, shape, generator=generator, dtype=torch.int32))
        else:
            tensors.append(torch.rand(shape, generator=generator).to(_TORCH_TYPES[spec.dtype]))
    return tuple(tensors)


def _dynamic_axes(stage: str) -> dict[str, dict[int, str]]:
    """Every non-channel symbolic dim of the stage's I/O, named as in STAGE_IO."""
    inputs, outputs = STAGE_IO[stage]
    return {
        spec.name: {i: d for i, d in enumerate(spec.shape) if isinstance(d, str) and d not in CHANNEL_SYMBOLS}
        for spec in (*inputs, *outputs)
    }


def _trace_to_file(module: nn.Module, stage: str, path: Path, opset: int, N: int, M: int) -> None:
    inputs, outputs = STAGE_IO[stage]
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # deprecation and tracer notes about shape arithmetic
        torch.onnx.export(
            module,
            example_inputs(stage, N, M),
            str(path),
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            dynamic_axes=_dynamic_axes(stage),
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def _value_spec(value: object) -> tuple[str, int, list[int | str]]:
    tensor_type = value.type.tensor_type  # type: ignore[attr-defined]
    dims = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in tensor_type.shape.dim]
    return value.name, tensor_type.elem_type, dims  # type: ignore[attr-defined]


def _spec_mismatch(spec: TensorSpec, actual: tuple[str, int, list[int | str]], N: int, M: int) -> str | None:
    """Why a graph input/output differs from its STAGE_IO spec (None when it matches).

    A spatial axis must have stayed symbolic (a number means the tracer baked the example size
    in); a batch or channel axis may be a number, which must then be the right one, or a symbol
    the exporter could not resolve (it is stamped with the right number afterwards).
    """
    name, elem_type, dims = actual
    if name != spec.name:
        return f"named '{name}', expected '{spec.name}'"
    if elem_type != _ONNX_TYPES[spec.dtype]:
        return f"'{name}' has ONNX element type {elem_type}, expected {spec.dtype}"
    if len(dims) != len(spec.shape):
        return f"'{name}' has rank {len(dims)}, expected {len(spec.shape)}"
    for axis, (want, got) in enumerate(zip(spec.shape, _resolved(spec.shape, N, M))):
        actual_dim = dims[axis]
        if isinstance(got, str) and isinstance(actual_dim, int) and actual_dim > 0:
            return f"'{name}' axis {axis} is fixed to {actual_dim}, expected the dynamic size {want}"
        if isinstance(got, int) and isinstance(actual_dim, int) and actual_dim > 0 and actual_dim != got:
            return f"'{name}' axis {axis} is {actual_dim}, expected {got}"
    return None


def _resolved(shape: tuple[int | str, ...], N: int, M: int) -> list[int | str]:
    """A STAGE_IO shape with channel symbols replaced by this model's numbers."""
    fixed = {"N": N, "M": M, "2M": 2 * M}
    return [fixed.get(d, d) if isinstance(d, str) else d for d in shape]


def _stamp_shape(value: object, spec: TensorSpec, N: int, M: int) -> None:
    """Overwrite a graph I/O shape with the contract's: numbers, and STAGE_IO's symbol names."""
    shape = value.type.tensor_type.shape  # type: ignore[attr-defined]
    for dim, want in zip(shape.dim, _resolved(spec.shape, N, M)):
        dim.Clear()
        if isinstance(want, int):
            dim.dim_value = want
        else:
            dim.dim_param = want


def check_graph(path: Path, stage: str, N: int, M: int) -> None:
    """Validate an exported file against the stage contract and give its I/O the contract's shapes.

    Raises :class:`ModelError` when an I/O name, element type, rank or fixed size differs from
    STAGE_IO, or when a spatial size was traced as a constant. Intermediate shapes are re-inferred
    (strictly, with data propagation) from the stamped I/O shapes and kept in the file.
    """
    onnx = require("onnx", "export", "exporting ONNX graphs")
    onnx.checker.check_model(str(path))
    model = onnx.load(str(path))
    inputs, outputs = STAGE_IO[stage]
    for kind, specs, values in (("input", inputs, model.graph.input), ("output", outputs, model.graph.output)):
        if len(values) != len(specs):
            got = ", ".join(v.name for v in values)
            raise ModelError(f"exported {stage} graph breaks the stage contract: {kind}s [{got}], expected "
                              f"{len(specs)}")
        for spec, value in zip(specs, values):
            problem = _spec_mismatch(spec, _value_spec(value), N, M)
            if problem:
                raise ModelError(f"exported {stage} graph breaks the stage contract: {kind} {problem}")
            _stamp_shape(value, spec, N, M)
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_stage(module: nn.Module, stage: str, path: Path, opset: int, N: int, M: int) -> GraphEntry:
    """Trace one stage module to ``path``, check it, and return its manifest entry."""
    _trace_to_file(module, stage, path, opset, N, M)
    check_graph(path, stage, N, M)
    return GraphEntry(file=path.name, sha256=file_sha256(path))


def _publish(staging: Path, out_dir: Path, manifest: Manifest) -> None:
    """Move every staged file into ``out_dir`` (atomic renames), then write the manifest last.

    A reader that looks in the middle sees the previous manifest, whose graph hashes no longer
    match the replaced files, so a half-updated directory is refused rather than misused.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in sorted(staging.iterdir()):
        item.chmod(_FILE_MODE)  # temp files are created owner-only; a model dir is meant to be shared
        os.replace(item, out_dir / item.name)
    manifest.save(out_dir)
    (out_dir / MANIFEST_NAME).chmod(_FILE_MODE)


def export_stage_modules(model: CheckerboardModel, scale_table: Sequence[float], stages: Sequence[str],
                         optimize: bool = True) -> dict[str, nn.Module]:
    """The float stage modules export traces (the one place that picks the graph forms)."""
    build = optimized_stage_modules if optimize else plain_stage_modules
    modules = build(model, scale_table, tuple(stages))  # type: ignore[operator]
    if optimize and LATENT_SYNTHESIS in modules:
        rewrite_synthesis(modules[LATENT_SYNTHESIS].parts)  # CPU-layout form (pixels only, no stream change)
    return modules


def export_model(
    model: HyperpriorModel,
    out_dir: Path,
    opset: int = DEFAULT_OPSET,
    stages: Sequence[str] = ALL_STAGES,
    optimize: bool = True,
    fp16: bool = False,
    integer_params: IntegerParams | None = None,
    known_answers: KnownAnswers | None = None,
) -> Manifest:
    """Export the stages of a checkerboard model, the entropy tables and the manifest to ``out_dir``.

    ``optimize=False`` exports the plain stage modules (same function, slower graphs); it exists
    to measure what the rewrites of :mod:`ckbd.export.optimize` buy. ``fp16`` also writes a
    float16 latent synthesis, listed as the manifest's ``fp16`` variant (for TensorRT FP16).
    ``integer_params`` (from :func:`ckbd.export.integer_quantize.quantize_model`) selects the
    integer entropy-parameter path: the three index-deciding graphs evaluate that spec exactly.
    Its known-answer vectors are ``known_answers``, or made from synthetic images when None
    (:mod:`ckbd.export.known_answers`; the CLI passes vectors of calibration photos).
    """
    require("onnx", "export", "exporting ONNX graphs")
    model = require_checkerboard(model).eval()
    stages = check_stages(stages)
    manifest, y_tables, z_tables = build_package(model, opset=opset, integer_params=integer_params)
    table = manifest.scale_table
    modules = export_stage_modules(model, table, stages, optimize)
    if integer_params is not None:
        integer = integer_stage_modules(integer_params)
        modules.update({stage: integer[stage] for stage in stages if stage in integer})
    manifest.extra["optimized"] = optimize
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CkbdError(f"{out_dir} exists and is not a directory")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    except OSError as exc:
        raise CkbdError(f"cannot write to {out_dir.parent}: {exc.strerror or exc}") from None
    try:
        for stage in stages:
            path = staging / graph_file_name(stage)
            manifest.graphs[stage] = export_stage(modules[stage], stage, path, opset, manifest.N, manifest.M)
        if fp16 and LATENT_SYNTHESIS in stages:
            path = staging / graph_file_name(LATENT_SYNTHESIS, "fp16")
            entry = export_stage(Float16Stage(modules[LATENT_SYNTHESIS]), LATENT_SYNTHESIS, path, opset,
                                 manifest.N, manifest.M)
            manifest.variants["fp16"] = {LATENT_SYNTHESIS: GraphEntry(entry.file, entry.sha256, "fp16")}
        save_tables(staging, manifest, y_tables, z_tables)
        if integer_params is not None:
            spec_path = staging / INTEGER_PARAMS_NAME
            integer_params.save(spec_path)
            manifest.integer_params = GraphEntry(INTEGER_PARAMS_NAME, file_sha256(spec_path), "int")
            answers_path = staging / KNOWN_ANSWERS_NAME
            (known_answers or generate_known_answers(model, integer_params)).save(answers_path)
            manifest.known_answers = GraphEntry(KNOWN_ANSWERS_NAME, file_sha256(answers_path), "int")
        _publish(staging, out_dir, manifest)
    except OSError as exc:
        raise CkbdError(f"cannot write {out_dir}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest
