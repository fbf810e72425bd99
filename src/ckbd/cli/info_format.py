"""What ``ckbd info`` shows: one summary, as aligned text or as JSON (same content).

Reading the file is ``info.py``'s job; this module only turns a validated header and the file size
into the summary, so the output format has one home.
"""

from __future__ import annotations

from typing import Any

from ckbd.runtime import bitstream as bs
from ckbd.runtime.rate import bits_per_pixel


def readable_size(n: int) -> str:
    """``812 B``, ``12.3 KiB``, ``4.0 MiB``: bytes in the unit a person reads at a glance."""
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.1f} {unit}"


def model_name(fingerprint_hex: str) -> str | None:
    """A name for the model that wrote the file when it is one ckbd knows (the shipped default)."""
    from ckbd.errors import CkbdError
    from ckbd.runtime.manifest import Manifest
    from ckbd.runtime.package import default_model_dir

    try:
        manifest = Manifest.load(default_model_dir())
    except (CkbdError, OSError, ValueError):  # no default model, or one this reader cannot load: no name
        return None
    return "the shipped default model" if manifest.fingerprint.startswith(fingerprint_hex) else None


def summarize(header: bs.Header, size: int, name: str) -> dict[str, Any]:
    """The summary of one stream: ``size`` is the whole file's bytes, ``name`` how it was given."""
    h = header
    pixels = h.height * h.width
    return {
        "file": name,
        "bytes": size,
        "bitstream_version": h.version,
        "entropy_params": getattr(h, "entropy_params", None),  # recorded from version 2 on
        "model": {"arch": h.arch, "N": h.N, "M": h.M, "fingerprint": h.fingerprint_hex,
                  "name": model_name(h.fingerprint_hex)},
        "width": h.width,
        "height": h.height,
        "bpp": round(bits_per_pixel(size, h.height, h.width), 4) if pixels else None,
        "y_shape": [h.M, h.y_h, h.y_w],
        "z_shape": [h.N, h.z_h, h.z_w],
        "payload_bytes": {"header": bs.HEADER_SIZE, "z": h.z_length, "anchors": h.anchor_length,
                          "nonanchors": h.nonanchor_length},
        "symbols_crc32": f"{h.symbols_crc:08x}",
    }


def _bytes(n: int) -> str:
    return f"{n} bytes" if n < 1024 else f"{readable_size(n)}, {n:,} bytes"


def format_text(summary: dict[str, Any]) -> str:
    """Aligned ``label: value`` lines of :func:`summarize`'s result."""
    model = summary["model"]
    payloads = summary["payload_bytes"]
    entropy = summary["entropy_params"]
    rows = [
        ("file", f"{summary['file']} ({_bytes(summary['bytes'])})"),
        ("format", f"ckbd bitstream version {summary['bitstream_version']}"
                   + (f", {entropy} entropy parameters" if entropy else "")),
        ("model", f"{model['arch']} N={model['N']} M={model['M']}" + (f" ({model['name']})" if model["name"] else "")),
        ("fingerprint", model["fingerprint"]),
        ("image", f"{summary['width']}x{summary['height']} pixels"),
        ("rate", "n/a" if summary["bpp"] is None else f"{summary['bpp']:.4f} bpp"),
        ("latents", "y {}x{}x{}, z {}x{}x{}".format(*summary["y_shape"], *summary["z_shape"])),
        ("payloads", ", ".join(f"{part} {readable_size(n)}" for part, n in payloads.items())),
        ("symbols CRC", summary["symbols_crc32"]),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)
