"""The CPU-layout synthesis rewrite (IGDN per phase, before the interleave) computes the same thing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _model():  # type: ignore[no-untyped-def]
    from conftest import tiny_model

    return tiny_model("mbt2018-ckbd", N=16, M=24, seed=5).eval()


def test_fused_synthesis_matches_the_unfused_one() -> None:
    from ckbd.export import optimize
    from ckbd.export.cpu_graph import PhaseIGDN, fuse_phase_gdn

    model = _model()
    g_s = optimize.bake_transform(model.g_s)
    fused = fuse_phase_gdn(g_s)
    pairs = sum(isinstance(a, optimize.PhaseDeconv) and isinstance(b, optimize.BakedGDN) for a, b in zip(g_s, g_s[1:]))
    assert pairs == 3 and sum(isinstance(m, PhaseIGDN) for m in fused) == pairs
    assert len(fused) == len(g_s) - pairs
    y = torch.randn(1, 24, 5, 7, generator=torch.Generator().manual_seed(1)) * 3
    with torch.no_grad():
        ref, out = g_s(y), fused(y)
        plain = model.g_s(y)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, plain, rtol=1e-4, atol=1e-4)
    assert fuse_phase_gdn(optimize.bake_transform(model.g_a)).__class__ is torch.nn.Sequential  # no-op there


def test_exported_synthesis_has_the_squares_in_the_conv_layout(tmp_path: Path) -> None:
    """The IGDN squares are taken straight from the phase convolutions' outputs."""
    onnx = pytest.importorskip("onnx")
    from ckbd.export.onnx_export import export_model
    from ckbd.runtime.codec import Decoder, Encoder
    from ckbd.runtime.imageio import read_image

    model = _model()
    fast, plain = tmp_path / "fast", tmp_path / "plain"
    export_model(model, fast)
    export_model(model, plain, optimize=False)
    graph = onnx.load(str(fast / "latent_synthesis.onnx")).graph
    producers = {out: node for node in graph.node for out in node.output}
    squares = [n for n in graph.node if n.op_type == "Mul" and n.input[0] == n.input[1]]
    assert len(squares) == 12 and all(producers[n.input[0]].op_type == "Conv" for n in squares)
    assert not any(n.op_type == "DepthToSpace" for n in graph.node)  # interleaved by concats instead
    image = read_image(sorted((Path(__file__).parent / "data").glob("*.png"))[0])
    data = Encoder.open(plain, threads=1).encode(image)
    a = Decoder.open(plain, threads=1).decode(data).astype(np.int16)
    b = Decoder.open(fast, threads=1).decode(data).astype(np.int16)
    assert np.abs(a - b).max() <= 1  # the same synthesis up to float rounding of the last step
    assert Encoder.open(fast, threads=1).encode(image) == data  # analysis untouched: the same stream


@pytest.mark.parametrize("stride", [2, 3])
def test_interleaved_phases_are_depth_to_space(stride: int) -> None:
    from ckbd.export.cpu_graph import interleave_phases

    phases = [torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(k)) for k in range(stride * stride)]
    expected = torch.nn.functional.pixel_shuffle(torch.stack(phases, dim=2).flatten(1, 2), stride)
    torch.testing.assert_close(interleave_phases(phases, stride), expected, rtol=0, atol=0)
