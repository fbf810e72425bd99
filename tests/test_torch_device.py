"""The torch backend as a decoder: --device and --precision, device tensors, and streams that are
interchangeable with ONNX Runtime's (identical symbols) at every precision.

This machine has no CUDA: the CUDA code paths are exercised where they can be (kept tensors, the
no-CUDA error); the transfers through pinned memory run only on a GPU host (``ckbd check gpu``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ckbd.cli.codec_options import backend_options
from ckbd.cli.main import main
from ckbd.errors import CkbdError, ModelError, UsageError
from ckbd.export.torch_backend import TorchBackend
from ckbd.export.torch_device import TorchTensor, index_dtype, torch_device
from ckbd.runtime.codec import Decoder, Encoder
from ckbd.runtime.imageio import read_image
from ckbd.runtime.metrics import psnr
from ckbd.runtime.package import ModelPackage

DATA = Path(__file__).parent / "data"
IMAGES = sorted(DATA.glob("kodim*.png"))  # the three test photos (not the decoded references)


@pytest.fixture(scope="module")
def package() -> ModelPackage:
    return ModelPackage.open()


@pytest.fixture(scope="module")
def ort_streams(package: ModelPackage) -> dict[str, tuple[bytes, object]]:
    """Each test image encoded by ONNX Runtime on the CPU: (stream, its latents)."""
    with Encoder.open(package, threads=1) as encoder:
        return {p.name: (r.data, r.latents) for p in IMAGES
                for r in [encoder.encode_detailed(read_image(p), estimate=False)]}


def test_device_names_and_a_machine_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    assert torch_device("cpu") == torch.device("cpu")
    with pytest.raises(UsageError, match="unknown torch device 'gpu'"):
        torch_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CkbdError, match=r"device cuda:1: .*run on the CPU") as failure:
        torch_device("cuda:1")
    assert not isinstance(failure.value, UsageError) and "\n" not in str(failure.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(CkbdError, match=r"1 CUDA device\(s\), cuda:0 to cuda:0"):
        torch_device("cuda:1")


def test_device_and_precision_become_each_backends_own_options(monkeypatch: pytest.MonkeyPatch) -> None:
    assert backend_options("torch", None, "bf16") == {"precision": "bf16", "synchronize": False}
    assert backend_options("torch", "cpu", "fp32", timed=True) == {"precision": "fp32", "synchronize": True,
                                                                   "device": "cpu"}
    assert backend_options("onnxruntime", "cuda:1")["device"] == "cuda:1"  # ORT checks its own provider
    assert backend_options("tensorrt", "cuda:2", "fp16") == {"precision": "fp16", "device": 2}
    for backend, device, precision, message in [("tensorrt", "cpu", "fp32", "CUDA devices only"),
                                                ("onnxruntime", None, "bf16", "torch-backend precision"),
                                                ("torch", None, "int8", "calibrated ONNX variant")]:
        with pytest.raises(UsageError, match=message):
            backend_options(backend, device, precision)
    with pytest.raises(ModelError, match="fp32, fp16, bf16, not int8"):
        TorchBackend(precision="int8")


def test_cli_device_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    image, stream, out = str(IMAGES[0]), tmp_path / "a.ckbd", str(tmp_path / "b.ckbd")
    stream.write_bytes(b"not read: the device is refused first")
    no_cuda = "device cuda"
    for args, code, says in [(["decode", str(stream), "--backend", "torch", "--device", "cuda"], 1, no_cuda),
                             (["encode", image, "-o", out, "--backend", "torch", "--device", "cuda:0"], 1, no_cuda),
                             (["profile", image, "--backend", "torch", "--device", "cuda"], 1, no_cuda),
                             (["encode", image, "-o", out, "--device", "gpu"], 2, "not a device"),
                             (["encode", image, "-o", out, "--backend", "tensorrt", "--device", "cpu"], 2, "CUDA devices"),
                             (["encode", image, "-o", out, "--precision", "bf16"], 2, "torch-backend precision")]:
        capsys.readouterr()
        assert main(args) == code, args
        err = capsys.readouterr().err.strip()
        assert says in err and "Traceback" not in err, (args, err)
        if code == 1:
            assert "\n" not in err, err
    assert not Path(out).exists()


def test_kept_outputs_stay_tensors_and_feed_the_next_stage(package: ModelPackage, monkeypatch: pytest.MonkeyPatch,
                                                           ort_streams: dict[str, tuple[bytes, object]]) -> None:
    """Also: the index stages run in GEMM form (no convolution kernel is called)."""
    latents = ort_streams[IMAGES[0].name][1]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an index stage called a convolution kernel")

    with TorchBackend(threads=1) as backend:
        hyper_stage, anchor_stage = backend.load(package, "hyper_synthesis"), backend.load(package, "anchor_params")
        for name in ("conv2d", "conv_transpose2d"):
            monkeypatch.setattr(torch.nn.functional, name, refuse)
        kept = hyper_stage.run({"z_symbols": latents.z_symbols}, keep=("hyper",))["hyper"]
        host = hyper_stage.run({"z_symbols": latents.z_symbols})["hyper"]
        assert isinstance(kept, TorchTensor) and isinstance(host, np.ndarray)
        np.testing.assert_array_equal(kept.to_host(), host)
        from_tensor = anchor_stage.run({"hyper": kept})
        from_array = anchor_stage.run({"hyper": host})
    for name in ("anchor_indexes", "anchor_means"):
        np.testing.assert_array_equal(from_tensor[name], from_array[name])
    assert from_tensor["anchor_indexes"].dtype == np.int32
    assert index_dtype(len(package.manifest.scale_table)) == torch.uint8  # what crosses from a GPU
    assert (index_dtype(257), index_dtype(1 << 15), index_dtype(1 << 16)) == (torch.int16, torch.int16, torch.int32)


def test_torch_and_onnx_runtime_streams_are_interchangeable(package: ModelPackage,
                                                            ort_streams: dict[str, tuple[bytes, object]]) -> None:
    """Both directions on every test image: identical symbols (and so identical bytes)."""
    with Encoder.open(package, "torch", threads=1) as encoder, Decoder.open(package, "torch", threads=1) as torch_dec, \
            Decoder.open(package, threads=1) as ort_dec:
        for path in IMAGES:
            data, latents = ort_streams[path.name]
            assert torch_dec.decode_detailed(data).latents.equals(latents)  # type: ignore[attr-defined]
            torch_encoded = encoder.encode_detailed(read_image(path), estimate=False)
            decoded = ort_dec.decode_detailed(torch_encoded.data).latents
            assert decoded.equals(torch_encoded.latents)
            assert torch_encoded.data == data, path.name  # the same analysis rounding here, so the same file


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_synthesis_decodes_the_same_symbols(package: ModelPackage, precision: str,
                                                              ort_streams: dict[str, tuple[bytes, object]]) -> None:
    """fp16/bf16 touch only the image transforms: symbols stay identical, the image moves a little."""
    path = DATA / "kodim23_crop.png"
    data, latents = ort_streams[path.name]
    original = read_image(path)
    with Decoder.open(package, "torch", threads=1, precision=precision) as reduced, \
            Decoder.open(package, "torch", threads=1) as full:
        low = reduced.decode_detailed(data)
        assert low.latents.equals(latents)  # type: ignore[attr-defined]
        drop = psnr(original, full.decode(data)) - psnr(original, low.image)
    assert abs(drop) < 0.25, drop
    with Encoder.open(package, "torch", threads=1, precision=precision) as encoder:
        encoded = encoder.encode_detailed(original, estimate=False)
    with Decoder.open(package, threads=1) as ort_dec:  # a reduced-precision encode is a valid stream
        assert ort_dec.decode_detailed(encoded.data).latents.equals(encoded.latents)
