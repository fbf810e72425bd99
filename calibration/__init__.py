"""INT8 post-training calibration: Q/DQ variants of the image-side graphs, listed in the manifest.

Importing this package is cheap: ``onnx`` and ``onnxruntime.quantization`` are only imported when
a graph is actually quantised (and a missing ``onnx`` names the ``calibration`` extra).
"""

from ckbd.calibration.fine_tune import FineTuneConfig
from ckbd.calibration.quantize import (
    DEFAULT_COUNT,
    DEFAULT_METHOD,
    INT8,
    METHODS,
    PARAMETER_STAGES,
    QUANTIZABLE_STAGES,
    calibrate,
    check_stages,
    int8_file_name,
)
from ckbd.calibration.targets import DEFAULT_TARGET, TARGETS

__all__ = [
    "DEFAULT_COUNT",
    "DEFAULT_METHOD",
    "DEFAULT_TARGET",
    "FineTuneConfig",
    "INT8",
    "METHODS",
    "PARAMETER_STAGES",
    "QUANTIZABLE_STAGES",
    "TARGETS",
    "calibrate",
    "check_stages",
    "int8_file_name",
]
