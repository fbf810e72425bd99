"""Writing a Triton model repository for a ckbd model directory.

Whole layout (the default): ``ckbd_decode`` and ``ckbd_encode`` are Python-backend models, each
instance holding one Decoder/Encoder. Split layout (``--split``): each stage graph is its own model
(``onnxruntime_onnx``, ``tensorrt_plan`` where engines exist, or Python stand-ins that run one ORT
session each) and ``ckbd_decode``/``ckbd_encode`` become BLS models that range-code on the CPU and
call the stage models in the two-pass order. The client sees the same two models either way.

Every model gets its own hard-linked (or copied) view of the model directory so the repository can
be moved into a container as one folder.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ckbd.errors import CkbdError, UsageError
from ckbd.runtime.manifest import Manifest
from ckbd.runtime.package import default_model_dir
from ckbd.runtime.stages import ALL_STAGES

DECODE_MODEL = "ckbd_decode"
ENCODE_MODEL = "ckbd_encode"
#: Folder, inside a model's directory, holding its view of the ckbd model directory.
MODEL_SUBDIR = "ckbd_model"
#: Default per-request limits: a 4096 x 4096 image, a 64 MiB bitstream.
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_BYTES = 64 << 20
STAGE_BACKENDS = ("auto", "onnxruntime", "tensorrt", "python")

_TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int32": "TYPE_INT32",
                 "int64": "TYPE_INT64", "uint8": "TYPE_UINT8"}

_MODEL_PY = '''"""Triton Python-backend entry point written by `ckbd serve repo`; the logic lives in ckbd."""

from ckbd.serving.triton_models import {cls} as TritonPythonModel  # noqa: F401
'''


@dataclass(frozen=True)
class RepoOptions:
    """What ``ckbd serve repo`` writes."""

    instances: int = 1  # instances per model (Python: processes; stage models: per GPU)
    max_batch: int = 4  # requests the dynamic batcher hands one execute() call
    split: bool = False
    stage_backend: str = "auto"  # split only: auto (tensorrt if engines exist), onnxruntime, tensorrt, python
    threads: int = 1  # ONNX Runtime threads per Python instance
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    max_memory: int | None = None  # peak-memory budget per instance (None: the default, 1.5 GiB capped by the machine)
    gpu: bool = True  # instance groups of the production stage models on GPU


def stage_model(stage: str) -> str:
    return f"ckbd_{stage}"


def write_repository(out: Path, model_dir: Path | None = None, options: RepoOptions = RepoOptions()) -> list[str]:
    """Write the repository into ``out`` (created; must be empty or absent); returns the model names."""
    _check_options(options)
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    manifest = Manifest.load(model_dir)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty; choose a new folder for the repository")
    out.mkdir(parents=True, exist_ok=True)
    limits = {"max_pixels": str(options.max_pixels), "max_bytes": str(options.max_bytes),
              "max_memory": str(options.max_memory or 0), "threads": str(options.threads)}
    if not options.split:
        for name, cls, io in ((DECODE_MODEL, "DecodeModel", _DECODE_IO), (ENCODE_MODEL, "EncodeModel", _ENCODE_IO)):
            _python_model(out / name, name, cls, io, options, limits)
            _link_tree(model_dir, out / name / MODEL_SUBDIR)
        return [DECODE_MODEL, ENCODE_MODEL]
    backend = _stage_backend(model_dir, options.stage_backend)
    names = []
    for stage in ALL_STAGES:
        names.append(_stage_model(out, model_dir, manifest, stage, backend, options))
    for name, cls, io in ((DECODE_MODEL, "SplitDecodeModel", _DECODE_IO), (ENCODE_MODEL, "SplitEncodeModel", _ENCODE_IO)):
        _python_model(out / name, name, cls, io, options, limits)
        _link_tree(model_dir, out / name / MODEL_SUBDIR, graphs=False)
        names.append(name)
    return names


# Client-facing I/O, without the batch dimension (max_batch_size > 0 adds it).
_DECODE_IO = ([("bitstream", "TYPE_STRING", [1])], [("image", "TYPE_UINT8", [-1, -1, 3])])
_ENCODE_IO = ([("image", "TYPE_UINT8", [-1, -1, 3])], [("bitstream", "TYPE_STRING", [1])])


def _check_options(options: RepoOptions) -> None:
    if options.instances < 1:
        raise UsageError("--instances must be at least 1")
    if options.max_batch < 1:
        raise UsageError("--max-batch must be at least 1")
    if options.stage_backend not in STAGE_BACKENDS:
        raise UsageError(f"unknown stage backend '{options.stage_backend}'; choose one of: {', '.join(STAGE_BACKENDS)}")
    if options.max_pixels < 1 or options.max_bytes < 1:
        raise UsageError("request limits must be positive")


def _stage_backend(model_dir: Path, requested: str) -> str:
    from ckbd.engines.metadata import engine_path

    have_engines = all(engine_path(model_dir, s, "fp32").is_file() for s in ALL_STAGES)
    if requested == "tensorrt" and not have_engines:
        raise CkbdError(f"{model_dir} has no fp32 engines for every stage; build them with: ckbd build {model_dir}")
    if requested == "auto":
        return "tensorrt" if have_engines else "onnxruntime"
    return requested


def _python_model(path: Path, name: str, cls: str, io: tuple[list, list], options: RepoOptions,  # type: ignore[type-arg]
                  parameters: dict[str, str]) -> None:
    (path / "1").mkdir(parents=True)
    (path / "1" / "model.py").write_text(_MODEL_PY.format(cls=cls))
    batching = f"max_batch_size: {options.max_batch}\ndynamic_batching {{ }}\n"
    text = _config(name, 'backend: "python"', batching, io, f"count: {options.instances} kind: KIND_CPU",
                   {**parameters, "model_dir": MODEL_SUBDIR})
    (path / "config.pbtxt").write_text(text)


def _stage_model(out: Path, model_dir: Path, manifest: Manifest, stage: str, backend: str,
                 options: RepoOptions) -> str:
    """One stage graph as its own model; its I/O is read from the graph itself."""
    from ckbd.runtime.ort_backend import OnnxRuntimeBackend

    name = stage_model(stage)
    path = out / name
    (path / "1").mkdir(parents=True)
    runner = OnnxRuntimeBackend(threads=1).load(model_dir, stage)
    io = ([(t.name, _TRITON_TYPES[t.dtype], _dims(t.shape)) for t in runner.inputs],
          [(t.name, _TRITON_TYPES[t.dtype], _dims(t.shape)) for t in runner.outputs])
    kind = "KIND_GPU" if options.gpu else "KIND_CPU"
    if backend == "python":
        (path / "1" / "model.py").write_text(_MODEL_PY.format(cls="StageModel"))
        _link_tree(model_dir, path / MODEL_SUBDIR, graphs=False, keep=(stage,))
        header, kind = 'backend: "python"', "KIND_CPU"
        params = {"model_dir": MODEL_SUBDIR, "stage": stage, "threads": str(options.threads)}
    elif backend == "tensorrt":
        from ckbd.engines.metadata import engine_path

        _link(engine_path(model_dir, stage, "fp32"), path / "1" / "model.plan")
        header, params = 'platform: "tensorrt_plan"', {}
    else:
        _link(manifest.graph_path(model_dir, stage), path / "1" / "model.onnx")
        header, params = 'platform: "onnxruntime_onnx"', {}
    # The graphs carry a fixed batch of 1 in their shapes, so Triton must not add one (max_batch_size 0).
    (path / "config.pbtxt").write_text(_config(name, header, "max_batch_size: 0\n", io,
                                               f"count: {options.instances} kind: {kind}", params))
    return name


def _dims(shape: tuple[int | str, ...]) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]


def _config(name: str, header: str, batching: str, io: tuple[list, list], instances: str,  # type: ignore[type-arg]
            parameters: dict[str, str]) -> str:
    def tensors(items: list) -> str:  # type: ignore[type-arg]
        return ",\n".join(f'  {{ name: "{n}" data_type: {t} dims: [ {", ".join(map(str, d))} ] }}' for n, t, d in items)

    lines = [f'name: "{name}"', header, batching.rstrip("\n"),
             f"input [\n{tensors(io[0])}\n]", f"output [\n{tensors(io[1])}\n]",
             f"instance_group [ {{ {instances} }} ]"]
    lines += [f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in sorted(parameters.items())]
    return "\n".join(lines) + "\n"


def _link(src: Path, dst: Path) -> None:
    """Hard link when on the same filesystem (no extra disk), else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _link_tree(model_dir: Path, dst: Path, graphs: bool = True, keep: tuple[str, ...] = ()) -> None:
    """The model directory's files (no engines); without ``graphs`` only manifest, tables and ``keep``'s graphs."""
    manifest = Manifest.load(model_dir)
    wanted = None
    if not graphs:
        wanted = {p.name for p in model_dir.iterdir() if p.suffix != ".onnx"}
        for stage in keep:
            wanted.add(manifest.graph_path(model_dir, stage).name)
    for src in sorted(model_dir.iterdir()):
        if src.is_file() and (wanted is None or src.name in wanted):
            _link(src, dst / src.name)

