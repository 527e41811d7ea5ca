"""`normbench bench studynorms`: the studies' own workload, norm by norm, side by side: the study
model (vgg, 8 conv, SGD momentum, batch 64) with plain BatchNorm, ghost BatchNorm at v = 64, 16,
4, 2 (through the fused op, and through the per-group formula it replaced), and GroupNorm.

Each variant trains in this process (so only the variant differs), rotated per repetition;
steady samples/s are the records' (epochs 2.. of each run). Ratios are to plain BN's samples/s
of the same repetition; targets: ghost BN and GN within 1.25x of BN's step time (>= 0.8x its
samples/s).
"""

from __future__ import annotations

from typing import Any, Callable

from normbench import console, grid
from normbench.bench.common import CONFIGS, Option, median
from normbench.errors import NormbenchError

TARGET = 1 / 1.25  # samples/s relative to plain BN: step time within 1.25x
GHOST = (64, 16, 4, 2)


def variants(group_size: int | None) -> list[tuple[str, list[str], bool]]:
    """(label, -s overrides, fused) of every variant; the per-group formula as 'before'."""
    out = [("BN", ["model.norm.type=batch"], True)]
    out += [(f"ghost v={v}", ["model.norm.type=batch", f"model.norm.virtual_batch_size={v}"], True)
            for v in GHOST]
    out += [(f"ghost v={v}, per-group formula (before)",
             ["model.norm.type=batch", f"model.norm.virtual_batch_size={v}"], False)
            for v in GHOST]
    gn = (["model.norm.type=group", f"model.norm.group_size={group_size}", "model.norm.groups=null"]
          if group_size else ["model.norm.type=group"])
    out.append(("GN", gn, True))
    return out


def bench_studynorms(*, epochs: int = 3, reps: int = 2, group_size: int | None = None,
                     sets: list[str] | None = None,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    import normbench.layers as layers
    from normbench import train

    chosen = variants(group_size)
    rates: dict[str, list[float]] = {label: [] for label, _, _ in chosen}
    ratios: dict[str, list[float]] = {label: [] for label, _, _ in chosen}
    for rep in range(reps):
        order = chosen if rep % 2 == 0 else chosen[::-1]
        mine = {}
        for label, overrides, fused in order:
            spec = grid.load(CONFIGS / "bench" / "vgg_sgd.yaml",
                             [*overrides, f"train.epochs={epochs}", *(sets or [])])
            layers.FUSED_BN = fused
            try:
                record = train.run_one(spec, quiet=True)
            finally:
                layers.FUSED_BN = True
            if record.status != "finished":
                raise NormbenchError(f"bench studynorms: {label} diverged")
            mine[label] = record.steady_samples_per_s
            rates[label].append(record.steady_samples_per_s)
            log(f"rep {rep + 1} {label}: {record.steady_samples_per_s:,.0f} samples/s "
                f"(impl {record.impl_used}, compiled {record.compiled})")
        for label in mine:
            ratios[label].append(mine[label] / mine["BN"])
    rows = [{"variant": label, "samples_per_s": median(rates[label]),
             "vs_bn": median(ratios[label]), "vs_bn_each": ratios[label],
             "target": None if label == "BN" or "before" in label else TARGET,
             "met": None if label == "BN" or "before" in label else median(ratios[label]) >= TARGET}
            for label, _, _ in chosen]
    return {"epochs": epochs, "reps": reps, "group_size": group_size, "sets": sets or [],
            "rows": rows}


def show(found: dict[str, Any]) -> None:
    rows = [{"variant": r["variant"], "samples/s": f"{r['samples_per_s']:,.0f}",
             "/ plain BN": f"{r['vs_bn']:.2f}x",
             "target": "" if r["target"] is None else
             f">= {r['target']:.2f}x: {'met' if r['met'] else 'MISSED'}"} for r in found["rows"]]
    console.show(rows, ("variant", "samples/s", "/ plain BN", "target"),
                 f"study model (vgg, batch 64, SGD), {found['reps']} rotated repetition(s), "
                 "steady samples/s")


HELP = ("The study model with plain BN, ghost BN at v = 64/16/4/2 (fused and the per-group "
        "formula) and GN, side by side: samples/s and the ratio to plain BN (target >= 0.8x).")

OPTIONS = (Option("epochs", "int", 3, min=2, max=50, help="Epochs per run (steady: 2..)."),
           Option("reps", "int", 2, min=1, max=20, help="Rotated repetitions (median)."),
           Option("group_size", "Optional[int]", None, ("--group-size",), min=1, max=64,
                  help="GN by channels per group (default: the config's groups=8)."),
           Option("sets", "List[str]", [], ("-s", "--set"), metavar="PATH=VALUE",
                  help="Override a spec field of every variant (value read as YAML)."))


def run(*, epochs: int, reps: int, group_size: int | None, sets: list[str],
        log: Callable[[str], None] = print) -> dict[str, Any]:
    return bench_studynorms(epochs=epochs, reps=reps, group_size=group_size, sets=sets, log=log)
