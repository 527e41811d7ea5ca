"""Kill every process that holds a directory of the engine tests (`nb-engines-*` under the temp
directory, or the directories given): its command line names it, or its working directory or an
open file lies in it. The engine fixtures call `kill_holding` after stopping their daemons;
`.ci/run` runs this at exit, so a test killed by its timeout leaves no daemon behind.

    python scripts/kill_engines.py [DIR ...]     # prints what it killed
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

PREFIX = "nb-engines-"


def _holds(pid: int, root: str) -> bool:
    proc = Path(f"/proc/{pid}")
    try:
        if root in (proc / "cmdline").read_bytes().decode(errors="replace"):
            return True
        if os.readlink(proc / "cwd").startswith(root):
            return True
        for fd in (proc / "fd").iterdir():
            try:
                if os.readlink(fd).startswith(root):
                    return True
            except OSError:
                continue
    except OSError:
        return False
    return False


def kill_holding(root: str) -> list[int]:
    """SIGKILL each process (not this one) holding `root`; the pids killed."""
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        if _holds(pid, root):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
    return killed


def main(argv: list[str]) -> int:
    roots = argv or sorted(str(p) for p in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"))
    for root in roots:
        killed = kill_holding(root)
        if killed:
            print(f"kill_engines: {root}: killed {len(killed)} process(es): {killed}")
        if Path(root).name.startswith(PREFIX):
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
