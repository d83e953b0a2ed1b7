"""Ctrl-C held back across a step that must not be cut in two.

Optuna's ``ask`` writes a RUNNING trial to storage before it returns it. A SIGINT landing inside
that call leaves a trial the worker never received, so it can neither evaluate nor fail it, and
the study keeps a RUNNING trial for ever. :func:`deferred_interrupt` runs such a step with
SIGINT recorded instead of raised, then raises ``KeyboardInterrupt`` once the step is done and
its result is held by the caller.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


def interrupted(e: BaseException | None) -> bool:
    """Whether ``e`` is a Ctrl-C, or was raised while one was being handled: a library's cleanup
    can fail under the ``KeyboardInterrupt`` and replace it (Optuna 5.1's journal-file lock
    ``release`` unlinks its renamed lock file a second time when the interrupt lands between the
    unlink and the end of its ``try``: ``FileNotFoundError``, whose ``__context__`` is the
    interrupt)."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__context__
    return False


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Run the body with SIGINT deferred to its end (main thread only; elsewhere, Python
    delivers no signals, so the body runs as is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt
