"""SIGINT and SIGTERM during a sweep: both stop it as Ctrl-C does (finished runs kept), and
neither can split the saving of one run."""

from __future__ import annotations

import contextlib
import signal
import threading


def stop_on_sigterm() -> None:
    """Let SIGTERM stop a sweep as Ctrl-C does: finished runs kept, nothing half-written."""
    def handler(signum, frame):  # noqa: ARG001 - signal's signature
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_stops():
    """Within the block, SIGTERM stops a sweep as Ctrl-C does; the previous handler comes back
    after. Only on the main thread: `signal.signal` raises elsewhere (a web app's or a worker
    thread's call to normbench.run), where the block changes nothing."""
    if not _main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    stop_on_sigterm()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_held():
    """Hold SIGINT and SIGTERM back for the duration (main thread): one arriving meanwhile is
    noted and raised again when the block ends, so it stops the sweep after the block, never
    inside it.

    Done with Python-level handlers, not by masking the signals: a signal sent to the process is
    delivered to any thread that does not block it (the process pool's manager thread, rich's
    refresh thread), and Python then runs the handler on the main thread in the middle of the
    block; a mask on the main thread alone let a Ctrl-C land between a run's save and its
    count."""
    if not _main_thread():
        yield
        return
    pending: list[int] = []

    def note(signum, frame):  # noqa: ARG001 - signal's signature
        pending.append(signum)

    previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if pending:
            signal.raise_signal(pending[0])  # to this thread: its handler runs now
