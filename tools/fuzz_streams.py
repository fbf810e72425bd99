"""Fuzz the decoder with mutated streams of tiny images, under a memory cap, and count what happens.

    python -m ckbd.tools.fuzz_streams --count 10000 [--seed 0] [--results docs/RESULTS.md] [--json FILE]

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
``--timeout`` seconds). The cases run in a worker process with ``RLIMIT_AS`` set to
``--memory-cap``; a hung worker is killed and restarted at the next case.

``--results`` puts the summary in the hand-written part of ``docs/RESULTS.md`` (after the marker
``ckbd bench codecs`` keeps when it re-renders the file), replacing the previous run's section.
"""

from __future__ import annotations

import argparse
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


def worker(args: argparse.Namespace) -> None:
    """Run cases ``start .. start+count-1``, one JSON line each, under the memory cap."""
    import resource

    from ckbd.errors import CkbdError
    from ckbd.runtime.bitstream import HEADER_SIZE
    from ckbd.runtime.codec import Decoder, Encoder
    from ckbd.runtime.stream_io import read_stream

    assert _LAYOUT.size + 4 == HEADER_SIZE, "header layout changed: update tools/fuzz_streams.py"
    if args.memory_cap:
        resource.setrlimit(resource.RLIMIT_AS, (args.memory_cap, args.memory_cap))
    encoder, decoder = Encoder.open(threads=1), Decoder.open(threads=1)
    decoder.max_pixels = args.max_pixels
    bases = [encoder.encode(image) for image in _images()]
    references = [decoder.decode(data) for data in bases]
    for i in range(args.start, args.start + args.count):
        rng = np.random.default_rng([args.seed, i])
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Drive workers over all cases, restarting after a hang; return the summary."""
    rows: list[dict[str, Any]] = []
    next_case, end = 0, args.count
    started = time.monotonic()
    while next_case < end:
        cmd = [sys.executable, "-m", "ckbd.tools.fuzz_streams", "--worker", "--seed", str(args.seed),
               "--start", str(next_case), "--count", str(end - next_case), "--memory-cap", str(args.memory_cap),
               "--max-pixels", str(args.max_pixels)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        assert proc.stdout is not None
        deadline = time.monotonic() + args.timeout + 120  # the first case includes opening the model
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
            deadline = time.monotonic() + args.timeout
            if args.progress and next_case % 1000 == 0:
                print(f"{next_case}/{end} cases, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        proc.wait()
    return summarize(rows, args, time.monotonic() - started)


def summarize(rows: list[dict[str, Any]], args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    by_kind: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
    for row in rows:
        by_kind[row["kind"]][row["outcome"]] += 1
    totals = Counter(row["outcome"] for row in rows)
    return {
        "cases": len(rows), "seed": args.seed, "memory_cap_bytes": args.memory_cap, "max_pixels": args.max_pixels,
        "timeout_s": args.timeout, "seconds": round(seconds, 1), "totals": dict(totals),
        "by_kind": {k: dict(v) for k, v in by_kind.items()},
        "refusals": dict(Counter(r.get("error") for r in rows if r["outcome"] == "refused")),
        "multi_line_errors": sum(1 for r in rows if r["outcome"] == "refused" and not r.get("one_line", True)),
        "failures": [r for r in rows if r["outcome"] in FAILURES][:20],
        "sizes": [f"{w}x{h}" for h, w in SIZES],
    }


SECTION_BEGIN = "<!-- fuzz_streams: begin -->"
SECTION_END = "<!-- fuzz_streams: end -->"


def markdown(summary: dict[str, Any]) -> str:
    outcomes = ["refused", "identical", "consistent", *FAILURES]
    lines = [SECTION_BEGIN, "## Bitstream fuzzing", "",
             "Written by `python -m ckbd.tools.fuzz_streams --results docs/RESULTS.md` (its docstring lists the "
             "mutations); replaced by the next run.",
             "", f"- {summary['cases']:,} cases, seed {summary['seed']}, in {summary['seconds']:.0f} s; images "
             f"{', '.join(summary['sizes'])} encoded with the shipped model; memory cap "
             f"{summary['memory_cap_bytes'] / 2**30:.1f} GiB (RLIMIT_AS); pixel limit {summary['max_pixels']:,}; "
             f"hang timeout {summary['timeout_s']} s per case",
             f"- failures: **{sum(summary['totals'].get(k, 0) for k in FAILURES)}** "
             f"(wrong images {summary['totals'].get('wrong_image', 0)}, tracebacks "
             f"{summary['totals'].get('traceback', 0)}, hangs {summary['totals'].get('hang', 0)}); "
             f"multi-line error messages: {summary['multi_line_errors']}", "",
             "| mutation | " + " | ".join(outcomes) + " |", "|---|" + "---:|" * len(outcomes)]
    for kind, counts in summary["by_kind"].items():
        lines.append(f"| {kind} | " + " | ".join(str(counts.get(o, 0)) for o in outcomes) + " |")
    lines += ["", "Refusals by error class: "
              + ", ".join(f"{k} {v:,}" for k, v in sorted(summary["refusals"].items(), key=lambda kv: -kv[1])) + ".",
              "", "`consistent`: a resealed header announcing another size within the same padded shape decodes "
              "to the original pixels where both exist (the size is not covered by the symbols CRC; the header "
              "CRC guards it against corruption, not against deliberate edits).", ""]
    for failure in summary["failures"]:
        lines += [f"- case {failure['i']} ({failure['kind']}): {failure['outcome']} {failure.get('error', '')}"]
    return "\n".join([*lines, SECTION_END]) + "\n"


def write_results_section(path: Path, section: str) -> None:
    """Replace this tool's section in the hand-written part of ``path``, or append it there."""
    from ckbd.tools.results_sections import write_section

    write_section(path, section, SECTION_BEGIN, SECTION_END)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-cap", type=int, default=4 << 30, help="RLIMIT_AS of the worker, bytes (0: none).")
    parser.add_argument("--max-pixels", type=int, default=256 * 256, help="Decoder pixel limit (padded).")
    parser.add_argument("--timeout", type=float, default=60.0, help="Seconds one case may take before it is a hang.")
    parser.add_argument("--json", type=Path, help="Write the summary as JSON.")
    parser.add_argument("--results", type=Path, help="Put the summary in this Markdown file (docs/RESULTS.md).")
    parser.add_argument("--progress", action="store_true", help="Print progress every 1,000 cases.")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    summary = run(args)
    from ckbd.runtime.atomic import atomic_write_bytes

    if args.json:
        atomic_write_bytes(args.json, json.dumps(summary, indent=2).encode())
    if args.results:
        write_results_section(args.results, markdown(summary))
    print(markdown(summary))
    failed = sum(summary["totals"].get(k, 0) for k in FAILURES)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
