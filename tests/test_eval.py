"""Metrics, BD-rate, ``ckbd eval`` and ``ckbd bench codecs`` (tiny models, tests/data only)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ckbd.cli.main import app
from ckbd.errors import CkbdError
from ckbd.runtime.imageio import read_image
from ckbd.runtime.metrics import ms_ssim, ms_ssim_scales, psnr
from ckbd.tools.report.bdrate import bd_psnr, bd_rate

DATA = Path(__file__).parent / "data"
IMAGES = sorted(DATA.glob("*.png"))
runner = CliRunner()


# -- metrics --------------------------------------------------------------------------------


def _noisy(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0, sigma, image.shape), 0, 255).astype(np.uint8)


def test_identical_images() -> None:
    image = read_image(IMAGES[0])
    assert psnr(image, image) == math.inf
    assert ms_ssim(image, image) == pytest.approx(1.0, abs=1e-12)


def test_quality_decreases_with_noise() -> None:
    image = read_image(IMAGES[-1])  # 192x128: five scales need a 176-pixel shorter side, so four
    assert ms_ssim_scales(*image.shape[:2]) == 4
    noisy = [_noisy(image, s) for s in (2, 8, 25)]
    psnrs = [psnr(image, n) for n in noisy]
    ssims = [ms_ssim(image, n) for n in noisy]
    assert psnrs == sorted(psnrs, reverse=True) and ssims == sorted(ssims, reverse=True)
    assert 0.0 < ssims[-1] < ssims[0] < 1.0
    assert psnrs[0] == pytest.approx(10 * math.log10(255**2 / np.mean((image - noisy[0].astype(float)) ** 2)))


def test_psnr_known_value() -> None:
    a = np.zeros((8, 8, 3), np.uint8)
    b = np.full((8, 8, 3), 255 // 15, np.uint8)  # MSE = 17**2
    assert psnr(a, b) == pytest.approx(20 * math.log10(255 / 17))


def test_tiny_images_use_fewer_scales() -> None:
    image = read_image(IMAGES[0])[:40, :50]
    assert ms_ssim_scales(40, 50) == 2 and ms_ssim_scales(8, 9) == 1
    assert ms_ssim(image, image) == pytest.approx(1.0)
    assert 0 < ms_ssim(image[:8, :9], _noisy(image[:8, :9], 20)) < 1
    with pytest.raises(ValueError):
        ms_ssim(image, image[:-1])


# -- BD-rate --------------------------------------------------------------------------------


def test_bd_rate_known_answer() -> None:
    rates = np.array([0.2, 0.4, 0.7, 1.1, 1.6])
    quality = 28 + 6 * np.log2(rates / 0.2) - 0.3 * np.log2(rates / 0.2) ** 2
    assert bd_rate(rates, quality, 0.9 * rates, quality) == pytest.approx(-10.0, abs=1e-6)
    assert bd_rate(rates, quality, rates, quality) == pytest.approx(0.0, abs=1e-9)
    assert bd_rate(rates, quality, 1.25 * rates, quality) == pytest.approx(25.0, abs=1e-6)
    assert bd_psnr(rates, quality, rates, quality + 0.5) == pytest.approx(0.5, abs=1e-9)


def test_bd_rate_needs_four_points() -> None:
    with pytest.raises(ValueError, match="4 points"):
        bd_rate([0.1, 0.2, 0.3], [30, 32, 34], [0.1, 0.2, 0.3, 0.4], [30, 32, 34, 35])


# -- ckbd eval ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    from ckbd.export.onnx_export import export_model
    from ckbd.models import ModelConfig, build_model

    torch.set_num_threads(1)
    torch.manual_seed(5)
    model = build_model(ModelConfig("mbt2018-ckbd", N=16, M=24)).eval()
    out = tmp_path_factory.mktemp("eval") / "tiny"
    export_model(model, out)
    return out


def test_eval_writes_json(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "rd.json"
    args = ["eval", *map(str, IMAGES[:2]), "--model", str(model_dir), "--json", str(out),
            "--qualities", "10,50,90", "--threads", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    (model,) = report["models"]
    assert len(model["images"]) == 2
    for image in model["images"]:
        assert image["bpp"] > 0 and image["bytes"] > 0 and "psnr" in image and 0 <= image["ms_ssim"] <= 1
    for fmt in ("jpeg", "webp"):
        curve = report["curves"][fmt]
        assert [p["label"] for p in curve] == ["10", "50", "90"]
        assert curve[0]["bpp"] < curve[-1]["bpp"] and curve[0]["psnr"] < curve[-1]["psnr"]
    assert "at_equal_bpp" in report["comparisons"]
    assert "PSNR" in result.output


def test_eval_bd_rate_with_four_models_of_one_architecture(tmp_path: Path) -> None:
    """BD-rate appears with four RD points of one family; other families never join that curve."""
    from ckbd.tools.rd_eval import RDPoint, compare

    curve = [RDPoint(str(q), b, p, 0.9) for q, b, p in [(10, 0.3, 27), (30, 0.6, 30), (60, 1.0, 33), (90, 2.0, 37)]]
    models = [RDPoint(f"m{i}", b * 0.8, p, 0.95, family="mbt2018-ckbd")
              for i, (b, p) in enumerate([(0.3, 27), (0.6, 30), (1.0, 33), (2.0, 37)])]
    serial = RDPoint("serial", 0.1, 40.0, 0.99, family="mbt2018")  # would wreck the fit if it joined
    result = compare([*models, serial], {"jpeg": curve})
    assert result["bd_rate_psnr_pct"] == {"mbt2018-ckbd": {"jpeg": pytest.approx(-20.0, abs=1e-6)}}
    assert any("mbt2018 has 1" in n for n in result["notes"])
    assert compare(models[:1], {"jpeg": curve})["bd_rate_psnr_pct"] == {}


def test_bd_rate_between_architectures_with_four_points_each() -> None:
    """The checkerboard's rate cost over the serial context is a BD-rate between the two families."""
    from ckbd.tools.rd_eval import RDPoint, RDReport, compare, format_table

    rd = [(0.3, 27.0), (0.6, 30.0), (1.0, 33.0), (2.0, 37.0)]
    serial = [RDPoint(f"s{i}", b, p, 0.9, family="mbt2018") for i, (b, p) in enumerate(rd)]
    ckbd = [RDPoint(f"c{i}", b * 1.05, p, 0.9, family="mbt2018-ckbd") for i, (b, p) in enumerate(rd)]
    result = compare([*serial, *ckbd], {})
    assert result["bd_rate_between_families_pct"] == {
        "mbt2018 vs mbt2018-ckbd": pytest.approx(100 / 1.05 - 100, abs=1e-6),
        "mbt2018-ckbd vs mbt2018": pytest.approx(5.0, abs=1e-6),
    }
    assert "BD-rate (PSNR) of mbt2018-ckbd vs mbt2018: +5.00 %" in format_table(RDReport([], [*serial, *ckbd], {}, result))
    assert "bd_rate_between_families_pct" not in compare([*serial, *ckbd[:3]], {})


def test_rd_plot_has_one_curve_per_architecture() -> None:
    from ckbd.tools.rd_eval import RDPoint, RDReport, rd_plot_curves

    models = [RDPoint("a", 0.5, 30.0, 0.9, family="mbt2018-ckbd"), RDPoint("b", 0.8, 32.0, 0.9, family="mbt2018-ckbd"),
              RDPoint("s", 0.5, 30.2, 0.9, family="mbt2018")]
    curves = rd_plot_curves(RDReport([], models, {"jpeg": [RDPoint("50", 1.0, 31.0, 0.9)]}))
    assert curves == {"JPEG (Pillow)": [(1.0, 31.0)], "mbt2018-ckbd": [(0.5, 30.0), (0.8, 32.0)], "mbt2018": [(0.5, 30.2)]}


def test_rd_plot_axes_fit_the_models_not_the_pillow_sweep() -> None:
    from ckbd.tools.report.plots import fitted_axes

    models = [(0.4, 27.0), (0.6, 28.5)]
    every = [*models, (0.25, 26.0), (0.85, 32.0), (3.3, 40.5)]  # the last is beyond the models' span
    (x_lo, x_hi), (y_lo, y_hi) = fitted_axes(models, every)
    assert (x_lo, x_hi) == (0.0, pytest.approx(0.9))
    assert y_lo < 26.0 < 32.0 < y_hi < 40.5


def test_eval_measures_checkpoints_baselines_included(tmp_path: Path) -> None:
    """A serial-context checkpoint (no exported graphs) and a checkerboard one run on torch, so the
    checkerboard's RD cost against the serial baseline is measured by the same command."""
    from conftest import tiny_model

    from ckbd.models.checkpoint import save_checkpoint

    for arch in ("mbt2018", "mbt2018-ckbd"):
        save_checkpoint(tmp_path / f"{arch}.pt", tiny_model(arch))
    out = tmp_path / "rd.json"
    args = ["eval", str(IMAGES[0]), "--model", str(tmp_path / "mbt2018.pt"), "--model", str(tmp_path / "mbt2018-ckbd.pt"),
            "--json", str(out), "--qualities", "10,90", "--threads", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    serial, ckbd = json.loads(out.read_text())["models"]
    assert (serial["family"], ckbd["family"]) == ("mbt2018", "mbt2018-ckbd")
    assert serial["label"] == "mbt2018 mbt2018.pt (torch)"
    for model in (serial, ckbd):
        assert model["bpp"] > 0 and math.isfinite(model["psnr"])


# -- ckbd bench codecs ----------------------------------------------------------------------


def test_bench_codecs_help() -> None:
    result = runner.invoke(app, ["bench", "codecs", "--help"])
    assert result.exit_code == 0
    for option in ("--images", "--count", "--model", "--json", "--markdown", "--plots", "--arch-size"):
        assert option in result.output


def test_tiny_benchmark_writes_json_and_markdown(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from ckbd.tools.rd_eval import RDPoint, RDReport, compare

    out, md, plots = tmp_path / "bench.json", tmp_path / "RESULTS.md", tmp_path / "plots"
    curves = {"jpeg": [RDPoint("50", 1.0, 31.0, 0.9), RDPoint("90", 2.0, 36.0, 0.95)]}
    evals = []
    for name, family in (("eval_serial", "mbt2018"), ("eval_default", "mbt2018-ckbd")):
        report = RDReport([], [RDPoint(f"{family} model", 1.5, 33.0, 0.93, family=family)], curves)
        report.comparisons = compare(report.models, curves)
        (tmp_path / f"{name}.json").write_text(json.dumps(report.to_dict()))
        evals += ["--eval-json", str(tmp_path / f"{name}.json")]
    args = ["bench", "codecs", "--images", str(IMAGES[0]), "--arch-size", "16,24", "--threads", "1",
            "--json", str(out), "--markdown", str(md), "--plots", str(plots), "--coder-symbols", "2000",
            "--no-compressai", *evals]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert {"config", "machine", "codecs", "ratios", "coder", "notes", "agreement_psnr_db"} <= set(report)
    assert (report["config"]["N"], report["config"]["M"]) == (16, 24) and report["config"]["random_weights"]
    codecs = report["codecs"]
    assert set(codecs) == {"ckbd-onnxruntime", "ckbd-torch", "mbt2018-torch", "mbt2018-mean-torch"}
    for codec in codecs.values():
        assert codec["decode_ms"]["total"] > 0 and codec["encode_ms"]["total"] > 0
        assert set(codec["decode_stages"]) <= set(codec["decode_ms"])
    assert "context_decode" in codecs["mbt2018-torch"]["decode_ms"]
    assert report["ratios"]["serial_vs_ckbd-torch_decode"] > 0
    same = report["agreement_psnr_db"]["ckbd-onnxruntime vs ckbd-torch"]  # same weights, two runtimes
    assert same == "identical" or same > 30
    assert report["coder"]["n_symbols"] == 2000
    text = md.read_text()
    assert "## Decoding latency per stage" in text and "context_decode" in text and "randomly initialised" in text
    assert "### eval_serial" in text and "### eval_default" in text and "mbt2018-ckbd model at 1.5000 bpp" in text
    assert {p.name for p in plots.iterdir()} == {"decode_stages.png", "encode_stages.png", "rd_psnr.png"}

    # Re-rendered from the JSON with one more RD result: the timings are the measured ones, untouched.
    (tmp_path / "eval_context.json").write_text((tmp_path / "eval_serial.json").read_text())
    md2 = tmp_path / "RESULTS2.md"
    render = ["bench", "codecs", "--from-json", str(out), "--markdown", str(md2), *evals,
              "--eval-json", str(tmp_path / "eval_context.json")]
    result = runner.invoke(app, render)
    assert result.exit_code == 0, result.output
    assert md2.read_text().split("### eval_serial")[0] == text.split("### eval_serial")[0]
    assert "### eval_context" in md2.read_text()


def test_bench_rd_plot_keeps_each_evaluation_its_own_curve() -> None:
    from ckbd.tools.bench.codecs.render import combined_rd

    def rd(*families: str) -> dict:
        return {"images": ["a.png"], "models": [{"label": f, "bpp": 0.5, "psnr": 30.0, "ms_ssim": 0.9, "family": f}
                                                for f in families],
                "curves": {"jpeg": [{"label": "50", "bpp": 1.0, "psnr": 31.0, "ms_ssim": 0.9}]}}

    one = combined_rd({"eval_default": rd("mbt2018-ckbd")})
    assert [m.family for m in one.models] == ["mbt2018-ckbd"] and list(one.curves) == ["jpeg"]
    two = combined_rd({"eval_lambda": rd("mbt2018-ckbd"), "eval_context": rd("mbt2018", "mbt2018-ckbd")})
    assert [m.family for m in two.models] == ["mbt2018-ckbd (eval_lambda)", "mbt2018 (eval_context)",
                                              "mbt2018-ckbd (eval_context)"]


def test_bench_codecs_refuses_what_is_not_a_report(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"models": []}')
    (tmp_path / "broken.json").write_text('{"config": ')
    for path in ("bad.json", "broken.json", "missing.json"):
        result = runner.invoke(app, ["bench", "codecs", "--from-json", str(tmp_path / path)])
        assert isinstance(result.exception, CkbdError) and "bench codecs --json" in str(result.exception)
    result = runner.invoke(app, ["bench", "codecs", "--from-json", str(tmp_path / "bad.json"),
                                 "--eval-json", str(tmp_path / "broken.json")])
    assert isinstance(result.exception, CkbdError) and "ckbd eval --json" in str(result.exception)
