"""Export: the optimised torch stage forms equal the plain forms, and the scale-index rules equal
the runtime rule (in torch and on ONNX Runtime).

Models are tiny (N=32 or less), so the whole file stays well under a minute on one core.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from export_models import (
    CONFIGS,
    IMAGE_SIZES,
    TABLE,
    one_torch_thread,  # noqa: F401  (autouse: one torch thread in this module)
    rel_err,
    stage_inputs,
    tiny_model,
)

from ckbd.export import optimize as opt
from ckbd.export.stage_modules import ScaleIndex, plain_stage_modules
from ckbd.models.layers import GDN, MaskedConv2d, checkerboard_kernel_mask, deconv
from ckbd.runtime.entropy_tables import scale_to_index
from ckbd.runtime.stages import ALL_STAGES, STAGE_IO

# ---------------------------------------------------------------------------------------------
# Optimised torch forms == plain forms


def test_baked_gdn_and_masked_conv_equal_the_originals() -> None:
    torch.manual_seed(1)
    x = torch.randn(1, 16, 6, 10)
    for inverse in (False, True):
        gdn = GDN(16, inverse=inverse)
        with torch.no_grad():
            gdn.beta.add_(torch.rand(16))
            gdn.gamma.add_(0.1 * torch.rand(16, 16))
            assert rel_err(gdn(x), opt.BakedGDN(gdn)(x)) <= 1e-5
    masked = MaskedConv2d(8, 16, 5, padding=2, mask=checkerboard_kernel_mask(5))
    x = torch.randn(1, 8, 6, 10)
    with torch.no_grad():
        assert rel_err(masked(x), opt.bake_masked_conv(masked)(x)) <= 1e-5


@pytest.mark.parametrize("c_out", [24, 3])
def test_deconv_rewrites_are_exact(c_out: int) -> None:
    torch.manual_seed(2)
    layer = deconv(16, c_out)
    x = torch.randn(1, 16, 5, 7)
    with torch.no_grad():
        ref = layer(x)
        subpel = opt.subpixel_deconv(layer)
        assert isinstance(subpel[0], torch.nn.Conv2d) and subpel[0].kernel_size == (3, 3)
        assert subpel[0].out_channels == 4 * c_out
        assert rel_err(ref, subpel(x)) <= 1e-5
        assert rel_err(ref, opt.PhaseDeconv(layer)(x)) <= 1e-5
    # Narrow outputs stay transposed convs (blocked conv kernels would pad them: slower).
    assert (opt.fast_deconv(layer) is layer) == (c_out < opt.MIN_PHASE_CHANNELS)


@pytest.mark.parametrize("parity", ["even", "odd"])
def test_packed_context_equals_model_context(parity: str) -> None:
    model = tiny_model("mbt2018-ckbd", 16, 24, parity)
    context = opt.PackedContext(model.context_prediction, parity)
    rng = np.random.default_rng(3)
    for h, w in [(4, 4), (4, 8), (8, 12), (12, 8), (12, 20)]:
        anchors = torch.from_numpy((4 * rng.standard_normal((1, 24, h, w // 2))).astype(np.float32))
        with torch.no_grad():
            assert rel_err(model.nonanchor_context(anchors), context(anchors)) <= 1e-5, (h, w)


def test_anchor_entropy_parameters_skip_the_zero_context() -> None:
    model = tiny_model("mbt2018-ckbd", 16, 24, "even")
    net = opt.anchor_entropy_parameters(model.entropy_parameters, 48)
    assert net[0].in_channels == 48
    hyper = torch.randn(1, 48, 4, 4)
    with torch.no_grad():
        scales, means = model.anchor_params(hyper)
        assert rel_err(torch.cat((scales, means), 1), net(hyper)) <= 1e-5


def adversarial_scales(table: np.ndarray) -> np.ndarray:
    """Every threshold and its float32 neighbours, specials, and a log-uniform spread."""
    t = table.astype(np.float32)
    near = np.concatenate([t, np.nextafter(t, np.float32(np.inf)), np.nextafter(t, np.float32(0))])
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e-30, 1e30], dtype=np.float32)
    spread = np.exp(np.random.default_rng(4).uniform(-5, 7, 2000)).astype(np.float32)
    return np.concatenate([near, specials, spread]).reshape(1, 1, -1, 1)


@pytest.mark.parametrize("kind", [opt.LogTableIndex, opt.SortedTableIndex, ScaleIndex])
def test_index_rules_match_the_runtime_rule(kind: type, tmp_path: Path) -> None:
    scales = adversarial_scales(TABLE)
    expected = scale_to_index(scales, TABLE)
    module = kind(torch.from_numpy(TABLE)).eval()
    with torch.no_grad():
        got = module(torch.from_numpy(scales))
    assert got.dtype == torch.int32
    np.testing.assert_array_equal(got.numpy(), expected)
    path = tmp_path / "index.onnx"  # and the exported rule on ONNX Runtime
    with torch.no_grad():
        torch.onnx.export(module, (torch.from_numpy(scales),), str(path), input_names=["s"],
                          output_names=["i"], dynamic_axes={"s": {2: "n"}}, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"s": scales})[0], expected)


def test_fast_indexer_falls_back_for_other_tables() -> None:
    uneven = torch.tensor([0.1, 0.2, 5.0, 6.0, 100.0])
    assert isinstance(opt.fast_indexer(torch.from_numpy(TABLE)), opt.LogTableIndex)
    assert isinstance(opt.fast_indexer(uneven), opt.SortedTableIndex)
    assert isinstance(opt.fast_indexer(torch.tensor([0.5, 0.2, 1.0])), ScaleIndex)
    scales = adversarial_scales(uneven.numpy())
    with torch.no_grad():
        got = opt.fast_indexer(uneven)(torch.from_numpy(scales)).numpy()
    np.testing.assert_array_equal(got, scale_to_index(scales, uneven.numpy()))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c[0]}-{c[3]}")
def test_optimized_stages_equal_plain(config: tuple[str, int, int, str]) -> None:
    arch, N, M, parity = config
    model = tiny_model(arch, N, M, parity)
    plain = plain_stage_modules(model, TABLE)
    fast = opt.optimized_stage_modules(model, TABLE)
    rng = np.random.default_rng(5)
    for H, W in IMAGE_SIZES:
        hyper = None
        for stage in ALL_STAGES:
            feeds = stage_inputs(stage, N, M, H, W, rng, hyper)
            args = [torch.from_numpy(feeds[s.name]) for s in STAGE_IO[stage][0]]
            with torch.inference_mode():
                ref, got = plain[stage](*args), fast[stage](*args)
            ref, got = (ref if isinstance(ref, tuple) else (ref,)), (got if isinstance(got, tuple) else (got,))
            for spec, r, g in zip(STAGE_IO[stage][1], ref, got):
                assert r.shape == g.shape and r.dtype == g.dtype, (stage, spec.name)
                if spec.dtype == "float32":
                    assert rel_err(r, g) <= 1e-4, (stage, spec.name)
                elif spec.dtype == "uint8":
                    assert int((r.int() - g.int()).abs().max()) <= 1, (stage, spec.name)
                else:  # z symbols / indexes: rounding of nearly equal floats may differ by one
                    assert int((r - g).abs().max()) <= 1 and float((r != g).float().mean()) < 1e-3
            if stage == "hyper_synthesis":
                hyper = ref[0].numpy()
