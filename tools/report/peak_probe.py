"""The machine's measured compute peak, for putting a stage's GFLOP/s in proportion.

A square matrix product through ONNX Runtime itself (its MLAS kernels are what the convolutions
use too), at the thread count of the benchmark: fp32 ``MatMul`` and u8s8 ``MatMulInteger``, the
int8 form ONNX Runtime's x86 convolutions use. The best run is reported: a peak is what the cores can
do, so a run slowed by another process says nothing about it. Runs go on for at least
``min_seconds``: on a shared virtual machine a busy spell can outlast a handful of runs (measured on
the 2-core AMD EPYC VM: best of 7 gave 67 GFLOP/s in one call and 135 in the next).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ckbd.errors import require

#: Matrix side: large enough to reach the kernels' steady state, small enough to take ~0.1 s.
DEFAULT_SIZE = 1024


@dataclass(frozen=True)
class PeakResult:
    threads: int
    size: int
    fp32_gflops: float
    int8_gops: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _matmul_session(kind: str, size: int, threads: int) -> tuple[Any, dict[str, np.ndarray]]:
    import onnxruntime as ort

    onnx = require("onnx", "calibration", "the peak probe (it builds a one-node ONNX graph)")
    TensorProto, helper = onnx.TensorProto, onnx.helper

    rng = np.random.default_rng(0)
    if kind == "fp32":
        elem, node = TensorProto.FLOAT, helper.make_node("MatMul", ["a", "b"], ["c"])
        feeds = {"a": rng.standard_normal((size, size), dtype=np.float32),
                 "b": rng.standard_normal((size, size), dtype=np.float32)}
        inputs = [helper.make_tensor_value_info(n, elem, [size, size]) for n in ("a", "b")]
        out = helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])
    else:
        node = helper.make_node("MatMulInteger", ["a", "b"], ["c"])
        feeds = {"a": rng.integers(0, 255, (size, size), dtype=np.uint8),
                 "b": rng.integers(-127, 127, (size, size), dtype=np.int8)}
        inputs = [helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size]),
                  helper.make_tensor_value_info("b", TensorProto.INT8, [size, size])]
        out = helper.make_tensor_value_info("c", TensorProto.INT32, [size, size])
    graph = helper.make_graph([node], "peak", inputs, [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, feeds


def _best_seconds(session: Any, feeds: dict[str, np.ndarray], runs: int, min_seconds: float) -> float:
    session.run(None, feeds)  # warm-up: packing buffers, thread pool start
    best = float("inf")
    done, deadline = 0, time.perf_counter() + min_seconds
    while done < runs or time.perf_counter() < deadline:
        start = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - start)
        done += 1
    return best


def measure_peak(threads: int = 2, size: int = DEFAULT_SIZE, runs: int = 7, min_seconds: float = 1.5) -> PeakResult:
    """fp32 GFLOP/s and int8 GOP/s (one multiply-add = 2 operations) of a ``size``-square product."""
    ops = 2.0 * size**3
    rates = []
    for kind in ("fp32", "int8"):
        session, feeds = _matmul_session(kind, size, threads)
        rates.append(ops / _best_seconds(session, feeds, runs, min_seconds) / 1e9)
    return PeakResult(threads, size, *rates)
