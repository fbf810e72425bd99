"""Decode latency per stage for each model, image size and synthesis precision, on one torch device.

For each model and size one stream is encoded on the device (fp32), then decoded by a decoder per
precision (``fp32``, ``fp16``: what the image transforms compute in; the integer stages are fp32
GEMMs always). Every decode must give back the encoder's symbols. The fp16 rows report their PSNR
against the fp32 decode and the change of PSNR against the original. Where the device is not the CPU, the paper-size model's stream is
also decoded on the CPU's torch backend: the same symbols there prove its integer stages exact on
the device, as the known-answer vectors do for the shipped model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ckbd.runtime.codec import Decoder, Encoder
from ckbd.runtime.imageio import resized
from ckbd.tools.check.gpu.compare import one_line
from ckbd.tools.check.gpu.models import CheckedModel, open_codec
from ckbd.tools.check.gpu.timing import Clock, TimedDecoder, measure, medians, pixels_psnr


@dataclass(frozen=True)
class Size:
    """An image size, written ``WxH`` like the paper's 768x512 and 1920x1080."""

    width: int
    height: int

    @classmethod
    def parse(cls, text: str) -> Size:
        w, sep, h = text.lower().partition("x")
        if not sep or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
            raise ValueError(f"'{text}' is not a size WxH (e.g. 768x512)")
        return cls(int(w), int(h))

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass
class LatencyPlan:
    """What to measure: ``sizes`` x ``precisions`` for each model, ``repeat`` timed decodes each."""

    sizes: Sequence[Size]
    precisions: Sequence[str]
    repeat: int
    device: str


def run_latency(models: Sequence[CheckedModel], source: np.ndarray, plan: LatencyPlan, deadline: float,
                tick: Callable[[str], None]) -> dict[str, Any]:
    """One row per (model, size, precision) measured before ``deadline`` (``time.monotonic()``)."""
    clock = Clock(plan.device)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for checked in models:
        rows += _model_rows(checked, source, plan, clock, deadline, skipped, tick)
    ok = all(r["symbols_identical"] is True and r.get("symbols_identical_on_cpu", True) is True
             and not r.get("error") for r in rows)
    return {"skipped": None, "timer": clock.name, "device": plan.device, "repeat": plan.repeat, "ok": ok,
            "rows": rows, "not_measured": skipped}


def _model_rows(checked: CheckedModel, source: np.ndarray, plan: LatencyPlan, clock: Clock, deadline: float,
                skipped: list[str], tick: Callable[[str], None]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    decoders: dict[str, TimedDecoder] = {}
    encoder = None
    try:
        for size in plan.sizes:
            if time.monotonic() > deadline:
                skipped += [f"{checked.name} {size} {p} (time budget)" for p in plan.precisions]
                continue
            image = resized(source, size.height, size.width)
            if encoder is None:
                encoder = open_codec(Encoder, checked, plan.device)
            encoded = encoder.encode_detailed(image, estimate=False)
            fp32_image, fp32_psnr = None, None
            for precision in plan.precisions:
                row: dict[str, Any] = {"model": checked.name, "size": str(size), "precision": precision,
                       "stream_bytes": len(encoded.data)}
                try:
                    if precision not in decoders:
                        decoders[precision] = TimedDecoder(open_codec(Decoder, checked, plan.device, precision), clock)
                    timed = decoders[precision]
                    result, runs = measure(timed, encoded.data, plan.repeat)
                    times = medians(runs)
                    row.update(decode_ms=times.pop("decode"), stages_ms=times, runs=len(runs),
                               symbols_identical=bool(result.latents.equals(encoded.latents)),
                               psnr_db=pixels_psnr(image, result.image), routing=timed.routing())
                    if precision == "fp32":
                        fp32_image, fp32_psnr = result.image, row["psnr_db"]
                    elif fp32_image is not None:
                        row["psnr_vs_fp32_db"] = pixels_psnr(fp32_image, result.image)
                        if fp32_psnr is not None and row["psnr_db"] is not None:
                            row["psnr_change_db"] = round(row["psnr_db"] - fp32_psnr, 3)
                except Exception as exc:  # one failed configuration is a row, not the end of the check
                    row.update(error=one_line(exc), symbols_identical=False)
                rows.append(row)
                tick(f"latency {checked.name} {size} {precision}")
            if checked.name == "paper" and clock.cuda and size == plan.sizes[0]:
                rows[-len(plan.precisions)]["symbols_identical_on_cpu"] = _decodes_on_cpu(checked, encoded)
    finally:
        for timed in decoders.values():
            timed.decoder.close()
        if encoder is not None:
            encoder.close()
    return rows


def _decodes_on_cpu(checked: CheckedModel, encoded: Any) -> bool | str:
    """Whether the CPU's torch backend decodes the device-encoded stream to the same symbols."""
    try:
        with open_codec(Decoder, checked, "cpu") as decoder:
            return bool(decoder.decode_detailed(encoded.data).latents.equals(encoded.latents))
    except Exception as exc:  # reported in the row
        return one_line(exc)
