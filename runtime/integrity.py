"""Model files checked against the manifest's sha256 before they are used.

Why: one flipped bit in a synthesis graph decodes with exit 0 to a garbage image, and a graph or
table from another model decodes to a different image or blames the bitstream. The bitstream's
checks cannot see either; only the file hashes can.

Hashing the shipped model (≈10 MB) costs tens of milliseconds, more than opening it should, so a
verified file is remembered in a small cache file keyed by its path, size, mtime, ctime, inode
and device. Writing a file changes its ctime (which no user tool can set back), so any change
leads to a fresh hash. The cache lives in ``$CKBD_CACHE_DIR``, else ``$XDG_CACHE_HOME/ckbd``,
else ``~/.cache/ckbd``; when it cannot be written, files are simply hashed every time.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from ckbd.errors import ModelError
from ckbd.runtime.manifest import MANIFEST_NAME, file_sha256

CACHE_NAME = "verified-files.json"
#: Entries kept in the cache file (the most recent ones).
MAX_ENTRIES = 512

_lock = threading.Lock()


def cache_dir() -> Path:
    """Where ckbd keeps its small caches (verified files, known-answer verdicts)."""
    root = os.environ.get("CKBD_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "ckbd"


def cache_path() -> Path:
    return cache_dir() / CACHE_NAME


def _key(path: Path) -> str:
    st = os.stat(path)
    return f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}|{st.st_dev}"


def load_json_cache(path: Path) -> dict[str, Any]:
    """A cache file's entries (empty when it is missing or unreadable: a cache only saves time)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in raw.items() if isinstance(k, str)} if isinstance(raw, dict) else {}


def save_json_cache(path: Path, entries: dict[str, Any]) -> None:
    """Keep the :data:`MAX_ENTRIES` most recent entries; a cache that cannot be written is skipped."""
    from ckbd.errors import CkbdError
    from ckbd.runtime.atomic import atomic_write_bytes

    kept = dict(list(entries.items())[-MAX_ENTRIES:])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(kept).encode())
    except (OSError, CkbdError):
        pass  # a read-only home only costs the work the cache saves


def verify_file(path: Path, expected_sha256: str) -> None:
    """Raise :class:`ModelError` naming ``path`` unless its sha256 is ``expected_sha256``."""
    path = Path(path)
    try:
        key = _key(path)
    except FileNotFoundError:
        raise ModelError(f"model file {path} is missing") from None
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror}") from None
    with _lock:
        cache = load_json_cache(cache_path())
        if cache.get(key) == expected_sha256:
            return
        try:
            found = file_sha256(path)
        except OSError as exc:
            raise ModelError(f"cannot read model file {path}: {exc.strerror}") from None
        if found != expected_sha256:
            raise ModelError(
                f"model file {path} does not match its sha256 in {MANIFEST_NAME} (expected "
                f"{expected_sha256[:12]}…, found {found[:12]}…): it is damaged or from another model; "
                "re-export the model directory"
            )
        cache.pop(key, None)
        cache[key] = found
        save_json_cache(cache_path(), cache)
