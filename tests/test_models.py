"""The PyTorch models: shapes, the checkerboard context's reach, and one-pass == two-pass."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ckbd.errors import ModelError  # noqa: E402
from ckbd.models import ARCHITECTURES, ModelConfig, build_model  # noqa: E402
from ckbd.models import checkerboard as cb  # noqa: E402
from ckbd.models.architectures import CheckerboardModel  # noqa: E402
from ckbd.models.layers import GDN, checkerboard_kernel_mask, raster_kernel_mask  # noqa: E402

CKBD_ARCHS = ("mbt2018-ckbd", "cheng2020-ckbd")


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("training", [False, True])
def test_output_shapes_and_downsampling(make_model, image, arch, training):
    model = make_model(arch).train(training)
    N, M = model.config.N, model.config.M
    h, w = image.shape[2:]
    with torch.no_grad():
        out = model(image)
        y = model.g_a(image)
        z = model.h_a(y)
    assert out.x_hat.shape == image.shape
    assert y.shape == (1, M, h // 16, w // 16)
    assert z.shape == (1, N, h // 64, w // 64)
    assert out.y_likelihoods.shape == y.shape
    assert out.z_likelihoods.shape == z.shape
    for lik in (out.y_likelihoods, out.z_likelihoods):
        assert torch.isfinite(lik).all() and (lik > 0).all() and (lik <= 1).all()


def test_kernel_masks():
    ckbd = checkerboard_kernel_mask(5)
    for i in range(5):
        for j in range(5):
            assert ckbd[i, j] == (abs(i - 2) + abs(j - 2)) % 2  # odd Manhattan distance: anchors
    raster = raster_kernel_mask(5)
    assert raster.sum() == 12 and raster[2, 2] == 0 and raster[2, :2].all() and not raster[3:].any()


def _changed_positions(model, y, hyper, where):
    """Positions (row, col) whose (scales, means) change when y is perturbed at ``where``."""
    with torch.no_grad():
        base = torch.cat(model.y_params(y, hyper), dim=1)
        bumped = y.clone()
        bumped[:, :, where[0], where[1]] += 3.0
        new = torch.cat(model.y_params(bumped, hyper), dim=1)
    diff = (new - base).abs().amax(dim=(0, 1))
    return {tuple(p) for p in (diff > 0).nonzero().tolist()}


@pytest.mark.parametrize("parity", ["even", "odd"])
def test_checkerboard_context_reach(make_model, parity):
    """Anchors see nothing; each non-anchor sees exactly its anchor neighbours inside 5x5."""
    model = make_model("mbt2018-ckbd", N=8, M=8, parity=parity)
    torch.manual_seed(1)
    h, w = 10, 12
    y, hyper = torch.randn(1, 8, h, w) * 2, torch.randn(1, 16, h, w)
    anchors = cb.anchor_mask(h, w, parity)[0, 0].bool()
    for where in [(4, 5), (5, 5), (0, 0), (0, 1), (9, 11)]:
        changed = _changed_positions(model, y, hyper, where)
        if not anchors[where]:
            assert changed == set(), f"non-anchor {where} is context for {changed}"
            continue
        window = {
            (r, c) for r in range(h) for c in range(w)
            if abs(r - where[0]) <= 2 and abs(c - where[1]) <= 2 and not anchors[r, c]
        }
        assert changed == window


def test_serial_context_reach(make_model):
    """The raster mask: a latent is context only for later positions within the 5x5 window."""
    model = make_model("mbt2018", N=8, M=8)
    torch.manual_seed(2)
    y, hyper = torch.randn(1, 8, 8, 8), torch.randn(1, 16, 8, 8)
    where = (4, 4)
    expected = {
        (where[0] + di, where[1] + dj) for di in range(0, 3) for dj in range(-2, 3)
        if di > 0 or dj > 0
    }
    assert _changed_positions(model, y, hyper, where) == expected


@pytest.mark.parametrize("arch", CKBD_ARCHS)
@pytest.mark.parametrize("parity", ["even", "odd"])
def test_one_pass_equals_two_pass(make_model, arch, parity):
    """Training's one-pass parameters are what the packed two-pass decoder computes."""
    model: CheckerboardModel = make_model(arch, parity=parity)
    M = model.config.M
    torch.manual_seed(3)
    y_hat = torch.round(torch.randn(2, M, 6, 8) * 3)
    hyper = torch.randn(2, 2 * M, 6, 8)
    with torch.no_grad():
        scales, means = model.y_params(y_hat, hyper)
        a_scales, a_means = model.anchor_params(cb.pack(hyper, "anchor", parity))
        anchor_hat = cb.pack(y_hat, "anchor", parity)
        n_scales, n_means = model.nonanchor_params(cb.pack(hyper, "nonanchor", parity), anchor_hat)
    torch.testing.assert_close(cb.unpack(a_scales, n_scales, parity), scales, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cb.unpack(a_means, n_means, parity), means, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", CKBD_ARCHS)
def test_eval_latent_is_two_pass_decode(make_model, image, arch):
    """In eval mode y_hat = round(y - mu) + mu with mu from the two passes (what a decoder rebuilds)."""
    model = make_model(arch, parity="odd")
    with torch.no_grad():
        y = model.g_a(image)
        z_hat, _ = model.entropy_bottleneck(model.h_a(y))
        hyper = model.h_s(z_hat)
        y_hat = model._round_with_means(y, hyper)
        _, means = model.y_params(y_hat, hyper)
    torch.testing.assert_close(y_hat, torch.round(y - means) + means, rtol=0, atol=1e-5)


@pytest.mark.parametrize("parity", ["even", "odd"])
def test_pack_unpack_round_trip(parity):
    torch.manual_seed(4)
    y = torch.randn(2, 3, 6, 8)
    anchor, nonanchor = cb.pack(y, "anchor", parity), cb.pack(y, "nonanchor", parity)
    assert anchor.shape == nonanchor.shape == (2, 3, 6, 4)
    assert torch.equal(cb.unpack(anchor, nonanchor, parity), y)
    mask = cb.anchor_mask(6, 8, parity)[0, 0].bool()
    assert torch.equal(anchor, y[:, :, mask].reshape(2, 3, 6, 4))  # row-major order of each half
    assert torch.equal(nonanchor, y[:, :, ~mask].reshape(2, 3, 6, 4))
    assert bool(mask[0, 0]) == (parity == "even")


def test_cheng_requires_m_equal_n():
    with pytest.raises(ModelError, match="M = N"):
        build_model(ModelConfig("cheng2020-ckbd", N=16, M=24))


def test_bad_configs_refused():
    with pytest.raises(ModelError, match="unknown architecture"):
        build_model(ModelConfig("nope", N=8, M=8))
    with pytest.raises(ModelError, match="anchor_parity"):
        ModelConfig(anchor_parity="diagonal")
    with pytest.raises(ModelError):
        ModelConfig.from_dict({"arch": "mbt2018", "N": 8, "M": 8, "colour": "red"})


def test_config_round_trip_keeps_eb_filters():
    config = ModelConfig("mbt2018-mean", N=8, M=8, eb_filters=[3, 3, 3, 3])  # as JSON gives it
    assert config.eb_filters == (3, 3, 3, 3)
    assert ModelConfig.from_dict(config.to_dict()) == config
    model = build_model(config)
    assert len(model.entropy_bottleneck._matrices) == 5
    assert "eb_filters" not in ModelConfig().to_dict()  # default omitted: older fingerprints unchanged


def test_gdn_effective_parameters_stay_positive():
    torch.manual_seed(5)
    gdn = GDN(6)
    with torch.no_grad():
        gdn.beta.copy_(-torch.rand(6))  # gradient steps may push the stored values negative
        gdn.gamma.copy_(torch.randn(6, 6))
    beta, gamma = gdn.effective()
    assert (beta >= 1e-6).all() and (gamma >= 0).all()
    x = torch.randn(2, 6, 5, 7)
    assert gdn(x).shape == x.shape


def test_gdn_formula_and_inverse():
    """y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2); IGDN multiplies by the same norm."""
    torch.manual_seed(6)
    gdn, igdn = GDN(4), GDN(4, inverse=True)
    with torch.no_grad():
        for m in (gdn, igdn):
            m.gamma.add_(0.05 * torch.rand(4, 4))
        igdn.load_state_dict(gdn.state_dict())
    x = torch.randn(1, 4, 3, 3)
    beta, gamma = gdn.effective()
    norm = beta.reshape(1, 4, 1, 1) + torch.einsum("ij,bjhw->bihw", gamma, x * x)
    torch.testing.assert_close(gdn(x), x / norm.sqrt())
    torch.testing.assert_close(igdn(x), x * norm.sqrt())
    small = 1e-3 * x  # near zero both are ~identity (beta = 1), so they invert each other there
    torch.testing.assert_close(igdn(gdn(small)), small, rtol=1e-4, atol=1e-7)
