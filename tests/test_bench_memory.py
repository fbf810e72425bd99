"""The large-images section of docs/RESULTS.md: written once, replaced in place, kept by bench codecs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckbd.tools.bench.memory.report import SECTION_BEGIN, render, write_section
from ckbd.tools.report.results_sections import HAND_WRITTEN_MARKER, with_hand_written

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


def test_render_command_writes_the_section(tmp_path, capsys):
    from ckbd.cli.main import main

    run = tmp_path / "run.json"
    run.write_text(json.dumps(RUN))
    results = tmp_path / "RESULTS.md"
    assert main(["bench", "memory", "render", str(run), "--markdown", str(results), "--note", "a note"]) == 0
    text = results.read_text()
    assert text.count(SECTION_BEGIN) == 1 and "`ckbd bench memory run`" in text and "- a note" in text


@pytest.mark.parametrize("args", [
    ["bench", "memory", "fit", "--sizes", "512x768", "--json", "x.json"],
    ["bench", "memory", "fit", "--terms", "nothing", "--json", "x.json"],
    ["bench", "memory", "run", "--sizes", "16K", "--json", "x.json"],
    ["bench", "memory", "roundtrip", "9000by12000", "--json", "x.json"],
    ["check", "tiling", "--analysis-core", "100"],
])
def test_bad_options_are_usage_errors(args, tmp_path, monkeypatch, capsys):
    from ckbd.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert not (tmp_path / "x.json").exists()


def test_check_tiling_command(tmp_path, capsys):
    """Tiny tiles on a small photo: the tiled stream is the whole one, the decodes agree."""
    from ckbd.cli.main import main

    out = tmp_path / "tiling.json"
    image = Path(__file__).parent / "data" / "kodim23_crop.png"
    assert main(["check", "tiling", str(image), "--analysis-core", "64", "--synthesis-core", "2",
                 "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["all_streams_identical"] and summary["max_grey_difference"] <= 1
    assert summary["analysis_tile"] == "64 px + 192"


def test_stage_peaks_are_recorded_and_rendered():
    """PeakTimer sees an allocation inside its stage; render lists every stage of both directions."""
    import numpy as np

    from ckbd.runtime.memory import reset_peak
    from ckbd.tools.bench.memory.run import PeakTimer

    if not reset_peak():
        pytest.skip("this kernel does not let a process reset its peak RSS")
    timer = PeakTimer()
    with timer.stage("big"):
        block = np.ones(64 << 20, np.uint8)
    del block
    (row,) = timer.rows
    assert row["stage"] == "big" and row["peak"] >= row["before"] + (60 << 20) and "big" in timer.times_ms
    found = {"model": "m", "height": 4320, "width": 7680, "budget": "4G", "entropy_only": True,
             "encode": {"stages": [row]}, "decode": {"stages": [{**row, "stage": "hyper_synthesis"}]}}
    text = render(RUN, [], None, stages=[found])
    assert "Where the peak is: m at 7680x4320" in text and "--entropy-only" in text
    assert "| encode | big |" in text and "| decode | hyper_synthesis |" in text
