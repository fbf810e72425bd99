"""The same decode through CompressAI's checkerboard model on the same device, for the ratio.

CompressAI's ``mbt2018`` transforms with its ``CheckerboardLatentCodec`` are given the very weights
of each ckbd model under test (:func:`~ckbd.tools.bench.codecs.compressai_reference.compressai_models`),
moved to the device, and ``decompress`` is timed on the wall clock after a device synchronisation,
like ckbd's whole decode. The ratio is ckbd's fp32 decode time over CompressAI's at the same size.
TF32 is left at torch's defaults for CompressAI (its own behaviour).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from ckbd.runtime.imageio import resized
from ckbd.tools.check.gpu.compare import one_line
from ckbd.tools.check.gpu.latency import Size
from ckbd.tools.check.gpu.models import CheckedModel


def run_compressai(models: Sequence[CheckedModel], source: Any, sizes: Sequence[Size], device: str, repeat: int,
                   latency_rows: Sequence[dict[str, Any]], deadline: float,
                   tick: Callable[[str], None]) -> dict[str, Any]:
    """One row per model and size measured before ``deadline``; skipped when CompressAI is not installed."""
    from ckbd.tools.bench.codecs.compressai_reference import load_compressai

    compressai, note = load_compressai()
    if compressai is None:
        return {"skipped": note}
    rows: list[dict[str, Any]] = []
    not_measured: list[str] = []
    for checked in models:
        if checked.package.manifest.arch != "mbt2018-ckbd":
            rows.append({"model": checked.name, "error": f"no CompressAI counterpart of {checked.package.manifest.arch}"})
            continue
        try:
            model = _compressai_model(compressai, checked, device)
        except Exception as exc:  # weights that do not map: one row
            rows.append({"model": checked.name, "error": one_line(exc)})
            continue
        for size in sizes:
            if time.monotonic() > deadline:
                not_measured.append(f"{checked.name} {size} (time budget)")
                continue
            rows.append(_row(model, checked.name, resized(source, size.height, size.width), size, device, repeat, latency_rows))
            tick(f"compressai {checked.name} {size}")
    return {"skipped": None, "compressai": note, "ok": all("error" not in r for r in rows), "rows": rows,
            "not_measured": not_measured}


def _compressai_model(compressai: Any, checked: CheckedModel, device: str) -> Any:
    from ckbd.tools.bench.codecs.compressai_reference import compressai_models

    config = checked.model.config
    models = compressai_models(compressai, checked.torch_copy(), {}, config.N, config.M)
    return models["mbt2018-ckbd"].to(device)


def _row(model: Any, name: str, image: Any, size: Size, device: str, repeat: int,
         latency_rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    import torch

    from ckbd.runtime.codec import to_network_input

    row: dict[str, Any] = {"model": name, "size": str(size)}
    try:
        with torch.inference_mode():
            x = torch.from_numpy(to_network_input(image)).to(device)
            out = model.compress(x)
            times = []
            for i in range(2 + max(1, repeat)):  # two warm-ups
                _sync(device)
                start = time.perf_counter()
                x_hat = model.decompress(out["strings"], out["shape"])["x_hat"]
                _sync(device)
                if i >= 2:
                    times.append((time.perf_counter() - start) * 1e3)
        row.update(decode_ms=round(statistics.median(times), 3), runs=len(times),
                   stream_bytes=sum(len(s) for strings in out["strings"] for s in strings),
                   output_shape=list(x_hat.shape))
        ours = next((r for r in latency_rows if r.get("model") == name and r.get("size") == str(size)
                     and r.get("precision") == "fp32" and "decode_ms" in r), None)
        if ours is not None:
            row["ckbd_fp32_decode_ms"] = ours["decode_ms"]
            row["ratio_ckbd_over_compressai"] = round(ours["decode_ms"] / row["decode_ms"], 3)
    except Exception as exc:  # CompressAI failing on this device is a row
        row["error"] = one_line(exc)
    return row


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))
