"""Hand-written sections of docs/RESULTS.md that other tools own, kept when ``ckbd bench codecs``
re-renders the file: each tool's section sits between its own begin/end comments after the marker."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, section: str, begin: str, end: str) -> None:
    """Replace the ``begin``..``end`` section of ``path`` with ``section``, or append it after the marker."""
    from ckbd.cli.bench_codecs import HAND_WRITTEN_MARKER
    from ckbd.runtime.atomic import atomic_write_bytes

    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        if HAND_WRITTEN_MARKER not in text:
            text = text.rstrip("\n") + "\n\n" + HAND_WRITTEN_MARKER + "\n"
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write_bytes(path, text.encode())
