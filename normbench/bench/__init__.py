"""Benchmarks that measure side by side in one invocation and report ratios (machines are noisy:
only numbers taken together are compared).

The folder is the registry, as big_vision's models are: each benchmark is one module named in
`BENCHMARKS`, with `HELP` (its command's help), `OPTIONS` (`common.Option`s: its command's
options, as data), `run(**options, log=...) -> dict` (the measurements) and `show(found)` (its
table). `normbench bench NAME` is generated from that, with `--json` writing `found` and the
environment. Benchmark modules import TensorFlow (and PyTorch, peers.py) only inside `run`, so
the CLI reads their options without paying for it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module normbench.bench.<name>; the CLI lists them in this order.
BENCHMARKS = ("train", "floor", "startup", "layers", "studynorms", "cli", "memory", "workers")


def load(name: str) -> ModuleType:
    """The benchmark module registered as `name`."""
    if name not in BENCHMARKS:
        from normbench.errors import NormbenchError

        raise NormbenchError(f"benchmark {name!r}: choose {', '.join(BENCHMARKS)}")
    return importlib.import_module(f"normbench.bench.{name}")
