"""SIGTERM as Ctrl-C, for every CLI.

`docker stop`, `timeout` and job schedulers send SIGTERM, whose default kills the process
on the spot: no "interrupted" line, no logs written, and (under Ray) a C++ stack trace.
`sigterm_as_interrupt()` makes it raise KeyboardInterrupt instead, so each CLI's existing
Ctrl-C path runs: it saves what it has, prints its `interrupted` line and exits 130.
`ray.init` installs its own SIGTERM handlers; `keep_sigterm_handler()` around it puts an
application's handler back.

A raise from a signal handler can be lost: one that lands while Python runs a finalizer
(`__del__`, a weakref callback) is printed as "Exception ignored" and dropped, and an
evaluation once went on for three more batches after its first SIGTERM. So the handler also
records the request, and the generation loops call `raise_if_interrupted()` after each
batch: a lost raise still stops the run one batch later.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


_requested = threading.Event()


def _raise_interrupt(signum, frame) -> None:
    _requested.set()
    raise KeyboardInterrupt(f"signal {signum}")


def raise_if_interrupted() -> None:
    """Raise the KeyboardInterrupt of a SIGTERM whose own raise was lost; once per signal."""
    if _requested.is_set():
        clear_interrupt()
        raise KeyboardInterrupt("SIGTERM (raised again between batches)")


def clear_interrupt() -> None:
    """Forget a recorded SIGTERM (a caller that handled the interrupt and goes on in-process)."""
    _requested.clear()


def sigterm_as_interrupt() -> bool:
    """From now on SIGTERM raises KeyboardInterrupt; False where it cannot (not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    clear_interrupt()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    return True


@contextlib.contextmanager
def keep_sigterm_handler() -> Iterator[None]:
    """Restore a Python SIGTERM handler that the block (ray.init) replaced; leave defaults to it."""
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(before) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, before)
