"""The Python-backend models ``ckbd serve repo`` points Triton at (imported inside Triton's stub).

Each request is answered on its own: a corrupt stream or an oversized request gets an error response
while the other requests of the same batch are served. The split models build the ordinary
:class:`~ckbd.runtime.codec.Decoder`/``Encoder`` over runners that forward each stage to its Triton
model through BLS, so the range coding and the two-pass order are the in-process code, unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ckbd.errors import BitstreamError, CkbdError, ImageError, ModelError
from ckbd.runtime.backend import ClosingBackend, Runner, Tensor, to_host
from ckbd.runtime.codec import Decoder, Encoder
from ckbd.runtime.memory import MemoryBudget
from ckbd.runtime.model import CodecModel
from ckbd.runtime.package import ModelPackage
from ckbd.runtime.stages import STAGE_IO, TensorSpec


class _PythonModel:
    """Shared ``initialize``/``execute``: parameters, limits and per-request error responses."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend stub

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        self.params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.model_dir = _model_dir(args, self.params["model_dir"])
        self.max_pixels = int(self.params.get("max_pixels", 0)) or None
        self.max_bytes = int(self.params.get("max_bytes", 0)) or None
        self.max_memory = int(self.params.get("max_memory", 0)) or None
        self.threads = int(self.params.get("threads", "1"))
        self.setup()

    #: What ``finalize`` closes: the codec or runner ``setup`` opened.
    resource: Any = None

    def setup(self) -> None:
        raise NotImplementedError

    def handle(self, request: Any) -> list[Any]:
        raise NotImplementedError

    def finalize(self) -> None:
        """Triton unloads the model: free its sessions now, not when the stub process exits."""
        if self.resource is not None:
            self.resource.close()
            self.resource = None

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                responses.append(self.pb.InferenceResponse(output_tensors=self.handle(request)))
            except CkbdError as exc:
                responses.append(self._error(str(exc)))
            except Exception as exc:  # a bug must not take the other requests down with it
                responses.append(self._error(f"internal error: {type(exc).__name__}: {exc}"))
        return responses

    def _error(self, message: str) -> Any:
        return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(message.splitlines()[0]))

    def _input(self, request: Any, name: str) -> np.ndarray:
        tensor = self.pb.get_input_tensor_by_name(request, name)
        if tensor is None:
            raise CkbdError(f"request has no '{name}' input")
        return tensor.as_numpy()  # type: ignore[no-any-return]

    # Client-facing tensors carry the batch dimension Triton adds (max_batch_size > 0).
    def _bitstream(self, request: Any) -> bytes:
        values = self._input(request, "bitstream").reshape(-1)
        if values.size != 1:
            raise BitstreamError(f"expected one bitstream per request, got {values.size}")
        data = values[0]
        data = data if isinstance(data, bytes) else bytes(data)
        if self.max_bytes is not None and len(data) > self.max_bytes:
            raise BitstreamError(f"request of {len(data)} bytes exceeds this server's limit of {self.max_bytes} bytes")
        return data

    def _image(self, request: Any) -> np.ndarray:
        batch = self._input(request, "image")
        if batch.ndim != 4 or batch.shape[0] != 1:
            raise ImageError(f"expected one uint8 H x W x 3 image per request, got shape {batch.shape}")
        height, width = batch.shape[1:3]
        if self.max_pixels is not None and height * width > self.max_pixels:
            raise ImageError(f"{width}x{height} image exceeds this server's limit of {self.max_pixels} pixels")
        return np.ascontiguousarray(batch[0])

    def _decode_response(self, decoder: Decoder, request: Any) -> list[Any]:
        image = decoder.decode(self._bitstream(request))
        return [self.pb.Tensor("image", image[None])]

    def _encode_response(self, encoder: Encoder, request: Any) -> list[Any]:
        data = encoder.encode(self._image(request))
        return [self.pb.Tensor("bitstream", np.array([[data]], dtype=np.object_))]

    def _memory(self) -> MemoryBudget | None:
        """Each instance (a process) keeps to its own budget; larger images are tiled or refused."""
        return None if self.max_memory is None else MemoryBudget(self.max_memory)

    def _decoder(self, model: CodecModel) -> Decoder:
        return Decoder(model, max_pixels=self.max_pixels) if self.max_pixels else Decoder(model)


class DecodeModel(_PythonModel):
    """``ckbd_decode``: one in-process Decoder per instance."""

    def setup(self) -> None:
        self.decoder = self.resource = self._decoder(
            CodecModel.open(self.model_dir, "onnxruntime", stages=Decoder.STAGES, memory=self._memory(),
                            threads=self.threads))

    def handle(self, request: Any) -> list[Any]:
        return self._decode_response(self.decoder, request)


class EncodeModel(_PythonModel):
    """``ckbd_encode``: one in-process Encoder per instance."""

    def setup(self) -> None:
        self.encoder = self.resource = Encoder(
            CodecModel.open(self.model_dir, "onnxruntime", stages=Encoder.STAGES, memory=self._memory(),
                            threads=self.threads))

    def handle(self, request: Any) -> list[Any]:
        return self._encode_response(self.encoder, request)


class StageModel(_PythonModel):
    """Stand-in for one stage model (an ORT session), for servers without the onnxruntime backend."""

    def setup(self) -> None:
        from ckbd.runtime.ort_backend import OnnxRuntimeBackend

        self.runner = self.resource = OnnxRuntimeBackend(threads=self.threads).load(self.model_dir, self.params["stage"])

    def handle(self, request: Any) -> list[Any]:
        feeds = {spec.name: self._input(request, spec.name) for spec in self.runner.inputs}
        outputs = self.runner.run(feeds)
        return [self.pb.Tensor(name, np.ascontiguousarray(to_host(value))) for name, value in outputs.items()]


class BlsRunner:
    """A :class:`~ckbd.runtime.backend.Runner` that runs one stage on its Triton model via BLS."""

    def __init__(self, pb_utils: Any, model_name: str, stage: str) -> None:
        self.pb = pb_utils
        self.model_name = model_name
        self.inputs: tuple[TensorSpec, ...] = STAGE_IO[stage][0]
        self.outputs: tuple[TensorSpec, ...] = STAGE_IO[stage][1]

    def run(self, feeds: Mapping[str, Tensor], keep: Collection[str] = ()) -> dict[str, Tensor]:
        pb = self.pb
        names = [spec.name for spec in self.outputs]
        request = pb.InferenceRequest(
            model_name=self.model_name, requested_output_names=names,
            inputs=[pb.Tensor(name, np.ascontiguousarray(to_host(value))) for name, value in feeds.items()],
            preferred_memory=pb.PreferredMemory(pb.TRITONSERVER_MEMORY_CPU, 0),
        )
        response = request.exec()
        if response.has_error():
            raise ModelError(f"stage model {self.model_name}: {response.error().message()}")
        return {name: pb.get_output_tensor_by_name(response, name).as_numpy() for name in names}

    def close(self) -> None:
        """Nothing to free here: the stage models own their sessions."""


class BlsBackend(ClosingBackend):
    """Runs each stage on its own Triton model through BLS requests (the split deployment)."""

    name = "triton-bls"

    def __init__(self, pb_utils: Any) -> None:
        self.pb = pb_utils
        self._runners: list[Runner] = []

    def load(self, package: ModelPackage | Path, stage: str) -> BlsRunner:
        from ckbd.serving.repository import stage_model

        return self._handed_out(BlsRunner(self.pb, stage_model(stage), stage))


class _SplitModel(_PythonModel):
    """A BLS model: entropy tables here, the stage graphs in their own Triton models."""

    def _codec_model(self, stages: tuple[str, ...]) -> CodecModel:
        return CodecModel.open(self.model_dir, BlsBackend(self.pb), stages=stages, owns_backend=True,
                               memory=self._memory())


class SplitDecodeModel(_SplitModel):
    def setup(self) -> None:
        self.decoder = self.resource = self._decoder(self._codec_model(Decoder.STAGES))

    def handle(self, request: Any) -> list[Any]:
        return self._decode_response(self.decoder, request)


class SplitEncodeModel(_SplitModel):
    def setup(self) -> None:
        self.encoder = self.resource = Encoder(self._codec_model(Encoder.STAGES))

    def handle(self, request: Any) -> list[Any]:
        return self._encode_response(self.encoder, request)


def _model_dir(args: dict[str, str], relative: str) -> Path:
    """The model's view of the ckbd model directory (``model_repository`` is this model's folder)."""
    base = Path(args["model_repository"])
    for candidate in (base / relative, base / args.get("model_name", "") / relative):
        if (candidate / "manifest.json").is_file():
            return candidate
    raise ModelError(f"no ckbd model directory '{relative}' under {base}")
