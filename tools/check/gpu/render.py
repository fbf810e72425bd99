"""The text ``ckbd check gpu`` prints: a few lines and tables per part, from the JSON report."""

from __future__ import annotations

from typing import Any

from ckbd.runtime.profiling import DECODE_STAGES
from ckbd.tools.check.gpu.backends import format_table


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _known_answers(part: dict[str, Any]) -> list[str]:
    lines = ["known answers (mismatches per stage):"]
    for run in part["runs"]:
        where = f"  {run['backend']} ({run['device']})"
        if run.get("error"):
            lines.append(f"{where}: {run['error']}")
            continue
        cells = ", ".join(f"{s['stage']} {s['mismatches']}/{s['elements']}" for s in run["stages"])
        lines.append(f"{where}: {'ok' if run['ok'] else 'MISMATCH'}: {cells}")
    return lines


def _interop(part: dict[str, Any], device: str) -> list[str]:
    n, same = part["images_run"], part["symbols_identical"]
    skipped = f", {part['images_skipped']} skipped (time budget)" if part["images_skipped"] else ""
    return [f"interop: ONNX Runtime cpu -> torch {device}: symbols identical {same['cpu_to_device']}/{n}; "
            f"torch {device} -> ONNX Runtime cpu: {same['device_to_cpu']}/{n} (streams byte-identical to the CPU "
            f"encoder's: {part['streams_identical_bytes']}/{n}){skipped}"]


def _latency(part: dict[str, Any]) -> list[str]:
    stages = [s for s in DECODE_STAGES if any(s in r.get("stages_ms", {}) for r in part["rows"])]
    rows = []
    for r in part["rows"]:
        if "error" in r:
            rows.append([r["model"], r["size"], r["precision"], "-", *("-" for _ in stages), r["error"]])
            continue
        notes = [] if r["symbols_identical"] else ["SYMBOLS DIFFER"]
        if r.get("psnr_vs_fp32_db") is not None:
            notes.append(f"{r['psnr_vs_fp32_db']:.1f} dB vs fp32")
        if r.get("psnr_change_db") is not None:
            notes.append(f"PSNR {r['psnr_change_db']:+.3f} dB")
        if "symbols_identical_on_cpu" in r:
            notes.append(f"same symbols on cpu: {r['symbols_identical_on_cpu']}")
        rows.append([r["model"], r["size"], r["precision"], _ms(r["decode_ms"]),
                     *(_ms(r["stages_ms"].get(s)) for s in stages), "; ".join(notes)])
    head = f"latency ({part['timer']} per stage, wall clock for the whole decode; median of {part['repeat']}):"
    lines = [head, format_table(["model", "size", "precision", "decode ms", *stages, "notes"], rows)]
    return lines + [f"  not measured: {', '.join(part['not_measured'])}"] if part["not_measured"] else lines


def _compressai(part: dict[str, Any]) -> list[str]:
    rows = [[r["model"], r.get("size", "-"), _ms(r.get("ckbd_fp32_decode_ms")), _ms(r.get("decode_ms")),
             _ms(r.get("ratio_ckbd_over_compressai")), r.get("error", "")] for r in part["rows"]]
    return [f"CompressAI checkerboard, same weights, same device ({part['compressai']}):",
            format_table(["model", "size", "ckbd ms", "CompressAI ms", "ratio", "notes"], rows)]


def _throughput(part: dict[str, Any]) -> list[str]:
    rows = [[r["model"], str(r["images"]), _ms(r.get("sequential_images_per_s")),
             _ms(r.get("pipelined_images_per_s")), r.get("error", "")] for r in part["rows"]]
    return ["throughput:", format_table(["model", "images", "one by one img/s", "pipelined img/s", "notes"], rows)]


def _backends(part: dict[str, Any]) -> list[str]:
    rows = [[b["backend"], f"{b['images_decoded']}/{b['images_run']}",
             *(str(b["index_flips"].get(s, "-")) for s in ("anchor_params", "nonanchor_params")),
             _ms(b["median_ms"].get("decode")), b["error"] or "; ".join(b["stage_errors"][:1])]
            for b in part["backends"]]
    lines = [f"  not checked: {name}: {why}" for name, why in part["not_checked"].items()]
    return ["backends against the CPU:", *lines,
            format_table(["backend", "decoded", "anchor flips", "nonanchor flips", "decode ms", "notes"], rows)]


RENDERERS = {"known_answers": _known_answers, "latency": _latency, "compressai": _compressai,
             "throughput": _throughput, "backends": _backends}


def render(report: dict[str, Any]) -> str:
    """The report as text: what ran where, then each part (or why it was skipped)."""
    inputs = report["inputs"]
    lines = [f"device {report['device']}; {inputs['count']} images from {inputs['images']}; "
             f"{report['seconds']:.0f} s of a {inputs['budget_s']:g} s budget"]
    for name, model in inputs.get("models", {}).items():
        lines.append(f"model {name}: " + (f"skipped: {model['skipped']}" if "skipped" in model else
                                          f"{model['arch']} N={model['N']} M={model['M']} ({model['source']})"))
    for name in ("known_answers", "interop", "latency", "compressai", "throughput", "backends"):
        part = report.get(name)
        if part is None:
            continue
        lines.append("")
        if part.get("skipped"):
            lines.append(f"{name}: skipped: {part['skipped']}")
        elif part.get("error"):
            lines.append(f"{name}: FAILED: {part['error']}")
        elif name == "interop":
            lines += _interop(part, report["device"])
        else:
            lines += RENDERERS[name](part)
    return "\n".join(lines)
