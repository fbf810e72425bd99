"""Streams cross between ONNX Runtime on the CPU and torch on the device, in both directions.

``cpu_to_device``: the CPU encoder's stream (ONNX Runtime) decoded by torch on the device must give
back the CPU decoder's symbols and latent halves exactly. ``device_to_cpu``: torch on the device
encodes, ONNX Runtime's CPU decoder decodes, and must give back the device encoder's symbols.
The streams of the two encoders need not be equal bytes (the analysis transform is float arithmetic
that may round a latent differently on another device), so that is reported, not required; the
decoded pixels against the CPU's decode likewise (fp32 synthesis on another device).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ckbd.tools.check.gpu.compare import Reference, one_line
from ckbd.tools.check.gpu.timing import pixels_psnr


def run_interop(references: Sequence[Reference], cpu_decoder: Any, device_encoder: Any, device_decoder: Any,
                deadline: float, tick: Callable[[str], None]) -> dict[str, Any]:
    """Both directions for every reference image until ``deadline`` (``time.monotonic()``)."""
    images: list[dict[str, Any]] = []
    skipped = 0
    for ref in references:
        if time.monotonic() > deadline and images:  # at least one image
            skipped += 1
            continue
        images.append({"image": ref.name, "cpu_to_device": _cpu_to_device(ref, device_decoder),
                       "device_to_cpu": _device_to_cpu(ref, device_encoder, cpu_decoder)})
        tick(f"interop {ref.name}")
    counts = {direction: sum(bool(i[direction]["symbols_identical"]) for i in images)
              for direction in ("cpu_to_device", "device_to_cpu")}
    return {"skipped": None, "images_run": len(images), "images_skipped": skipped,
            "symbols_identical": counts, "ok": bool(images) and all(n == len(images) for n in counts.values()),
            "streams_identical_bytes": sum(bool(i["device_to_cpu"].get("stream_identical")) for i in images),
            "images": images}


def _cpu_to_device(ref: Reference, device_decoder: Any) -> dict[str, Any]:
    try:
        result = device_decoder.decode_detailed(ref.data)
    except Exception as exc:  # e.g. a checksum error: symbols differ
        return {"symbols_identical": False, "error": one_line(exc)}
    image = np.asarray(result.image)
    return {"symbols_identical": bool(result.latents.equals(ref.latents)),
            "pixels_identical": bool(np.array_equal(image, ref.decoded)),
            "psnr_vs_cpu_db": pixels_psnr(ref.decoded, image)}


def _device_to_cpu(ref: Reference, device_encoder: Any, cpu_decoder: Any) -> dict[str, Any]:
    try:
        encoded = device_encoder.encode_detailed(ref.image, estimate=False)
        decoded = cpu_decoder.decode_detailed(encoded.data)
    except Exception as exc:  # reported per image
        return {"symbols_identical": False, "error": one_line(exc)}
    return {"symbols_identical": bool(decoded.latents.equals(encoded.latents)),
            "stream_identical": encoded.data == ref.data, "bytes": len(encoded.data)}
