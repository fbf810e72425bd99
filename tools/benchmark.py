"""The codec benchmark behind ``ckbd bench codecs`` and ``python -m ckbd.tools.benchmark``.

One run times encoding and decoding stage by stage on the same images, at the same architecture
size and thread count, for:

(a) ckbd's checkerboard codec on ONNX Runtime (the exported graphs: what ships),
(b) the same checkerboard model on the torch reference backend (same weights when ckbd exports
    the model itself),
(c) the serial-context baseline ``mbt2018`` (:class:`ckbd.baselines.SerialContextCodec`),
(d) the context-free baseline ``mbt2018-mean`` (:class:`ckbd.baselines.MeanScaleCodec`),

plus, when CompressAI can be imported, the same weights through CompressAI's own
``compress``/``decompress`` (a reference point for the torch implementations), the entropy
coder's throughput (:mod:`ckbd.tools.bench_coder`) and the machine it ran on.

Latency does not depend on training, and trained baselines do not exist yet, so the models are
randomly initialised at the requested size (the paper's N=192, M=320 by default); the outputs say
so. Only the entropy-coding stages see different symbol statistics than with trained weights.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ckbd.errors import CkbdError, require
from ckbd.progress import progress as progress_bar
from ckbd.runtime.profiling import (
    DECODE_STAGES,
    ENCODE_STAGES,
    StageTimer,
    median_times,
)

PAPER_SIZE = (192, 320)
#: Serial codecs are warmed up on a crop this big: a full-image warm-up would double their cost.
WARMUP_CROP = 64
CONTEXT_STAGES_CKBD = ("anchor_params", "anchor_decode", "nonanchor_params", "nonanchor_decode")

Encode = Callable[[np.ndarray, StageTimer], tuple[Any, int]]  # image, timer -> (payload, bytes)
Decode = Callable[[Any, StageTimer], np.ndarray]  # payload, timer -> image


@dataclass
class TimedCodec:
    """A codec as the benchmark sees it: two timed calls and the stage names they record."""

    name: str
    label: str
    backend: str
    arch: str
    encode: Encode
    decode: Decode
    encode_stages: tuple[str, ...]
    decode_stages: tuple[str, ...]
    breakdown: tuple[str, ...] = ()  # extra keys recorded inside the stages (not summed)
    serial: bool = False
    group: str = "ckbd"  # "ckbd" (this repository's implementations) or "compressai"


@dataclass
class ImageTiming:
    file: str
    width: int
    height: int
    bytes: int
    bpp: float
    decode_ms: dict[str, float]
    encode_ms: dict[str, float]
    breakdown_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class CodecResult:
    name: str
    label: str
    backend: str
    arch: str
    group: str
    decode_stages: list[str]
    encode_stages: list[str]
    images: list[ImageTiming] = field(default_factory=list)

    def mean(self, which: str) -> dict[str, float]:
        """Per-stage mean over images of the per-image medians."""
        rows = [getattr(i, which) for i in self.images]
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(decode_ms=self.mean("decode_ms"), encode_ms=self.mean("encode_ms"),
                   breakdown_ms=self.mean("breakdown_ms"))
        return out


@dataclass
class BenchConfig:
    images: list[Path]
    N: int = PAPER_SIZE[0]
    M: int = PAPER_SIZE[1]
    model_dir: Path | None = None  # an exported ckbd model; else a random one is exported
    threads: int = 2
    repeat: int = 1
    seed: int = 0
    compressai: bool = True
    coder_symbols: int = 500_000
    progress: bool = True
    notes: list[str] = field(default_factory=list)  # the user's own caveats, copied to the outputs


# ---------------------------------------------------------------------------------------------
# Models and codecs


def _torch() -> Any:
    return require("torch", "export", "The codec benchmark (torch baselines)")


def random_model(arch: str, N: int, M: int, seed: int) -> Any:
    """A randomly initialised model: latency does not depend on training."""
    torch = _torch()
    from ckbd.models import ModelConfig, build_model

    torch.manual_seed(seed)
    return build_model(ModelConfig(arch=arch, N=N, M=M)).eval()


def ckbd_codecs(model: Any, model_dir: Path, threads: int) -> list[TimedCodec]:
    """(a) the exported graphs on ONNX Runtime and (b) the torch reference of ``model``."""
    from ckbd.export.torch_backend import reference_package
    from ckbd.runtime.codec import Decoder, Encoder
    from ckbd.runtime.model import CodecModel

    ort = (Encoder.open(model_dir, threads=threads), Decoder.open(model_dir, threads=threads))
    manifest, y_tables, z_tables, backend = reference_package(model)
    stages = tuple(dict.fromkeys(Encoder.STAGES + Decoder.STAGES))
    ref = CodecModel.from_parts(manifest, y_tables, z_tables, {s: backend.load(None, s) for s in stages}, "torch")
    torch_pair = (Encoder(ref), Decoder(ref))
    return [_ckbd_timed("ckbd-onnxruntime", "ckbd checkerboard (ONNX Runtime)", "onnxruntime", *ort),
            _ckbd_timed("ckbd-torch", "ckbd checkerboard (torch reference)", "torch", *torch_pair)]


def _ckbd_timed(name: str, label: str, backend: str, encoder: Any, decoder: Any) -> TimedCodec:
    def encode(image: np.ndarray, timer: StageTimer) -> tuple[Any, int]:
        data = encoder.encode_detailed(image, timer, estimate=False).data
        return data, len(data)

    def decode(data: Any, timer: StageTimer) -> np.ndarray:
        return decoder.decode_detailed(data, timer).image  # type: ignore[no-any-return]

    return TimedCodec(name, label, backend, decoder.manifest.arch, encode, decode, ENCODE_STAGES, DECODE_STAGES)


def baseline_codecs(models: dict[str, Any]) -> list[TimedCodec]:
    """(c) serial context and (d) no context, checking each decode against its encode."""
    from ckbd.baselines import SERIAL_BREAKDOWN, baseline_codec

    out = []
    for arch, model in models.items():
        codec = baseline_codec(model)
        serial = arch == "mbt2018"
        label = "mbt2018 serial context (torch)" if serial else "mbt2018-mean, no context (torch)"
        out.append(TimedCodec(f"{arch}-torch", label, "torch", arch, *_checked(codec), codec.encode_stages,
                              codec.decode_stages, SERIAL_BREAKDOWN if serial else (), serial))
    return out


def _checked(codec: Any) -> tuple[Encode, Decode]:
    """Timed calls that verify every decode reproduces the last encode's symbols (untimed)."""
    last: dict[str, np.ndarray] = {}

    def encode(image: np.ndarray, timer: StageTimer) -> tuple[Any, int]:
        result = codec.encode_detailed(image, timer)
        last["symbols"] = result.latents.y_symbols
        return result.data, len(result.data)

    def decode(data: Any, timer: StageTimer) -> np.ndarray:
        result = codec.decode_detailed(data, timer)
        if "symbols" in last and not np.array_equal(result.latents.y_symbols, last["symbols"]):
            raise RuntimeError(f"{codec.arch} baseline decode does not reproduce its encode")  # a bug
        return result.image  # type: ignore[no-any-return]

    return encode, decode


# ---------------------------------------------------------------------------------------------
# CompressAI (optional): the same weights through CompressAI's own compress/decompress


class _Dummy:
    """Stand-in for any attribute of a stubbed module (a class, so it can also be subclassed)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Dummy:
        return _Dummy()


class _StubFinder:
    """Last-resort importer for the few packages CompressAI imports but never needs here.

    It sits at the *end* of ``sys.meta_path``, so it only ever answers for modules that are not
    installed. ``scipy.stats.norm.ppf`` gets a real implementation: CompressAI's Gaussian
    conditional calls it once to size its tables.
    """

    NAMES = frozenset({"torchvision", "scipy", "requests", "einops", "pytorch_msssim", "torch_geometric",
                       "pandas", "plotly", "pointops"})

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        import importlib.machinery

        if fullname.split(".")[0] not in self.NAMES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)  # type: ignore[arg-type]

    def create_module(self, spec: Any) -> Any:
        import types

        class Stub(types.ModuleType):
            def __getattr__(self, name: str) -> Any:
                if name.startswith("__"):
                    raise AttributeError(name)
                return type(name, (_Dummy,), {})

        module = Stub(spec.name)
        module.__path__ = []
        module.__dict__["__ckbd_stub__"] = True
        return module

    def exec_module(self, module: Any) -> None:
        if module.__name__ == "scipy.stats":
            import types
            from statistics import NormalDist

            module.norm = types.SimpleNamespace(ppf=lambda q: NormalDist().inv_cdf(float(q)))


def import_compressai() -> tuple[Any, str]:
    """(the compressai module or None, a note saying which and how it was imported).

    A missing *dependency* of CompressAI (torchvision, scipy, ...: imported at package import but
    unused by the models timed here) is answered with a stub, inside this process only.
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
    sys.meta_path.append(_StubFinder())  # type: ignore[arg-type]
    try:
        import compressai

        stubbed = sorted(n for n in _StubFinder.NAMES if getattr(sys.modules.get(n), "__ckbd_stub__", False))
        return compressai, (f"CompressAI {getattr(compressai, '__version__', '?')} (its dependencies "
                            f"{', '.join(stubbed)}, unused here, replaced by stubs inside the benchmark)")
    except Exception as exc:  # anything CompressAI's import chain throws: report and go on
        return None, f"CompressAI could not be imported even with stubs ({type(exc).__name__}: {exc}): skipped"


def _compressai_state(state: dict[str, Any]) -> dict[str, Any]:
    """ckbd parameter names -> CompressAI >= 1.2 names (the bottleneck's lists are public there)."""
    out = {}
    for key, value in state.items():
        for ours, theirs in (("entropy_bottleneck._matrices.", "entropy_bottleneck.matrices."),
                             ("entropy_bottleneck._biases.", "entropy_bottleneck.biases."),
                             ("entropy_bottleneck._factors.", "entropy_bottleneck.factors.")):
            key = key.replace(ours, theirs)
        out[key] = value
    return out


def _load_into(target: Any, state: dict[str, Any]) -> None:
    """Load weights; only buffers CompressAI recomputes itself (tables, masks, bounds) may be absent.

    ``nn.Module.load_state_dict`` is called directly: CompressAI's override insists on the coding
    tables being in the state dict, and ``update(force=True)`` rebuilds them from the weights.
    """
    missing, unexpected = _torch().nn.Module.load_state_dict(target, state, strict=False)
    recomputed = ("_offset", "_quantized_cdf", "_cdf_length", "scale_table", "mask", "target", "bound", "pedestal")
    bad = [k for k in missing if not k.endswith(recomputed)]
    if bad or unexpected:
        raise RuntimeError(f"weights do not map onto CompressAI: missing {bad[:5]}, unexpected {unexpected[:5]}")
    target.update(force=True)
    target.eval()


def compressai_models(compressai: Any, ckbd_model: Any, baselines: dict[str, Any], N: int, M: int) -> dict[str, Any]:
    """CompressAI models holding the same weights as ckbd's checkerboard model and baselines."""
    from compressai.entropy_models import EntropyBottleneck  # type: ignore[import-not-found]
    from compressai.models import (  # type: ignore[import-not-found]
        JointAutoregressiveHierarchicalPriors,
        MeanScaleHyperprior,
    )

    def with_bottleneck(model: Any, filters: tuple[int, ...]) -> Any:
        model.entropy_bottleneck = EntropyBottleneck(N, filters=filters)
        return model

    out = {}
    for arch, source in baselines.items():
        cls = JointAutoregressiveHierarchicalPriors if arch == "mbt2018" else MeanScaleHyperprior
        target = with_bottleneck(cls(N, M), source.config.eb_filters)
        _load_into(target, _compressai_state(source.state_dict()))
        out[arch] = target
    if ckbd_model is not None and ckbd_model.config.arch == "mbt2018-ckbd":
        out["mbt2018-ckbd"] = _compressai_checkerboard(ckbd_model, with_bottleneck(JointAutoregressiveHierarchicalPriors(N, M),
                                                                                   ckbd_model.config.eb_filters))
    return out


def _compressai_checkerboard(ckbd_model: Any, minnen: Any) -> Any:
    """Minnen transforms + CompressAI's CheckerboardLatentCodec, carrying ckbd's weights.

    CompressAI concatenates (context, hyper) where ckbd concatenates (hyper, context), so the
    first entropy-parameter layer's input halves are swapped; both chunk (scales, means).
    """
    from compressai.latent_codecs import (  # type: ignore[import-not-found]
        CheckerboardLatentCodec,
        GaussianConditionalLatentCodec,
        HyperLatentCodec,
        HyperpriorLatentCodec,
    )
    from compressai.layers import CheckerboardMaskedConv2d  # type: ignore[import-not-found]
    from compressai.models.base import SimpleVAECompressionModel  # type: ignore[import-not-found]

    from ckbd.models.compressai_import import swap_halves

    M = ckbd_model.config.M

    class MinnenCheckerboard(SimpleVAECompressionModel):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.g_a, self.g_s = minnen.g_a, minnen.g_s
            y_codec = CheckerboardLatentCodec(
                latent_codec={"y": GaussianConditionalLatentCodec(quantizer="ste")},
                entropy_parameters=minnen.entropy_parameters,
                context_prediction=CheckerboardMaskedConv2d(M, 2 * M, kernel_size=5, stride=1, padding=2),
                anchor_parity=ckbd_model.config.anchor_parity,
            )
            hyper = HyperLatentCodec(entropy_bottleneck=minnen.entropy_bottleneck, h_a=minnen.h_a, h_s=minnen.h_s,
                                     quantizer="ste")
            self.latent_codec = HyperpriorLatentCodec(latent_codec={"y": y_codec, "hyper": hyper})

    target = MinnenCheckerboard()
    state = {}
    for key, value in _compressai_state(ckbd_model.state_dict()).items():
        if key == "entropy_parameters.0.weight":
            value = swap_halves(value, 1)
        if key.startswith(("h_a.", "h_s.", "entropy_bottleneck.")):
            key = "latent_codec.hyper." + key
        elif key.startswith(("context_prediction.", "entropy_parameters.")):
            key = "latent_codec.y." + key
        state[key] = value
    _load_into(target, state)
    return target


def compressai_codecs(models: dict[str, Any]) -> list[TimedCodec]:
    """CompressAI's compress/decompress, timed whole (CompressAI has no stage hooks)."""
    labels = {"mbt2018-ckbd": "CompressAI checkerboard (same weights)",
              "mbt2018": "CompressAI mbt2018 serial (same weights)",
              "mbt2018-mean": "CompressAI mbt2018-mean (same weights)"}
    return [TimedCodec(f"compressai-{arch}", labels[arch], "torch (CompressAI)", arch, *_compressai_calls(model),
                       ("compress",), ("decompress",), serial=arch == "mbt2018", group="compressai")
            for arch, model in models.items()]


def _compressai_calls(model: Any) -> tuple[Encode, Decode]:
    torch = _torch()
    from ckbd.runtime.codec import (
        to_network_input,  # the same edge padding as every other codec
    )

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


# ---------------------------------------------------------------------------------------------
# Timing


def time_codec(codec: TimedCodec, images: Sequence[tuple[str, np.ndarray]], repeat: int,
               tick: Callable[[], None]) -> tuple[CodecResult, np.ndarray]:
    """Warm up once, then ``repeat`` timed encodes and decodes per image; medians per stage.

    Also returns the first image's reconstruction, to check that implementations sharing weights
    agree.
    """
    result = CodecResult(codec.name, codec.label, codec.backend, codec.arch, codec.group,
                         list(codec.decode_stages), list(codec.encode_stages))
    first: np.ndarray | None = None
    warm = images[0][1][:WARMUP_CROP, :WARMUP_CROP] if codec.serial else images[0][1]
    codec.decode(codec.encode(warm, StageTimer())[0], StageTimer())
    for name, image in images:
        enc_runs, dec_runs = [], []
        size = 0
        for _ in range(repeat):
            timer = StageTimer()
            payload, size = codec.encode(image, timer)
            enc_runs.append(timer.times_ms)
            timer = StageTimer()
            decoded = codec.decode(payload, timer)
            dec_runs.append(timer.times_ms)
            first = decoded if first is None else first
        h, w = image.shape[:2]
        breakdown = {k: statistics.median(r.get(k, 0.0) for r in dec_runs) for k in codec.breakdown}
        result.images.append(ImageTiming(name, w, h, size, 8.0 * size / (h * w),
                                         median_times(dec_runs, codec.decode_stages),
                                         median_times(enc_runs, codec.encode_stages), breakdown))
        tick()
    assert first is not None
    return result, first


#: Implementations that hold the same weights: (codec, reference it must reproduce).
SAME_WEIGHTS = (("ckbd-onnxruntime", "ckbd-torch"), ("compressai-mbt2018-ckbd", "ckbd-torch"),
                ("compressai-mbt2018", "mbt2018-torch"), ("compressai-mbt2018-mean", "mbt2018-mean-torch"))


def agreement(decoded: dict[str, np.ndarray], same_weights: bool) -> dict[str, float | str]:
    """PSNR (dB) between reconstructions of the first image by implementations sharing weights.

    ``inf`` means identical pixels; a finite but high value means float differences flipped a few
    roundings. Without shared weights (``--model``) only the CompressAI baselines are compared.
    """
    from ckbd.tools.metrics import psnr

    out: dict[str, float | str] = {}
    for name, ref in SAME_WEIGHTS:
        if name in decoded and ref in decoded and (same_weights or "ckbd" not in name):
            value = psnr(decoded[name], decoded[ref])
            out[f"{name} vs {ref}"] = round(value, 2) if math.isfinite(value) else "identical"
    return out


def ratios(results: dict[str, CodecResult]) -> dict[str, float]:
    """How much slower serial decoding is than the checkerboard's, whole and context part only."""
    out: dict[str, float] = {}
    serial = results.get("mbt2018-torch")
    if serial is None:
        return out
    s_dec = serial.mean("decode_ms")
    for name in ("ckbd-torch", "ckbd-onnxruntime"):
        if name in results:
            c_dec = results[name].mean("decode_ms")
            out[f"serial_vs_{name}_decode"] = s_dec["total"] / c_dec["total"]
            context = sum(c_dec[s] for s in CONTEXT_STAGES_CKBD)
            out[f"serial_vs_{name}_context_stages"] = s_dec["context_decode"] / context
    ca_serial, ca_ckbd = results.get("compressai-mbt2018"), results.get("compressai-mbt2018-ckbd")
    if ca_serial and ca_ckbd:
        out["compressai_serial_vs_checkerboard_decode"] = (ca_serial.mean("decode_ms")["total"]
                                                           / ca_ckbd.mean("decode_ms")["total"])
    return out


def machine(threads: int) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    from ckbd.tools.bench_coder import machine_info

    info = dict(machine_info())
    for pkg in ("torch", "onnxruntime"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = "not installed"
    info["threads"] = threads
    with contextlib.suppress(OSError):
        info["loadavg_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


def _load_images(paths: Sequence[Path]) -> list[tuple[str, np.ndarray]]:
    from ckbd.runtime.imageio import read_image

    return [(str(p), read_image(p)) for p in paths]


@contextlib.contextmanager
def _exported(model: Any, model_dir: Path | None) -> Iterator[Path]:
    """The given model directory, or the random checkerboard model exported to a temporary one."""
    if model_dir is not None:
        yield model_dir
        return
    from ckbd.export.onnx_export import export_model

    with tempfile.TemporaryDirectory(prefix="ckbd-bench-") as tmp:
        with contextlib.redirect_stdout(io.StringIO()):
            export_model(model, Path(tmp) / "model")
        yield Path(tmp) / "model"


def run_benchmark(config: BenchConfig) -> dict[str, Any]:
    """Everything the benchmark measures, as one JSON-ready dict."""
    torch = _torch()
    torch.set_num_threads(max(1, config.threads))
    notes: list[str] = []
    N, M = _size(config, notes)
    started = time.time()
    info = machine(config.threads)
    ckbd_model = random_model("mbt2018-ckbd", N, M, config.seed)
    baselines = {arch: random_model(arch, N, M, config.seed + 1 + i) for i, arch in enumerate(("mbt2018", "mbt2018-mean"))}
    images = _load_images(config.images)
    with _exported(ckbd_model, config.model_dir) as model_dir:
        codecs = ckbd_codecs(ckbd_model, model_dir, config.threads) + baseline_codecs(baselines)
        compressai_note = "CompressAI comparison disabled (--no-compressai)"
        if config.compressai:
            module, compressai_note = import_compressai()
            if module is not None:
                same = ckbd_model if config.model_dir is None else None
                codecs += compressai_codecs(compressai_models(module, same, baselines, N, M))
        notes.append(compressai_note)
        results: dict[str, CodecResult] = {}
        decoded: dict[str, np.ndarray] = {}
        with progress_bar(total=len(codecs) * len(images), desc="bench codecs", unit="image",
                          enabled=config.progress) as bar:
            for codec in codecs:
                bar.set_postfix_str(codec.name)
                results[codec.name], decoded[codec.name] = time_codec(codec, images, config.repeat,
                                                                      lambda: bar.update(1))
    coder = _coder(config.coder_symbols, config.progress)
    with contextlib.suppress(OSError):
        info["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    return {
        "config": {"N": N, "M": M, "images": [name for name, _ in images], "threads": config.threads,
                   "repeat": config.repeat, "seed": config.seed,
                   "model_dir": str(config.model_dir) if config.model_dir else None,
                   "random_weights": config.model_dir is None,
                   "elapsed_s": round(time.time() - started, 1)},
        "machine": info,
        "codecs": {name: r.to_dict() for name, r in results.items()},
        "ratios": ratios(results),
        "agreement_psnr_db": agreement(decoded, config.model_dir is None),
        "coder": coder,
        "notes": config.notes + notes + _load_notes(info) + _standard_notes(config),
    }


def _size(config: BenchConfig, notes: list[str]) -> tuple[int, int]:
    """N, M: from the model directory when given (the baselines must match it), else the flag."""
    if config.model_dir is None:
        return config.N, config.M
    from ckbd.runtime.manifest import Manifest

    manifest = Manifest.load(config.model_dir)
    if (manifest.N, manifest.M) != (config.N, config.M):
        notes.append(f"architecture size taken from {config.model_dir}: N={manifest.N}, M={manifest.M}")
    return manifest.N, manifest.M


def _coder(symbols: int, progress: bool) -> dict[str, Any] | None:
    if symbols <= 0:
        return None
    from ckbd.tools.bench_coder import run_coder_benchmark

    return run_coder_benchmark(symbols=symbols, progress=progress).to_dict()


def _load_notes(info: dict[str, Any]) -> list[str]:
    """A caveat when other work competed for the CPUs (load average above half the CPU count)."""
    loads = [info.get("loadavg_start", [0.0])[0], info.get("loadavg_end", [0.0])[0]]
    cpus = int(info.get("cpu_count") or 1)
    if max(loads) <= cpus / 2:
        return []
    return [f"the machine was busy while measuring (1-minute load average {loads[0]} at the start, {loads[1]} at "
            f"the end, on {cpus} CPUs): the times are inflated by contention, multi-threaded small operations "
            "(the serial loops) the most; compare codecs within this run only"]


def _standard_notes(config: BenchConfig) -> list[str]:
    weights = ("all models are randomly initialised (latency does not depend on training; only the "
               "entropy-coding stages see other symbol statistics than with trained weights)")
    if config.model_dir is not None:
        weights = (f"(a) uses the exported model {config.model_dir}; the torch models, (b) included, are "
                   "randomly initialised at the same size")
    return [weights,
            "the serial baseline codes each latent position as its own IndexedCoder payload (the coder needs "
            "all indexes of a call up front), so its byte counts include one flushed word or so per position",
            "times are wall clock on a CPU; medians over repeats, then means over images"]


# ---------------------------------------------------------------------------------------------
# Reporting


def _ms(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:,.1f}"


def _stage_table(codecs: dict[str, dict[str, Any]], which: str) -> list[str]:
    """Rows = stages (in first-seen order), columns = codecs; blank where a codec has no such stage."""
    key = f"{which}_ms"
    stages = list(dict.fromkeys(s for c in codecs.values() for s in c[f"{which}_stages"]))
    names = list(codecs)
    lines = ["| stage (ms) | " + " | ".join(codecs[n]["label"] for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    for stage in stages + ["total"]:
        cells = [_ms(codecs[n][key].get(stage)) for n in names]
        label = f"**{stage}**" if stage == "total" else stage
        lines.append(f"| {label} | " + " | ".join(f"**{c}**" if stage == "total" and c else c for c in cells) + " |")
    return lines


def format_markdown(report: dict[str, Any], rds: dict[str, dict[str, Any]] | None = None) -> str:
    cfg, mach = report["config"], report["machine"]
    ours = {k: v for k, v in report["codecs"].items() if v["group"] == "ckbd"}
    theirs = {k: v for k, v in report["codecs"].items() if v["group"] == "compressai"}
    lines = ["# Benchmark results", "",
             "Written by `ckbd bench codecs` (`python -m ckbd.tools.benchmark`); do not edit by hand.", "",
             f"- architecture: N={cfg['N']}, M={cfg['M']} for every codec"
             + (" (randomly initialised weights)" if cfg["random_weights"] else ""),
             f"- images: {len(cfg['images'])} ({', '.join(Path(p).name for p in cfg['images'][:6])}"
             + (", ..." if len(cfg["images"]) > 6 else "") + f"); size {_sizes(report)}",
             f"- threads: {cfg['threads']} (torch and ONNX Runtime intra-op); timed runs per image: {cfg['repeat']}",
             f"- machine: {mach.get('processor')}, {mach.get('cpu_count')} CPUs, {mach.get('platform')}; "
             f"Python {mach.get('python')}, torch {mach.get('torch')}, onnxruntime {mach.get('onnxruntime')}",
             f"- load average at start / end: {mach.get('loadavg_start')} / {mach.get('loadavg_end')}", "",
             "## Decoding latency per stage", "", *_stage_table(ours, "decode"), "",
             "## Encoding latency per stage", "", *_stage_table(ours, "encode"), ""]
    breakdown = report["codecs"].get("mbt2018-torch", {}).get("breakdown_ms")
    if breakdown:
        lines += [f"Inside the serial `context_decode`: networks (crop, context conv, entropy parameters, "
                  f"indexes) {_ms(breakdown.get('serial_params'))} ms, range decoding "
                  f"{_ms(breakdown.get('serial_coding'))} ms.", ""]
    lines += ["## Serial vs parallel context", ""]
    lines += [f"- {k.replace('_', ' ')}: **{v:.1f}x**" for k, v in report["ratios"].items()] or ["- (not measured)"]
    lines += ["", "\"decode\" compares whole decodes; \"context stages\" compares the serial `context_decode` with "
              "the checkerboard's parameter and entropy-decoding stages (anchor_params .. nonanchor_decode), "
              "the part the context schedule changes. The paper reports > 40x on a GPU.", "",
              "## CompressAI, same weights", ""]
    if theirs:
        lines += ["| codec | encode (ms) | decode (ms) |", "|---|---:|---:|"]
        lines += [f"| {c['label']} | {_ms(c['encode_ms'].get('total'))} | {_ms(c['decode_ms'].get('total'))} |"
                  for c in theirs.values()]
        lines.append("")
    lines += [n for n in report["notes"] if n.startswith("CompressAI")] + [""]
    if report.get("agreement_psnr_db"):
        lines += ["Reconstructions of the first image by implementations sharing weights (PSNR between them, dB):", ""]
        lines += [f"- {k}: {v}" for k, v in report["agreement_psnr_db"].items()] + [""]
    coder = report.get("coder")
    if coder:
        lines += ["## Entropy coder (one core, synthetic Gaussian latents)", "",
                  f"- {coder['n_symbols']:,} symbols: encode {coder['encode_msym_s']:.1f} M symbols/s, "
                  f"decode {coder['decode_msym_s']:.1f} M symbols/s, rate overhead {coder['overhead_pct']:.3f} %", ""]
    if rds:
        lines += ["## Rate-distortion (from `ckbd eval`)", ""]
        for name, rd in rds.items():
            lines += [f"### {name}", "", *_rd_lines(rd), ""]
    lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"] if not n.startswith("CompressAI")] + [""]
    return "\n".join(lines)


def _sizes(report: dict[str, Any]) -> str:
    first = next(iter(report["codecs"].values()), None)
    if not first:
        return "?"
    sizes = sorted({f"{i['width']}x{i['height']}" for i in first["images"]})
    return ", ".join(sizes)


def _rd_lines(rd: dict[str, Any]) -> list[str]:
    from ckbd.tools.rd_eval import family_bd_rate_lines

    lines = ["| codec | bpp | PSNR (dB) | MS-SSIM |", "|---|---:|---:|---:|"]
    for m in rd.get("models", []):
        lines.append(f"| {m['label']} | {m['bpp']:.4f} | {m['psnr']:.2f} | {m['ms_ssim']:.4f} |")
    comp = rd.get("comparisons", {})
    for row in comp.get("at_equal_bpp", []):
        deltas = [f"{k.split('_vs_')[1]} {row[k]:+.2f} dB" for k in row if k.startswith("delta_psnr_vs_") and row[k] is not None]
        if deltas:
            lines.append(f"\n{row['label']} at {row['bpp']:.4f} bpp vs Pillow: " + ", ".join(deltas))
    return lines + [f"\n{line}" for line in family_bd_rate_lines(comp, skip_missing=True)]


def write_plots(report: dict[str, Any], out_dir: Path, rds: dict[str, dict[str, Any]] | None = None) -> list[Path]:
    """Stage bars for decode and encode (ckbd and baselines), and one RD plot of every evaluated model
    (see :func:`combined_rd`)."""
    from ckbd.tools.plots import stage_bars

    out_dir.mkdir(parents=True, exist_ok=True)
    ours = {k: v for k, v in report["codecs"].items() if v["group"] == "ckbd"}
    written = []
    for which in ("decode", "encode"):
        stages = tuple(dict.fromkeys(s for c in ours.values() for s in c[f"{which}_stages"]))
        rows = {c["label"]: c[f"{which}_ms"] for c in ours.values()}
        path = out_dir / f"{which}_stages.png"
        cfg = report["config"]
        stage_bars(rows, stages, path, f"{which} latency per stage, N={cfg['N']} M={cfg['M']}, {cfg['threads']} threads")
        written.append(path)
    if rds:
        from ckbd.tools.rd_eval import plot_rd

        rd_report = combined_rd(rds)
        path = out_dir / "rd_psnr.png"
        plot_rd(rd_report, path)
        written.append(path)
    return written


def combined_rd(rds: dict[str, dict[str, Any]]) -> Any:
    """One RDReport of every evaluated model, the Pillow curves of the first evaluation. With several
    evaluations each keeps its own curve per architecture: they are different experiments (budgets)."""
    from ckbd.tools.rd_eval import RDPoint, RDReport

    def point(p: dict[str, Any], section: str = "") -> RDPoint:
        family = p.get("family", "")
        return RDPoint(p["label"], p["bpp"], p["psnr"], p["ms_ssim"],
                       family=f"{family} ({section})" if section and len(rds) > 1 else family)

    first = next(iter(rds.values()))
    models = [point(m, name) for name, rd in rds.items() for m in rd.get("models", [])]
    return RDReport(first.get("images", []), models,
                    {f: [point(p) for p in pts] for f, pts in first.get("curves", {}).items()})


def default_images(images: Path | None, count: int | None) -> list[Path]:
    """The image files to time: ``images`` (a folder or a file) or Kodak, the first ``count`` of them."""
    from ckbd.cli.batch import expand_inputs
    from ckbd.cli.options import default_kodak_dir
    from ckbd.runtime.imageio import IMAGE_SUFFIXES

    paths = expand_inputs([images if images is not None else default_kodak_dir()], IMAGE_SUFFIXES)
    return paths[:count] if count else paths


def _read_json(path: Path, what: str, keys: set[str]) -> dict[str, Any]:
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CkbdError(f"cannot read {what} {path}: {exc}") from None
    missing = keys - set(data) if isinstance(data, dict) else keys
    if missing:
        raise CkbdError(f"{path} is not {what} (missing {', '.join(sorted(missing))})")
    return data


def read_report(path: Path) -> dict[str, Any]:
    """A ``--json`` written by an earlier run, to re-render without timing anything again."""
    return _read_json(path, "a `ckbd bench codecs --json` report", {"config", "machine", "codecs", "ratios", "notes"})


def read_rd(path: Path) -> dict[str, Any]:
    """A ``ckbd eval --json`` result."""
    return _read_json(path, "a `ckbd eval --json` result", {"models", "curves"})


if __name__ == "__main__":
    from ckbd.cli.bench_codecs import main

    main()
