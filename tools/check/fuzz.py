"""Fuzz the decoder with mutated streams of tiny images, under a memory cap, and count what happens.

The command is ``ckbd check fuzz --count 10000 [--seed 0] [--results docs/RESULTS.md] [--json FILE]``
(:mod:`ckbd.cli.check.fuzz`); :func:`run` is the fuzzer.

Each case takes a valid stream of a small image and mutates it one way: a header field set to an
edge or random value with the header CRC recomputed (so the mutation reaches the field checks
and the decoder), a coherent new image size with matching latent shapes (CRC recomputed), bytes
moved between the three payloads (lengths and CRC rewritten), payload bit flips, bit flips
anywhere (CRC left stale), truncation, trailing bytes, and the header of one stream spliced onto
the payloads of another. The stream is then read as the CLI reads it (header first,
``stream_io.read_stream``) and decoded with the shipped model.

A case ends in one of: ``refused`` (a one-line ckbd error), ``identical`` (the original image),
``consistent`` (a header that announces another size within the same padded shape: the decoded
pixels equal the original's where both exist), or a failure: ``wrong_image``, ``traceback`` (any
other exception, an unconverted MemoryError included) or ``hang`` (no answer within
``timeout`` seconds). The cases run in a worker process with ``RLIMIT_AS`` set to
``memory_cap``; a hung worker is killed and restarted at the next case.

:func:`write_results_section` puts the summary in the hand-written part of ``docs/RESULTS.md`` (after
the marker ``ckbd bench codecs`` keeps when it re-renders the file), replacing the previous run's section.
"""

from __future__ import annotations

import io
import json
import os
import select
import struct
import subprocess
import sys
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Field layout of the header body (docs/BITSTREAM.md); checked against HEADER_SIZE at start.
_LAYOUT = struct.Struct("<4sBBB8sIIHIIHIIIIII")
_FIELDS = ("magic", "version", "arch", "flags", "fp", "height", "width", "M", "y_h", "y_w", "N",
           "z_h", "z_w", "z_len", "a_len", "na_len", "symbols_crc")
_NUMERIC = _FIELDS[1:4] + _FIELDS[5:]
_LIMITS = {"version": 255, "arch": 255, "flags": 255, "M": 65535, "N": 65535}
KINDS = ("header_field", "header_size", "header_lengths", "payload_flip", "byte_flip", "truncate", "extend", "splice")
FAILURES = ("wrong_image", "traceback", "hang")
#: Tiny images keep one case in the tens of milliseconds (the sizes straddle the 64-pixel padding).
SIZES = ((64, 64), (48, 80), (72, 40))


@dataclass
class FuzzConfig:
    """One fuzzing run: cases ``0 .. count-1`` of ``seed``, each worker under ``memory_cap`` bytes (0: none)."""

    count: int = 10_000
    seed: int = 0
    memory_cap: int = 4 << 30
    max_pixels: int = 256 * 256  # the decoder's pixel limit (padded)
    timeout: float = 60.0  # seconds one case may take before it is a hang


@dataclass
class FuzzSummary:
    """What the cases ended in, in total and per mutation; ``failures`` lists the first 20."""

    cases: int
    seed: int
    memory_cap_bytes: int
    max_pixels: int
    timeout_s: float
    seconds: float
    totals: dict[str, int]
    by_kind: dict[str, dict[str, int]]
    refusals: dict[str, int]
    multi_line_errors: int
    failures: list[dict[str, Any]] = field(default_factory=list)
    sizes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(self.totals.get(k, 0) for k in FAILURES)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reseal(fields: dict[str, Any], payload: bytes) -> bytes:
    body = _LAYOUT.pack(*(fields[name] for name in _FIELDS))
    return body + struct.pack("<I", zlib.crc32(body)) + payload


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    fields = dict(zip(_FIELDS, _LAYOUT.unpack_from(data)))
    return fields, data[_LAYOUT.size + 4:]


def _edge_value(rng: np.random.Generator, old: int, field: str) -> int:
    top = _LIMITS.get(field, 2**32 - 1)
    choices = [0, 1, old - 1, old + 1, old * 2, old // 2, top, top - 1, int(rng.integers(0, top + 1)),
               int(rng.integers(0, 1 << 14))]
    return int(np.clip(choices[int(rng.integers(len(choices)))], 0, top))


def mutate(kind: str, base: bytes, other: bytes, rng: np.random.Generator) -> bytes:
    """One mutation of ``base`` (``other`` is a second valid stream, for splicing)."""
    from ckbd.runtime.bitstream import latent_shapes

    fields, payload = _split(base)
    if kind == "header_field":
        name = _NUMERIC[int(rng.integers(len(_NUMERIC)))]
        fields[name] = _edge_value(rng, fields[name], name)
        return _reseal(fields, payload)
    if kind == "header_size":
        for name in ("height", "width"):
            if rng.random() < 0.7:
                fields[name] = max(1, fields[name] + int(rng.integers(-70, 71)))
        fields.update(zip(("y_h", "y_w", "z_h", "z_w"), latent_shapes(fields["height"], fields["width"])))
        return _reseal(fields, payload)
    if kind == "header_lengths":
        lengths = [fields["z_len"], fields["a_len"], fields["na_len"]]
        src, dst = rng.choice(3, size=2, replace=False)
        moved = int(rng.integers(1, max(2, lengths[src] + 1)))
        moved = min(moved, lengths[src])
        lengths[src] -= moved
        lengths[dst] += moved
        fields["z_len"], fields["a_len"], fields["na_len"] = lengths
        return _reseal(fields, payload)
    if kind in ("payload_flip", "byte_flip"):
        buf = bytearray(base)
        start = _LAYOUT.size + 4 if kind == "payload_flip" else 0
        if start >= len(buf):
            return bytes(buf)
        for _ in range(int(rng.integers(1, 9))):
            pos = int(rng.integers(start, len(buf)))
            buf[pos] ^= 1 << int(rng.integers(8))
        return bytes(buf)
    if kind == "truncate":
        return base[: int(rng.integers(0, len(base)))]
    if kind == "extend":
        return base + rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    if kind == "splice":
        other_fields, other_payload = _split(other)
        if rng.random() < 0.5:
            for name in ("z_len", "a_len", "na_len"):
                fields[name] = other_fields[name]
        return _reseal(fields, other_payload)
    raise ValueError(kind)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(1234)
    out = []
    for h, w in SIZES:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([np.sin(0.11 * yy + 0.07 * xx + c) for c in range(3)], axis=-1)
        out.append(np.clip(127 + 90 * base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8))
    return out


def classify(image: np.ndarray, reference: np.ndarray) -> str:
    if image.shape == reference.shape and np.array_equal(image, reference):
        return "identical"
    h, w = min(image.shape[0], reference.shape[0]), min(image.shape[1], reference.shape[1])
    if image.shape != reference.shape and np.array_equal(image[:h, :w], reference[:h, :w]):
        return "consistent"
    return "wrong_image"


def worker(config: FuzzConfig, start: int, count: int) -> None:
    """Run cases ``start .. start+count-1``, one JSON line each on stdout, under the memory cap."""
    import resource

    from ckbd.errors import CkbdError
    from ckbd.runtime.bitstream import HEADER_SIZE
    from ckbd.runtime.codec import Decoder, Encoder
    from ckbd.runtime.stream_io import read_stream

    assert _LAYOUT.size + 4 == HEADER_SIZE, "header layout changed: update tools/fuzz_streams.py"
    if config.memory_cap:
        resource.setrlimit(resource.RLIMIT_AS, (config.memory_cap, config.memory_cap))
    encoder, decoder = Encoder.open(threads=1), Decoder.open(threads=1)
    decoder.max_pixels = config.max_pixels
    bases = [encoder.encode(image) for image in _images()]
    references = [decoder.decode(data) for data in bases]
    for i in range(start, start + count):
        rng = np.random.default_rng([config.seed, i])
        kind = KINDS[i % len(KINDS)]
        which = int(rng.integers(len(bases)))
        data = mutate(kind, bases[which], bases[(which + 1) % len(bases)], rng)
        row: dict[str, Any] = {"i": i, "kind": kind}
        try:
            stream = read_stream(io.BytesIO(data), decoder.max_pixels, check=decoder.check_header)
            row["outcome"] = classify(decoder.decode(stream.data), references[which])
        except CkbdError as exc:
            row.update(outcome="refused", error=type(exc).__name__, one_line="\n" not in str(exc))
        except BaseException as exc:  # noqa: BLE001 - everything else is what the fuzzer looks for
            row.update(outcome="traceback", error=type(exc).__name__,
                       detail="".join(traceback.format_exception(exc))[-2000:])
        print(json.dumps(row), flush=True)


def worker_main(spec: str) -> None:
    """Entry point of the worker process: ``spec`` is JSON of the config, ``start`` and ``count``."""
    fields = json.loads(spec)
    worker(FuzzConfig(**fields["config"]), fields["start"], fields["count"])


def _worker_command(config: FuzzConfig, start: int, count: int) -> list[str]:
    spec = json.dumps({"config": asdict(config), "start": start, "count": count})
    code = "import sys; from ckbd.tools.check.fuzz import worker_main; worker_main(sys.argv[1])"
    return [sys.executable, "-c", code, spec]


def run(config: FuzzConfig, on_progress: Callable[[int, int, float], None] | None = None) -> FuzzSummary:
    """Drive workers over all cases, restarting after a hang; return the summary.

    ``on_progress(done, total, seconds)`` is called every 1,000 cases.
    """
    rows: list[dict[str, Any]] = []
    next_case, end = 0, config.count
    started = time.monotonic()
    while next_case < end:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(_worker_command(config, next_case, end - next_case), stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env, text=True)
        assert proc.stdout is not None
        deadline = time.monotonic() + config.timeout + 120  # the first case includes opening the model
        while next_case < end:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = proc.stdout.readline() if ready else ""
            if not line:
                proc.kill()
                proc.wait()
                rows.append({"i": next_case, "kind": KINDS[next_case % len(KINDS)],
                             "outcome": "hang" if not ready else "traceback",
                             "error": "no answer" if not ready else f"worker died (exit {proc.returncode})"})
                next_case += 1
                break
            rows.append(json.loads(line))
            next_case = rows[-1]["i"] + 1
            deadline = time.monotonic() + config.timeout
            if on_progress is not None and next_case % 1000 == 0:
                on_progress(next_case, end, time.monotonic() - started)
        proc.wait()
    return summarize(rows, config, time.monotonic() - started)


def summarize(rows: list[dict[str, Any]], config: FuzzConfig, seconds: float) -> FuzzSummary:
    by_kind: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
    for row in rows:
        by_kind[row["kind"]][row["outcome"]] += 1
    return FuzzSummary(
        cases=len(rows), seed=config.seed, memory_cap_bytes=config.memory_cap, max_pixels=config.max_pixels,
        timeout_s=config.timeout, seconds=round(seconds, 1), totals=dict(Counter(row["outcome"] for row in rows)),
        by_kind={k: dict(v) for k, v in by_kind.items()},
        refusals=dict(Counter(r.get("error") for r in rows if r["outcome"] == "refused")),
        multi_line_errors=sum(1 for r in rows if r["outcome"] == "refused" and not r.get("one_line", True)),
        failures=[r for r in rows if r["outcome"] in FAILURES][:20],
        sizes=[f"{w}x{h}" for h, w in SIZES],
    )


SECTION_BEGIN = "<!-- fuzz_streams: begin -->"
SECTION_END = "<!-- fuzz_streams: end -->"


def markdown(summary: FuzzSummary) -> str:
    outcomes = ["refused", "identical", "consistent", *FAILURES]
    totals = summary.totals
    lines = [SECTION_BEGIN, "## Bitstream fuzzing", "",
             "Written by `ckbd check fuzz --results docs/RESULTS.md` (the docstring of `ckbd.tools.check.fuzz` "
             "lists the mutations); replaced by the next run.",
             "", f"- {summary.cases:,} cases, seed {summary.seed}, in {summary.seconds:.0f} s; images "
             f"{', '.join(summary.sizes)} encoded with the shipped model; memory cap "
             f"{summary.memory_cap_bytes / 2**30:.1f} GiB (RLIMIT_AS); pixel limit {summary.max_pixels:,}; "
             f"hang timeout {summary.timeout_s} s per case",
             f"- failures: **{summary.failed}** (wrong images {totals.get('wrong_image', 0)}, tracebacks "
             f"{totals.get('traceback', 0)}, hangs {totals.get('hang', 0)}); "
             f"multi-line error messages: {summary.multi_line_errors}", "",
             "| mutation | " + " | ".join(outcomes) + " |", "|---|" + "---:|" * len(outcomes)]
    for kind, counts in summary.by_kind.items():
        lines.append(f"| {kind} | " + " | ".join(str(counts.get(o, 0)) for o in outcomes) + " |")
    lines += ["", "Refusals by error class: "
              + ", ".join(f"{k} {v:,}" for k, v in sorted(summary.refusals.items(), key=lambda kv: -kv[1])) + ".",
              "", "`consistent`: a resealed header announcing another size within the same padded shape decodes "
              "to the original pixels where both exist (the size is not covered by the symbols CRC; the header "
              "CRC guards it against corruption, not against deliberate edits).", ""]
    for failure in summary.failures:
        lines += [f"- case {failure['i']} ({failure['kind']}): {failure['outcome']} {failure.get('error', '')}"]
    return "\n".join([*lines, SECTION_END]) + "\n"


def write_results_section(path: Path, section: str) -> None:
    """Replace this tool's section in the hand-written part of ``path``, or append it there."""
    from ckbd.tools.report.results_sections import write_section

    write_section(path, section, SECTION_BEGIN, SECTION_END)
