"""Stop on request without losing work: SIGINT / SIGTERM end training after the current step."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any


class GracefulStop:
    """SIGINT / SIGTERM ask training to stop after the current step; a second one aborts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, quiet: bool = False) -> None:
        self.signum: int | None = None
        self.quiet = quiet
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # asked twice: stop now, without saving
        self.signum = signum
        if not self.quiet:
            os.write(2, f"\n{signal.Signals(signum).name}: stopping after this step and saving last.pt "
                        "(send it again to abort without saving)\n".encode())
