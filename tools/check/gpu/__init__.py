"""``ckbd check gpu``: what a GPU host runs, end to end, into one JSON report.

:mod:`.run` runs the parts in order within a time budget: :mod:`.verdicts` (known answers per
backend and device), :mod:`.interop` (streams between ONNX Runtime on the CPU and torch on the
device, both ways), :mod:`.latency` with :mod:`.timing` (per-stage CUDA-event latency of the models
of :mod:`.models`), :mod:`.compressai_decode`, :mod:`.throughput`, and :mod:`.backends` (every
GPU backend present against the CPU, with :mod:`.compare` and :mod:`.targets`); :mod:`.render`
prints the report. ``tools/gpu_host_check.sh`` installs ckbd offline on a GPU host and runs it.
"""
