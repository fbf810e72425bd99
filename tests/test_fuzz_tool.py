"""``ckbd check fuzz``: runs cases in a capped worker and keeps its RESULTS.md section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ckbd.cli.main import main
from ckbd.tools.check.fuzz import KINDS, SECTION_BEGIN, _reseal, _split, classify, mutate
from ckbd.tools.report.results_sections import HAND_WRITTEN_MARKER, with_hand_written


def test_a_small_run_counts_every_case_and_replaces_its_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CKBD_CACHE_DIR", str(tmp_path / "cache"))
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\ntable v1\n")
    for _ in range(2):
        argv = ["--count", str(2 * len(KINDS)), "--results", str(results), "--json", str(tmp_path / "f.json")]
        assert main(["check", "fuzz", *argv]) == 0
    assert "Written by `ckbd check fuzz --results docs/RESULTS.md`" in capsys.readouterr().out
    summary = json.loads((tmp_path / "f.json").read_text())
    assert summary["cases"] == 2 * len(KINDS)
    assert all(sum(counts.values()) == 2 for counts in summary["by_kind"].values())
    text = results.read_text()
    assert text.count(SECTION_BEGIN) == 1 and text.count(HAND_WRITTEN_MARKER) == 1
    assert "Bitstream fuzzing" in with_hand_written("# Benchmark results\n\ntable v2\n", results)


def test_resealed_header_mutations_keep_a_valid_crc() -> None:
    import zlib

    from ckbd.runtime.bitstream import HEADER_SIZE

    base = bytes(HEADER_SIZE)
    fields, _ = _split(base)
    fields.update(magic=b"CKBD", fp=bytes(8))
    sealed = _reseal(fields, b"")
    data = mutate("header_field", sealed, sealed, np.random.default_rng(3))
    assert zlib.crc32(data[: HEADER_SIZE - 4]) == int.from_bytes(data[HEADER_SIZE - 4: HEADER_SIZE], "little")


def test_classify_tells_a_wrong_image_from_a_consistent_crop() -> None:
    ref = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert classify(ref.copy(), ref) == "identical"
    assert classify(ref[:1], ref) == "consistent"
    wrong = ref.copy()
    wrong[0, 0, 0] += 1
    assert classify(wrong, ref) == "wrong_image"
