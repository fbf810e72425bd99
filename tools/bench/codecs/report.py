"""What ``ckbd bench codecs`` measured, as dataclasses that round-trip through JSON with their types.

The JSON layout is the one earlier runs wrote (``results/results.json``), so their files still load:
each codec also carries its per-stage means (``decode_ms``, ...), which are written for readers of
the JSON and recomputed from the per-image figures on reading. Reading checks every field's type
and names the first one that is wrong, so a file that is not a report fails with one clear line.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ckbd.errors import CkbdError
from ckbd.tools.bench.coder import CoderBenchResult

#: What a report file is called in error messages (the tests match on it).
REPORT_WHAT = "a `ckbd bench codecs --json` report"


class ReportError(CkbdError):
    """A JSON file that is not a benchmark report (or not one this version reads)."""


@dataclass
class ImageTiming:
    """One image through one codec: its size, its bytes and the median time of each stage."""

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
    """One codec's timings over every image, and the stage names it records, in order."""

    name: str
    label: str
    backend: str
    arch: str
    group: str  # "ckbd" (this repository's implementations) or "compressai"
    decode_stages: list[str]
    encode_stages: list[str]
    images: list[ImageTiming] = field(default_factory=list)

    #: Keys :meth:`to_dict` adds for readers of the JSON, derived from ``images`` (skipped on reading).
    DERIVED: ClassVar[tuple[str, ...]] = ("decode_ms", "encode_ms", "breakdown_ms")

    def mean(self, which: str) -> dict[str, float]:
        """Per-stage mean over images of the per-image medians (``which``: one of :attr:`DERIVED`)."""
        rows = [getattr(i, which) for i in self.images]
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {key: self.mean(key) for key in self.DERIVED}


@dataclass
class RunSettings:
    """How the run was set up (``config`` in the JSON)."""

    N: int
    M: int
    images: list[str]
    threads: int
    repeat: int
    seed: int
    model_dir: str | None
    random_weights: bool
    elapsed_s: float


@dataclass
class MachineInfo:
    """Where the run happened, and how busy the machine was (1, 5, 15-minute load averages)."""

    platform: str
    machine: str
    processor: str
    cpu_count: int | None
    python: str
    numpy: str
    constriction: str
    torch: str
    onnxruntime: str
    threads: int
    loadavg_start: list[float] | None = None
    loadavg_end: list[float] | None = None


@dataclass
class BenchReport:
    """Everything one run measured; ``ratios`` and ``agreement_psnr_db`` are derived from ``codecs``.

    ``agreement_psnr_db`` and ``coder`` were optional in the first reports, hence their defaults.
    """

    config: RunSettings
    machine: MachineInfo
    codecs: dict[str, CodecResult]
    ratios: dict[str, float]
    notes: list[str]
    agreement_psnr_db: dict[str, float | str] = field(default_factory=dict)  # "identical": same pixels
    coder: CoderBenchResult | None = None  # None: not measured (--coder-symbols 0)

    def group(self, name: str) -> dict[str, CodecResult]:
        """The codecs of one group ("ckbd" or "compressai"), in run order."""
        return {k: c for k, c in self.codecs.items() if c.group == name}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"codecs": {name: c.to_dict() for name, c in self.codecs.items()}}

    @classmethod
    def from_dict(cls, data: Any) -> BenchReport:
        """The report ``data`` (parsed JSON) describes; :class:`ReportError` names the first bad field."""
        return _from_dict(cls, data, "report")  # type: ignore[no-any-return]

    def to_json(self) -> str:
        """Strictly valid JSON (a non-finite number is written as null: see :mod:`ckbd.tools.report.jsonfile`)."""
        from ckbd.tools.report.jsonfile import dumps

        return dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> BenchReport:
        import json

        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ReportError(f"not JSON: {exc}") from None
        return cls.from_dict(data)


def read_json(path: Path, what: str) -> Any:
    """The parsed JSON file ``path``, or a CkbdError saying it cannot be read as ``what``."""
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CkbdError(f"cannot read {what} {path}: {exc}") from None


def read_report(path: Path) -> BenchReport:
    """A ``--json`` written by an earlier run, to re-render without timing anything again."""
    data = read_json(path, REPORT_WHAT)
    try:
        return BenchReport.from_dict(data)
    except ReportError as exc:
        raise ReportError(f"{path} is not {REPORT_WHAT}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Typed reading: each field is checked against its annotation, nested dataclasses included.


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ReportError(f"{where}: expected an object, found {_kind(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    missing = [name for name, f in fields.items() if name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ReportError(f"{where}: missing {', '.join(missing)}")
    unknown = sorted(set(data) - set(fields) - set(getattr(cls, "DERIVED", ())))
    if unknown:
        raise ReportError(f"{where}: unexpected {', '.join(map(str, unknown))}")
    hints = typing.get_type_hints(cls)
    return cls(**{name: _decode(hints[name], data[name], f"{where}.{name}") for name in fields if name in data})


def _decode(tp: Any, value: Any, where: str) -> Any:
    """``value`` as the annotation ``tp`` says; null in a float field is the NaN or infinity written as null."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _decode(arg, value, where)
            except ReportError:
                continue
        raise ReportError(f"{where}: expected {' or '.join(_name(a) for a in args)}, found {_kind(value)}")
    if origin is list:
        if not isinstance(value, list):
            raise ReportError(f"{where}: expected a list, found {_kind(value)}")
        return [_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ReportError(f"{where}: expected an object, found {_kind(value)}")
        return {k: _decode(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, where)  # type: ignore[arg-type]
    if tp is float and value is None:
        return math.nan
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and isinstance(value, tp) and (tp is bool or not isinstance(value, bool)):
        return value
    raise ReportError(f"{where}: expected {_name(tp)}, found {_kind(value)}")


def _name(tp: Any) -> str:
    return {float: "a number", int: "an integer", str: "a string", bool: "true/false",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _kind(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:60]
