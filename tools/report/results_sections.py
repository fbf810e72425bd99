"""The hand-written part of docs/RESULTS.md, kept when ``ckbd bench codecs --markdown`` re-renders the file.

Everything from :data:`HAND_WRITTEN_MARKER` on is written by hand or by other tools; each tool's
section sits between its own begin/end comments after the marker (:func:`write_section`).
"""

from __future__ import annotations

from pathlib import Path

#: Everything from this line on in the --markdown file is written by hand and kept on re-rendering.
HAND_WRITTEN_MARKER = "<!-- hand-written sections below: kept by `ckbd bench codecs --markdown` -->"


def with_hand_written(rendered: str, previous: Path) -> str:
    """``rendered`` followed by the hand-written part of the file it replaces (if any)."""
    old = previous.read_text(encoding="utf-8") if previous.is_file() else ""
    at = old.find(HAND_WRITTEN_MARKER)
    return rendered if at < 0 else rendered.rstrip("\n") + "\n\n" + old[at:]


def write_section(path: Path, section: str, begin: str, end: str) -> None:
    """Replace the ``begin``..``end`` section of ``path`` with ``section``, or append it after the marker."""
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
