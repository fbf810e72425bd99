"""The random-mask model and the context-pattern study (He et al. 2021, Table 1 and Figure 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import rgb_array

from ckbd.cli.main import main
from ckbd.errors import CkbdError, ModelError
from ckbd.models.checkpoint import save_checkpoint
from ckbd.tools.mask_study import (
    mask_bits,
    parse_mask,
    run_study,
    single_reference_offsets,
    table1_masks,
)


@pytest.fixture
def model(make_model):
    return make_model("mbt2018-random-mask")


@pytest.fixture
def latents(model, image):
    with torch.no_grad():
        return model.latents(image)


def _one_tap(dy: int, dx: int) -> torch.Tensor:
    mask = torch.zeros(5, 5)
    mask[2 + dy, 2 + dx] = 1.0
    return mask


def test_zero_mask_gives_the_context_free_rate(model, latents):
    """All-zero mask: the context is the conv bias alone, whatever the latents are."""
    y_hat, hyper, _ = latents
    with torch.no_grad():
        scales, means = model.params_with_mask(y_hat, hyper, torch.zeros(5, 5))
        bias = model.context_prediction.bias.reshape(1, -1, 1, 1).expand(1, -1, *y_hat.shape[2:])
        free_scales, free_means = model.params_from(hyper, bias)
        other = model.params_with_mask(y_hat + torch.randn_like(y_hat) * 3, hyper, torch.zeros(5, 5))
    assert torch.equal(scales, free_scales) and torch.equal(means, free_means)
    assert torch.equal(scales, other[0]) and torch.equal(means, other[1])


@pytest.mark.parametrize("dy,dx", [(-1, 0), (0, 1), (-2, -2), (1, -1)])
def test_single_reference_depends_only_on_that_neighbour(model, latents, dy, dx):
    y_hat, hyper, _ = latents
    h, w = y_hat.shape[2:]
    i, j = h // 2, w // 2
    mask = _one_tap(dy, dx)
    with torch.no_grad():
        _, means = model.params_with_mask(y_hat, hyper, mask)
        others = y_hat.clone()
        keep = others[:, :, i + dy, j + dx].clone()
        others += torch.randn_like(others) * 5
        others[:, :, i + dy, j + dx] = keep
        _, means_others = model.params_with_mask(others, hyper, mask)
        neighbour = y_hat.clone()
        neighbour[:, :, i + dy, j + dx] += 5
        _, means_neighbour = model.params_with_mask(neighbour, hyper, mask)
    assert torch.equal(means[:, :, i, j], means_others[:, :, i, j])
    assert not torch.allclose(means[:, :, i, j], means_neighbour[:, :, i, j])


def test_training_samples_a_fresh_mask_per_step_with_the_centre_off(model, image):
    model.train()
    masks = []
    for _ in range(12):
        model(image)
        masks.append(model.last_mask.clone())
    stacked = torch.stack(masks)
    assert torch.all(stacked[:, 2, 2] == 0)
    assert set(stacked.unique().tolist()) == {0.0, 1.0}
    assert len({tuple(m.flatten().tolist()) for m in masks}) > 1
    off_centre = stacked.sum() / (12 * 24)
    assert 0.3 < off_centre < 0.7


def test_the_training_mask_reaches_the_loss(model, image):
    """Gradients reach the context kernel only at the taps of that step's mask."""
    model.train()
    model.zero_grad()
    out = model(image)
    (-torch.log2(out.y_likelihoods).sum()).backward()
    grad_taps = model.context_prediction.weight.grad.abs().sum(dim=(0, 1)) > 0
    assert torch.equal(grad_taps, model.last_mask.bool())


def test_eval_latents_are_the_same_for_every_mask(model, image):
    with torch.no_grad():
        first = model(image)
        model.eval_mask.copy_(table1_masks()["checkerboard4"])
        second = model(image)
    assert torch.equal(first.x_hat, second.x_hat)
    assert torch.equal(first.z_likelihoods, second.z_likelihoods)
    assert not torch.equal(first.y_likelihoods, second.y_likelihoods)


def test_table1_masks_have_the_paper_reference_counts():
    counts = {k: int(m.sum()) for k, m in table1_masks().items()}
    assert counts == {"none": 0, "serial3x3": 4, "serial5x5": 12, "checkerboard4": 4, "checkerboard5x5": 12, "all8": 8}
    assert all(m[2, 2] == 0 for m in table1_masks().values())


def test_parse_mask_accepts_rows_and_rejects_the_centre():
    assert torch.equal(parse_mask("00000/00000/01000/00000/00000"), _one_tap(0, -1))
    assert torch.equal(parse_mask("0" * 11 + "1" + "0" * 13), _one_tap(0, -1))
    for bad in ("0000", "00000/00000/00100/00000/00000", "00000/00000/00200/00000/00000"):
        with pytest.raises(CkbdError):
            parse_mask(bad)


@pytest.fixture
def study_images(tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "study"
    folder.mkdir()
    for i, (h, w) in enumerate([(64, 64), (70, 90)]):  # the second is padded to 128x128
        Image.fromarray(rgb_array(h, w, seed=i)).save(folder / f"img{i}.png")
    return folder


def test_study_rows_and_savings(model, study_images):
    paths = sorted(study_images.glob("*.png"))
    study = run_study(model, paths, custom=["00000/00000/01000/00000/00000"], progress=False).to_dict()
    rows = {r["mask"]: r for r in study["table1"]}
    assert list(rows) == ["none", "serial3x3", "serial5x5", "checkerboard4", "checkerboard5x5", "all8"]
    assert rows["none"]["rate_saving_pct"] == 0.0
    assert len(study["single_reference"]) == 24
    assert {(r["dy"], r["dx"]) for r in study["single_reference"]} == set(single_reference_offsets())
    for row in study["table1"] + study["single_reference"]:
        assert row["bpp"] > 0
        assert row["rate_saving_pct"] == pytest.approx(100 * (1 - row["bpp"] / rows["none"]["bpp"]))
    left = next(r for r in study["single_reference"] if (r["dy"], r["dx"]) == (0, -1))
    assert study["custom"][0]["bpp"] == pytest.approx(left["bpp"])


def test_study_bpp_is_the_models_code_length(model, study_images):
    """For one image, the zero-mask bpp is the eval forward's -log2 likelihoods per pixel."""
    from ckbd.runtime.imageio import read_image

    path = study_images / "img0.png"
    study = run_study(model, [path], progress=False)
    with torch.no_grad():
        image = torch.tensor(read_image(path), dtype=torch.float32).permute(2, 0, 1)[None] / 255
        out = model(image)
        expected = -(torch.log2(out.y_likelihoods).sum() + torch.log2(out.z_likelihoods).sum()) / (64 * 64)
        bits = mask_bits(model, *model.latents(image), [torch.zeros(5, 5)])
    assert study.table1[0].bpp == pytest.approx(float(expected), rel=1e-5)
    assert bits[0] / (64 * 64) == pytest.approx(float(expected), rel=1e-5)


def test_study_refuses_other_architectures(make_model, study_images):
    with pytest.raises(ModelError, match="random-mask"):
        run_study(make_model("mbt2018-ckbd"), sorted(study_images.glob("*.png")), progress=False)


def test_cli_writes_json_and_plot(model, study_images, tmp_path):
    pytest.importorskip("matplotlib")
    checkpoint, out_json, out_png = tmp_path / "rm.pt", tmp_path / "study.json", tmp_path / "study.png"
    save_checkpoint(checkpoint, model, {"step": 3}, half=True)
    code = main(["study", "masks", str(checkpoint), "--images", str(study_images), "--json", str(out_json),
                 "--plot", str(out_png), "--mask", "01010/10101/01010/10101/01010"])
    assert code == 0
    data = json.loads(out_json.read_text())
    assert len(data["single_reference"]) == 24 and len(data["table1"]) == 6
    assert data["custom"][0]["references"] == 12
    assert data["training"]["step"] == 3 and data["images"] == ["img0.png", "img1.png"]
    assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_cli_bad_mask_is_one_line_error(model, study_images, tmp_path, capsys):
    checkpoint = tmp_path / "rm.pt"
    save_checkpoint(checkpoint, model)
    assert main(["study", "masks", str(checkpoint), "--images", str(study_images), "--mask", "111"]) != 0
    assert "25 characters" in capsys.readouterr().err


def test_random_mask_model_cannot_be_exported(model, tmp_path, capsys):
    pytest.importorskip("onnx")
    checkpoint = tmp_path / "rm.pt"
    save_checkpoint(checkpoint, model)
    assert main(["export", str(checkpoint), "-o", str(tmp_path / "out")]) == 1
    assert "'mbt2018-random-mask' cannot be exported" in capsys.readouterr().err


def test_init_from_copies_matching_weights(make_model, tmp_path):
    from ckbd.training import init_matching_weights

    source = make_model("mbt2018-ckbd", seed=1)
    checkpoint = tmp_path / "ckbd.pt"
    save_checkpoint(checkpoint, source)
    target = make_model("mbt2018-random-mask", seed=2)
    copied = init_matching_weights(target, checkpoint)
    assert "context_prediction.weight" in copied and "g_a.0.weight" in copied
    for name in copied:
        assert torch.equal(target.state_dict()[name], source.state_dict()[name])
    with pytest.raises(CkbdError):
        init_matching_weights(make_model("mbt2018-random-mask", N=8, M=12), checkpoint)


def test_rendering_results_keeps_the_hand_written_sections(tmp_path):
    from ckbd.tools.report.results_sections import HAND_WRITTEN_MARKER, with_hand_written

    results = tmp_path / "RESULTS.md"
    assert with_hand_written("# new\n", results) == "# new\n"
    results.write_text(f"# old tables\n\n{HAND_WRITTEN_MARKER}\n\n## Context-pattern study\n", encoding="utf-8")
    assert with_hand_written("# new\n", results) == f"# new\n\n{HAND_WRITTEN_MARKER}\n\n## Context-pattern study\n"
