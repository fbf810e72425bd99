"""Channel equalisation before INT8 calibration: found structurally, exact in float, recorded, optional.

The tiny exported model (as in test_calibration) is rewritten; assertions compare what ONNX Runtime
computes before and after, and the per-channel ranges the quantiser will see.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import export_tiny_float

from ckbd.errors import CkbdError
from ckbd.runtime.manifest import Manifest

DATA = Path(__file__).parent / "data"
IMAGES = sorted(DATA.glob("*.png"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_float(tmp_path_factory)


def _synthesis(model_dir: Path):  # type: ignore[no-untyped-def]
    import onnx

    return onnx.load(str(model_dir / "latent_synthesis.onnx"))


def _feeds(model_dir: Path, count: int = 2) -> list[dict[str, np.ndarray]]:
    from ckbd.calibration.data import latent_feeds
    from ckbd.runtime.imageio import read_image

    feed = latent_feeds(model_dir, threads=1)
    return [feed(read_image(path, quiet=True)) for path in IMAGES[:count]]


def _run(model, feed: dict[str, np.ndarray],  # type: ignore[no-untyped-def]
         outputs: list[str] | None = None) -> list[np.ndarray]:
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in outputs or [])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run([o.name for o in probe.graph.output], feed)  # type: ignore[no-any-return]


def test_layers_and_latent_input_are_found_structurally(exported: Path) -> None:
    from ckbd.calibration.equalize import input_site, norm_layers

    model = _synthesis(exported)
    layers = norm_layers(model)
    assert len(layers) == 3  # the three IGDNs of g_s
    for layer in layers:
        assert len(layer.producers) == len(layer.norms) == len(layer.outputs) == 4  # one per phase
        assert layer.readers  # the next layer's phases, or the image-writing transposed conv
    assert layers[-1].readers == ("/g_s/g_s.3/ConvTranspose",)
    site = input_site(model)
    assert site is not None and len(site.readers) == 4
    assert set(site.readers) == set(layers[0].producers)


def test_equalisation_keeps_the_function_and_evens_the_channels(exported: Path) -> None:
    from ckbd.calibration.equalize import equalize_channels, norm_layers

    model = _synthesis(exported)
    feeds = _feeds(exported)
    outputs = [name for layer in norm_layers(model) for name in layer.outputs]
    before = _run(model, feeds[1], outputs)
    note = equalize_channels(model, feeds, threads=1)
    after = _run(model, feeds[1], outputs)
    assert note["gdn_layers"] == 3 and note["latent_input"] is True
    assert note["rewrite_error"] < 1e-4
    image_before, image_after = before[0].astype(np.int32), after[0].astype(np.int32)
    assert np.abs(image_before - image_after).max() <= 1  # same pixels, but for a float last bit
    assert np.mean(image_before != image_after) < 0.01

    def spread(values: list[np.ndarray]) -> float:
        peaks = np.max([np.abs(v).max(axis=(0, 2, 3)) for v in values], axis=0)
        return float(peaks.max() / np.median(peaks))

    for k in range(3):  # each layer's four phase outputs, as the quantiser sees them
        phases = slice(1 + 4 * k, 5 + 4 * k)
        assert spread(after[phases]) < spread(before[phases])


def test_a_rewrite_that_changes_the_function_is_refused(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ckbd.calibration import equalize

    def wrong_axis(model, site, scales):  # type: ignore[no-untyped-def]
        """Scale the latent but forget to divide it back out of the first layer."""
        from onnx import helper, numpy_helper

        factor = numpy_helper.from_array(np.asarray(scales, np.float32).reshape(1, -1, 1, 1), "wrong_scales")
        model.graph.initializer.append(factor)
        nodes = list(model.graph.node)
        first = min(i for i, node in enumerate(nodes) if node.name in site.readers)
        model.graph.node.insert(first, helper.make_node("Mul", [site.tensor, "wrong_scales"], ["wrong"]))
        for node in model.graph.node:
            if node.name in site.readers:
                node.input[0] = "wrong"

    monkeypatch.setattr(equalize, "equalize_input", wrong_axis)
    model = _synthesis(exported)
    with pytest.raises(CkbdError, match="changed the float graph's output"):
        equalize.equalize_channels(model, _feeds(exported, 1), threads=1)


def test_channel_scales_are_bounded() -> None:
    from ckbd.calibration.equalize import MAX_SCALE, channel_scales

    scales = channel_scales(np.array([10.0, 5.0, 1e-9, 0.0]), strength=1.0)
    assert scales[0] == 1.0 and scales[1] == 2.0
    assert scales[2] == scales[3] == MAX_SCALE
    assert np.all(channel_scales(np.array([3.0, 1.0]), strength=0.0) == 1.0)
    assert np.all(channel_scales(np.zeros(3), strength=1.0) == 1.0)


def test_calibrate_records_the_equalisation_and_can_skip_it(exported: Path, tmp_path: Path) -> None:
    from ckbd.calibration import calibrate

    notes = {}
    for equalize in (True, False):
        model_dir = tmp_path / str(equalize)
        shutil.copytree(exported, model_dir)
        calibrate(model_dir, IMAGES, method="minmax", count=2, threads=1, progress=False, target="cpu",
                  equalize=equalize)
        notes[equalize] = Manifest.load(model_dir).extra["calibration"]["latent_synthesis"]
    assert notes[True]["equalization"]["gdn_layers"] == 3 and notes[True]["equalize"] is True
    assert "equalization" not in notes[False] and notes[False]["equalize"] is False


def test_cli_no_equalize(exported: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(exported, model_dir)
    done = subprocess.run([sys.executable, "-m", "ckbd", "calibrate", str(model_dir), "--images", str(DATA),
                           "--count", "2", "--method", "minmax", "--target", "cpu", "--no-equalize", "--threads", "1",
                           "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "equalization" not in Manifest.load(model_dir).extra["calibration"]["latent_synthesis"]
