"""Peak memory and time of encoding/decoding large images, whole and tiled (``ckbd bench memory``).

Every measurement runs in its own child process, so that its peak resident set (``ru_maxrss``)
is its own, under a hard cap: an address-space limit (``RLIMIT_AS``) well above the cap and a
watchdog that kills the child once its resident set passes the cap. The commands (``ckbd bench memory
fit|run|roundtrip|stages|batch|render``, in :mod:`ckbd.cli.bench.memory`) call the functions here:

* ``fit``: per-pixel costs of each stage (ONNX Runtime CPU, one thread) at two sizes per model,
  fitted to the ``Linear`` coefficients of :data:`ckbd.runtime.memory.COSTS`;
* ``run``: time and peak RSS at 768x512, 1080p, 4K and 8K, whole and tiled, written to JSON and
  to the ``large-images`` section of ``docs/RESULTS.md`` (kept when ``ckbd bench codecs`` re-renders);
* ``roundtrip``: encode and decode one large image with the default (or a given) budget;
* ``stages``: the resident set before, during and after each stage of one encode and decode;
* ``batch``: ``ckbd decode`` of a folder with ``--jobs N`` against the sequential run;
* ``render``: the ``large-images`` section from the JSON files of the others.

Images are a Kodak photo resized (bicubic) to each size; model folders are given (the shipped
model by default; ``/tmp`` exports of random-weight models for other sizes).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

SIZES = {"768x512": (512, 768), "1080p": (1080, 1920), "4K": (2160, 3840), "8K": (4320, 7680)}
POLL_S = 0.05


# ---------------------------------------------------------------------------------------------
# The child: one job, one process


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _image(source: str, height: int, width: int) -> np.ndarray:
    from ckbd.runtime.imageio import read_image, resized

    return resized(read_image(Path(source), quiet=True), height, width)


def child(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job; report peak and base resident set (bytes) and seconds."""
    from ckbd.errors import MemoryBudgetError
    from ckbd.runtime import codec
    from ckbd.runtime.memory import MemoryBudget, plan_analysis, plan_synthesis

    kind, model_dir = job["kind"], job.get("model")
    cls = codec.Encoder if kind in ("encode", "encode_entropy", "analysis") else codec.Decoder
    coder = cls.open(Path(model_dir) if model_dir else None, threads=1)
    coder.model.memory = MemoryBudget(job.get("max_memory"))
    if job.get("max_pixels"):  # the pixel limit is a separate guard; raised only where asked
        codec.bs.DEFAULT_MAX_PIXELS = coder.max_pixels = job["max_pixels"]
    height, width = job["height"], job["width"]
    if kind in ("analysis", "latent_synthesis"):
        return _stage(coder, kind, height, width)
    payload: Any = _image(job["source"], height, width) if cls is codec.Encoder else Path(job["stream"]).read_bytes()
    if kind == "encode_entropy":  # everything but the analysis transform: random outputs in its place
        codec.analyse_image = lambda run, model, image: _random_analysis(coder.manifest, height, width)  # type: ignore[attr-defined]
    if kind == "decode_entropy":  # everything but the synthesis transform
        codec.synthesise_image = lambda run, model, a, n, h, w: np.full((h, w, 3), 1, np.uint8)  # type: ignore[attr-defined]
    m = coder.manifest
    planner = plan_analysis if cls is codec.Encoder else plan_synthesis
    budget = coder.model.memory.total()  # what this job plans with (the default: 1.5 GiB, capped by free memory)
    try:
        found = planner(m.arch, m.N, m.M, height, width, coder.model.memory)
        plan = "whole" if found.whole else f"tiles {found.core_rows}x{found.core_cols} +{found.halo}"
    except MemoryBudgetError as exc:
        plan = str(exc)
    base = _rss()
    timer = PeakTimer() if job.get("stage_peaks") else None
    start, cpu = time.perf_counter(), time.process_time()
    if cls is codec.Encoder:
        data = coder.encode_detailed(payload, timer=timer, estimate=False).data
        if job.get("stream"):
            Path(job["stream"]).write_bytes(data)
    else:
        image = coder.decode_detailed(payload, timer=timer).image
        if job.get("save"):
            np.save(job["save"], image)
    peak = max([_peak(), *(row["peak"] for row in timer.rows)]) if timer else _peak()  # resets clear ru_maxrss
    return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu, "peak": peak,
            "base": base, "plan": plan, "budget_bytes": budget, **({"stages": timer.rows} if timer else {})}


class PeakTimer:
    """A stage timer that also records each stage's resident set before, at its peak, and after.

    The kernel's peak counter is reset as a stage starts, so each peak is that stage's own (the reset
    clears ``ru_maxrss`` too, so a job timed this way reports the largest stage peak as its own).
    """

    def __init__(self) -> None:
        self.times_ms: dict[str, float] = {}
        self.rows: list[dict[str, Any]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        from ckbd.runtime.memory import peak_resident_bytes, reset_peak

        before, start = _rss(), time.perf_counter()
        reset_peak()
        try:
            yield
        finally:
            self.times_ms[name] = self.times_ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3
            self.rows.append({"stage": name, "before": before, "peak": peak_resident_bytes(), "after": _rss(),
                              "seconds": time.perf_counter() - start})


def stage_peaks(height: int, width: int, model: str, max_memory: str | None, cap: int,
                entropy_only: bool) -> dict[str, Any]:
    """Per-stage resident set of one encode and one decode: where a job's peak is.

    ``entropy_only`` replaces the transforms by random latents (the coder's costly case), as ``fit``
    does, so that the whole-latent stages of a large image are measured in a minute.
    """
    from ckbd.runtime.memory import parse_memory

    with tempfile.TemporaryDirectory(prefix="ckbd-stages-") as tmp:
        job = {"model": snapshot(model, Path(tmp)), "height": height, "width": width, "source": _source(),
               "stream": str(Path(tmp) / "x.ckbd"), "stage_peaks": True,
               "max_memory": parse_memory(max_memory) if max_memory else None}
        result: dict[str, Any] = {"height": height, "width": width, "budget": max_memory or "default",
                                  "entropy_only": entropy_only}
        for kind in ("encode", "decode"):
            result[kind] = run_capped({**job, "kind": f"{kind}_entropy" if entropy_only else kind}, cap)
            print(json.dumps({kind: result[kind]}), flush=True)
            if "error" in result[kind]:
                break
    return result


def _random_analysis(m: Any, height: int, width: int) -> dict[str, np.ndarray]:
    """Analysis outputs of the right shapes: latents N(0, 3), the range coder's costly case (many
    distinct, large symbols), allocated inside the measured job as the real ``y`` is."""
    rng = np.random.default_rng(0)
    shape = (1, m.M, -(-height // 64) * 4, -(-width // 64) * 2)
    return {"y_anchor": rng.normal(0, 3, shape).astype(np.float32),
            "y_nonanchor": rng.normal(0, 3, shape).astype(np.float32),
            "z_symbols": rng.integers(-2, 3, (1, m.N, -(-height // 64), -(-width // 64)), dtype=np.int32)}


def _stage(coder: Any, stage: str, height: int, width: int) -> dict[str, Any]:
    m = coder.manifest
    runner = coder.model.runner(stage)
    base = _rss()
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    if stage == "analysis":
        feeds = {"image": rng.random((1, 3, height, width), dtype=np.float32)}
    else:
        half = (1, m.M, height // 16, width // 32)
        feeds = {"anchor_hat": rng.normal(0, 3, half).astype(np.float32),
                 "nonanchor_hat": rng.normal(0, 3, half).astype(np.float32)}
    runner.run(feeds)
    return {"seconds": time.perf_counter() - start, "peak": _peak(), "base": base}


# ---------------------------------------------------------------------------------------------
# The parent: capped child processes


def run_capped(job: dict[str, Any], cap: int) -> dict[str, Any]:
    """Run ``job`` in a child killed once its resident set passes ``cap`` bytes."""
    def limit() -> None:
        hard = cap + (8 << 30)  # address space: ONNX Runtime reserves more than it touches
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = "from ckbd.tools.bench.memory.run import child_main; child_main()"
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(job)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit, env=env)
    killed = False
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            rss = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            rss = 0
        if rss > cap:
            proc.kill()
            killed = True
        time.sleep(POLL_S)
    out, err = proc.communicate()
    if killed:
        return {"error": f"over the {cap >> 20} MB cap"}
    if proc.returncode != 0:
        return {"error": (err.strip().splitlines() or ["failed"])[-1]}
    return dict(json.loads(out.strip().splitlines()[-1]))


def snapshot(model: str, folder: Path) -> str:
    """A private copy of a model folder (the shipped one for ''): a model re-exported while the
    benchmark runs must not split an encode from its decode."""
    import shutil

    from ckbd.runtime.package import default_model_dir

    target = folder / "model"
    if not target.exists():
        shutil.copytree(Path(model) if model else default_model_dir(), target)
    return str(target)


def _padded(height: int, width: int) -> int:
    return (-(-height // 64) * 64) * (-(-width // 64) * 64)


FIT_TERMS = ("analysis", "latent_synthesis", "encode_entropy", "decode_entropy")
FIT_SIZES = ((512, 768), (1024, 1536))


def fit(models: list[str], cap: int, sizes: tuple[tuple[int, int], ...] = FIT_SIZES,
        terms: tuple[str, ...] = FIT_TERMS) -> dict[str, Any]:
    """Bytes per pixel of each cost term at two sizes (rows, cols) per model: slope and intercept.

    The entropy terms are best fitted at the sizes that need a budget (4K, 8K): below the C heap's
    mmap threshold, freed buffers stay resident and small sizes overstate the slope.
    """
    from ckbd.runtime.manifest import Manifest
    from ckbd.runtime.package import default_model_dir

    rows = []
    for model in models:
        manifest = Manifest.load(Path(model) if model else default_model_dir())
        for kind in terms:
            stream = None
            if kind == "decode_entropy":
                stream = tempfile.mktemp(suffix=".ckbd")
            points = []
            for height, width in sizes:
                job = {"kind": kind, "model": model, "height": height, "width": width, "source": _source()}
                if stream:  # coded from random latents: the range decoder's worst case, and no analysis to wait for
                    run_capped({**job, "kind": "encode_entropy", "stream": stream}, cap)
                    job["stream"] = stream
                r = run_capped(job, cap)
                points.append((_padded(height, width), r["peak"] - r["base"]))
            (p0, b0), (p1, b1) = points
            slope = (b1 - b0) / (p1 - p0)
            rows.append({"model": model or "shipped", "arch": manifest.arch, "N": manifest.N, "M": manifest.M,
                         "entropy_params": manifest.entropy_params,
                         "term": kind, "bytes_per_pixel": slope, "intercept": b0 - slope * p0,
                         "at_sizes": [b / p for p, b in points], "sizes": [f"{w}x{h}" for h, w in sizes]})
            print(json.dumps(rows[-1]), flush=True)
    return {"points": rows}


def _source() -> str:
    kodak = Path("../shared/data/kodak/kodim01.png")
    return str(kodak if kodak.is_file() else Path(__file__).resolve().parents[1] / "tests/data/kodim23_crop.png")


def _estimate(model: str, kind: str, height: int, width: int) -> int:
    """Whole-image job bytes from the fitted costs (for the runs too large to make here)."""
    from ckbd.runtime.manifest import Manifest
    from ckbd.runtime.memory import costs
    from ckbd.runtime.package import default_model_dir

    m = Manifest.load(Path(model) if model else default_model_dir())
    c = costs(m.arch)
    term = (c.analysis(m.N), c.encode_entropy(m.M)) if kind == "encode" else (c.latent_synthesis(m.N),
                                                                            c.decode_entropy(m.M))
    return int(c.overhead + sum(term) * _padded(height, width))


def run_sizes(models: dict[str, tuple[str, str]], sizes: list[str], cap: int, whole_limit: int) -> dict[str, Any]:
    """Time and peak RSS per model, size, direction, whole and tiled (tiled: the model's budget).

    A whole-image run whose estimate exceeds ``whole_limit`` is not made; its estimate is reported.
    Decodes read the tiled encoder's stream; where both ran, the whole and tiled streams are
    compared byte for byte and the decoded images pixel for pixel.
    """
    from ckbd.runtime.memory import parse_memory

    rows = []
    with tempfile.TemporaryDirectory(prefix="ckbd-mem-") as tmp:
        for label, (source_model, budget) in models.items():
            model = snapshot(source_model, Path(tmp) / label.replace("/", "_"))
            for size in sizes:
                height, width = SIZES[size]
                files = {mode: Path(tmp) / f"{mode}.ckbd" for mode in ("tiled", "whole")}
                images = {mode: Path(tmp) / f"{mode}.npy" for mode in ("tiled", "whole")}
                for path in (*files.values(), *images.values()):
                    path.unlink(missing_ok=True)
                for kind in ("encode", "decode"):
                    for mode, max_memory in (("tiled", budget), ("whole", None)):
                        row: dict[str, Any] = {"model": label, "size": size, "pixels": height * width,
                                               "kind": kind, "mode": mode, "budget": max_memory}
                        estimate = _estimate(model, kind, height, width)
                        if mode == "whole" and estimate > whole_limit:
                            row.update(estimated_job_bytes=estimate, skipped="estimate over the limit for this machine")
                        else:
                            job = {"kind": kind, "model": model, "height": height, "width": width, "source": _source(),
                                   "stream": str(files[mode] if kind == "encode" else files["tiled"]),
                                   "save": str(images[mode]),
                                   "max_memory": parse_memory(max_memory) if max_memory else 1 << 50}
                            row.update(run_capped(job, cap))
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                rows.append({"model": label, "size": size, **_agreement(files, images)})
                print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows, "load_after": os.getloadavg()}


def _agreement(files: dict[str, Path], images: dict[str, Path]) -> dict[str, Any]:
    """Whole vs tiled: identical streams? largest grey-level difference of the decoded images?"""
    out: dict[str, Any] = {"kind": "agreement"}
    if all(p.is_file() for p in files.values()):
        out["identical_streams"] = files["tiled"].read_bytes() == files["whole"].read_bytes()
    if all(p.is_file() for p in images.values()):
        a, b = (np.load(images[m]).astype(np.int16) for m in ("tiled", "whole"))
        out["max_grey_difference"] = int(np.abs(a - b).max())
        out["differing_values"] = int(np.count_nonzero(a != b))
    return out


def _ckbd(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "ckbd", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ckbd {args[0]} failed: {done.stderr.strip()}")


def run_batch_throughput(images: Path, jobs: int, threads: int) -> dict[str, Any]:
    """``ckbd decode`` of ``images`` (encoded first): sequential vs ``--jobs``, same thread total."""
    with tempfile.TemporaryDirectory(prefix="ckbd-batch-") as tmp:
        streams, model = Path(tmp) / "streams", snapshot("", Path(tmp))
        _ckbd("encode", str(images), "-o", str(streams), "-q", "--threads", str(threads), "--model", model)
        result: dict[str, Any] = {"files": len(list(streams.glob("*.ckbd"))), "threads": threads, "jobs": jobs,
                                  "load_before": os.getloadavg()}
        for label, extra in (("sequential", []), (f"jobs{jobs}", ["--jobs", str(jobs)])):
            out = Path(tmp) / label
            start = time.perf_counter()
            _ckbd("decode", str(streams), "-o", str(out), "--threads", str(threads), "-q", "--model", model, *extra)
            result[f"{label}_s"] = time.perf_counter() - start
        same = all((Path(tmp) / "sequential" / p.name).read_bytes() == p.read_bytes()
                   for p in (Path(tmp) / f"jobs{jobs}").iterdir())
    result["identical_outputs"] = same
    result["speedup"] = result["sequential_s"] / result[f"jobs{jobs}_s"]
    result["load_after"] = os.getloadavg()
    return result


def roundtrip(height: int, width: int, model: str, max_memory: str | None, cap: int,
              max_pixels: int | None = None) -> dict[str, Any]:
    """Encode and decode one ``height x width`` image (default budget unless ``max_memory``); PSNR."""
    from ckbd.runtime.memory import parse_memory

    with tempfile.TemporaryDirectory(prefix="ckbd-rt-") as tmp:
        job = {"model": snapshot(model, Path(tmp)), "height": height, "width": width, "source": _source(),
               "stream": str(Path(tmp) / "x.ckbd"), "save": str(Path(tmp) / "x.npy"),
               "max_memory": parse_memory(max_memory) if max_memory else None, "max_pixels": max_pixels}
        result: dict[str, Any] = {"height": height, "width": width, "budget": max_memory or "default",
                                  "max_pixels": max_pixels}
        for kind in ("encode", "decode"):
            result[kind] = run_capped({**job, "kind": kind}, cap)
            print(json.dumps({kind: result[kind]}), flush=True)
            if "error" in result[kind]:
                return result
        result["bytes"] = Path(job["stream"]).stat().st_size
        decoded = np.load(job["save"]).astype(np.float32)
        error = float(np.mean((decoded - _image(job["source"], height, width)) ** 2))
        result["psnr"] = 10 * np.log10(255.0**2 / error)
    return result


def with_machine(result: dict[str, Any], json_path: Path | None) -> dict[str, Any]:
    """``result`` with the machine's description; also written to ``json_path`` when given."""
    from ckbd.tools.report.machine import machine_info

    result["machine"] = machine_info()
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2))
    return result


def child_main() -> None:
    """Entry point of a measurement child (``run_capped`` starts it): the job is argv's last item."""
    print(json.dumps(child(json.loads(sys.argv[-1]))))
