"""The known-answer vectors of a model's integer stages, run on demand on one backend and device.

Runners are loaded unguarded (:func:`~ckbd.runtime.self_check.unguarded`): the report is about the
backend's own kernels, not about the CPU fallback a decoder would switch to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ckbd.errors import ModelError, UsageError
from ckbd.runtime.backend import Backend, create_backend
from ckbd.runtime.known_answers import StageScore, score_runner
from ckbd.runtime.package import ModelPackage, known_checkpoint
from ckbd.runtime.self_check import integer_stage, unguarded
from ckbd.runtime.stages import INDEX_STAGES


@dataclass
class KnownAnswerReport:
    model: str
    backend: str
    device: str
    scores: list[StageScore] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [score.stage for score in self.scores if not score.ok]

    def to_dict(self) -> dict[str, object]:
        return {"model": self.model, "backend": self.backend, "device": self.device,
                "ok": not self.failed, "stages": [score.to_dict() for score in self.scores]}


def open_backend(name: str, device: str, package: ModelPackage, checkpoint: Path | None) -> Backend:
    """The backend ``ckbd check known-answers --backend NAME --device DEVICE`` scores."""
    if name == "torch":
        checkpoint = checkpoint or (known_checkpoint(package.root) if package.root is not None else None)
        if checkpoint is None:
            raise UsageError(f"--backend torch needs the checkpoint {package.label} was exported from (--checkpoint)")
        return create_backend("torch", checkpoint=checkpoint, device=device)
    if name == "tensorrt":
        kind, _, index = device.partition(":")
        if kind != "cuda" or not (index.isdigit() or index == ""):
            raise UsageError(f"--backend tensorrt runs on cuda or cuda:N, not '{device}'")
        return create_backend("tensorrt", device=int(index or 0))
    return create_backend(name, device=device)


def run_check(model_dir: Path | None, backend: str = "onnxruntime", device: str = "cpu",
              checkpoint: Path | None = None) -> KnownAnswerReport:
    """Every integer stage's vectors through ``backend`` on ``device``; one score per stage."""
    package = ModelPackage.of(model_dir)
    if not any(integer_stage(package.manifest, stage) for stage in INDEX_STAGES):
        raise ModelError(f"{package.label} is on the float entropy-parameter path: it has no integer stages to check")
    answers = package.known_answers()  # checked against the manifest's sha256 first
    if answers is None:
        raise ModelError(f"{package.label} has no known-answer vectors; re-export it with this ckbd")
    report = KnownAnswerReport(package.label, backend, device)
    with open_backend(backend, device, package, checkpoint) as opened, unguarded():
        for stage in INDEX_STAGES:
            runner = opened.load(package, stage)
            report.scores.append(score_runner(runner, answers, stage))
    return report


def format_table(report: KnownAnswerReport) -> str:
    lines = [f"known answers of {report.model} on {report.backend} ({report.device})",
             f"  {'stage':<18} {'cases':>5} {'elements':>9} {'mismatches':>10} {'max abs diff':>12}"]
    for score in report.scores:
        lines.append(f"  {score.stage:<18} {score.cases:>5} {score.elements:>9} {score.mismatches:>10} "
                     f"{score.max_abs_diff:>12g}")
        lines += [f"    error: {error}" for error in score.errors]
    return "\n".join(lines)
