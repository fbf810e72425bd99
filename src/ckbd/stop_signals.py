"""Stop a long loop cleanly on Ctrl-C or ``kill``: the first signal asks, a second one insists.

A training step interrupted halfway would leave the model and the optimiser out of step, so the
first SIGINT/SIGTERM is only recorded and the loop stops (and saves) after the step in progress;
a second signal raises :class:`KeyboardInterrupt` at once, as if nothing were installed.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))


class StopOnSignal:
    """``with StopOnSignal() as stop: while not stop.signum: ...``; outside the main thread a no-op."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
