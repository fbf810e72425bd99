"""Decode CPU-encoded streams on one backend and compare it with the CPU reference, stage by stage.

Every mismatch becomes a value in a column (a failed decode, a flipped scale index, a lower PSNR),
never an exception that ends the check: a first run on new hardware should show all of them. The
index-deciding stages are also run directly on the reference's own inputs, so a flipped index is
attributed to the stage that computed it instead of surfacing only as a failed decode later.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ckbd.runtime.backend import Runner, to_host
from ckbd.runtime.codec import Latents
from ckbd.runtime.metrics import psnr
from ckbd.runtime.stages import ANCHOR_PARAMS, HYPER_SYNTHESIS, INDEX_STAGES, NONANCHOR_PARAMS

#: The tensors compared per index stage: (indexes or None, the float output compared by max |diff|).
COMPARED: dict[str, tuple[str | None, str]] = {
    HYPER_SYNTHESIS: (None, "hyper"),
    ANCHOR_PARAMS: ("anchor_indexes", "anchor_means"),
    NONANCHOR_PARAMS: ("nonanchor_indexes", "nonanchor_means"),
}


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``, for a table cell and the JSON."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def finite_or_none(value: float | None) -> float | None:
    """JSON has no infinity: identical images (infinite PSNR) are reported as None."""
    return value if value is not None and math.isfinite(value) else None


# --- the CPU reference -----------------------------------------------------------------------


@dataclass
class Reference:
    """One image encoded and decoded on the CPU, with the CPU's index-stage inputs and outputs."""

    name: str
    image: np.ndarray
    data: bytes
    decoded: np.ndarray
    psnr: float
    feeds: dict[str, dict[str, np.ndarray]]  # stage -> its inputs, as the CPU decoder computed them
    outputs: dict[str, dict[str, np.ndarray]]  # stage -> the CPU's outputs for those inputs
    latents: Latents | None = None  # the CPU decode's symbols and latent halves


def make_reference(name: str, image: np.ndarray, encoder: Any, decoder: Any) -> Reference:
    """Encode and decode ``image`` on the CPU codecs; record what the index stages saw and gave."""
    data = bytes(encoder.encode(image))
    result = decoder.decode_detailed(data)
    runners: Mapping[str, Runner] = decoder.model.runners
    latents = result.latents
    hyper_out = _host(runners[HYPER_SYNTHESIS].run({"z_symbols": latents.z_symbols}))
    feeds = {
        HYPER_SYNTHESIS: {"z_symbols": latents.z_symbols},
        ANCHOR_PARAMS: {"hyper": hyper_out["hyper"]},
        NONANCHOR_PARAMS: {"hyper": hyper_out["hyper"], "anchor_hat": latents.anchor_hat},
    }
    outputs = {HYPER_SYNTHESIS: hyper_out}
    for stage in (ANCHOR_PARAMS, NONANCHOR_PARAMS):
        outputs[stage] = _host(runners[stage].run(feeds[stage]))
    decoded = np.asarray(result.image)
    return Reference(name, image, data, decoded, psnr(image, decoded), feeds, outputs, latents)


def _host(outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {name: np.asarray(to_host(value)) for name, value in outputs.items()}


# --- one backend -----------------------------------------------------------------------------


@dataclass
class StageComparison:
    """One index stage of a backend against the CPU, on the CPU's inputs."""

    flips: int | None = None  # scale indexes that differ (None: the stage has none, or failed)
    indexes: int = 0  # scale indexes compared
    max_abs_diff: float | None = None  # largest |difference| of the float output
    error: str = ""


@dataclass
class ImageOutcome:
    image: str
    decoded: bool
    error: str = ""
    psnr: float | None = None  # decoded image vs the original
    psnr_vs_cpu: float | None = None  # decoded image vs the CPU's decode (None when identical)
    identical_to_cpu: bool = False
    stages: dict[str, StageComparison] = field(default_factory=dict)


@dataclass
class TargetResult:
    """Everything measured for one backend; ``error`` set when it could not even be opened."""

    label: str
    routing: dict[str, str] = field(default_factory=dict)  # stage -> what ran it
    error: str = ""
    outcomes: list[ImageOutcome] = field(default_factory=list)
    samples_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    skipped: int = 0  # images left out to stay within the time budget

    @property
    def decoded(self) -> int:
        return sum(o.decoded for o in self.outcomes)

    def flips(self, stage: str) -> int | None:
        """Index flips of ``stage`` over all images; None when it was never compared."""
        counts = [o.stages[stage].flips for o in self.outcomes if stage in o.stages]
        known = [c for c in counts if c is not None]
        return sum(known) if known else None

    def stage_errors(self) -> list[str]:
        return sorted({f"{s}: {c.error}" for o in self.outcomes for s, c in o.stages.items() if c.error})

    def median_ms(self, key: str) -> float | None:
        values = self.samples_ms.get(key)
        return statistics.median(values) if values else None

    def mean_psnr(self, attribute: str) -> float | None:
        values = [getattr(o, attribute) for o in self.outcomes if o.decoded]
        known = [v for v in values if v is not None]
        return statistics.fmean(known) if known else None

    def passed(self, exact: bool) -> bool:
        """Opened, decoded and compared every image it ran, and (when ``exact``) flipped no index."""
        if self.error or self.decoded < len(self.outcomes) or self.stage_errors():
            return False
        return not exact or not any(self.flips(s) for s in INDEX_STAGES)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.label,
            "error": self.error,
            "routing": self.routing,
            "images_run": len(self.outcomes),
            "images_decoded": self.decoded,
            "images_skipped": self.skipped,
            "index_flips": {s: self.flips(s) for s in INDEX_STAGES},
            "stage_errors": self.stage_errors(),
            "psnr_mean": self.mean_psnr("psnr"),
            "psnr_vs_cpu_mean": self.mean_psnr("psnr_vs_cpu"),
            "median_ms": {key: self.median_ms(key) for key in self.samples_ms},
            "images": [_outcome_dict(o) for o in self.outcomes],
        }


def _outcome_dict(outcome: ImageOutcome) -> dict[str, Any]:
    return {
        "image": outcome.image,
        "decoded": outcome.decoded,
        "error": outcome.error,
        "psnr": finite_or_none(outcome.psnr),
        "psnr_vs_cpu": finite_or_none(outcome.psnr_vs_cpu),
        "identical_to_cpu": outcome.identical_to_cpu,
        "stages": {s: vars(c) for s, c in outcome.stages.items()},
    }


@dataclass
class Target:
    """A backend to check: ``open`` returns ``(decoder, close)``; raising means it is unusable."""

    label: str
    open: Callable[[], tuple[Any, Callable[[], None]]]
    gpu: bool = True  # False for the CPU backends a dry run adds


def describe_runner(runner: Any) -> str:
    """What executes a stage: an ONNX Runtime provider, a torch device, or the runner's class."""
    providers = getattr(runner, "providers", None)
    if providers:
        return f"onnxruntime:{str(providers[0]).removesuffix('ExecutionProvider').lower()}"
    device = getattr(runner, "device", None)
    if device is not None:
        return f"torch:{device}"
    return type(runner).__name__.removesuffix("Runner").lower()


def evaluate(target: Target, references: Sequence[Reference], repeat: int, deadline: float) -> TargetResult:
    """Decode every reference stream on ``target`` (until ``deadline``, a ``time.monotonic()``)."""
    result = TargetResult(target.label)
    try:
        decoder, close = target.open()
    except Exception as exc:  # a diagnostic run reports every failure instead of stopping
        result.error = one_line(exc)
        return result
    try:
        runners: Mapping[str, Runner] = decoder.model.runners
        result.routing = {stage: describe_runner(r) for stage, r in runners.items()}
        if references:
            _warm_up(decoder, references[0].data)
        for ref in references:
            if time.monotonic() > deadline and result.outcomes:  # at least one image per backend
                result.skipped += 1
                continue
            outcome = _decode(decoder, ref, max(1, repeat), result.samples_ms)
            outcome.stages = {s: compare_stage(runners, ref, s) for s in INDEX_STAGES if s in runners}
            result.outcomes.append(outcome)
    finally:
        close()
    return result


def _warm_up(decoder: Any, data: bytes) -> None:
    """Lazy initialisation (CUDA context, kernels, arenas) is no stage's latency."""
    try:
        decoder.decode(data)
    except Exception:  # the measured decode reports the failure
        pass


def _decode(decoder: Any, ref: Reference, repeat: int, samples: dict[str, list[float]]) -> ImageOutcome:
    from ckbd.runtime.profiling import StageTimer

    image: np.ndarray | None = None
    for _ in range(repeat):
        timer = StageTimer()
        start = time.perf_counter()
        try:
            image = np.asarray(decoder.decode_detailed(ref.data, timer).image)
        except Exception as exc:  # a wrong index shows up here as a checksum error
            return ImageOutcome(ref.name, False, one_line(exc))
        samples["decode"].append((time.perf_counter() - start) * 1e3)
        for stage, ms in timer.times_ms.items():
            samples[stage].append(ms)
    assert image is not None
    identical = bool(np.array_equal(image, ref.decoded))
    vs_cpu = None if identical else psnr(ref.decoded, image)
    return ImageOutcome(ref.name, True, "", psnr(ref.image, image), vs_cpu, identical)


def compare_stage(runners: Mapping[str, Runner], ref: Reference, stage: str) -> StageComparison:
    """Run ``stage`` on the CPU's inputs and count where its outputs differ from the CPU's."""
    index_name, float_name = COMPARED[stage]
    try:
        got = _host(runners[stage].run(ref.feeds[stage]))
        want = ref.outputs[stage]
        comparison = StageComparison()
        if index_name is not None:
            comparison.flips = int(np.count_nonzero(got[index_name] != want[index_name]))
            comparison.indexes = int(want[index_name].size)
        diff = np.abs(got[float_name].astype(np.float64) - want[float_name].astype(np.float64))
        comparison.max_abs_diff = float(diff.max()) if diff.size else 0.0
        return comparison
    except Exception as exc:  # e.g. a shape the engine was not built for
        return StageComparison(error=one_line(exc))
