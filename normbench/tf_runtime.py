"""TensorFlow's start-up, quieted: its C++ log lines (oneDNN notes, CUDA probes, absl's preamble)
are printed to the process's stderr before TF's log level applies, and a user of normbench should
see normbench's lines. `normbench -v ...` (NORMBENCH_VERBOSE=1) lets them through.

Imports nothing of normbench: `import normbench.layers` loads this and no terminal code.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import tempfile
import threading


def verbose() -> bool:
    return os.environ.get("NORMBENCH_VERBOSE", "") not in ("", "0")


# TensorFlow's C++ log format (absl): "I0000 00:00:1795.. 3401 port.cc:153] ...", its preamble,
# and the continuation line of the CPU-feature note.
_NATIVE_LOG = re.compile(rb"^(?:[IWEF]\d{4} \d\d:\d\d:[\d.]+ +\d+ \S+:\d+\]|WARNING: All log "
                         rb"messages before absl::InitializeLog|To enable the following instructions)")


def _filter_native_logs(read_fd: int, write_fd: int) -> None:
    """Forward what C++ code writes to fd 2, less TensorFlow's log lines (a daemon thread)."""
    with os.fdopen(read_fd, "rb", buffering=0) as source:
        pending = b""
        while chunk := source.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not _NATIVE_LOG.match(line))
            if kept:
                os.write(write_fd, kept)


def _mute_native_logs_from_now_on(saved: int) -> bool:
    """Send fd 2 through a filter that drops TensorFlow's log lines for the rest of the
    process (TF 2.15 logs "Compiled cluster using XLA!" at the first XLA compile, long after
    import); Python's own stderr writes directly to the terminal's descriptor. Only where
    sys.stderr is fd 2 itself (not under a test runner's capture)."""
    try:
        if sys.stderr.fileno() != 2:
            return False
    except (AttributeError, OSError, ValueError):
        return False
    read_fd, write_fd = os.pipe()
    direct = os.dup(saved)
    threading.Thread(target=_filter_native_logs, args=(read_fd, direct), daemon=True,
                     name="normbench-native-log-filter").start()
    sys.stderr.flush()
    sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(saved), "wb", buffering=0),
                                  encoding=sys.stderr.encoding, errors="replace",
                                  line_buffering=True, write_through=True)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    return True


def quiet_tensorflow():
    """Import TensorFlow (and probe its devices, where CUDA logs its failure) with file
    descriptor 2 sent to a temporary file; what was printed is replayed only if that fails or
    in verbose mode. From then on TensorFlow's log lines on fd 2 are filtered out. Returns the
    tensorflow module."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    if verbose():
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
    _mute_native_logs_from_now_on(saved)
    os.close(saved)
    # TF's Python warnings about tf.function retracing are about its own loop, not the user's
    # run: shown with -v only
    tf.get_logger().setLevel(logging.ERROR)
    return tf
