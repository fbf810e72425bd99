"""The integer entropy-parameter path: exact on every backend and configuration, by construction.

Tiny models and generated images; the graphs are compared element by element with the int64
numpy reference (``runtime/intparams_reference.py``), which is written from the rules alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from conftest import rgb_array, tiny_model

from ckbd.errors import BitstreamError, ModelMismatchError
from ckbd.export.integer_quantize import QuantConfig, quantize_model
from ckbd.export.integer_stages import integer_stage_modules
from ckbd.export.onnx_export import export_model
from ckbd.export.torch_backend import open_reference
from ckbd.runtime import intparams_reference as ref
from ckbd.runtime.codec import Decoder, Encoder
from ckbd.runtime.entropy_tables import default_scale_table
from ckbd.runtime.intparams import ACC_LIMIT, IntegerParams
from ckbd.runtime.manifest import Manifest

ARCHS = ("mbt2018-ckbd", "cheng2020-ckbd")
LEVELS = ("disable", "basic", "all")


def calibration() -> list[np.ndarray]:
    return [rgb_array(128, 192, seed=s) for s in range(3)]


@pytest.fixture(scope="module", params=ARCHS)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """(model, spec, integer model dir) per architecture."""
    model = tiny_model(request.param)
    spec = quantize_model(model, calibration(), default_scale_table())
    out = tmp_path_factory.mktemp(request.param) / "model"
    export_model(model, out, integer_params=spec)
    return model, spec, out


def _inputs(spec: IntegerParams, seed: int, spread: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Random z symbols and decoded anchors (symbol + a fixed-point mean) of a 128x192 image."""
    rng = np.random.default_rng(seed)
    z = rng.integers(-spread, spread + 1, size=(1, spec.N, 2, 3)).astype(np.int32)
    hyper = ref.hyper_synthesis(spec, z)
    _, means = ref.anchor_params(spec, hyper)
    symbols = rng.integers(-spread, spread + 1, size=means.shape)
    return z, (symbols + ref.means_to_float(means)).astype(np.float32)


def _ort_outputs(model_dir: Path, z: np.ndarray, anchor_hat: np.ndarray, **options: object) -> dict[str, np.ndarray]:
    from ckbd.runtime.ort_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(**options)  # type: ignore[arg-type]
    hyper = backend.load(model_dir, "hyper_synthesis").run({"z_symbols": z})["hyper"]
    out = {"hyper": hyper}
    out.update(backend.load(model_dir, "anchor_params").run({"hyper": hyper}))
    out.update(backend.load(model_dir, "nonanchor_params").run({"hyper": hyper, "anchor_hat": anchor_hat}))
    return out  # type: ignore[return-value]


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("threads", (1, 2))
def test_onnx_graphs_equal_the_int64_reference(exported, level: str, threads: int) -> None:  # type: ignore[no-untyped-def]
    _, spec, model_dir = exported
    for seed in (0, 1):
        z, anchor_hat = _inputs(spec, seed)
        got = _ort_outputs(model_dir, z, anchor_hat, threads=threads, optimization=level)
        _assert_same(got, ref.stage_outputs(spec, z, anchor_hat))


def test_saturation_is_part_of_the_rules(exported) -> None:  # type: ignore[no-untyped-def]
    """Huge z symbols and decoded anchors (a hostile stream) saturate identically everywhere."""
    _, spec, model_dir = exported
    z, anchor_hat = _inputs(spec, 2, spread=3)
    z[0, :, 0, 0] = 2**30
    z[0, :, 1, 2] = -(2**20)
    anchor_hat[0, :, 0, :] = 1e9
    anchor_hat[0, :, 1, :] = -3e4
    want = ref.stage_outputs(spec, z, anchor_hat)
    milder_z, milder_anchors = z.copy(), anchor_hat.copy()  # still beyond the limits: same result
    milder_z[0, :, 0, 0], milder_z[0, :, 1, 2] = 2**15, -(2**15)
    milder_anchors[0, :, 0, :] = 2**15
    _assert_same(ref.stage_outputs(spec, milder_z, milder_anchors), want)
    _assert_same(_ort_outputs(model_dir, z, anchor_hat, threads=1, optimization="all"), want)
    modules = integer_stage_modules(spec, torch.float64)
    with torch.no_grad():
        hyper = modules["hyper_synthesis"](torch.from_numpy(z)).numpy()
        n_idx, n_mean = modules["nonanchor_params"](torch.from_numpy(hyper), torch.from_numpy(anchor_hat))
    np.testing.assert_array_equal(hyper, want["hyper"])
    np.testing.assert_array_equal(n_idx.numpy(), want["nonanchor_indexes"])
    np.testing.assert_array_equal(n_mean.numpy(), want["nonanchor_means"])


def test_every_layer_satisfies_the_exactness_bound(exported) -> None:  # type: ignore[no-untyped-def]
    _, spec, _ = exported
    """The worst accumulator (|w| against inputs all at the bound) stays below the exact range."""
    layers = [*spec.hyper, spec.context, *spec.anchor.layers, *spec.nonanchor.layers]
    bound = max(spec.z_bound, spec.context_bound, *(layer.bound for layer in layers))
    for layer in layers:
        assert layer.weight.dtype == np.int64
        channels = layer.weight.shape[0 if layer.kind == "deconv" else 1]
        worst_input = np.full((1, channels, 5, 5), bound, dtype=np.int64)
        absw, absb = np.abs(layer.weight), np.abs(layer.bias)
        if layer.kind == "deconv":
            worst = ref.deconv2d(worst_input, absw, absb, layer.stride, layer.padding)
        else:
            worst = ref.conv2d(worst_input, absw, absb, 1, layer.weight.shape[-1] // 2)
        assert 0 < worst.max() < ACC_LIMIT


def test_spec_round_trips_and_the_fingerprint_covers_it(exported, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, spec, model_dir = exported
    loaded = IntegerParams.load(model_dir / "entropy_params.npz")
    assert loaded.digest() == spec.digest()
    manifest = Manifest.load(model_dir)
    assert manifest.entropy_params == "integer"
    float_dir = tmp_path / "float"
    float_manifest = export_model(model, float_dir)
    assert float_manifest.entropy_params == "float" and float_manifest.integer_params is None
    assert float_manifest.fingerprint != manifest.fingerprint
    coarser = quantize_model(model, calibration(), default_scale_table(), QuantConfig(activation_bits=6))
    assert coarser.digest() != spec.digest()


def test_streams_decode_identically_on_every_configuration(exported) -> None:  # type: ignore[no-untyped-def]
    model, spec, model_dir = exported
    image = rgb_array(100, 150, seed=7)
    encoded = Encoder.open(model_dir).encode_detailed(image)
    assert encoded.data[4] == 2 and encoded.data[6] & 1  # version 2, integer-path flag
    decoders = [Decoder.open(model_dir, threads=t, optimization=level) for level in LEVELS for t in (1, 2)]
    decoders.append(open_reference(Decoder, model, integer_params=spec))
    for decoder in decoders:
        decoded = decoder.decode_detailed(encoded.data)
        assert decoded.latents.equals(encoded.latents)
    # and the other way round: a torch-encoded stream decodes on ONNX Runtime
    torch_stream = open_reference(Encoder, model, integer_params=model_dir).encode(image)
    Decoder.open(model_dir, threads=1, optimization="disable").decode(torch_stream)


def test_a_path_mismatch_is_refused_with_what_to_do(exported, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, _, model_dir = exported
    data = Encoder.open(model_dir).encode(rgb_array(64, 64, seed=3))
    float_dir = tmp_path / "float"
    export_model(model, float_dir)
    with pytest.raises(ModelMismatchError, match="integer entropy-parameter path.*--entropy-params integer"):
        Decoder.open(float_dir).decode(data)


def test_float_path_failures_name_the_likely_cause(exported, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, _, _ = exported
    float_dir = tmp_path / "float"
    export_model(model, float_dir)
    data = bytearray(Encoder.open(float_dir).encode(rgb_array(64, 64, seed=3)))
    data[-3] ^= 0x10  # a payload change: decodes to other symbols or fails in the range decoder
    with pytest.raises(BitstreamError, match="float-path stream .* backend, thread count or precision"):
        Decoder.open(float_dir).decode(bytes(data))


def test_integer_rate_and_indexes_track_the_float_model(exported) -> None:  # type: ignore[no-untyped-def]
    """Quantisation changes the coded size by little (measured on Kodak in docs/RESULTS.md)."""
    model, _, model_dir = exported
    image = rgb_array(128, 192, seed=11)
    integer_bits = Encoder.open(model_dir).encode_detailed(image).estimated_bits
    reference_bits = open_reference(Encoder, model).encode_detailed(image).estimated_bits
    assert integer_bits is not None and reference_bits is not None
    assert abs(integer_bits / reference_bits - 1) < 0.05


def test_guessed_index_equals_the_count_rule_everywhere(exported) -> None:  # type: ignore[no-untyped-def]
    """The one-gather index of the graphs against the plain count, at and around every threshold."""
    from ckbd.export.integer_stages import GuessedIndex, integer_binary_search

    _, spec, _ = exported
    thresholds = spec.nonanchor.thresholds
    assert spec.nonanchor.guess is not None
    near = np.concatenate([thresholds + d for d in (-1, 0, 1)])
    acc = np.concatenate((near, [-(2**23), -5, 0, 1, 2**23 - 1], np.random.default_rng(0).integers(-10, 2**23, 5000)))
    acc = acc[np.abs(acc) < ACC_LIMIT]  # what an exact layer can produce
    want = (acc[:, None] > thresholds[None, :]).sum(axis=1)
    for rule in (GuessedIndex(thresholds, spec.nonanchor.guess, torch.float32), integer_binary_search(thresholds)):
        got = rule(torch.as_tensor(acc, dtype=torch.float32).reshape(1, -1, 1, 1)).reshape(-1).numpy()
        np.testing.assert_array_equal(got, want)


def test_index_guess_refuses_tables_it_cannot_prove() -> None:
    from ckbd.export.integer_quantize import index_guess

    assert index_guess(np.array([10, 20, 40, 80, 160, 320])) is not None  # geometric: provable
    assert index_guess(np.array([10, 11, 5000, 5001, 90000])) is None  # far from log-spaced


def test_shipped_model_is_integer_and_export_default_reproduces_it(tmp_path: Path) -> None:
    from ckbd.cli.main import main
    from ckbd.runtime.package import default_model_dir

    shipped = Manifest.load(default_model_dir())
    assert shipped.entropy_params == "integer"
    out = tmp_path / "default"
    assert main(["-q", "export", "--default", "-o", str(out), "--stages", "anchor_params"]) == 0
    assert Manifest.load(out).fingerprint == shipped.fingerprint


def test_cli_torch_backend_decodes_an_onnx_stream_of_the_shipped_model(tmp_path: Path) -> None:
    from ckbd.cli.main import main
    from ckbd.runtime.imageio import read_image

    source = Path(__file__).parent / "data" / "kodim23_crop.png"
    stream, onnx_png, torch_png = tmp_path / "a.ckbd", tmp_path / "onnx.png", tmp_path / "torch.png"
    assert main(["encode", str(source), "-o", str(stream), "-q"]) == 0
    assert main(["decode", str(stream), "-o", str(onnx_png), "-q"]) == 0
    assert main(["decode", str(stream), "-o", str(torch_png), "--backend", "torch", "-q"]) == 0
    difference = np.abs(read_image(onnx_png).astype(int) - read_image(torch_png).astype(int))
    assert difference.max() <= 1  # synthesis is float on both; every symbol was identical (CRC)


def test_determinism_check_reports_per_configuration(exported, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Exact configurations score clean; a mismatching one is a row of failures and flips, not a crash."""
    from ckbd.tools.check.determinism import _ort, format_table, report_json, run_check

    model, _, model_dir = exported
    other = tmp_path / "other"  # same weights, another calibration: other indexes, other fingerprint
    export_model(model, other, integer_params=quantize_model(model, calibration(), default_scale_table(),
                                                              QuantConfig(activation_bits=5)))
    configs = {"ort-disable-1t": _ort(model_dir, threads=1, optimization="disable"),
               "torch": lambda: open_reference(Decoder, model, integer_params=model_dir),
               "mismatched": lambda: Decoder.open(other)}
    images = [rgb_array(64, 128, seed=s) for s in (1, 2)]
    report = run_check(model_dir, images, configs=configs, progress=False)
    rows = {row.name: row for row in report.configs}
    for name in ("ort-disable-1t", "torch"):
        assert (rows[name].decoded, rows[name].failed, rows[name].index_flips) == (2, 0, 0)
    assert rows["mismatched"].failed == 2 and rows["mismatched"].index_flips > 0
    assert not report.all_exact
    assert "mismatched" in format_table(report) and '"all_exact": false' in report_json(report)


def test_check_determinism_command(exported, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    """``ckbd check determinism``: every ONNX Runtime configuration here is exact on the integer path."""
    import json

    from PIL import Image

    from ckbd.cli.main import main

    _, _, model_dir = exported
    Image.fromarray(rgb_array(64, 128, seed=4)).save(tmp_path / "a.png")
    out = tmp_path / "det.json"
    assert main(["check", "determinism", str(model_dir), str(tmp_path / "a.png"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["all_exact"] and {"ort-disable-1t", "ort-all-2t"} <= {c["name"] for c in report["configs"]}
    assert "ort-basic-1t" in capsys.readouterr().out


def test_graphs_equal_the_reference_on_an_encoders_own_latents(exported) -> None:  # type: ignore[no-untyped-def]
    """Real inputs: the z symbols and decoded anchors an encode of a photo-like image produces."""
    _, spec, model_dir = exported
    latents = Encoder.open(model_dir).encode_detailed(rgb_array(192, 256, seed=5), estimate=False).latents
    want = ref.stage_outputs(spec, latents.z_symbols, latents.anchor_hat)
    for level in LEVELS:
        _assert_same(_ort_outputs(model_dir, latents.z_symbols, latents.anchor_hat, threads=2, optimization=level), want)


def test_rounding_past_the_exactness_bound_coarsens_the_scale_instead_of_failing() -> None:
    """Many weights just over half a unit each round up by almost 100 %, far past the scale's 1 % headroom."""
    from torch import nn

    from ckbd.export import integer_quantize as iq
    from ckbd.runtime.intparams import ACC_LIMIT

    conv = nn.Conv2d(7200, 2, 3, padding=1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
    in_bound = 255
    first = iq._weight_scales(conv.weight.detach().numpy(), np.zeros(2), "conv", 1, 1, in_bound, QuantConfig())
    assert np.all(np.round(1.0 / first) * 7200 * 9 * in_bound >= ACC_LIMIT)  # plain rounding would break it
    layer, scales = iq._layer(conv, conv.weight.detach().numpy(), np.ones(7200), in_bound, None, None, QuantConfig())
    assert np.all(np.abs(layer.weight).sum(axis=(1, 2, 3)) * in_bound + np.abs(layer.bias) < ACC_LIMIT)
    assert np.all(scales > first)
