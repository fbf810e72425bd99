"""INT8 calibration: Q/DQ graphs written beside the float ones, listed in the manifest, decodable.

One tiny model (N=16, M=24, parameters perturbed so that latents depend on the image; an
unperturbed random model codes every symbol as 0, which would make calibration trivial) is
exported and calibrated once per module on the images in tests/data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import export_tiny_float

from ckbd.errors import CkbdError, MissingDependencyError
from ckbd.runtime.manifest import Manifest, file_sha256

DATA = Path(__file__).parent / "data"
IMAGES = sorted(DATA.glob("*.png"))
#: int8 vs fp32 decodes of the tiny model measured 43-53 dB (all methods, per-channel or not);
#: far below that means a broken graph.
MIN_PSNR_INT8_VS_FP32 = 35.0


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_float(tmp_path_factory)


@pytest.fixture(scope="module")
def calibrated(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest, Manifest]:
    """(model dir, manifest before, manifest after) for latent_synthesis and analysis."""
    from ckbd.calibration import calibrate

    model_dir = tmp_path_factory.mktemp("calib-int8") / "model"
    shutil.copytree(exported, model_dir)
    before = Manifest.load(model_dir)
    after = calibrate(model_dir, IMAGES, method="entropy", count=3,
                      stages=("latent_synthesis", "analysis"), threads=1, progress=False)
    return model_dir, before, after


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_int8_graphs_are_listed_with_their_hash(calibrated: tuple[Path, Manifest, Manifest]) -> None:
    model_dir, before, after = calibrated
    assert Manifest.load(model_dir) == after  # saved, and loads back the same
    for stage in ("latent_synthesis", "analysis"):
        entry = after.variants["int8"][stage]
        assert entry.file == f"{stage}.int8.onnx" and entry.precision == "int8"
        assert entry.sha256 == file_sha256(model_dir / entry.file)
        assert after.graph_path(model_dir, stage, "int8") == model_dir / entry.file
        assert after.graph_path(model_dir, stage) == model_dir / f"{stage}.onnx"  # fp32 still the default
    assert after.graphs == before.graphs  # the float graphs are untouched
    assert set(after.variants["int8"]) == {"latent_synthesis", "analysis"}
    assert after.extra["calibration"]["latent_synthesis"]["method"] == "entropy"


def test_int8_graph_is_symmetric_qdq_with_the_float_io(calibrated: tuple[Path, Manifest, Manifest]) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from ckbd.calibration import qdq_graph

    model_dir, _, _ = calibrated
    for stage in ("latent_synthesis", "analysis"):
        ref = onnx.load(str(model_dir / f"{stage}.onnx"))
        model = onnx.load(str(model_dir / f"{stage}.int8.onnx"))
        ops = [n.op_type for n in model.graph.node]
        assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
        assert {n.domain for n in model.graph.node} == {""}  # standard ops only (TensorRT parses them)
        for kind in ("input", "output"):  # same names, types and symbolic dims: any image size works
            assert [str(v.type) + v.name for v in getattr(model.graph, kind)] == \
                   [str(v.type) + v.name for v in getattr(ref.graph, kind)]
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        zero_points = [v for k, v in inits.items() if "zero_point" in k]
        assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)  # symmetric int8
        weights = [v for k, v in inits.items() if k.endswith("_quantized")]
        assert weights and all(w.dtype == np.int8 and w.min() >= -127 for w in weights)
        producers = qdq_graph.producers_of(model.graph.node)
        left_float = set(qdq_graph.image_side_convs(ref)) | set(qdq_graph.gdn_norm_convs(ref))
        for node in model.graph.node:
            if node.op_type in qdq_graph.QUANTIZED_OPS:
                assert qdq_graph._dq_fed(node, producers) == (node.name not in left_float), node.name
        norms = 12 if stage == "latent_synthesis" else 3  # synthesis: IGDN per phase (ckbd.export.cpu_graph)
        assert len(qdq_graph.image_side_convs(ref)) == 1 and len(qdq_graph.gdn_norm_convs(ref)) == norms


def test_int8_decode_matches_fp32_latents_on_every_size(calibrated: tuple[Path, Manifest, Manifest]) -> None:
    from ckbd.runtime.codec import Decoder, Encoder
    from ckbd.runtime.imageio import read_image

    model_dir, _, _ = calibrated
    encoder = Encoder.open(model_dir, threads=1)
    fp32 = Decoder.open(model_dir, threads=1)
    int8 = Decoder.open(model_dir, threads=1, precision="int8")
    sizes = set()
    for path in IMAGES:  # 128x128, 67x131 and 128x192: three padded sizes through one graph
        image = read_image(path)
        data = encoder.encode(image)
        ref, low = fp32.decode_detailed(data), int8.decode_detailed(data)
        assert low.image.shape == image.shape and low.image.dtype == np.uint8
        for name in ("z_symbols", "anchor_symbols", "nonanchor_symbols", "anchor_hat", "nonanchor_hat"):
            np.testing.assert_array_equal(getattr(low.latents, name), getattr(ref.latents, name), err_msg=name)
        assert ref.image.std() > 5  # a non-constant reconstruction, so the PSNR below means something
        assert _psnr(ref.image, low.image) > MIN_PSNR_INT8_VS_FP32
        assert not np.array_equal(ref.image, low.image)  # the int8 graph really ran
        sizes.add(image.shape)
    assert len(sizes) == len(IMAGES)


def test_int8_analysis_encodes_decodable_streams(calibrated: tuple[Path, Manifest, Manifest]) -> None:
    from ckbd.runtime.codec import Decoder, Encoder
    from ckbd.runtime.imageio import read_image

    model_dir, _, _ = calibrated
    image = read_image(IMAGES[1])
    data = Encoder.open(model_dir, threads=1, precision="int8").encode(image)
    decoded = Decoder.open(model_dir, threads=1).decode(data)
    assert decoded.shape == image.shape


@pytest.mark.parametrize("stage", ["hyper_synthesis", "anchor_params", "nonanchor_params"])
def test_parameter_graphs_are_refused(exported: Path, tmp_path: Path, stage: str) -> None:
    from ckbd.calibration import calibrate

    model_dir = tmp_path / "model"
    shutil.copytree(exported, model_dir)
    before = (model_dir / "manifest.json").read_bytes()
    with pytest.raises(CkbdError, match=f"refusing to quantise '{stage}'.*scale indexes"):
        calibrate(model_dir, IMAGES, stages=("latent_synthesis", stage), progress=False)
    assert (model_dir / "manifest.json").read_bytes() == before
    assert not list(model_dir.glob("*.int8.onnx"))


def test_bad_requests_fail_with_a_message(exported: Path, tmp_path: Path) -> None:
    from ckbd.calibration import calibrate, check_stages

    with pytest.raises(CkbdError, match="unknown calibration method"):
        calibrate(exported, IMAGES, method="kl")
    with pytest.raises(CkbdError, match="unknown stage"):
        check_stages("latent_synthesis,synthesis")
    with pytest.raises(CkbdError, match="does not exist"):
        calibrate(exported, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CkbdError, match="no images"):
        calibrate(exported, tmp_path / "empty")
    assert check_stages("analysis,latent_synthesis") == ("analysis", "latent_synthesis")


def test_missing_onnx_names_the_calibration_extra(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ckbd.calibration import calibrate

    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(MissingDependencyError) as info:
        calibrate(exported, IMAGES)
    assert info.value.extra == "calibration" and "pip install '.[calibration]'" in str(info.value)


def test_reader_follows_the_onnxruntime_protocol() -> None:
    from ckbd.calibration.data import ImageFeedReader

    seen: list[tuple[int, ...]] = []

    def feeds(image: np.ndarray) -> dict[str, np.ndarray]:
        seen.append(image.shape)
        return {"x": image}

    reader = ImageFeedReader(IMAGES, feeds, progress=False)
    assert len(reader) == len(IMAGES)
    reader.set_range(1, 2)  # strided collection: one image per round
    assert reader.get_next() is not None and reader.get_next() is None
    reader.rewind()
    assert len(list(reader)) == len(IMAGES)
    assert len(seen) == 1 + len(IMAGES)


def _ckbd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ckbd", *args], capture_output=True, text=True,
                          env={**os.environ, "CKBD_DEBUG": ""}, timeout=300, check=False)


def test_cli_calibrate_and_decode_int8(exported: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(exported, model_dir)
    r = _ckbd("calibrate", str(model_dir), "--images", str(DATA), "--method", "minmax", "--count", "2",
              "--per-tensor", "--reduce-range", "--threads", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    manifest = Manifest.load(model_dir)
    entry = manifest.variants["int8"]["latent_synthesis"]
    assert entry.sha256 == file_sha256(model_dir / entry.file)
    used = manifest.extra["calibration"]["latent_synthesis"]
    assert used["method"] == "minmax" and used["images"] == 2 and not used["per_channel"] and used["reduce_range"]
    stream, out = tmp_path / "a.ckbd", tmp_path / "a.png"
    assert _ckbd("encode", str(IMAGES[1]), "-o", str(stream), "--model", str(model_dir)).returncode == 0
    r = _ckbd("decode", str(stream), "-o", str(out), "--model", str(model_dir), "--precision", "int8")
    assert r.returncode == 0, r.stderr
    assert out.is_file()


def test_cli_calibrate_missing_folder_is_one_line_error(exported: Path, tmp_path: Path) -> None:
    r = _ckbd("calibrate", str(exported), "--images", str(tmp_path / "nowhere"))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "nowhere" in lines[0] and "Traceback" not in r.stderr
    r = _ckbd("calibrate", str(exported), "--images", str(DATA), "--stages", "anchor_params")
    assert r.returncode == 1 and "refusing" in r.stderr


def test_bench_int8_checks_the_rate_is_unchanged(calibrated: tuple[Path, Manifest, Manifest], tmp_path: Path) -> None:
    import json

    model_dir, _, _ = calibrated
    out = tmp_path / "report.json"
    r = _ckbd("bench", "int8", str(model_dir), "--images", str(DATA), "--count", "2", "--repeats", "1",
              "--threads", "1", "--json", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    summary = json.loads(out.read_text())["summary"]
    assert summary["images"] == 2 and summary["latents_identical_all"] and summary["bpp_change"] == 0
    assert summary["psnr_int8_vs_fp32"] > MIN_PSNR_INT8_VS_FP32
    assert "int8_encoder_bpp" in summary  # analysis was calibrated too
    assert "latents identical on all images" in r.stdout
