"""Write files so that a reader never sees half of one: temp file in the same folder, then rename.

The rename is only ever aimed at a regular file (or a free name): a device, FIFO or directory is
refused rather than replaced, and a symbolic link is followed, so the file it points to is
replaced and the link stays. Temp files are removed on SIGTERM/SIGHUP as on an exception, so a
``timeout``-killed run leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from ckbd.errors import CkbdError, OutputExistsError

#: Signals after which the live temp files are removed before the previous handling runs.
CLEANUP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))

_live: set[Path] = set()
_lock = threading.RLock()  # re-entrant: the signal handler runs on the main thread
_previous: dict[int, object] = {}


def _remove_live_temps() -> None:
    with _lock:
        paths = list(_live)
    for path in paths:
        try:
            path.unlink()
        except OSError:
            pass


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Do what would have happened without this handler, removing temp files first if that is dying.

    A Python handler installed before (e.g. a training loop that saves on SIGTERM) runs as it
    would have; if it raises, the temp files go with the ``atomic_path`` blocks it unwinds.
    """
    previous = _previous.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        _remove_live_temps()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_signal_cleanup() -> None:
    """Chain our handler in front of whatever is installed now (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in CLEANUP_SIGNALS:
        current = signal.getsignal(signum)
        if current is _on_signal:
            continue
        _previous[signum] = current
        signal.signal(signum, _on_signal)


def writable_target(target: Path) -> Path:
    """The path the rename must replace: ``target``, or the file a symlink at ``target`` names.

    Raises :class:`CkbdError` when that path exists and is not a regular file.
    """
    target = Path(target)
    resolved = Path(os.path.realpath(target)) if target.is_symlink() else target
    try:
        mode = resolved.stat().st_mode
    except FileNotFoundError:
        return resolved
    except OSError as exc:
        raise CkbdError(f"cannot write {target}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise CkbdError(f"refusing to write {target}: it is {describe_mode(mode)}, not a regular file")
    return resolved


def describe_mode(mode: int) -> str:
    """'a directory', 'a FIFO', ... for messages."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "a special file"


@contextmanager
def atomic_path(target: Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it to ``target`` only on success.

    ``replace=False`` publishes with a hard link, which fails if ``target`` appeared meanwhile,
    so an existing file is never replaced even by a concurrent writer.
    """
    target = Path(target)
    final = writable_target(target)
    folder = final.parent if str(final.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise CkbdError(f"cannot write {target}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    with _lock:
        _live.add(tmp)
    _install_signal_cleanup()
    os.close(fd)
    # mkstemp makes the file owner-only; give it the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        _publish(tmp, final, target, replace)
    except OSError as exc:
        raise CkbdError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
        with _lock:
            _live.discard(tmp)


def _publish(tmp: Path, final: Path, target: Path, replace: bool) -> None:
    if replace:
        writable_target(target)  # re-checked: something may have been created there meanwhile
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise OutputExistsError(f"{target} already exists; use --force to replace it") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if os.path.lexists(final):  # no hard links on this filesystem: check, then rename
            raise OutputExistsError(f"{target} already exists; use --force to replace it") from None
        os.replace(tmp, final)


def atomic_write_bytes(target: Path, data: bytes, *, replace: bool = True) -> None:
    with atomic_path(target, replace=replace) as tmp:
        tmp.write_bytes(data)
