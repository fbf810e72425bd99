"""Model packages, the backend registry and closing: what the decode chain opens, it frees."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from ckbd.errors import CkbdError, MissingDependencyError, ModelError
from ckbd.runtime.backend import available_backends, create_backend
from ckbd.runtime.codec import Decoder, Encoder
from ckbd.runtime.model import CodecModel
from ckbd.runtime.ort_backend import OnnxRuntimeBackend
from ckbd.runtime.package import ModelPackage, default_model_dir
from ckbd.runtime.stages import ANCHOR_PARAMS, DECODER_STAGES

IMAGE = np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKBD_CACHE_DIR", str(tmp_path / "cache"))


def test_registry_lists_every_backend_including_torch() -> None:
    assert set(available_backends()) == {"onnxruntime", "tensorrt", "torch"}
    with pytest.raises(CkbdError, match="unknown backend 'cuda'.*onnxruntime"):
        create_backend("cuda")


def test_a_backend_whose_package_is_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    monkeypatch.delitem(sys.modules, "ckbd.export.torch_backend", raising=False)
    with pytest.raises(MissingDependencyError, match=r"torch backend needs the 'torch' package.*\.\[export\]"):
        create_backend("torch")


def test_package_is_opened_and_verified_once(tmp_path: Path) -> None:
    package = ModelPackage.open()
    assert package.root == default_model_dir() and package.is_shipped
    assert package.fingerprint == package.manifest.fingerprint
    assert ModelPackage.of(package) is package
    assert package.graph_path(ANCHOR_PARAMS).is_file()
    copy = tmp_path / "m"
    shutil.copytree(default_model_dir(), copy)
    damaged = copy / package.graph(ANCHOR_PARAMS).file
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\0")
    other = ModelPackage.open(copy)  # tables fine: opens; the damaged graph is refused on use
    assert not other.is_shipped
    with pytest.raises(ModelError, match="does not match its sha256"):
        OnnxRuntimeBackend().load(other, ANCHOR_PARAMS)
    with pytest.raises(ModelError, match="is a file; export it first"):
        ModelPackage.open(copy / "manifest.json")


def test_decoder_closes_its_backend_and_runners() -> None:
    stream = Encoder.open().encode(IMAGE)
    with Decoder.open(threads=1) as decoder:
        runners = dict(decoder.model.runners)
        assert decoder.decode(stream).shape == IMAGE.shape
    assert decoder.model.runners == {}
    with pytest.raises(CkbdError, match="runner was closed"):
        runners[ANCHOR_PARAMS].run({})
    decoder.close()  # idempotent


def test_a_backend_given_by_the_caller_stays_open_until_the_caller_closes_it() -> None:
    package = ModelPackage.open()
    with OnnxRuntimeBackend(threads=1) as backend:
        first = CodecModel.open(package, backend, stages=DECODER_STAGES)
        first.close()
        second = Decoder(CodecModel.open(package, backend, stages=DECODER_STAGES))  # still loads
        kept = second.model.runners[ANCHOR_PARAMS]
        assert kept.inputs
    with pytest.raises(CkbdError, match="runner was closed"):  # closing the backend closed it
        kept.run({})


def test_torch_backend_runs_the_shipped_package_and_frees_its_modules() -> None:
    pytest.importorskip("torch")
    package = ModelPackage.open()
    stream = Encoder.open(package).encode(IMAGE)
    with Decoder.open(package, "torch") as torch_decoder, Decoder.open(package) as ort_decoder:
        assert torch_decoder.model.backend_name == "torch"
        # integer path: the checkpoint's own modules decode the ONNX encoder's stream exactly
        assert torch_decoder.decode_detailed(stream).latents.equals(ort_decoder.decode_detailed(stream).latents)
        runner = torch_decoder.model.runners[ANCHOR_PARAMS]
    with pytest.raises(CkbdError, match="runner was closed"):
        runner.run({})


def test_tensorrt_backend_frees_device_memory_on_close(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpu_fakes import FakeCuda, FakeEngine, patch_tensorrt

    cuda = FakeCuda()
    module = patch_tensorrt(monkeypatch, cuda, lambda data: FakeEngine(cuda))
    session = module._Session(cuda, cuda.create_stream())
    runner = module.TensorRTRunner(FakeEngine(cuda), ANCHOR_PARAMS, session, "ckbd build ...")
    runner.run({"hyper": np.ones((1, 4, 2, 4), np.float32)})
    assert cuda.memory and cuda.host_live  # device buffers and pinned twins in use
    backend = module.TensorRTBackend()
    backend._runners.append(runner)
    with backend:
        pass
    assert cuda.memory == {} and cuda.host_live == 0 and cuda.closed
