"""The record index: which run directories were found finished, and the file fingerprints they
had then, so that a sweep's plan (`run`, `run --dry-run`) can tell 10,000 finished runs from
their file metadata instead of reading and validating every metrics.json.

`runs/.index.json` is a cache, never the truth:
- only a process that saves runs writes it (`run`, `tune`; whole, atomically, under
  `runs/.claims/index.lock`); `run --dry-run`, `compare` and the rest never write it, and work on a
  read-only results directory;
- an entry counts only while its run directory, metrics.json and spec.yaml are still what they
  were (a directory, then regular files; metrics.json's size, mtime, ctime and inode unchanged)
  and metrics.json is older than the index file itself. A file changed in the same clock tick as
  the index was written is "racily clean" in git's sense: its fingerprint may not show the change,
  so it is read again;
- a missing, damaged or foreign index (bad JSON, wrong shape, a checksum that does not match its
  entries, not a regular file) is ignored, and the next saving process writes a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from normbench import store

FILE = ".index.json"
VERSION = 1
# Filesystem timestamp resolution the racy check assumes (ns); tests raise it to simulate a file
# system that keeps whole seconds (FAT's is 2 s, ext3's 1 s, ext4's and tmpfs's 1 ns to 4 ms).
TICK_NS = 1


@dataclass(frozen=True)
class Entry:
    """What plan() needs of a finished run, and the fingerprint of its metrics.json."""

    fingerprint: tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode
    fallback: bool  # it trained on fallback data (mnist-10k for an offline mnist)


def fingerprint(info: os.stat_result) -> tuple[int, int, int, int]:
    return (info.st_size, info.st_mtime_ns // TICK_NS * TICK_NS,
            info.st_ctime_ns // TICK_NS * TICK_NS, info.st_ino)


def current(results_dir: Path, rid: str) -> tuple[int, int, int, int] | None:
    """The fingerprint of the run's metrics.json if the run directory and its two files are what
    a finished run holds (a directory and two regular files, none a link), else None."""
    folder = os.path.join(results_dir, "runs", rid)  # plain strings: pathlib cost more than lstat
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return None
        info = os.lstat(folder + "/metrics.json")
        if not stat.S_ISREG(info.st_mode) or not stat.S_ISREG(os.lstat(folder + "/spec.yaml").st_mode):
            return None
    except OSError:
        return None
    return fingerprint(info)


@dataclass
class Index:
    """The entries read from runs/.index.json (none if it was missing or damaged), and the
    entries verified since (by reading the record), which write() adds."""

    results_dir: Path
    entries: dict[str, Entry] = field(default_factory=dict)
    written_ns: int = 0  # the index file's mtime: only files older than it are trusted
    problem: str | None = None  # why the file on disk was not used (None: used, or none there)
    fresh: dict[str, Entry] = field(default_factory=dict)

    @classmethod
    def load(cls, results_dir: Path) -> "Index":
        """The index of `results_dir`; empty (with `problem` set) if it is damaged. Never raises
        for what is on disk."""
        path = results_dir / "runs" / FILE
        try:
            raw = store.read_regular(path)
            written_ns = os.lstat(path).st_mtime_ns // TICK_NS * TICK_NS
        except FileNotFoundError:
            return cls(results_dir)
        except OSError as exc:
            return cls(results_dir, problem=f"unreadable: {exc.strerror or exc}")
        try:
            entries = _parse(raw)
        except (ValueError, TypeError, KeyError) as exc:
            return cls(results_dir, problem=f"damaged: {exc}")
        return cls(results_dir, entries, written_ns)

    def lookup(self, rid: str) -> Entry | None:
        """The run's entry if it can be trusted now (see the module's rules), else None: read
        the record instead."""
        entry = self.entries.get(rid)
        if entry is None:
            return None
        now = current(self.results_dir, rid)
        if now != entry.fingerprint or now[1] >= self.written_ns or now[2] >= self.written_ns:
            return None
        return entry

    def finished(self, rid: str) -> tuple[bool, bool]:
        """(done, fallback) for the run: from the index where it can be trusted, else from the
        record itself (store.finished), remembered for write()."""
        entry = self.lookup(rid)
        if entry is not None:
            return True, entry.fallback
        before = current(self.results_dir, rid)
        record = store.finished(self.results_dir, rid)
        if record is None:
            return False, False
        if before is not None and current(self.results_dir, rid) == before:
            self.fresh[rid] = Entry(before, record.dataset.fallback)
        return True, record.dataset.fallback

    def saved(self, record: store.RunRecord) -> None:
        """Remember a run this process has just saved."""
        now = current(self.results_dir, record.run_id)
        if now is not None:
            self.fresh[record.run_id] = Entry(now, record.dataset.fallback)

    def write(self) -> None:
        """Merge what this process verified into runs/.index.json (re-read under the lock, so
        concurrent sweeps add to each other's), dropping entries whose runs are gone. A failure
        to write is not an error: the index is only a cache."""
        if not self.fresh and self.problem is None:
            return
        runs = self.results_dir / "runs"
        try:
            (runs / ".claims").mkdir(exist_ok=True)
            with FileLock(str(runs / ".claims" / "index.lock"), mode=0o666):
                on_disk = Index.load(self.results_dir)
                merged = {**on_disk.entries, **self.fresh}
                kept = {rid: e for rid, e in merged.items() if current(self.results_dir, rid)}
                store.write_atomic(runs / FILE, _dump(kept), durable=False)
        except OSError:
            return
        self.fresh.clear()


def _dump(entries: dict[str, Entry]) -> str:
    body = {rid: [*e.fingerprint, e.fallback] for rid, e in sorted(entries.items())}
    text = json.dumps(body, separators=(",", ":"))
    return json.dumps({"version": VERSION, "sha256": hashlib.sha256(text.encode()).hexdigest(),
                       "entries": body}, separators=(",", ":")) + "\n"


def _parse(raw: bytes) -> dict[str, Entry]:
    data = json.loads(raw)
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ValueError(f"not a version {VERSION} index")
    body = data["entries"]
    if not isinstance(body, dict):
        raise ValueError("entries: expected a mapping")
    text = json.dumps(body, separators=(",", ":"))
    if hashlib.sha256(text.encode()).hexdigest() != data.get("sha256"):
        raise ValueError("checksum does not match its entries")
    entries = {}
    for rid, item in body.items():
        size, mtime, ctime, ino, fallback = item
        if not (store.RUN_ID.fullmatch(rid) and all(type(v) is int for v in (size, mtime, ctime, ino))
                and type(fallback) is bool):
            raise ValueError(f"entry {rid[:80]!r}: malformed")
        entries[rid] = Entry((size, mtime, ctime, ino), fallback)
    return entries
