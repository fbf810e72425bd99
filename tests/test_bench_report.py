"""The codec benchmark's report: typed dataclasses that round-trip through JSON, old files included."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ckbd.errors import CkbdError
from ckbd.tools.bench.codecs.report import (
    BenchReport,
    CodecResult,
    ImageTiming,
    MachineInfo,
    ReportError,
    RunSettings,
    read_report,
)
from ckbd.tools.bench.coder import CoderBenchResult

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "tests" / "data" / "kodim15_odd.png"


@pytest.fixture(scope="module")
def measured() -> BenchReport:
    """A real run, as small as it gets: one odd-sized image, tiny random models, one thread."""
    pytest.importorskip("torch")
    from ckbd.tools.bench.codecs.run import BenchConfig, run_benchmark

    config = BenchConfig(images=[IMAGE], N=16, M=24, threads=1, compressai=False, coder_symbols=2000,
                         progress=False, notes=["a caveat"])
    return run_benchmark(config)


def test_measured_report_round_trips_with_its_types(measured: BenchReport) -> None:
    again = BenchReport.from_json(measured.to_json())
    assert again == measured
    assert isinstance(again.config, RunSettings) and isinstance(again.machine, MachineInfo)
    assert isinstance(again.coder, CoderBenchResult) and again.coder.n_symbols == 2000
    assert set(again.codecs) == {"ckbd-onnxruntime", "ckbd-torch", "mbt2018-torch", "mbt2018-mean-torch"}
    for codec in again.codecs.values():
        assert isinstance(codec, CodecResult) and [type(i) for i in codec.images] == [ImageTiming]
        image = codec.images[0]
        assert (image.width, image.height) == (131, 67) and type(image.bytes) is int and type(image.bpp) is float
        assert all(type(v) is float for v in image.decode_ms.values()) and image.decode_ms["total"] > 0
    assert again.agreement_psnr_db["ckbd-onnxruntime vs ckbd-torch"] == "identical" or \
        type(again.agreement_psnr_db["ckbd-onnxruntime vs ckbd-torch"]) is float
    assert "a caveat" in again.notes and again.config.random_weights and again.config.model_dir is None


def test_round_tripped_report_renders_the_same_page(measured: BenchReport) -> None:
    from ckbd.tools.bench.codecs.render import format_markdown

    text = format_markdown(measured)
    assert format_markdown(BenchReport.from_json(measured.to_json())) == text
    assert "Written by `ckbd bench codecs`; do not edit by hand." in text
    assert "| **total** |" in text and "context_decode" in text


def test_json_keeps_the_per_stage_means_for_readers(measured: BenchReport) -> None:
    data = json.loads(measured.to_json())
    codec = data["codecs"]["ckbd-torch"]
    assert codec["decode_ms"] == measured.codecs["ckbd-torch"].mean("decode_ms")
    assert {"config", "machine", "codecs", "ratios", "notes", "agreement_psnr_db", "coder"} == set(data)


def test_report_written_by_an_earlier_run_loads() -> None:
    text = (ROOT / "results" / "results.json").read_text(encoding="utf-8")
    report = BenchReport.from_json(text)
    assert report.config.N == 192 and report.codecs["mbt2018-torch"].images
    assert json.loads(report.to_json()) == json.loads(text)


def small_report() -> dict:
    timing = {"file": "a.png", "width": 4, "height": 2, "bytes": 3, "bpp": 3.0,
              "decode_ms": {"x": 1.0, "total": 1.0}, "encode_ms": {"total": 2}}
    return {
        "config": {"N": 8, "M": 8, "images": ["a.png"], "threads": 1, "repeat": 1, "seed": 0, "model_dir": None,
                   "random_weights": True, "elapsed_s": 1.5},
        "machine": {"platform": "p", "machine": "m", "processor": "c", "cpu_count": 2, "python": "3", "numpy": "2",
                    "constriction": "0.5", "torch": "2", "onnxruntime": "1", "threads": 1},
        "codecs": {"c": {"name": "c", "label": "C", "backend": "b", "arch": "a", "group": "ckbd",
                         "decode_stages": ["x"], "encode_stages": [], "images": [timing]}},
        "ratios": {}, "notes": [],
    }


def test_first_reports_without_optional_sections_load() -> None:
    report = BenchReport.from_dict(small_report())
    assert report.coder is None and report.agreement_psnr_db == {} and report.machine.loadavg_start is None
    assert type(report.codecs["c"].images[0].encode_ms["total"]) is float  # an integer in a float field


def test_null_in_a_float_field_is_a_non_finite_value() -> None:
    data = small_report()
    data["codecs"]["c"]["images"][0]["bpp"] = None  # jsonfile writes NaN and infinity as null
    assert math.isnan(BenchReport.from_dict(data).codecs["c"].images[0].bpp)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["codecs"]["c"]["images"][0].update(width="4"), "report.codecs.c.images[0].width: expected an integer"),
    (lambda d: d["config"].update(random_weights=1), "report.config.random_weights: expected true/false"),
    (lambda d: d["machine"].pop("torch"), "report.machine: missing torch"),
    (lambda d: d.update(extra=1), "report: unexpected extra"),
    (lambda d: d["ratios"].update(x="fast"), "report.ratios.x: expected a number"),
    (lambda d: d.update(codecs=[]), "report.codecs: expected an object"),
])
def test_a_bad_field_is_named(change, message: str) -> None:
    data = small_report()
    change(data)
    with pytest.raises(ReportError, match=message.replace("[", r"\[").replace("]", r"\]")):
        BenchReport.from_dict(data)


def test_reading_a_file_that_is_not_a_report(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(CkbdError, match=r"list.json is not a `ckbd bench codecs --json` report: report: expected"):
        read_report(tmp_path / "list.json")
    with pytest.raises(CkbdError, match="cannot read a `ckbd bench codecs --json` report"):
        read_report(tmp_path / "missing.json")


def test_only_the_named_codecs_are_timed() -> None:
    pytest.importorskip("torch")
    from ckbd.tools.bench.codecs.render import format_markdown
    from ckbd.tools.bench.codecs.run import BenchConfig, run_benchmark

    config = BenchConfig(images=[IMAGE], N=16, M=24, threads=1, compressai=False, coder_symbols=0, progress=False,
                         only=("ckbd-onnxruntime",))
    report = run_benchmark(config)
    assert set(report.codecs) == {"ckbd-onnxruntime"}
    assert "| **total** |" in format_markdown(report)  # renders without the serial baseline
    with pytest.raises(CkbdError, match="unknown codec nope; this run has ckbd-onnxruntime, ckbd-torch"):
        run_benchmark(BenchConfig(images=[IMAGE], N=16, M=24, threads=1, compressai=False, coder_symbols=0,
                                  progress=False, only=("ckbd-onnxruntime", "nope")))


def test_time_over_compressai_is_on_the_page(measured: BenchReport) -> None:
    import dataclasses

    from ckbd.tools.bench.codecs.render import format_markdown
    from ckbd.tools.bench.codecs.timing import time_vs_compressai

    assert time_vs_compressai(measured.codecs) == {}  # no CompressAI in this run
    stand_in = dataclasses.replace(measured.codecs["ckbd-torch"], name="compressai-mbt2018-ckbd")
    codecs = {**measured.codecs, "compressai-mbt2018-ckbd": stand_in}
    versus = time_vs_compressai(codecs)
    ours = measured.codecs["ckbd-onnxruntime"]
    assert versus["decode"] == pytest.approx(ours.mean("decode_ms")["total"] / stand_in.mean("decode_ms")["total"])
    assert versus["encode"] == pytest.approx(ours.mean("encode_ms")["total"] / stand_in.mean("encode_ms")["total"])
    page = format_markdown(dataclasses.replace(measured, codecs=codecs))
    assert f"decode **{versus['decode']:.2f}**" in page
