"""ONNX Runtime backend: the embedded default (CPU provider), CUDA provider with onnxruntime-gpu."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np

from ckbd.errors import MissingDependencyError, ModelError
from ckbd.runtime.backend import Tensor, to_host
from ckbd.runtime.manifest import Manifest
from ckbd.runtime.stages import TensorSpec

_ORT_TYPES = {"tensor(float)": "float32", "tensor(int32)": "int32", "tensor(uint8)": "uint8",
              "tensor(float16)": "float16", "tensor(int64)": "int64"}


def _specs(args: list) -> tuple[TensorSpec, ...]:  # type: ignore[type-arg]
    return tuple(
        TensorSpec(a.name, _ORT_TYPES.get(a.type, a.type), tuple(d if d is not None else "?" for d in a.shape))
        for a in args
    )


class OrtRunner:
    """One InferenceSession, created once and reused for every image."""

    def __init__(self, session: object) -> None:
        self._session = session
        self.inputs = _specs(session.get_inputs())  # type: ignore[attr-defined]
        self.outputs = _specs(session.get_outputs())  # type: ignore[attr-defined]
        self._names = [o.name for o in self.outputs]

    def run(self, feeds: Mapping[str, Tensor], keep: Collection[str] = ()) -> dict[str, Tensor]:
        host = {name: np.ascontiguousarray(to_host(value)) for name, value in feeds.items()}
        results = self._session.run(self._names, host)  # type: ignore[attr-defined]
        return dict(zip(self._names, results))


class OnnxRuntimeBackend:
    """Loads stage graphs into ONNX Runtime sessions.

    ``threads`` sets intra-op parallelism (0: ORT's default, all cores). ``device="cuda"`` asks
    for the CUDA execution provider, which only onnxruntime-gpu has.
    """

    name = "onnxruntime"

    def __init__(self, device: str = "cpu", threads: int = 0, precision: str = "fp32") -> None:
        import onnxruntime as ort

        self._ort = ort
        self.precision = precision
        self.providers = self._providers(device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.options = options

    def _providers(self, device: str) -> list[str]:
        if device == "cpu":
            return ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in self._ort.get_available_providers():
                raise MissingDependencyError("onnxruntime-gpu", "gpu", "ONNX Runtime on CUDA")
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        raise ModelError(f"unknown ONNX Runtime device '{device}' (cpu or cuda)")

    def load(self, model_dir: Path, stage: str) -> OrtRunner:
        path = Manifest.load(model_dir).graph_path(Path(model_dir), stage, self.precision)
        try:
            session = self._ort.InferenceSession(str(path), sess_options=self.options, providers=self.providers)
        except Exception as exc:  # ORT raises its own exception types for unreadable graphs
            raise ModelError(f"cannot load {path}: {str(exc).splitlines()[0]}") from None
        return OrtRunner(session)
