"""Stage C of the Fashion-MNIST studies (docs/preregistration_fashion.md): does any cell still gain
at twice the steps, and how many S1 seeds does the primary contrast need?

Reads the records of configs/studies/fashion_convergence.yaml (BN v = 64, BN v = 2, GN; 2,400 and
4,800 steps; seeds 100-102) and writes, to stdout and to OUT/convergence.md:
- per cell, the study metric (study.metric_last) at each length, mean +/- 95% CI over seeds, and
  the gain from doubling (paired by seed) against the pre-registered threshold;
- the SD of the paired differences BN v = 2 - BN v = 64 at 2,400 steps, the predicted MDE of that
  contrast in S1 at n seeds (normbench's guards.mde at the report's adjusted level), and the n
  the pre-registered rule picks.

    python scripts/convergence_check.py [RESULTS]   # default results/examples/studies/fashion_convergence
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from normbench import grid, guards, stats, store, study  # noqa: E402
from normbench.identity import spec_hash  # noqa: E402

CONFIG = ROOT / "configs" / "studies" / "fashion_convergence.yaml"
THRESHOLD = 1.0  # points: a cell gaining this much or more from twice the steps is not converged
MDE_TARGET = 1.0  # points: the primary contrast's MDE in S1
N_PLANNED, N_MAX = 8, 12  # S1's seeds, and the most the rule may raise them to
COMPARISONS = 9  # the S1 report's tested family: BN v=16/4/2 vs 64, their 3 pairs, the trend, BN vs GN at 64 and 2


def cells(results: Path) -> dict[tuple, dict[int, dict[int, float]]]:
    """{(norm, v): {steps: {seed: metric}}} from the finished records."""
    out: dict[tuple, dict[int, dict[int, float]]] = {}
    for spec in grid.load_runs(CONFIG):
        r = store.finished(results, store.run_id(spec.name, spec_hash(spec), False))
        if r is None:
            continue
        key = (spec.model.norm.type, spec.model.norm.virtual_batch_size)
        out.setdefault(key, {}).setdefault(spec.train.steps, {})[spec.train.seed] = study.error_of(r)
    return out


def label(key: tuple) -> str:
    norm, v = key
    return {"batch": "BN", "group": "GN"}.get(norm, norm) + (f" v={v}" if v else "")


def main(argv: list[str]) -> int:
    results = Path(argv[0]) if argv else ROOT / "results" / "examples" / "studies" / "fashion_convergence"
    found = cells(results)
    lines = ["# Stage C: convergence check (Fashion-MNIST)", "",
             f"Metric: mean test error of the evaluations in the last 25% of steps (points). "
             f"Threshold (pre-registered): a cell gaining {THRESHOLD:g} point or more from 4,800 "
             "steps instead of 2,400 is not converged.", "",
             "| cell | n | 2,400 steps | 4,800 steps | gain (2,400 - 4,800), paired | verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    converged = True
    for key in sorted(found, key=lambda k: (k[0], -(k[1] or 0))):
        short, long_ = found[key].get(2400, {}), found[key].get(4800, {})
        seeds = sorted(set(short) & set(long_))
        if not seeds:
            lines.append(f"| {label(key)} | 0 | | | | missing |")
            converged = False
            continue
        gains = [100 * (short[s] - long_[s]) for s in seeds]
        mean, _, half = stats.mean_ci(gains)
        ok = mean < THRESHOLD
        converged &= ok
        def cell(values):
            m, _, h = stats.mean_ci([100 * v for v in values])
            return f"{m:.2f}" + (f" ± {h:.2f}" if h is not None else "")
        lines.append(f"| {label(key)} | {len(seeds)} | {cell([short[s] for s in seeds])} | "
                     f"{cell([long_[s] for s in seeds])} | {mean:+.2f}"
                     + (f" ± {half:.2f}" if half is not None else "") + f" | "
                     f"{'converged' if ok else 'NOT converged'} |")
    lines += ["", f"**Verdict: {'every cell converged: S1 keeps 2,400 steps' if converged else 'a cell is not converged: every cell is lengthened before S1 (pre-registered rule)'}**", ""]
    bn64 = found.get(("batch", 64), {}).get(2400, {})
    bn2 = found.get(("batch", 2), {}).get(2400, {})
    seeds = sorted(set(bn64) & set(bn2))
    if len(seeds) >= 2:
        diffs = [100 * (bn2[s] - bn64[s]) for s in seeds]
        sd = statistics.stdev(diffs)
        alpha = guards.ALPHA / COMPARISONS
        mdes = {n: guards.mde(sd, n, alpha) for n in range(N_PLANNED, N_MAX + 1)}
        meets = [n for n, m in mdes.items() if m is not None and m <= MDE_TARGET]
        chosen = meets[0] if meets else N_MAX
        lines += [f"Primary contrast BN v=2 - BN v=64 at 2,400 steps over C's {len(seeds)} seeds: "
                  f"mean {statistics.fmean(diffs):+.2f} points, SD of the paired differences "
                  f"{sd:.2f} points.", "",
                  f"Predicted MDE in S1 (α = {guards.ALPHA:g}/{COMPARISONS} = {alpha:.4f}, "
                  f"{guards.POWER:.0%} power): "
                  + ", ".join(f"n={n}: {m:.2f}" for n, m in mdes.items()) + " points.", "",
                  f"**S1 seeds (rule: {N_PLANNED}, raised to the smallest n <= {N_MAX} whose "
                  f"predicted MDE is <= {MDE_TARGET:g} point): n = {chosen}**"
                  + ("" if meets else f" (no n <= {N_MAX} meets the target: the MDE at {N_MAX} "
                                      "is reported as missed)"), ""]
    text = "\n".join(lines)
    print(text)
    if results.is_dir():
        store.write_atomic(results / "convergence.md", text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
