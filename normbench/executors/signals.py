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
    """Hold SIGINT and SIGTERM back for the duration (main thread, POSIX); they are delivered
    when the block ends."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask") or not _main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
