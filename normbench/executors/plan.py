"""What a sweep has to do: one entry per distinct run, in grid order, and whether it is done."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from normbench import identity, spec as specs, store
from normbench.index import Index


@dataclass(frozen=True)
class Planned:
    spec: specs.Spec
    run_id: str
    done: bool  # a finished (or diverged) record already exists
    fallback: bool = False  # ... but it trained on other data than the spec asked for
    spec_file: str | None = None  # where the spec came from (provenance), if a file
    spec_hash: str | None = None  # as planned: the trainer fails the run if it changed since


def plan(runs: list[specs.Spec], smoke: bool, results_dir: Path, *,
         retry_fallback: bool = False, hashes: list[str] | None = None,
         spec_files: list[str | None] | None = None, index: Index | None = None) -> list[Planned]:
    """One entry per run, in grid order, and whether it is done. With `retry_fallback`, a run
    that trained on fallback data (mnist-10k for an offline mnist) counts as not done.
    `hashes` (each run's spec_hash, when the caller has them) saves computing them again;
    `spec_files` (each run's spec file) goes into the records' provenance. Finished runs are
    told from `index` (the results directory's record index, loaded if not given) where its
    entries still hold, else from the records; what was read is remembered in `index`."""
    index = index if index is not None else Index.load(results_dir)
    out, seen = [], set()
    for i, spec in enumerate(runs):
        spec_hash = hashes[i] if hashes else identity.spec_hash(spec)
        rid = store.run_id(spec.name, spec_hash, smoke)
        if rid in seen:
            continue
        seen.add(rid)
        done, fallback = index.finished(rid)
        out.append(Planned(spec, rid, done and not (retry_fallback and fallback),
                           fallback, spec_files[i] if spec_files else None, spec_hash))
    return out


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()
