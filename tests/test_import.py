"""Importing CompressAI-style checkpoints.

CompressAI is not a dependency, so each test writes a *synthetic* checkpoint in a foreign layout:
a random ckbd model's weights renamed and permuted the way that layout stores them (written here
from the source projects' conventions, independently of the importer), with the buffers those
projects save. Importing it back must reproduce the original model's eval outputs exactly.

Layout facts used (see the report / module docstring of ckbd.models.compressai_import):
- CompressAI latent codecs (Cheng2020AnchorCheckerboard, compressai 1.2.8): keys
  ``latent_codec.hyper.{h_a,h_s,entropy_bottleneck}``, ``latent_codec.y.{context_prediction,
  entropy_parameters}``, ``latent_codec.y.y.gaussian_conditional``; merge(ctx, hyper); chunk
  (scales, means); anchors at even row + col.
- CompressAI flat models (JointAutoregressiveHierarchicalPriors, MeanScaleHyperprior): cat(hyper,
  ctx); raster mask saved as ``context_prediction.mask``; bottleneck ``matrices.i`` (>= 1.2) or
  ``_matrix{i}`` (older).
- Public Cheng2020Anchor checkerboard subclass: flat keys, cat(ctx, hyper), anchors at odd row + col.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ckbd.errors import ModelError  # noqa: E402
from ckbd.models.checkpoint import load_model, save_checkpoint  # noqa: E402
from ckbd.models.compressai_import import import_compressai  # noqa: E402

COMPRESSAI_EB = (3, 3, 3, 3)  # CompressAI's EntropyBottleneck default filters


# --- writing foreign layouts ------------------------------------------------------------------


def checkerboard_mask(out_ch: int, in_ch: int) -> torch.Tensor:
    mask = torch.ones(out_ch, in_ch, 5, 5)
    mask[:, :, 0::2, 0::2] = 0
    mask[:, :, 1::2, 1::2] = 0
    return mask


def raster_mask(out_ch: int, in_ch: int) -> torch.Tensor:
    mask = torch.ones(out_ch, in_ch, 5, 5)
    mask[:, :, 2, 2:] = 0
    mask[:, :, 3:] = 0
    return mask


def eb_name(index_key: str, old_names: bool) -> str:
    """``_matrices.3`` -> ``matrices.3`` (compressai >= 1.2) or ``_matrix3`` (older)."""
    plural, index = index_key.split(".")
    singular = {"_matrices": "_matrix", "_biases": "_bias", "_factors": "_factor"}[plural]
    return f"{singular}{index}" if old_names else f"{plural[1:]}.{index}"


def compressai_buffers(state: dict, eb_prefix: str, gc_prefix: str | None) -> None:
    """Add the buffers CompressAI saves next to the weights (all recomputed by ckbd)."""
    for key in [k for k in state if k.endswith((".beta", ".gamma"))]:
        state[f"{key}_reparam.pedestal"] = torch.tensor([2.0**-36])
        state[f"{key}_reparam.lower_bound.bound"] = torch.tensor([1e-3])
    for name in ("_offset", "_quantized_cdf", "_cdf_length"):
        state[f"{eb_prefix}{name}"] = torch.zeros(0, dtype=torch.int32)
    state[f"{eb_prefix}target"] = torch.tensor([-20.7, 0.0, 20.7])
    state[f"{eb_prefix}likelihood_lower_bound.bound"] = torch.tensor([1e-9])
    if gc_prefix is not None:
        for name in ("_offset", "_quantized_cdf", "_cdf_length", "scale_table"):
            state[f"{gc_prefix}{name}"] = torch.zeros(0)
        state[f"{gc_prefix}scale_bound"] = torch.tensor([0.11])
        state[f"{gc_prefix}likelihood_lower_bound.bound"] = torch.tensor([1e-9])
        state[f"{gc_prefix}lower_bound_scale.bound"] = torch.tensor([0.11])


def ctx_first(weight: torch.Tensor) -> torch.Tensor:
    """ckbd's first entropy-parameters conv reads (hyper[2M], ctx[2M]); reorder to (ctx, hyper)."""
    two_m = weight.shape[1] // 2
    order = list(range(two_m, 2 * two_m)) + list(range(two_m))
    return weight[:, order]


def means_first(state: dict, layer: str) -> None:
    """ckbd's last layer yields (scales[M], means[M]); reorder its outputs to (means, scales)."""
    for suffix in ("weight", "bias"):
        t = state[f"{layer}.{suffix}"]
        m = t.shape[0] // 2
        state[f"{layer}.{suffix}"] = torch.cat((t[m:], t[:m]))


def to_latent_codec(model) -> dict:
    """Cheng2020AnchorCheckerboard / HyperpriorLatentCodec + CheckerboardLatentCodec layout."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith(("h_a.", "h_s.")):
            out[f"latent_codec.hyper.{key}"] = value
        elif key.startswith("entropy_bottleneck."):
            sub = key.split(".", 1)[1]
            sub = sub if sub == "quantiles" else eb_name(sub, old_names=False)
            out[f"latent_codec.hyper.entropy_bottleneck.{sub}"] = value
        elif key.startswith("context_prediction."):
            out[f"latent_codec.y.{key}"] = value
        elif key == "entropy_parameters.0.weight":
            out[f"latent_codec.y.{key}"] = ctx_first(value)
        elif key.startswith("entropy_parameters."):
            out[f"latent_codec.y.{key}"] = value
        else:
            out[key] = value
    M = model.config.M
    out["latent_codec.y.context_prediction.mask"] = checkerboard_mask(2 * M, M)
    ctx_key = "latent_codec.y.context_prediction.weight"
    out[ctx_key] = out[ctx_key] * checkerboard_mask(2 * M, M)  # CompressAI masks weights in place
    compressai_buffers(out, "latent_codec.hyper.entropy_bottleneck.", "latent_codec.y.y.gaussian_conditional.")
    return out


def to_flat(model, *, old_eb_names: bool, context_first: bool, mask: str | None) -> dict:
    """CompressAI's flat layout (mbt2018 family, and Cheng2020Anchor subclasses)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("entropy_bottleneck.") and not key.endswith("quantiles"):
            key = "entropy_bottleneck." + eb_name(key.split(".", 1)[1], old_eb_names)
        elif key == "entropy_parameters.0.weight" and context_first:
            value = ctx_first(value)
        out[key] = value
    if mask is not None:
        M = model.config.M
        pattern = {"checkerboard": checkerboard_mask, "raster": raster_mask}[mask](2 * M, M)
        out["context_prediction.mask"] = pattern
        out["context_prediction.weight"] = out["context_prediction.weight"] * pattern
    compressai_buffers(out, "entropy_bottleneck.", "gaussian_conditional.")
    return out


def outputs(model, x):
    with torch.no_grad():
        out = model.eval()(x)
    return out.x_hat, out.y_likelihoods, out.z_likelihoods


def assert_same_outputs(imported, original, x):
    for got, want in zip(outputs(imported, x), outputs(original, x)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


# --- the supported layouts ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["cheng2020-ckbd", "mbt2018-ckbd"])
def test_latent_codec_layout(make_model, image, arch):
    original = make_model(arch, parity="even", eb_filters=COMPRESSAI_EB)
    imported = import_compressai(to_latent_codec(original))
    assert imported.config == original.config
    assert not imported.training
    assert_same_outputs(imported, original, image)


def test_latent_codec_parity_override(make_model, image):
    original = make_model("cheng2020-ckbd", parity="odd", eb_filters=COMPRESSAI_EB)
    raw = to_latent_codec(original)
    assert_same_outputs(import_compressai(raw, anchor_parity="odd"), original, image)
    wrong = import_compressai(raw)  # CompressAI's default, even: a different model
    assert wrong.config.anchor_parity == "even"
    assert not torch.allclose(outputs(wrong, image)[1], outputs(original, image)[1])


@pytest.mark.parametrize("old_eb_names", [False, True])
def test_mbt2018_serial(make_model, image, old_eb_names):
    original = make_model("mbt2018", eb_filters=COMPRESSAI_EB)
    raw = to_flat(original, old_eb_names=old_eb_names, context_first=False, mask="raster")
    imported = import_compressai(raw)
    assert imported.config.arch == "mbt2018"
    assert_same_outputs(imported, original, image)


def test_mbt2018_serial_detected_from_zeroed_weights(make_model, image):
    """CompressAI masks weights in place, so even without the mask buffer the zeros tell."""
    original = make_model("mbt2018", eb_filters=COMPRESSAI_EB)
    raw = to_flat(original, old_eb_names=False, context_first=False, mask="raster")
    del raw["context_prediction.mask"]
    assert import_compressai(raw).config.arch == "mbt2018"


def test_mbt2018_mean(make_model, image):
    original = make_model("mbt2018-mean", eb_filters=COMPRESSAI_EB)
    imported = import_compressai(to_flat(original, old_eb_names=False, context_first=False, mask=None))
    assert imported.config == original.config
    assert_same_outputs(imported, original, image)


def test_mbt2018_layout_as_checkerboard(make_model, image):
    """The public CheckerboardJointAutogressivev2 convention: cat(ctx, hyper), odd anchors."""
    original = make_model("mbt2018-ckbd", parity="odd", eb_filters=COMPRESSAI_EB)
    raw = to_flat(original, old_eb_names=False, context_first=True, mask=None)
    imported = import_compressai(raw, arch="mbt2018-ckbd")
    assert imported.config == original.config
    assert_same_outputs(imported, original, image)
    with_mask = to_flat(original, old_eb_names=False, context_first=True, mask="checkerboard")
    assert import_compressai(with_mask).config.arch == "mbt2018-ckbd"  # the mask says so


def test_cheng_flat_public_layout(make_model, image):
    """Cheng2020Anchor subclass: old bottleneck names (compressai 1.1), cat(ctx, hyper), odd."""
    original = make_model("cheng2020-ckbd", parity="odd", eb_filters=COMPRESSAI_EB)
    raw = to_flat(original, old_eb_names=True, context_first=True, mask="checkerboard")
    imported = import_compressai(raw)
    assert imported.config == original.config
    assert_same_outputs(imported, original, image)


def test_means_first_source(make_model, image):
    original = make_model("mbt2018-ckbd", parity="odd", eb_filters=COMPRESSAI_EB)
    raw = to_flat(original, old_eb_names=False, context_first=True, mask="checkerboard")
    means_first(raw, "entropy_parameters.4")
    assert_same_outputs(import_compressai(raw, chunk_order="means-scales"), original, image)
    mean_scale = make_model("mbt2018-mean", eb_filters=COMPRESSAI_EB)
    raw = to_flat(mean_scale, old_eb_names=False, context_first=False, mask=None)
    means_first(raw, "h_s.4")
    assert_same_outputs(import_compressai(raw, chunk_order="means-scales"), mean_scale, image)


def test_bare_ckbd_state_dict(make_model, image):
    original = make_model("mbt2018-ckbd", parity="even")
    imported = import_compressai(dict(original.state_dict()))
    assert imported.config == original.config
    assert_same_outputs(imported, original, image)


# --- wrappers, prefixes, errors -----------------------------------------------------------------


@pytest.mark.parametrize("wrap", ["state_dict", "model", "network", "module", "nested"])
def test_wrapped_and_prefixed(make_model, image, wrap):
    original = make_model("cheng2020-ckbd", eb_filters=COMPRESSAI_EB)
    state = to_latent_codec(original)
    if wrap == "module":
        raw = {f"module.{k}": v for k, v in state.items()}
    elif wrap == "nested":
        raw = {"epoch": 7, "model": {"state_dict": {f"module.{k}": v for k, v in state.items()}}}
    else:
        raw = {wrap: state, "epoch": 3, "loss": 0.5}
    assert_same_outputs(import_compressai(raw), original, image)


def test_unrecognised_checkpoint_lists_missing_keys():
    raw = {"encoder.conv.weight": torch.zeros(4, 3, 3, 3), "decoder.conv.weight": torch.zeros(3, 4, 3, 3)}
    with pytest.raises(ModelError) as err:
        import_compressai(raw)
    message = str(err.value)
    for key in ("g_a.0.weight", "h_a.0.weight", "entropy_bottleneck.quantiles"):
        assert key in message
    assert "encoder.conv.weight" in message  # a few unexpected keys are named too


def test_incomplete_checkpoint_names_missing_and_unexpected(make_model):
    raw = to_flat(make_model("mbt2018-mean", eb_filters=COMPRESSAI_EB), old_eb_names=False,
                  context_first=False, mask=None)
    del raw["g_s.2.weight"]
    raw["g_s.9.weight"] = torch.zeros(1)
    with pytest.raises(ModelError, match=r"missing keys: g_s\.2\.weight.*unexpected keys: g_s\.9\.weight"):
        import_compressai(raw)


def test_no_weights_and_bad_options():
    with pytest.raises(ModelError, match="no weights"):
        import_compressai({"epoch": 1})
    with pytest.raises(ModelError, match="anchor_parity"):
        import_compressai({}, anchor_parity="diagonal")


def test_mask_contradicting_arch_refused(make_model):
    raw = to_flat(make_model("mbt2018", eb_filters=COMPRESSAI_EB), old_eb_names=False,
                  context_first=False, mask="raster")
    with pytest.raises(ModelError, match="raster|serial"):
        import_compressai(raw, arch="mbt2018-ckbd")


def test_serial_cheng_refused(make_model):
    raw = to_flat(make_model("cheng2020-ckbd", eb_filters=COMPRESSAI_EB), old_eb_names=False,
                  context_first=False, mask="raster")
    with pytest.raises(ModelError, match="serial"):
        import_compressai(raw)


def test_load_model_on_foreign_file(tmp_path, make_model, image):
    original = make_model("cheng2020-ckbd", parity="odd", eb_filters=COMPRESSAI_EB)
    path = tmp_path / "foreign.pth.tar"
    torch.save({"epoch": 2, "state_dict": to_flat(original, old_eb_names=True, context_first=True,
                                                  mask="checkerboard")}, path)
    loaded = load_model(path)
    assert not loaded.training
    assert_same_outputs(loaded, original, image)
    assert load_model(path, anchor_parity="even").config.anchor_parity == "even"


def test_imported_model_saves_as_ckbd(tmp_path, make_model, image):
    """The imported bottleneck keeps CompressAI's filters through a ckbd checkpoint round trip."""
    original = make_model("mbt2018-mean", eb_filters=COMPRESSAI_EB)
    imported = import_compressai(to_flat(original, old_eb_names=False, context_first=False, mask=None))
    save_checkpoint(tmp_path / "ckbd.pt", imported)
    reloaded = load_model(tmp_path / "ckbd.pt")
    assert reloaded.config.eb_filters == COMPRESSAI_EB
    assert_same_outputs(reloaded, original, image)
