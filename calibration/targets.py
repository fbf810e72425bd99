"""Which INT8 graph a runtime wants: ``tensorrt`` (symmetric Q/DQ) or ``cpu`` (ONNX Runtime on x86).

``ckbd calibrate --target`` picks one of two recipes; both are QDQ files with the float graph's
inputs and outputs and per-channel int8 weights.

* **tensorrt** (default): symmetric int8 activations (zero point 0, the only one TensorRT accepts)
  and float biases (its ONNX parser rejects an int32 bias behind a DequantizeLinear; it fuses a
  float bias itself).
* **cpu**: *asymmetric uint8* activations (the U8S8 form of ONNX Runtime's x86 kernels, which use
  all 256 levels for one-sided activations) and int32 biases (the QLinearConv bias).

Measured (ONNX Runtime 1.32, 2-core AVX2 EPYC without VNNI, one thread, CPU time):

* with the synthesis graph of ``ckbd.export.cpu_graph`` (IGDN per phase, the current export), ONNX
  Runtime fuses only the **cpu** recipe into ``QLinearConv``; the tensorrt recipe stays float
  convolutions between Q/DQ pairs and is *slower* than fp32. Shipped model, 768x512: fp32 185.5 ms,
  cpu recipe 167.2 ms, tensorrt recipe 226.0 ms. So ``--target cpu`` is the recipe for ONNX Runtime;
* with the older graph (IGDN after the interleave) ONNX Runtime fused both (it converts s8
  activations to u8 itself), and they ran alike: paper-size synthesis fp32 1217 ms, tensorrt recipe
  883 ms, cpu recipe 908 ms, cpu recipe in QOperator format 869 ms, cpu recipe with ``reduce_range``
  (7-bit weights) 1012 ms.

Quality is alike (shipped model, all synthesis layers int8, PSNR loss on 8 calibration images:
percentile 0.148 / 0.149 dB, entropy 0.187 / 0.184 dB, minmax 0.235 / 0.213 dB for tensorrt / cpu;
cpu with ``reduce_range`` 0.160 dB, so full-range weights stay the default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ckbd.errors import UsageError


@dataclass(frozen=True)
class QuantTarget:
    """The quantiser settings one runtime needs (see the module docstring for why)."""

    name: str
    activations_signed: bool
    symmetric_activations: bool
    quantize_bias: bool
    description: str
    #: One QuantizeLinear per tensor (its readers' DequantizeLinear nodes stay apart), instead of a
    #: private pair per reader (see ckbd.calibration.qdq_graph.shared_quantize).
    shares_quantize: bool = False

    def activation_type(self, q: Any) -> Any:
        """The ``onnxruntime.quantization.QuantType`` of activations."""
        return q.QuantType.QInt8 if self.activations_signed else q.QuantType.QUInt8

    def extra_options(self) -> dict[str, Any]:
        """``quantize_static`` extra options that differ between targets."""
        return {
            "ActivationSymmetric": self.symmetric_activations,
            "CalibTensorRangeSymmetric": self.symmetric_activations,
            "QuantizeBias": self.quantize_bias,
        }

    def activations_label(self) -> str:
        kind = "int8 symmetric" if self.symmetric_activations else "uint8 asymmetric"
        return f"{kind} per-tensor"


TENSORRT = QuantTarget("tensorrt", True, True, False,
                       "symmetric int8 activations, float biases (TensorRT explicit quantisation)")
CPU = QuantTarget("cpu", False, False, True,
                  "asymmetric uint8 activations, int32 biases (ONNX Runtime QLinearConv on x86)",
                  shares_quantize=True)
TARGETS = {t.name: t for t in (TENSORRT, CPU)}
DEFAULT_TARGET = TENSORRT.name


def quant_target(name: str) -> QuantTarget:
    """The target called ``name``, or a usage error listing the choices."""
    try:
        return TARGETS[name]
    except KeyError:
        raise UsageError(f"unknown calibration target '{name}'; choose from {', '.join(TARGETS)}") from None
