"""Ctrl-C that waits for a write to finish: :func:`deferred_sigint`."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator


@contextlib.contextmanager
def deferred_sigint() -> Iterator[None]:
    """Hold a SIGINT (Ctrl-C) that arrives inside the block until the block ends, then raise
    KeyboardInterrupt: the files written inside (a checkpoint and its rotation) are complete.

    A no-op outside the main thread, or where SIGINT is not Python's default handler (ignored, as
    under ``nohup``, or handled by someone else).
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        held.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if held:
        raise KeyboardInterrupt
