"""Known-answer vectors of the integer stages, and how a runner is scored against them.

An exported integer-path model carries ``known_answers.npz``: a few small cases (encoder latents of
calibration photos, and saturating inputs), each a set of stage-contract tensors by name, with the
int64 reference's outputs (:mod:`ckbd.runtime.intparams_reference`). Tensor names are unique across
:data:`~ckbd.runtime.stages.STAGE_IO`, so a case holds a vector for every integer stage whose inputs
and outputs it has: ``z_symbols -> hyper``, ``hyper -> anchor_*``, ``(hyper, anchor_hat) ->
nonanchor_*``. Every stage is fed the stored inputs, never another runner's outputs, so one wrong
stage cannot hide or blame another.

Why: the integer stages are exact in float32 only when a kernel really multiplies and adds (no
TF32, no Winograd/FFT, no fp16 accumulation). ONNX Runtime's CPU provider is known to; anything
else proves it on these vectors before it decides an index (:mod:`ckbd.runtime.self_check`).

File layout: integer arrays ``<case>.<tensor>`` in the narrowest dtype, holding ``value * 2**k``
(k = 0, or 8 for tensors with fractions: every value is a multiple of 2**-8, the means' unit), and a
JSON ``layout`` naming the cases and each array's k.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ckbd.errors import ModelError
from ckbd.runtime.backend import Runner, to_host
from ckbd.runtime.intparams import MEAN_FRAC
from ckbd.runtime.stages import STAGE_IO

KNOWN_ANSWERS_NAME = "known_answers.npz"
_FORMAT = 1
_DTYPES = {spec.name: spec.dtype for ins, outs in STAGE_IO.values() for spec in (*ins, *outs)}


@dataclass
class KnownAnswers:
    """Named cases, each a dict of stage-contract tensors (contract dtypes) by tensor name."""

    cases: dict[str, dict[str, np.ndarray]]

    def vectors(self, stage: str) -> list[tuple[str, dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """(case, feeds, expected outputs) of every case that holds a vector of ``stage``."""
        inputs, outputs = STAGE_IO[stage]
        found = []
        for name, tensors in self.cases.items():
            if all(spec.name in tensors for spec in (*inputs, *outputs)):
                found.append((name, {s.name: tensors[s.name] for s in inputs},
                              {s.name: tensors[s.name] for s in outputs}))
        return found

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        fractions: dict[str, int] = {}
        for index, tensors in enumerate(self.cases.values()):
            for tensor, value in sorted(tensors.items()):
                key = f"{index}.{tensor}"
                arrays[key], fractions[key] = _encode(tensor, value)
        layout = {"format": _FORMAT, "cases": list(self.cases), "fraction_bits": fractions}
        arrays["layout"] = np.frombuffer(json.dumps(layout, sort_keys=True).encode(), dtype=np.uint8)
        return arrays

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **self.to_arrays())  # type: ignore[arg-type]
        return buffer.getvalue()

    def digest(self) -> str:
        """sha256 of the file these vectors are written as (what the manifest lists)."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def save(self, path: Path) -> None:
        from ckbd.runtime.atomic import atomic_write_bytes

        atomic_write_bytes(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: Path) -> KnownAnswers:
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            layout = json.loads(arrays.pop("layout").tobytes())
            if layout.get("format") != _FORMAT:
                raise ValueError(f"format {layout.get('format')} (this ckbd reads {_FORMAT})")
            cases: dict[str, dict[str, np.ndarray]] = {name: {} for name in layout["cases"]}
            names = list(cases)
            for key, value in arrays.items():
                index, tensor = key.split(".", 1)
                cases[names[int(index)]][tensor] = _decode(tensor, value, int(layout["fraction_bits"][key]))
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise ModelError(f"cannot read the known-answer vectors {path}: {exc}") from None
        return cls(cases)


def _encode(tensor: str, value: np.ndarray) -> tuple[np.ndarray, int]:
    """(integers in the narrowest dtype, fraction bits): float32 tensors hold multiples of 2**-8."""
    array = np.asarray(value).astype(np.float64)
    bits = 0 if np.array_equal(array, np.round(array)) else MEAN_FRAC
    fixed = array * (1 << bits)
    if not np.array_equal(fixed, np.round(fixed)) or np.abs(fixed).max(initial=0) >= 2**31:
        raise ValueError(f"known-answer tensor {tensor} is not a multiple of 2**-{MEAN_FRAC} within int32")
    for kind in (np.int8, np.int16):
        info = np.iinfo(kind)
        if fixed.size == 0 or (fixed.min() >= info.min and fixed.max() <= info.max):
            return fixed.astype(kind), bits
    return fixed.astype(np.int32), bits


def _decode(tensor: str, stored: np.ndarray, bits: int) -> np.ndarray:
    return (stored.astype(np.float64) / (1 << bits)).astype(_DTYPES[tensor])


@dataclass
class StageScore:
    """How one runner did on one stage's vectors: every output element compared exactly."""

    stage: str
    elements: int = 0
    mismatches: int = 0
    max_abs_diff: float = 0.0
    cases: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.cases > 0 and self.mismatches == 0 and not self.errors

    def add(self, got: np.ndarray | None, want: np.ndarray) -> None:
        self.elements += want.size
        if got is None or got.shape != want.shape:
            self.mismatches += want.size
            self.max_abs_diff = float("inf")
            return
        a, b = got.astype(np.float64), want.astype(np.float64)
        differ = ~(a == b)  # NaN differs from everything
        self.mismatches += int(differ.sum())
        if differ.any():
            diff = np.abs(a - b)[differ]
            self.max_abs_diff = max(self.max_abs_diff, float(np.nan_to_num(diff, nan=np.inf).max()))

    def to_dict(self) -> dict[str, object]:
        return {"stage": self.stage, "cases": self.cases, "elements": self.elements,
                "mismatches": self.mismatches, "max_abs_diff": self.max_abs_diff, "errors": self.errors}


def score_runner(runner: Runner, answers: KnownAnswers, stage: str) -> StageScore:
    """Run ``stage``'s vectors through ``runner``; a run that raises counts all its outputs wrong."""
    score = StageScore(stage)
    for case, feeds, expected in answers.vectors(stage):
        score.cases += 1
        try:
            got: Mapping[str, object] = runner.run(feeds)
        except Exception as exc:  # any failure of a foreign kernel is a failed check, not a crash
            score.errors.append(f"{case}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            got = {}
        for name, want in expected.items():
            value = got.get(name)
            score.add(None if value is None else np.asarray(to_host(value)), want)  # type: ignore[arg-type]
    return score

