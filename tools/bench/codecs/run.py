"""One benchmark run: build the models, time every codec on the same images, and report.

Every codec runs at the same architecture size and thread count on the same images: ckbd on ONNX
Runtime and on torch, the serial and context-free baselines, and, when CompressAI can be imported,
the same weights through CompressAI; then the entropy coder's throughput
(:mod:`ckbd.tools.bench.coder`). Latency does not depend on training, and trained baselines do not
exist yet, so the models are randomly initialised at the requested size (the paper's N=192, M=320
by default); the report says so. Only the entropy-coding stages see different symbol statistics
than with trained weights.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ckbd.errors import CkbdError
from ckbd.progress import progress as progress_bar
from ckbd.tools.bench.codecs.contenders import baseline_codecs, ckbd_codecs, random_model, torch_module
from ckbd.tools.bench.codecs.report import BenchReport, CodecResult, MachineInfo, RunSettings
from ckbd.tools.bench.codecs.timing import agreement, ratios, time_codec
from ckbd.tools.bench.coder import CoderBenchResult

PAPER_SIZE = (192, 320)
BASELINES = ("mbt2018", "mbt2018-mean")


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
    #: Time only these codecs (names as in the report, e.g. ckbd-onnxruntime); empty: all of them.
    only: tuple[str, ...] = ()


def run_benchmark(config: BenchConfig) -> BenchReport:
    """Everything the benchmark measures."""
    torch = torch_module()
    torch.set_num_threads(max(1, config.threads))
    notes: list[str] = []
    N, M = _size(config, notes)
    started = time.time()
    machine = machine_info(config.threads)
    ckbd_model = random_model("mbt2018-ckbd", N, M, config.seed)
    baselines = {arch: random_model(arch, N, M, config.seed + 1 + i) for i, arch in enumerate(BASELINES)}
    images = _load_images(config.images)
    with _exported(ckbd_model, config.model_dir) as model_dir:
        codecs = ckbd_codecs(ckbd_model, model_dir, config.threads) + baseline_codecs(baselines)
        compressai_note = "CompressAI comparison disabled (--no-compressai)"
        if config.compressai:
            from ckbd.tools.bench.codecs.compressai_reference import (
                compressai_codecs,
                compressai_models,
                load_compressai,
            )

            module, compressai_note = load_compressai()
            if module is not None:
                same = ckbd_model if config.model_dir is None else None
                codecs += compressai_codecs(compressai_models(module, same, baselines, N, M))
        notes.append(compressai_note)
        codecs = _selected(codecs, config.only)
        results: dict[str, CodecResult] = {}
        decoded: dict[str, np.ndarray] = {}
        with progress_bar(total=len(codecs) * len(images), desc="bench codecs", unit="image",
                          enabled=config.progress) as bar:
            for codec in codecs:
                bar.set_postfix_str(codec.name)
                results[codec.name], decoded[codec.name] = time_codec(codec, images, config.repeat,
                                                                      lambda: bar.update(1))
    coder = _coder(config.coder_symbols, config.progress)
    machine.loadavg_end = _loadavg()
    settings = RunSettings(N, M, [name for name, _ in images], config.threads, config.repeat, config.seed,
                           str(config.model_dir) if config.model_dir else None, config.model_dir is None,
                           round(time.time() - started, 1))
    return BenchReport(settings, machine, results, ratios(results),
                       notes=config.notes + notes + _load_notes(machine) + _standard_notes(config, list(results)),
                       agreement_psnr_db=agreement(decoded, config.model_dir is None), coder=coder)


def _selected(codecs: list[Any], only: Sequence[str]) -> list[Any]:
    """The codecs named in ``only`` (all when empty); an unknown name is an error listing the known ones."""
    if not only:
        return codecs
    known = [codec.name for codec in codecs]
    unknown = [name for name in only if name not in known]
    if unknown:
        raise CkbdError(f"unknown codec {', '.join(unknown)}; this run has {', '.join(known)}")
    return [codec for codec in codecs if codec.name in only]


def machine_info(threads: int) -> MachineInfo:
    """This machine, the versions of what is timed, and the load average now."""
    from importlib.metadata import PackageNotFoundError, version

    from ckbd.tools.report.machine import machine_info as coder_machine_info

    def installed(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"

    info = coder_machine_info()
    return MachineInfo(info["platform"], info["machine"], info["processor"], info["cpu_count"], info["python"],
                       info["numpy"], info["constriction"], installed("torch"), installed("onnxruntime"), threads,
                       _loadavg())


def _loadavg() -> list[float] | None:
    with contextlib.suppress(OSError):
        return [round(v, 2) for v in os.getloadavg()]
    return None


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


def _size(config: BenchConfig, notes: list[str]) -> tuple[int, int]:
    """N, M: from the model directory when given (the baselines must match it), else the flag."""
    if config.model_dir is None:
        return config.N, config.M
    from ckbd.runtime.manifest import Manifest

    manifest = Manifest.load(config.model_dir)
    if (manifest.N, manifest.M) != (config.N, config.M):
        notes.append(f"architecture size taken from {config.model_dir}: N={manifest.N}, M={manifest.M}")
    return manifest.N, manifest.M


def _coder(symbols: int, progress: bool) -> CoderBenchResult | None:
    if symbols <= 0:
        return None
    from ckbd.tools.bench.coder import run_coder_benchmark

    return run_coder_benchmark(symbols=symbols, progress=progress)


def _load_notes(machine: MachineInfo) -> list[str]:
    """A caveat when other work competed for the CPUs (load average above half the CPU count)."""
    loads = [(machine.loadavg_start or [0.0])[0], (machine.loadavg_end or [0.0])[0]]
    cpus = int(machine.cpu_count or 1)
    if max(loads) <= cpus / 2:
        return []
    return [f"the machine was busy while measuring (1-minute load average {loads[0]} at the start, {loads[1]} at "
            f"the end, on {cpus} CPUs): the times are inflated by contention, multi-threaded small operations "
            "(the serial loops) the most; compare codecs within this run only"]


def _standard_notes(config: BenchConfig, timed: Sequence[str]) -> list[str]:
    weights = ("all models are randomly initialised (latency does not depend on training; only the "
               "entropy-coding stages see other symbol statistics than with trained weights)")
    if config.model_dir is not None:
        weights = (f"(a) uses the exported model {config.model_dir}; the torch models, (b) included, are "
                   "randomly initialised at the same size")
    serial = ["the serial baseline codes each latent position as its own IndexedCoder payload (the coder needs "
              "all indexes of a call up front), so its byte counts include one flushed word or so per position"]
    return [weights, *(serial if "mbt2018-torch" in timed else []),
            "times are wall clock on a CPU; medians over repeats, then means over images"]
