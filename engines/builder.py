"""ONNX stage graph -> TensorRT engine, one per stage, with its metadata sidecar.

Networks are strongly typed (the only mode left in TensorRT 11, which removed the FP16/INT8 builder
flags and implicit calibration): the precision of an engine is the precision of the ONNX graph it
compiles. FP16 engines come from the float16 variant of a graph and INT8 engines from its Q/DQ
variant, both listed in ``manifest.variants``.

Precision policy: the graphs whose outputs decide scale indexes (hyper synthesis, anchor and
non-anchor parameters) must produce the same numbers in encoder and decoder, on any backend, so
they stay fp32 (and TF32 is switched off for them) unless explicitly forced. Analysis stays fp32
for the same cross-backend comparability. Only latent synthesis, whose output is just pixels,
follows the requested precision.

Image-size profiles (H x W, padded to 64) are turned into each graph's input shapes through the
symbolic shapes of :mod:`ckbd.runtime.stages`.
"""

from __future__ import annotations

import hashlib
import re
import sys
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
from ckbd.engines.metadata import (
    ENGINES_DIR,
    PRECISIONS,
    EngineMetadata,
    engine_path,
    graph_entry,
    write_metadata,
)
from ckbd.errors import CkbdError, ModelError, ModelMismatchError
from ckbd.runtime.atomic import atomic_path, atomic_write_bytes
from ckbd.runtime.manifest import GraphEntry, Manifest
from ckbd.runtime.stages import ALL_STAGES, LATENT_SYNTHESIS, PAD_MULTIPLE, STAGE_IO, Y_STRIDE

if TYPE_CHECKING:
    import tensorrt as trt

#: Stages that follow the requested precision; every other stage is built fp32 unless forced.
PRECISION_FOLLOWING_STAGES = (LATENT_SYNTHESIS,)
TIMING_CACHE_NAME = "timing.cache"


# --- sizes and profiles ----------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class ImageSize:
    """An image size in pixels, height first (as in ``"512x768"``: 512 rows, 768 columns)."""

    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.height}x{self.width}"

    def padded(self, multiple: int = PAD_MULTIPLE) -> ImageSize:
        """Round both sides up to the codec's padding multiple, as the codec does to images."""
        return ImageSize(
            -(-self.height // multiple) * multiple, -(-self.width // multiple) * multiple
        )


_SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_size(text: str) -> ImageSize:
    """Parse ``"HxW"`` (e.g. ``"512x768"``)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise CkbdError(f"image size '{text}' is not HxW, e.g. 512x768")
    size = ImageSize(int(match.group(1)), int(match.group(2)))
    if size.height <= 0 or size.width <= 0:
        raise CkbdError(f"image size '{text}' must be positive")
    return size


@dataclass(frozen=True)
class SizeProfile:
    """The image sizes an engine accepts (min..max) and is tuned for (opt), padded to 64."""

    min: ImageSize
    opt: ImageSize
    max: ImageSize

    def __post_init__(self) -> None:
        for name in ("min", "opt", "max"):
            object.__setattr__(self, name, getattr(self, name).padded())
        for dim in ("height", "width"):
            low, mid, high = (getattr(s, dim) for s in (self.min, self.opt, self.max))
            if not low <= mid <= high:
                raise CkbdError(
                    f"size profile needs min <= opt <= max in {dim}: "
                    f"got {self.min}, {self.opt}, {self.max}"
                )

    @classmethod
    def parse(cls, min_size: str, opt_size: str, max_size: str) -> SizeProfile:
        return cls(parse_size(min_size), parse_size(opt_size), parse_size(max_size))

    def to_dict(self) -> dict[str, list[int]]:
        return {
            key: [size.height, size.width]
            for key, size in (("min", self.min), ("opt", self.opt), ("max", self.max))
        }


DEFAULT_PROFILE = SizeProfile(ImageSize(64, 64), ImageSize(512, 768), ImageSize(2048, 2048))

_DIM_RE = re.compile(r"^(\d*)([A-Za-z]+)(?:/(\d+))?$")


def symbol_values(size: ImageSize, M: int, N: int) -> dict[str, int]:
    """Values of the base symbols of :data:`~ckbd.runtime.stages.STAGE_IO` for an image size."""
    padded = size.padded()
    return {
        "H": padded.height,
        "W": padded.width,
        "h": padded.height // Y_STRIDE,
        "w": padded.width // Y_STRIDE,
        "M": M,
        "N": N,
    }


def resolve_dim(dim: int | str, values: dict[str, int]) -> int:
    """Evaluate a symbolic dimension such as ``"w/2"``, ``"h/4"`` or ``"2M"``."""
    if isinstance(dim, int):
        return dim
    match = _DIM_RE.match(dim)
    if not match or match.group(2) not in values:
        raise CkbdError(f"cannot evaluate tensor dimension '{dim}'")
    factor = int(match.group(1) or 1)
    divisor = int(match.group(3) or 1)
    value = factor * values[match.group(2)]
    if value % divisor:
        raise CkbdError(f"dimension '{dim}' = {value}/{divisor} is not whole; pad the image to 64")
    return value // divisor


def stage_input_shapes(stage: str, size: ImageSize, M: int, N: int) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes of ``stage`` for an image of ``size`` (padded to 64)."""
    if stage not in STAGE_IO:
        raise CkbdError(f"unknown stage '{stage}'; stages are {', '.join(ALL_STAGES)}")
    values = symbol_values(size, M, N)
    inputs, _ = STAGE_IO[stage]
    return {spec.name: tuple(resolve_dim(d, values) for d in spec.shape) for spec in inputs}


ShapeRange = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def stage_profile_shapes(stage: str, profile: SizeProfile, M: int, N: int) -> dict[str, ShapeRange]:
    """(min, opt, max) input shapes of ``stage`` for an image-size profile."""
    low, mid, high = (
        stage_input_shapes(stage, s, M, N) for s in (profile.min, profile.opt, profile.max)
    )
    return {name: (low[name], mid[name], high[name]) for name in low}


# --- precision policy ------------------------------------------------------------------------


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise CkbdError(f"unknown precision '{precision}'; choose one of: {', '.join(PRECISIONS)}")
    return precision


def stage_precision(stage: str, requested: str, force: bool = False) -> str:
    """The precision of the graph compiled for ``stage`` when ``requested`` is asked for.

    Index-deciding stages stay fp32 unless ``force``: a different rounding in encoder and decoder
    picks a different scale index and the rest of the bitstream decodes as noise.
    """
    check_precision(requested)
    return requested if force or stage in PRECISION_FOLLOWING_STAGES else "fp32"


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


# --- building --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp32"
    profile: SizeProfile = DEFAULT_PROFILE
    workspace_mb: int | None = None
    timing_cache: Path | None = None  # default: DIR/engines/timing.cache
    force_precision: bool = False
    device: int = 0
    stages: tuple[str, ...] | None = None  # default: every exported stage


@dataclass
class BuildResult:
    stage: str
    engine: Path
    metadata: EngineMetadata
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


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
    # The path lets the parser find external weight files next to the graph.
    if not parser.parse(data, str(path)):
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


def build_engine(
    model_dir: Path,
    manifest: Manifest,
    stage: str,
    options: BuildOptions,
    cache: TimingCache | None = None,
) -> BuildResult:
    """Build, then atomically write, ``DIR/engines/<stage>.<precision>.engine`` and its sidecar."""
    import time

    from ckbd.engines.cuda_memory import open_cuda

    ensure_tensorrt("building TensorRT engines")
    model_dir = Path(model_dir)
    # Also makes the device current, so TensorRT builds (and times tactics) on it.
    gpu = open_cuda(options.device).device_properties()
    cache = cache or TimingCache(_timing_cache_path(model_dir, options))
    notes: list[str] = []
    start = time.perf_counter()
    engine_bytes, entry, graph_precision = _build_serialized(
        model_dir, manifest, stage, options, cache, notes
    )
    seconds = time.perf_counter() - start
    cache.save()

    target = engine_path(model_dir, stage, options.precision)
    target.parent.mkdir(parents=True, exist_ok=True)
    meta = EngineMetadata(
        stage=stage,
        precision=options.precision,
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


def _timing_cache_path(model_dir: Path, options: BuildOptions) -> Path:
    return options.timing_cache or Path(model_dir) / ENGINES_DIR / TIMING_CACHE_NAME


def build_engines(
    model_dir: Path,
    options: BuildOptions,
    progress: Callable[[str], None] | None = None,
) -> list[BuildResult]:
    """Build one engine per exported stage graph of ``model_dir`` at ``options.precision``."""
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
    profile = options.profile
    say(f"image sizes (HxW, padded to 64): min {profile.min}, opt {profile.opt}, max {profile.max}")
    cache = TimingCache(_timing_cache_path(model_dir, options))
    results = []
    for stage in stages:
        graph_precision = stage_precision(stage, options.precision, options.force_precision)
        say(f"building {stage} ({graph_precision} graph) ...")
        result = build_engine(model_dir, manifest, stage, options, cache)
        for note in result.notes:
            say(f"  note: {note}")
        say(f"  wrote {result.engine} in {result.seconds:.1f} s")
        results.append(result)
    return results


def _select_stages(manifest: Manifest, requested: Iterable[str] | None) -> tuple[str, ...]:
    exported = exported_stages(manifest)
    if requested is None:
        if not exported:
            raise ModelError("the manifest lists no stage graphs to build")
        return exported
    chosen = tuple(requested)
    missing = [s for s in chosen if s not in exported]
    if missing:
        raise ModelError(f"no exported graph for stage(s) {', '.join(missing)}")
    return chosen
