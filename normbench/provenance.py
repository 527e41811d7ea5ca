"""Where a run came from: the git commit (and dirty flag) of the repository holding its spec
file, and the installed package versions (list and sha256). No TensorFlow here."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from importlib import metadata
from pathlib import Path


def _git(cwd: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=256)
def source(spec_file: str | None) -> dict:
    """{"spec_file", "git_commit", "git_dirty"} for a spec file; commit and dirty are None when
    the file is not in a git repository (or git is missing). Dirty: the repository has
    uncommitted changes to tracked files."""
    if spec_file is None:
        return {"spec_file": None, "git_commit": None, "git_dirty": None}
    path = Path(spec_file).resolve()
    folder = path.parent
    commit = _git(folder, "rev-parse", "HEAD") if folder.is_dir() else None
    dirty = None
    if commit is not None:
        status = _git(folder, "status", "--porcelain", "--untracked-files=no")
        dirty = None if status is None else bool(status)
    return {"spec_file": str(path), "git_commit": commit, "git_dirty": dirty}


@functools.lru_cache(maxsize=1)
def packages() -> tuple[list[str], str]:
    """(sorted "name==version" of every installed distribution, sha256 of that list)."""
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata.get("Name") if dist.metadata else None
        if name:
            found[name.lower()] = f"{name.lower()}=={dist.version}"
    listed = sorted(found.values())
    return listed, hashlib.sha256("\n".join(listed).encode()).hexdigest()


def of(spec_file: str | None) -> dict:
    """Everything a record's `provenance` holds."""
    listed, digest = packages()
    return {**source(spec_file), "packages": listed, "packages_sha256": digest}
