"""The large-images section of docs/RESULTS.md: written once, replaced in place, kept by bench codecs."""

from __future__ import annotations

from ckbd.cli.bench_codecs import HAND_WRITTEN_MARKER, with_hand_written
from ckbd.tools.bench_memory_report import SECTION_BEGIN, render, write_section

RUN = {"load_after": [1.0, 2.0, 3.0], "rows": [
    {"model": "m", "size": "8K", "pixels": 33177600, "kind": "encode", "mode": "tiled", "budget": "1400M",
     "seconds": 99.0, "cpu_seconds": 33.0, "peak": 1.4e9, "base": 1e8, "plan": "tiles 448x768 +192"},
    {"model": "m", "size": "8K", "pixels": 33177600, "kind": "decode", "mode": "whole", "budget": None,
     "estimated_job_bytes": 13e9, "skipped": "estimate over the limit"},
    {"model": "m", "size": "8K", "kind": "agreement", "max_grey_difference": 1, "differing_values": 7},
]}


def test_section_is_replaced_not_repeated_and_survives_rerendering(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\ntable v1\n")
    write_section(results, render(RUN, [], None))
    first = results.read_text()
    assert "0.99 µs/px" in first and "1.40 GB, 448x768 +192" in first and "not run (est. 13.10 GB)" in first
    assert "max 1 grey level(s), 7 values" in first
    RUN["rows"][0]["cpu_seconds"] = 66.0
    write_section(results, render(RUN, [], None))
    second = results.read_text()
    assert second.count(SECTION_BEGIN) == 1 and "1.99 µs/px" in second and "0.99 µs/px" not in second
    rerendered = with_hand_written("# Benchmark results\n\ntable v2\n", results)
    assert "table v2" in rerendered and "table v1" not in rerendered
    assert rerendered.count(HAND_WRITTEN_MARKER) == 1 and "1.99 µs/px" in rerendered
