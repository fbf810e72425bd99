"""Op-by-op profile of one stage graph on ONNX Runtime's CPU provider, and its GFLOP/s.

Why: a stage's wall time says how slow it is, not why. ONNX Runtime's own profiler gives the time of
every kernel it ran, *after* its graph optimisations (layout conversions it inserted included:
``ReorderInput``/``ReorderOutput`` are the NCHWc blocked-layout conversions around its fast
convolutions, ``Transpose`` around int8 ``QLinearConv`` the NHWC ones), so the share of time not
spent in convolutions is on the page. The graph's convolution work is counted from the ONNX file
(shape inference at the profiled size), so a stage's GFLOP/s can be set against the machine's
measured peak (:mod:`ckbd.tools.report.peak_probe`). An int8 graph is credited with its float graph's
operations ("GFLOP/s-equivalent").
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ckbd.errors import require

#: Ops that are the convolution work itself (the rest is overhead to be removed).
CONV_OPS = ("Conv", "ConvTranspose", "QLinearConv", "FusedConv", "ConvInteger")


@dataclass
class StageProfile:
    """One stage graph at one size: median wall time, kernel time per op type, convolution work."""

    stage: str
    precision: str
    file: str
    size: tuple[int, int]  # padded image (H, W)
    threads: int
    runs: int
    wall_ms: float
    gflop: float
    op_ms: dict[str, float] = field(default_factory=dict)  # per run, summed over nodes of a type
    op_count: dict[str, int] = field(default_factory=dict)

    @property
    def gflops(self) -> float:
        return self.gflop / (self.wall_ms / 1e3) if self.wall_ms else 0.0

    @property
    def conv_share(self) -> float:
        """Fraction of kernel time spent in convolutions."""
        total = sum(self.op_ms.values())
        conv = sum(v for k, v in self.op_ms.items() if k in CONV_OPS)
        return conv / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gflops": self.gflops, "conv_share": self.conv_share}


def _concrete(model: Any, feeds: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """Every tensor's shape when the graph is fed ``feeds`` (ONNX shape inference, data propagated)."""
    onnx = require("onnx", "calibration", "counting the operations of a graph")

    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in model.graph.input:
        for dim, size in zip(value.type.tensor_type.shape.dim, feeds[value.name].shape):
            dim.Clear()
            dim.dim_value = int(size)
    for value in model.graph.output:
        for dim in value.type.tensor_type.shape.dim:
            dim.Clear()
    del model.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {init.name: list(init.dims) for init in inferred.graph.initializer}
    for value in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input):
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    return shapes


def conv_gflop(model: Any, feeds: dict[str, np.ndarray]) -> float:
    """Multiply-adds x 2 of every Conv/ConvTranspose of ``model`` at the size of ``feeds``, in GFLOP.

    Conv: ``2 * |output| * Cin/groups * kh * kw``; ConvTranspose: ``2 * |input| * Cout/groups * kh * kw``
    (each input value is scattered through the whole kernel). Raises ValueError when a shape cannot
    be inferred, rather than under-counting.
    """
    shapes = _concrete(model, feeds)
    total = 0.0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        try:
            x, w, y = shapes[node.input[0]], shapes[node.input[1]], shapes[node.output[0]]
        except KeyError as exc:
            raise ValueError(f"no inferred shape for {exc} ({node.op_type} {node.name})") from None
        taps = int(np.prod(w[2:]))
        if node.op_type == "Conv":
            total += 2.0 * np.prod(y) * w[1] * taps
        else:
            total += 2.0 * np.prod(x) * w[1] * taps  # weight (Cin, Cout/groups, kh, kw)
    return total / 1e9


def _kernel_times(trace: Path, runs: int) -> tuple[dict[str, float], dict[str, int]]:
    """Per-run milliseconds and node count per op type, from an ORT profiler trace of ``runs`` runs."""
    events = json.loads(trace.read_text())
    ms: dict[str, float] = defaultdict(float)
    seen: dict[str, set[str]] = defaultdict(set)
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        op = event.get("args", {}).get("op_name", "?")
        ms[op] += event.get("dur", 0) / 1e3 / runs
        seen[op].add(event["name"])
    return dict(ms), {op: len(names) for op, names in seen.items()}


def _options(threads: int, profile_prefix: str | None = None) -> Any:
    from ckbd.runtime.ort_backend import OnnxRuntimeBackend

    options = OnnxRuntimeBackend(threads=threads).options  # exactly the production session settings
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def profile_graph(path: Path, feeds: dict[str, np.ndarray], stage: str, precision: str = "fp32",
                  threads: int = 2, runs: int = 5, flop_source: Path | None = None) -> StageProfile:
    """Median wall time of ``runs`` runs (after a warm-up), then the kernel times of ``runs`` more.

    Wall time comes from a session without the profiler (it adds a little per node); the op
    breakdown from a second, profiled session. ``flop_source`` is the graph whose convolutions are
    counted (the float graph, for an int8 file).
    """
    import onnxruntime as ort

    onnx = require("onnx", "calibration", "counting the operations of a graph")
    plain = ort.InferenceSession(str(path), _options(threads), providers=["CPUExecutionProvider"])
    plain.run(None, feeds)
    walls = []
    for _ in range(runs):
        start = time.perf_counter()
        plain.run(None, feeds)
        walls.append((time.perf_counter() - start) * 1e3)
    del plain
    with tempfile.TemporaryDirectory(prefix="ckbd-ops-") as tmp:
        profiled = ort.InferenceSession(str(path), _options(threads, str(Path(tmp) / "trace")),
                                        providers=["CPUExecutionProvider"])
        profiled.run(None, feeds)  # warm-up, counted out below
        for _ in range(runs):
            profiled.run(None, feeds)
        trace = Path(profiled.end_profiling())
        op_ms, op_count = _kernel_times(trace, runs + 1)
    gflop = conv_gflop(onnx.load(str(flop_source or path)), feeds)
    size = _image_size(stage, feeds)
    return StageProfile(stage, precision, Path(path).name, size, threads, runs, statistics.median(walls), gflop,
                        dict(sorted(op_ms.items(), key=lambda kv: -kv[1])), op_count)


def _image_size(stage: str, feeds: dict[str, np.ndarray]) -> tuple[int, int]:
    """The padded image size a stage's feeds stand for (latents are 1/16 of it, packed in halves)."""
    if "image" in feeds:
        return int(feeds["image"].shape[2]), int(feeds["image"].shape[3])
    first = next(iter(feeds.values()))
    return int(first.shape[2]) * 16, int(first.shape[3]) * 32


def format_profile(p: StageProfile, peak_gflops: float | None = None, top: int = 10) -> list[str]:
    """A heading line and the op table of one profile."""
    rate = f"{p.gflops:.0f} GFLOP/s" + (f" ({100 * p.gflops / peak_gflops:.0f} % of the measured peak)"
                                        if peak_gflops else "")
    lines = [f"{p.stage} {p.precision} ({p.file}), {p.size[1]}x{p.size[0]}, {p.threads} thread(s): "
             f"{p.wall_ms:.1f} ms, {p.gflop:.1f} GFLOP, {rate}; convolutions {100 * p.conv_share:.0f} % of kernel time",
             "", "| op | nodes | ms/run | share |", "|---|---:|---:|---:|"]
    total = sum(p.op_ms.values()) or 1.0
    for op, ms in list(p.op_ms.items())[:top]:
        lines.append(f"| {op} | {p.op_count.get(op, 0)} | {ms:.1f} | {100 * ms / total:.1f} % |")
    rest = sum(list(p.op_ms.values())[top:])
    if rest:
        lines.append(f"| (other) | | {rest:.1f} | {100 * rest / total:.1f} % |")
    return lines


# ---------------------------------------------------------------------------------------------
# A benchmark over model directories, precisions and stages (``ckbd bench ops``)


@dataclass
class OpsBench:
    image: str
    threads: int
    peak: dict[str, Any]
    profiles: list[dict[str, Any]] = field(default_factory=list)  # each: {"model": ..., **StageProfile}
    machine: dict[str, Any] = field(default_factory=dict)


def stage_inputs(model_dir: Path, stage: str, image: np.ndarray, threads: int) -> dict[str, np.ndarray]:
    """What the production pipeline feeds ``stage`` for ``image`` (the fp32 encoder's latents)."""
    from ckbd.calibration.data import stage_feeds

    return stage_feeds(stage, model_dir, threads)(image)


def bench_ops(models: list[Path], precisions: list[str], stages: list[str], image_path: Path,
              threads: int = 2, runs: int = 5) -> OpsBench:
    """Profile every (model, precision, stage) that exists; precisions a model lacks are skipped."""
    from ckbd.runtime.imageio import read_image
    from ckbd.runtime.manifest import Manifest
    from ckbd.tools.report.machine import machine_info
    from ckbd.tools.report.peak_probe import measure_peak

    image = read_image(image_path, quiet=True)
    import os

    machine = {**machine_info(), "load_average": [round(x, 2) for x in os.getloadavg()]}
    result = OpsBench(str(image_path), threads, measure_peak(threads).to_dict(), machine=machine)
    for model_dir in models:
        manifest = Manifest.load(model_dir)
        for stage in stages:
            feeds = stage_inputs(model_dir, stage, image, threads)
            float_path = manifest.graph_path(model_dir, stage)
            for precision in precisions:
                if precision != "fp32" and stage not in manifest.variants.get(precision, {}):
                    continue
                path = manifest.graph_path(model_dir, stage, precision)
                p = profile_graph(path, feeds, stage, precision, threads, runs, flop_source=float_path)
                result.profiles.append({"model": str(model_dir), **p.to_dict()})
    return result


def _as_profile(row: dict[str, Any]) -> StageProfile:
    keep = {k: v for k, v in row.items() if k in StageProfile.__dataclass_fields__}
    keep["size"] = tuple(keep["size"])
    return StageProfile(**keep)


def render_markdown(bench: OpsBench, command: str) -> str:
    """The RESULTS.md section: the peak, then one op table per profile."""
    peak = bench.peak
    lines = [f"Command: `{command}`", "",
             f"Machine: {bench.machine.get('processor', '?')}, {bench.threads} thread(s); measured peak "
             f"(ONNX Runtime {peak['size']}-square product, best run over at least 1.5 s): "
             f"{peak['fp32_gflops']:.0f} GFLOP/s fp32, "
             f"{peak['int8_gops']:.0f} GOP/s u8s8; load average at the start {bench.machine.get('load_average', '?')}. "
             f"Image: {Path(bench.image).name}.", ""]
    for row in bench.profiles:
        profile = _as_profile(row)
        peak_rate = peak["fp32_gflops"] if profile.precision != "int8" else peak["int8_gops"]
        lines += [f"**{Path(row['model']).name}**: " + format_profile(profile, peak_rate)[0],
                  *format_profile(profile, peak_rate)[1:], ""]
    return "\n".join(lines).rstrip() + "\n"
