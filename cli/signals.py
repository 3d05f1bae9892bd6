"""SIGTERM and SIGHUP handled as Ctrl-C is, by the commands that run stages.

By default either signal ends expfs at once, while the stages it started
run on in their own sessions and its mounts stay. Inside `stop_on_signals`
each raises `Stopped`, a KeyboardInterrupt, so the clean-up written for
Ctrl-C runs: repro ends the stage's process group and a sweep stops and
unmounts its experiments. The command then exits with 128 + the signal's
number, the status a shell reports for a process killed by that signal.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived while a command ran."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signal_of(exc: KeyboardInterrupt) -> signal.Signals:
    """Return the signal that raised `exc`: SIGINT unless it is a `Stopped`."""
    if isinstance(exc, Stopped):
        return signal.Signals(exc.signum)
    return signal.SIGINT


def exit_status(exc: KeyboardInterrupt) -> int:
    """Return 128 + the number of the signal that raised `exc`."""
    return 128 + int(signal_of(exc))


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Raise `Stopped` in the main thread on the first SIGTERM or SIGHUP.

    Later ones are ignored, so that they cannot cut the clean-up short. In
    any other thread this does nothing, because only the main thread may
    set signal handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal raised
        if raised:
            return
        raised = True
        raise Stopped(signum)

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
