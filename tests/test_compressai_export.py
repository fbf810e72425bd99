"""ckbd weights -> CompressAI names (the benchmark's CompressAI reference), the importer's inverse.

CompressAI is not a dependency: the mapping is checked by importing its output back (the importer is
tested against layouts written independently in test_import.py) and on a few names and channel
orders taken from CompressAI 1.2's models.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ckbd.models.compressai_import import Conventions, import_compressai, to_compressai_state

CASES = [  # (arch, the CompressAI model the benchmark loads the weights into)
    ("mbt2018", Conventions("mbt2018", "mbt2018")),  # JointAutoregressiveHierarchicalPriors
    ("mbt2018-mean", Conventions("mbt2018", "mbt2018-mean")),  # MeanScaleHyperprior
    ("mbt2018-ckbd", Conventions("latent-codec", "mbt2018-ckbd", concat="ctx-hyper")),  # latent codecs
    ("cheng2020-ckbd", Conventions("latent-codec", "cheng2020-ckbd", concat="ctx-hyper")),
]


@pytest.mark.parametrize(("arch", "conventions"), CASES, ids=[arch for arch, _ in CASES])
def test_import_undoes_the_export(make_model, arch: str, conventions: Conventions) -> None:
    original = make_model(arch, eb_filters=(3, 3, 3, 3))
    exported = to_compressai_state(original.state_dict(), conventions)
    imported = import_compressai(exported, arch=arch)
    assert imported.config == original.config
    want = original.state_dict()
    got = imported.state_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def test_latent_codec_names_and_channel_order(make_model) -> None:
    model = make_model("mbt2018-ckbd", eb_filters=(3, 3, 3, 3))
    state = model.state_dict()
    out = to_compressai_state(state, CASES[2][1])
    assert "latent_codec.hyper.entropy_bottleneck.matrices.0" in out  # CompressAI >= 1.2: public lists
    assert "latent_codec.hyper.h_s.0.weight" in out and "latent_codec.y.context_prediction.weight" in out
    assert "g_a.0.weight" in out and not any(k.startswith("entropy_bottleneck.") for k in out)
    # CompressAI's checkerboard codec concatenates (context, hyper): ckbd's input halves swap.
    ours, theirs = state["entropy_parameters.0.weight"], out["latent_codec.y.entropy_parameters.0.weight"]
    half = ours.shape[1] // 2
    assert torch.equal(theirs[:, :half], ours[:, half:]) and torch.equal(theirs[:, half:], ours[:, :half])


def test_flat_layout_renames_only_the_bottleneck(make_model) -> None:
    state = make_model("mbt2018", eb_filters=(3, 3, 3, 3)).state_dict()
    out = to_compressai_state(state, CASES[0][1])
    renamed = {k for k in state if k not in out}
    assert renamed and all(k.startswith("entropy_bottleneck._") for k in renamed)
    assert torch.equal(out["entropy_parameters.0.weight"], state["entropy_parameters.0.weight"])
    assert torch.equal(out["entropy_bottleneck.biases.1"], state["entropy_bottleneck._biases.1"])
