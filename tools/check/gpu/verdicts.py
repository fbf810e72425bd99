"""The known-answer verdicts of the shipped model's integer stages, per backend and device.

The check of ``ckbd check known-answers`` (:mod:`ckbd.tools.check.known_answers`) is run for ONNX
Runtime's CPU provider (the reference executor), torch on the CPU and on the device under test,
and ONNX Runtime's CUDA provider where it is installed. Each run scores the backend's own runners
(no CPU fallback), so a mismatch here is the kernel's, by stage. TensorRT is left out: its engines
are built later in the check, whose backends part reports what ran each stage.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ckbd.tools.check.gpu.compare import one_line
from ckbd.tools.check.gpu.targets import ort_cuda_missing


def verdict_runs(device: str) -> list[tuple[str, str]]:
    """(backend, device) pairs to score: the CPU references, torch on ``device``, ONNX Runtime's CUDA provider."""
    runs = [("onnxruntime", "cpu"), ("torch", "cpu")]
    if device != "cpu":
        runs.append(("torch", device))
        if ort_cuda_missing() is None:
            runs.append(("onnxruntime", device))
    return runs


def run_verdicts(model_dir: Path | None, checkpoint: Path | None, device: str,
                 tick: Callable[[str], None]) -> dict[str, Any]:
    """One entry per (backend, device): per-stage elements, mismatches, largest difference."""
    from ckbd.runtime.package import ModelPackage
    from ckbd.tools.check.known_answers import run_check

    package = ModelPackage.open(model_dir)
    if package.manifest.known_answers is None:
        return {"skipped": f"{package.label} has no known-answer vectors (float path, or exported before them)"}
    entries = []
    for backend, where in verdict_runs(device):
        try:
            entry = run_check(package.root, backend, where, checkpoint).to_dict()
        except Exception as exc:  # a backend that cannot run the check is a failed entry, not a crash
            entry = {"backend": backend, "device": where, "ok": False, "error": one_line(exc)}
        entries.append(entry)
        tick(f"known answers {backend} {where}")
    return {"skipped": None, "ok": all(e["ok"] for e in entries), "runs": entries}
