"""``ckbd check gpu``: the one check an offline GPU host runs, end to end, into one JSON report.

The command (:mod:`ckbd.cli.check.gpu`) calls :func:`run_check`, which runs these parts in order,
each within its share of ``--budget-s`` (:data:`DEADLINES`) and each skipped, with the reason in
the report, when what it needs is missing:

- ``known_answers``: the shipped model's known-answer vectors on every backend and device
  (:mod:`.verdicts`);
- ``interop``: Kodak (or ``--images``) encoded by ONNX Runtime on the CPU and decoded by torch on
  the device, and the reverse, with identical symbols (:mod:`.interop`);
- ``latency``: per-stage decode latency (CUDA events) of the shipped and a paper-size model at
  each size and synthesis precision (:mod:`.latency`, :mod:`.models`);
- ``compressai``: the same decode through CompressAI's checkerboard model on the same device, and
  the ratio (:mod:`.compressai_decode`);
- ``throughput``: images/s over all the images, one by one and pipelined (:mod:`.throughput`);
- ``backends``: every GPU backend present (TensorRT, ONNX Runtime CUDA, torch) against the CPU,
  flips per index stage (:mod:`.backends`).

The torch parts run on ``--device`` (default ``cuda``); ``--include-cpu`` runs everything on the
CPU instead (a dry run of the whole check on a machine without a GPU) and adds the CPU backends to
the comparison. The check passes when the known answers and the interop ran and no part failed.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ckbd.errors import CkbdError, require
from ckbd.tools.check.gpu.compare import Reference, make_reference, one_line
from ckbd.tools.check.gpu.latency import LatencyPlan, Size
from ckbd.tools.check.gpu.models import CheckedModel

CHECKOUT_IMAGES = Path(__file__).resolve().parents[3] / "tests" / "data"
DEFAULT_SIZES = (Size(768, 512), Size(1920, 1080))
DEFAULT_PRECISIONS = ("fp32", "fp16")
PAPER_SIZE = (192, 320)  # N, M of the paper's high-rate model
#: By what share of the budget (counted from the start) each part must be done, in running order.
DEADLINES = {"known_answers": 0.15, "interop": 0.40, "latency": 0.70, "compressai": 0.78, "throughput": 0.88,
             "backends": 1.0}
#: The parts whose claims are the check's point (exact on the device, streams interchangeable):
#: skipped, for whatever reason, they fail it; the others may be skipped.
REQUIRED = ("known_answers", "interop")
#: The image the latency rows are resized from, when the image folder has it (768x512 itself).
LATENCY_SOURCE = "kodim23"


@dataclass
class GpuCheckConfig:
    """The command's options; ``model_dir`` None is the shipped model, ``images`` None is Kodak
    (``../shared/data/kodak``) when present, else the checkout's ``tests/data``."""

    model_dir: Path | None = None
    images: Path | None = None
    checkpoint: Path | None = None
    device: str = "cuda"
    limit: int | None = None
    repeat: int = 3
    budget_s: float = 360.0
    no_build: bool = False
    include_cpu: bool = False
    sizes: tuple[Size, ...] = DEFAULT_SIZES
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    paper: tuple[int, int] | None = PAPER_SIZE

    @property
    def on_cpu(self) -> bool:
        """``--include-cpu`` or ``--device cpu``: everything on the CPU, CPU backends compared too."""
        return self.include_cpu or self.device == "cpu"


@dataclass
class GpuCheckReport:
    """Every part's dict (``skipped`` None when it ran, else why not); :meth:`to_dict` is the JSON."""

    device: str
    environment: dict[str, str]
    inputs: dict[str, Any]
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0

    def failed(self) -> list[str]:
        """Parts that failed, and required parts that did not run."""
        missing = [name for name in REQUIRED if self.parts.get(name, {}).get("skipped", "not run") is not None]
        return missing + [name for name, part in self.parts.items()
                          if name not in missing and (part.get("error") or part.get("ok") is False)]

    @property
    def ok(self) -> bool:
        return not self.failed()

    def failure(self) -> str:
        """Why the check failed, in one line ('' when it passed)."""
        reasons = []
        for name in self.failed():
            part = self.parts.get(name, {"skipped": "not run"})
            row_error = next((f"{r.get('model', '')} {r.get('size', '')}: {r['error']}".replace("  ", " ")
                              for r in part.get("rows", []) if r.get("error")), None)
            skipped = f"skipped: {part['skipped']}" if part.get("skipped") else None
            why = part.get("error") or part.get("failure") or row_error or skipped or "see the report"
            reasons.append(f"{name} ({why})")
        return "failed: " + "; ".join(reasons) if reasons else ""

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "failed": self.failed(), "failure": self.failure(), "device": self.device, "environment": self.environment,
                "inputs": self.inputs, **self.parts, "seconds": self.seconds}


def default_images() -> Path:
    from ckbd.data_paths import SHARED_DATA

    kodak = SHARED_DATA / "kodak"
    return kodak if kodak.is_dir() else CHECKOUT_IMAGES


def load_images(folder: Path, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    from ckbd.runtime.imageio import find_images, read_image

    return [(path.name, read_image(path, quiet=True)) for path in find_images(folder, limit, what="image")]


def resolve_device(config: GpuCheckConfig) -> str:
    """The torch device the check runs on; one line (exit 1) when it is not here."""
    require("torch", "export", "ckbd check gpu (torch runs the device parts)")
    from ckbd.export.torch_device import torch_device

    return str(torch_device("cpu" if config.on_cpu else config.device))


def environment(device: str) -> dict[str, str]:
    """Versions of everything that decides the numbers, as far as it is installed."""
    import onnxruntime as ort
    import torch

    from ckbd import __version__
    from ckbd.tools.check.gpu.targets import tensorrt_missing

    env = {"ckbd": __version__, "python": platform.python_version(), "machine": platform.platform(),
           "onnxruntime": f"{ort.__version__} ({', '.join(ort.get_available_providers())})",
           "torch": f"{torch.__version__} (CUDA {torch.version.cuda})"}
    try:  # fp32 convolutions on CUDA use TF32 where cuDNN may: it decides what "fp32" synthesis means
        env["torch_tf32"] = (f"cudnn {torch.backends.cudnn.allow_tf32}, "
                             f"matmul {torch.backends.cuda.matmul.allow_tf32}")
    except RuntimeError:  # the process set them through torch's per-backend names
        env["torch_tf32"] = f"cudnn conv {torch.backends.cudnn.conv.fp32_precision}"  # type: ignore[attr-defined]
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        env["gpu"] = f"{props.name}, {props.total_memory >> 20} MiB, compute capability {props.major}.{props.minor}"
    if tensorrt_missing() is None:
        from ckbd.engines import tensorrt_version

        env["tensorrt"] = tensorrt_version()
    return env


class _Steps:
    """The progress bar over the whole check, one step per image, row or run."""

    def __init__(self, total: int) -> None:
        from ckbd.progress import progress

        self.bar = progress(total=total, desc="gpu check", unit="step")

    def tick(self, what: str) -> None:
        self.bar.set_postfix_str(what)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def run_check(config: GpuCheckConfig, log: Callable[[str], None] = lambda line: None) -> GpuCheckReport:
    """Run every part; ``log`` gets the environment line first. Raises only for unusable inputs."""
    from ckbd.runtime.codec import Decoder, Encoder

    started = time.monotonic()
    device = resolve_device(config)
    folder = config.images or default_images()
    images = load_images(folder, config.limit)
    env = environment(device)
    log(" | ".join(f"{k} {v}" for k, v in env.items()))
    report = GpuCheckReport(device, env, {"images": str(folder), "count": len(images),
                                          "names": [name for name, _ in images], "budget_s": config.budget_s})
    latency_plan = LatencyPlan(config.sizes, config.precisions, config.repeat, device)
    cells = len(config.sizes) * (1 + len(config.precisions))  # per model: latency rows and CompressAI sizes
    steps = _Steps(2 * len(images) + 4 + 2 * cells + 3)
    deadline = {name: started + share * config.budget_s for name, share in DEADLINES.items()}
    encoder, decoder = Encoder.open(config.model_dir), Decoder.open(config.model_dir)  # ONNX Runtime, CPU
    try:
        _run_parts(config, report, images, latency_plan, steps, deadline, encoder, decoder)
    finally:
        steps.close()
        encoder.close()
        decoder.close()
    report.seconds = round(time.monotonic() - started, 1)
    return report


def _run_parts(config: GpuCheckConfig, report: GpuCheckReport, images: list[tuple[str, np.ndarray]],
               plan: LatencyPlan, steps: _Steps, deadline: dict[str, float], encoder: Any, decoder: Any) -> None:
    from ckbd.tools.check.gpu.models import paper_model, shipped_model

    device, parts = report.device, report.parts
    begin = time.monotonic()
    references, unusable = _references(images, encoder, decoder, steps)
    report.inputs["references_s"] = round(time.monotonic() - begin, 1)
    report.inputs["not_coded_on_cpu"] = unusable
    shipped, no_torch = _attempt(lambda: shipped_model(config.model_dir, config.checkpoint))
    models: list[CheckedModel] = [shipped] if shipped else []
    report.inputs["models"] = {"shipped": shipped.describe() if shipped else {"skipped": no_torch}}
    if config.paper is None:
        report.inputs["models"]["paper"] = {"skipped": "--paper-size none"}
    else:
        n, m = config.paper
        paper, no_paper = _attempt(lambda: paper_model(n, m, [img for _, img in images]))
        report.inputs["models"]["paper"] = paper.describe() if paper else {"skipped": no_paper}
        models += [paper] if paper else []

    def part(name: str, needs: str | None, run: Callable[[], dict[str, Any]]) -> None:
        if needs is not None:
            parts[name] = {"skipped": needs}
        elif time.monotonic() > deadline[name]:
            parts[name] = {"skipped": f"time budget spent ({config.budget_s:g} s, --budget-s)"}
        else:
            begin = time.monotonic()
            try:
                parts[name] = run()
            except Exception as exc:  # one part failing must not cost the others
                parts[name] = {"skipped": None, "ok": False, "error": one_line(exc)}
            parts[name]["seconds"] = round(time.monotonic() - begin, 1)

    no_shipped = None if shipped else f"no torch model for the package: {no_torch}"
    part("known_answers", None, lambda: _verdicts(config, device, steps))
    part("interop", no_shipped or (None if references else "no image could be coded on the CPU"),
         lambda: _interop(references, decoder, shipped, device, deadline["interop"], steps))  # type: ignore[arg-type]
    source = _latency_source(images)
    part("latency", None if models else "no torch model to time",
         lambda: _latency(models, source, plan, deadline["latency"], steps))
    latency_rows = parts["latency"].get("rows", [])
    part("compressai", None if models else "no torch model to compare",
         lambda: _compressai(models, source, config, device, latency_rows, deadline["compressai"], steps))
    part("throughput", None if models and references else "no torch model or no CPU-coded image",
         lambda: _throughput(models, references, device, steps))
    part("backends", None if references else "no image could be coded on the CPU",
         lambda: _backends(config, images, references, device, deadline["backends"], steps))


def _attempt(make: Callable[[], CheckedModel]) -> tuple[CheckedModel | None, str]:
    try:
        return make(), ""
    except Exception as exc:  # the parts that need it are skipped with this reason
        return None, one_line(exc)


def _references(images: list[tuple[str, np.ndarray]], encoder: Any, decoder: Any,
                steps: _Steps) -> tuple[list[Reference], dict[str, str]]:
    references, unusable = [], {}
    for name, image in images:
        try:
            references.append(make_reference(name, image, encoder, decoder))
        except CkbdError as exc:  # the image is left out; the CPU path has its own tests
            unusable[name] = one_line(exc)
        steps.tick(f"cpu reference {name}")
    return references, unusable


def _latency_source(images: list[tuple[str, np.ndarray]]) -> np.ndarray:
    return next((img for name, img in images if Path(name).stem == LATENCY_SOURCE), images[0][1])


def _verdicts(config: GpuCheckConfig, device: str, steps: _Steps) -> dict[str, Any]:
    from ckbd.tools.check.gpu.verdicts import run_verdicts

    return run_verdicts(config.model_dir, config.checkpoint, device, steps.tick)


def _interop(references: list[Reference], cpu_decoder: Any, shipped: CheckedModel, device: str, deadline: float,
             steps: _Steps) -> dict[str, Any]:
    from ckbd.runtime.codec import Decoder, Encoder
    from ckbd.tools.check.gpu.interop import run_interop
    from ckbd.tools.check.gpu.models import open_codec

    with open_codec(Encoder, shipped, device) as encoder, open_codec(Decoder, shipped, device) as decoder:
        return run_interop(references, cpu_decoder, encoder, decoder, deadline, steps.tick)


def _latency(models: list[CheckedModel], source: np.ndarray, plan: LatencyPlan, deadline: float,
             steps: _Steps) -> dict[str, Any]:
    from ckbd.tools.check.gpu.latency import run_latency

    return run_latency(models, source, plan, deadline, steps.tick)


def _compressai(models: list[CheckedModel], source: np.ndarray, config: GpuCheckConfig, device: str,
                latency_rows: list[dict[str, Any]], deadline: float, steps: _Steps) -> dict[str, Any]:
    from ckbd.tools.check.gpu.compressai_decode import run_compressai

    return run_compressai(models, source, config.sizes, device, config.repeat, latency_rows, deadline, steps.tick)


def _throughput(models: list[CheckedModel], references: list[Reference], device: str,
                steps: _Steps) -> dict[str, Any]:
    from ckbd.runtime.codec import Decoder, Encoder
    from ckbd.tools.check.gpu.models import open_codec
    from ckbd.tools.check.gpu.throughput import run_throughput

    rows = []
    for checked in models:
        if checked.name == "shipped":
            streams = [ref.data for ref in references]  # the CPU encoder's
        else:
            with open_codec(Encoder, checked, device) as encoder:
                streams = [encoder.encode(ref.image) for ref in references]
        rows.append(run_throughput(checked.name, streams, partial(open_codec, Decoder, checked, device), device))
        steps.tick(f"throughput {checked.name}")
    return {"skipped": None, "ok": all("error" not in r for r in rows), "rows": rows}


def _backends(config: GpuCheckConfig, images: list[tuple[str, np.ndarray]], references: list[Reference],
              device: str, deadline: float, steps: _Steps) -> dict[str, Any]:
    from ckbd.runtime.package import ModelPackage
    from ckbd.tools.check.gpu.backends import run_backends

    model_dir = ModelPackage.open(config.model_dir).directory()
    index = int(device.partition(":")[2] or 0)
    result = run_backends(model_dir, images, references, index, config.checkpoint, config.on_cpu,
                          config.no_build, config.repeat, max(0.0, deadline - time.monotonic()))
    steps.tick("backends")
    return result.to_dict()
