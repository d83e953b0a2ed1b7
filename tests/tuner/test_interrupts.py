"""Ctrl-C during a step that must not be cut in two (Optuna's ask) is raised after it."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from tuner.interrupts import deferred_interrupt


def test_sigint_inside_is_raised_after_the_body_completes():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("body finished")
    assert done == ["body finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored


def test_no_signal_no_interrupt_and_handler_restored():
    with deferred_interrupt():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_outside_the_main_thread_the_body_runs_as_is():
    seen = []

    def body():
        with deferred_interrupt():
            seen.append(threading.current_thread() is threading.main_thread())

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [False]
