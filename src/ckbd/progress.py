"""Progress output that suits where stderr goes: a tqdm bar on a terminal, plain lines elsewhere.

A bar redraws itself with carriage returns, which in a log file is a few hundred bytes of noise per
update; so when stderr is not a terminal, a plain line is written at most every
:data:`PLAIN_INTERVAL_S` seconds, and one at the end. ``--quiet`` turns both off (and notices),
never results or errors. Notices go through :func:`notice`, which prints above an active bar. tqdm is imported only when
progress is shown, so the torch-free runtime (which prints notices) does not need it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

#: Seconds between two plain progress lines when stderr is not a terminal.
PLAIN_INTERVAL_S = 30.0

_settings = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    """No progress output and no notices for the rest of this process (``--quiet``)."""
    _settings["quiet"] = bool(quiet)


def is_quiet() -> bool:
    return _settings["quiet"]


def notice(message: str) -> None:
    """A ``notice:`` line on stderr (unless quiet), written above any active progress bar."""
    if _settings["quiet"]:
        return
    loaded = sys.modules.get("tqdm")  # a bar can only be active if tqdm was imported; the runtime never does
    if loaded is not None:
        loaded.tqdm.write(f"notice: {message}", file=sys.stderr)
    else:
        print(f"notice: {message}", file=sys.stderr)


class PlainProgress:
    """The subset of tqdm's interface ckbd uses, printing ``desc: n/total unit ...`` lines."""

    def __init__(self, iterable: Iterable[Any] | None, total: int | None, desc: str, unit: str,
                 initial: int, interval: float) -> None:
        self.iterable = iterable
        self.total = total if total is not None or iterable is None else _length(iterable)
        self.desc, self.unit, self.n, self.interval = desc, unit, initial, interval
        self.postfix = ""
        self._start_n = initial
        self._start = self._last = time.monotonic()
        self._printed_n: int | None = None
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_postfix(self, **values: object) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._print(now)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._printed_n != self.n and self.n > self._start_n:
                self._print(time.monotonic())

    def _print(self, now: float) -> None:
        self._last, self._printed_n = now, self.n
        units = self.unit if self.unit.endswith("s") else f"{self.unit}s"
        done = f"{self.n}/{self.total} {units} ({100 * self.n / self.total:.0f} %)" if self.total else f"{self.n} {units}"
        rate = (self.n - self._start_n) / max(now - self._start, 1e-9)
        parts = [done, f"{rate:.3g} {units}/s"] + ([self.postfix] if self.postfix else [])
        print(f"{self.desc}: " + ", ".join(parts), file=sys.stderr, flush=True)


def _length(iterable: Iterable[Any]) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", initial: int = 0, enabled: bool = True) -> Any:
    """A tqdm bar on a terminal, :class:`PlainProgress` elsewhere, a silent tqdm when disabled or quiet."""
    from tqdm import tqdm

    if not enabled or _settings["quiet"]:
        return tqdm(iterable, total=total, initial=initial, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=sys.stderr,
                    dynamic_ncols=True)
    return PlainProgress(iterable, total, desc, unit, initial, PLAIN_INTERVAL_S)
