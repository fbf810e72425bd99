"""ONNX stage graph -> TensorRT engine, one per stage, with its metadata sidecar.

Networks are strongly typed (the only mode left in TensorRT 11, which removed the FP16/INT8 builder
flags and implicit calibration): the precision of an engine is the precision of the ONNX graph it
compiles. FP16 engines come from the float16 variant of a graph and INT8 engines from its Q/DQ
variant, both listed in ``manifest.variants``. Which stage compiles which graph, which engines are
shared between precision sets and which stages TensorRT does not run at all is
:mod:`ckbd.engines.policy`; the image-size profiles are :mod:`ckbd.engines.profiles`.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ckbd.engines import (
    dims_tuple,
    ensure_tensorrt,
    recent_errors,
    tensorrt_logger,
    tensorrt_version,
)
from ckbd.engines.cuda_memory import DeviceProperties, open_cuda
from ckbd.engines.metadata import (
    ENGINES_DIR,
    EngineMetadata,
    Expected,
    engine_path,
    graph_entry,
    mismatches,
    read_metadata,
    sidecar_path,
    write_metadata,
)
from ckbd.engines.policy import (
    allows_tf32,
    available_precisions,
    check_precision,
    engine_stages,
    exported_stages,
    is_shared,
    stage_precision,
)
from ckbd.engines.profiles import DEFAULT_PROFILE, ShapeRange, SizeProfile, stage_profile_shapes
from ckbd.errors import CkbdError, ModelError, ModelMismatchError
from ckbd.runtime.atomic import atomic_path, atomic_write_bytes
from ckbd.runtime.manifest import GraphEntry, Manifest
from ckbd.runtime.stages import STAGE_IO

if TYPE_CHECKING:
    import tensorrt as trt

TIMING_CACHE_NAME = "timing.cache"


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp32"
    profile: SizeProfile = DEFAULT_PROFILE
    workspace_mb: int | None = None
    timing_cache: Path | None = None  # default: DIR/engines/timing.cache
    force_precision: bool = False
    device: int = 0
    stages: tuple[str, ...] | None = None  # default: every stage TensorRT runs
    rebuild_shared: bool = False  # rebuild shared fp32 engines even when the existing ones fit


@dataclass
class BuildResult:
    stage: str
    engine: Path
    metadata: EngineMetadata
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    reused: bool = False  # an existing shared engine fit, nothing was built


def _source_entry(model_dir: Path, manifest: Manifest, stage: str, precision: str) -> GraphEntry:
    entry = graph_entry(manifest, stage, precision)
    if entry is None:
        listed = ", ".join(available_precisions(manifest)) or "none"
        raise ModelError(
            f"{model_dir} has no {precision} graph of '{stage}' (manifest.json lists engine "
            f"precisions: {listed}); write the {precision} ONNX variant first"
        )
    return entry


def _read_source(model_dir: Path, entry: GraphEntry) -> bytes:
    """Read a stage graph and check it is the one the manifest describes."""
    path = model_dir / entry.file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise ModelMismatchError(
            f"{path} does not match the sha256 in manifest.json; the model directory was "
            "modified after export, re-export it"
        )
    return data


class TimingCache:
    """One timing cache shared by every engine of a build, loaded once and saved after each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cache: trt.ITimingCache | None = None

    def attach(self, config: trt.IBuilderConfig) -> str | None:
        """Attach to ``config``; returns a note when an unusable cache file was ignored."""
        if self.cache is not None:
            config.set_timing_cache(self.cache, False)
            return None
        data = self.path.read_bytes() if self.path.is_file() else b""
        cache = config.create_timing_cache(data)
        if cache is not None and config.set_timing_cache(cache, False):
            self.cache = cache
            return None
        self.cache = config.create_timing_cache(b"")
        config.set_timing_cache(self.cache, False)
        return f"timing cache {self.path} is from another GPU or TensorRT version; starting afresh"

    def save(self) -> None:
        if self.cache is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, bytes(self.cache.serialize()))


def _network_flags() -> int:
    """STRONGLY_TYPED on TensorRT 10; TensorRT 11 is always strongly typed (flag deprecated)."""
    import tensorrt as trt

    if int(tensorrt_version().split(".")[0]) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _parse_onnx(network: trt.INetworkDefinition, data: bytes, path: Path) -> trt.OnnxParser:
    import tensorrt as trt

    parser = trt.OnnxParser(network, tensorrt_logger())
    # The path lets the parser find external weight files next to the graph; TensorRT documents
    # it as the model file's path, which a relative path only is from the parser's directory.
    if not parser.parse(data, str(Path(path).resolve())):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        details = "\n".join(f"  - {e}" for e in errors) or "  - (no parser error recorded)"
        raise CkbdError(f"TensorRT cannot parse {path}:\n{details}")
    return parser


def _check_network_io(network: trt.INetworkDefinition, stage: str, path: Path) -> None:
    """The graph's tensor names must be the stage contract's, or the runtime cannot feed it."""
    inputs, outputs = STAGE_IO[stage]
    got_in = {network.get_input(i).name for i in range(network.num_inputs)}
    got_out = {network.get_output(i).name for i in range(network.num_outputs)}
    want_in, want_out = {s.name for s in inputs}, {s.name for s in outputs}
    if got_in != want_in or got_out != want_out:
        raise ModelError(
            f"{path} does not follow the '{stage}' stage contract: inputs {sorted(got_in)} "
            f"(expected {sorted(want_in)}), outputs {sorted(got_out)} (expected {sorted(want_out)})"
        )


def _add_profile(
    builder: trt.Builder,
    config: trt.IBuilderConfig,
    network: trt.INetworkDefinition,
    shapes: dict[str, ShapeRange],
) -> None:
    """One optimisation profile covering every dynamic input; static dims must agree with it."""
    import tensorrt as trt

    profile = builder.create_optimization_profile()
    dynamic = False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        low, mid, high = shapes[tensor.name]
        declared = dims_tuple(tensor.shape)
        if not _fits(declared, (low, mid, high)):
            raise ModelMismatchError(
                f"input '{tensor.name}' of the graph has shape {declared}, which cannot take "
                f"the profile's {low} .. {high}; the graph and manifest (N, M) disagree, or "
                "the graph was exported with a fixed image size"
            )
        if -1 in declared:
            dynamic = True
            profile.set_shape(
                tensor.name, trt.Dims(list(low)), trt.Dims(list(mid)), trt.Dims(list(high))
            )
    if dynamic:
        config.add_optimization_profile(profile)


def _fits(declared: tuple[int, ...], shapes: ShapeRange) -> bool:
    """A declared shape (-1 = dynamic) can take every shape of the range."""
    if any(len(shape) != len(declared) for shape in shapes):
        return False
    return all(d == -1 or all(s[i] == d for s in shapes) for i, d in enumerate(declared))


def _configure(builder: trt.Builder, stage: str, options: BuildOptions) -> trt.IBuilderConfig:
    import tensorrt as trt

    config = builder.create_builder_config()
    if options.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if not allows_tf32(stage):
        config.clear_flag(trt.BuilderFlag.TF32)
    return config


def _build_serialized(
    model_dir: Path,
    manifest: Manifest,
    stage: str,
    options: BuildOptions,
    cache: TimingCache,
    notes: list[str],
) -> tuple[bytes, GraphEntry, str]:
    """Compile one stage; returns the engine bytes, its source entry and graph precision."""
    import tensorrt as trt

    precision = stage_precision(stage, options.precision, options.force_precision)
    entry = _source_entry(model_dir, manifest, stage, precision)
    source = model_dir / entry.file
    data = _read_source(model_dir, entry)

    builder = trt.Builder(tensorrt_logger())
    network = builder.create_network(_network_flags())
    _parser = _parse_onnx(network, data, source)  # keep alive until the build is done
    _check_network_io(network, stage, source)
    config = _configure(builder, stage, options)
    _add_profile(
        builder,
        config,
        network,
        stage_profile_shapes(stage, options.profile, manifest.M, manifest.N),
    )
    note = cache.attach(config)
    if note:
        notes.append(note)
    recent_errors()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        details = "; ".join(recent_errors()) or "see the TensorRT log above"
        raise CkbdError(f"TensorRT could not build an engine from {source}: {details}")
    return bytes(serialized), entry, precision


def _build_or_reuse(
    model_dir: Path,
    manifest: Manifest,
    stage: str,
    options: BuildOptions,
    cache: TimingCache,
    gpu: DeviceProperties,
) -> BuildResult:
    """Atomically write ``DIR/engines/<stage>.<precision>.engine`` and its sidecar."""
    precision = stage_precision(stage, options.precision, options.force_precision)
    target = engine_path(model_dir, stage, precision)
    if is_shared(stage, options.force_precision) and not options.rebuild_shared:
        existing = _fitting_engine(model_dir, manifest, stage, target, options, gpu)
        if existing is not None:
            return BuildResult(stage, target, existing, reused=True)
    notes: list[str] = []
    start = time.perf_counter()
    engine_bytes, entry, graph_precision = _build_serialized(
        model_dir, manifest, stage, options, cache, notes
    )
    seconds = time.perf_counter() - start
    cache.save()

    target.parent.mkdir(parents=True, exist_ok=True)
    meta = EngineMetadata(
        stage=stage,
        precision=precision,
        graph_precision=graph_precision,
        source_file=entry.file,
        source_sha256=entry.sha256,
        engine_sha256=hashlib.sha256(engine_bytes).hexdigest(),
        tensorrt_version=tensorrt_version(),
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability_str,
        profile=options.profile.to_dict(),
        forced_precision=options.force_precision,
        model_fingerprint=manifest.fingerprint,
    )
    with atomic_path(target) as tmp:
        tmp.write_bytes(engine_bytes)
    write_metadata(target, meta)
    return BuildResult(stage, target, meta, seconds, notes)


def _fitting_engine(
    model_dir: Path,
    manifest: Manifest,
    stage: str,
    target: Path,
    options: BuildOptions,
    gpu: DeviceProperties,
) -> EngineMetadata | None:
    """The metadata of an existing shared engine that a new build would only replace needlessly.

    Rebuilding it would change the kernels that computed the scale indexes of streams already
    encoded with it (float path), so it is kept whenever it is from this graph, TensorRT, GPU
    architecture and size profile.
    """
    entry = graph_entry(manifest, stage, "fp32")
    if entry is None or not target.is_file() or not sidecar_path(target).is_file():
        return None
    try:
        meta = read_metadata(target)
    except ModelError:
        return None
    expected = Expected(
        stage=stage,
        precision="fp32",
        tensorrt_version=tensorrt_version(),
        compute_capability=gpu.compute_capability_str,
        source_sha256=entry.sha256,
        engine_sha256=hashlib.sha256(target.read_bytes()).hexdigest(),
    )
    fits = not mismatches(meta, expected) and meta.profile == options.profile.to_dict()
    return meta if fits and not meta.forced_precision else None


def _timing_cache_path(model_dir: Path, options: BuildOptions) -> Path:
    return options.timing_cache or Path(model_dir) / ENGINES_DIR / TIMING_CACHE_NAME


def build_engines(
    model_dir: Path,
    options: BuildOptions,
    progress: Callable[[str], None] | None = None,
) -> list[BuildResult]:
    """Build the engine of every stage TensorRT runs, at ``options.precision``.

    Stages that do not follow the precision reuse the shared fp32 engine when it still fits, so
    building several precision sets compiles each of those graphs once.
    """
    model_dir = Path(model_dir)
    say = progress or (lambda message: print(message, file=sys.stderr))
    check_precision(options.precision)
    manifest = Manifest.load(model_dir)
    stages = _select_stages(manifest, options.stages)
    for stage in stages:  # fail before spending minutes on the first engine
        _source_entry(
            model_dir,
            manifest,
            stage,
            stage_precision(stage, options.precision, options.force_precision),
        )
    ensure_tensorrt("building TensorRT engines")
    on_cpu = [s for s in exported_stages(manifest) if s not in engine_stages(manifest)]
    if on_cpu:
        say(f"{', '.join(on_cpu)}: integer entropy parameters, run through ONNX Runtime (CUDA provider once "
            "they pass the known-answer check, else its CPU provider)")
    profile = options.profile
    say(f"image sizes (HxW, padded to 64): min {profile.min}, opt {profile.opt}, max {profile.max}")
    cache = TimingCache(_timing_cache_path(model_dir, options))
    results = []
    with open_cuda(options.device) as api:  # current for the whole build, released after it
        gpu = api.device_properties()
        for stage in stages:
            graph_precision = stage_precision(stage, options.precision, options.force_precision)
            say(f"building {stage} ({graph_precision} graph) ...")
            result = _build_or_reuse(model_dir, manifest, stage, options, cache, gpu)
            for note in result.notes:
                say(f"  note: {note}")
            if result.reused:
                say(f"  kept {result.engine} (shared by every precision set; --rebuild-shared)")
            else:
                say(f"  wrote {result.engine} in {result.seconds:.1f} s")
            results.append(result)
    return results


def _select_stages(manifest: Manifest, requested: Iterable[str] | None) -> tuple[str, ...]:
    runnable = engine_stages(manifest)
    if requested is None:
        if not runnable:
            raise ModelError("the manifest lists no stage graphs to build")
        return runnable
    chosen = tuple(requested)
    missing = [s for s in chosen if s not in exported_stages(manifest)]
    if missing:
        raise ModelError(f"no exported graph for stage(s) {', '.join(missing)}")
    return tuple(s for s in chosen if s in runnable)
