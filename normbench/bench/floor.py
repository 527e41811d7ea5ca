"""`normbench bench floor`: the kernels one training step needs (each layer's forward and
backward, the loss, the optimizer update), each timed alone in its own graph loop (step_kernels.py),
against the trainer's step; the tuned PyTorch peer's kernels beside them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from normbench import console, grid
from normbench.bench.common import CONFIGS, SETS, Option


def bench_floor(*, batch_sizes: tuple[int, ...] = (32, 8), config: Path = CONFIGS / "groupnorm.yaml",
                overrides: tuple[str, ...] = (), repeats: int = 5, dataset: str = "mnist-10k",
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Per batch size, the spec's step and the sum of its kernels timed alone (step_kernels)."""
    from normbench.bench import peers, step_kernels  # TensorFlow, and PyTorch where asked for

    why = peers.missing()
    if why:
        log(f"without PyTorch's kernels beside normbench's: {why}")
    rows = []
    for batch in batch_sizes:
        spec = grid.load(config, [*overrides, f"dataset={dataset}", f"train.batch_size={batch}"])
        log(f"batch {batch}:")
        rows.append(step_kernels.measure(spec, repeats=repeats, peer=why is None, log=log))
    return {"config": str(config), "overrides": list(overrides), "rows": rows,
            "target": step_kernels.TARGET}


def show(found: dict[str, Any]) -> None:
    for row in found["rows"]:
        console.plain_table(
            f"bench floor: {row['model']}, batch {row['batch_size']} ({row['compiled']}): each "
            "kernel timed alone, ms per step (median)", ("kernel", "ms"),
            [(r["kernel"], f"{r['ms']:.3f}") for r in row["rows"]]
            + [("sum of the kernels", f"{row['kernels_ms']:.3f}"),
               ("normbench's step", f"{row['step_ms']:.3f}")])
        if "torch_rows" in row:
            console.plain_table(
                f"the tuned PyTorch peer's kernels, batch {row['batch_size']}, each timed alone, ms",
                ("kernel", "ms"), [(r["kernel"], f"{r['ms']:.3f}") for r in row["torch_rows"]]
                + [("sum of the kernels", f"{row['torch_kernels_ms']:.3f}")])
        console.say(f"batch {row['batch_size']}: step / sum of kernels {row['ratio']:.2f}x "
                    f"(target <= {row['target']:g}x: "
                    f"{'met' if row['ratio'] <= row['target'] else 'MISSED'})")



HELP = """Each kernel a training step needs (every layer's forward and backward, the loss, the
optimizer update over all parameters), timed alone, against normbench's step: the step as a
multiple of their sum (target <= 1.5x)."""

OPTIONS = (
    Option("batch_size", "List[int]", [32, 8], ("--batch-size",), min=1, max=4096,
           help="Batch sizes (repeat the option)."),
    Option("repeats", "int", 5, min=1, max=100, help="Timed calls per kernel (median)."),
    Option("dataset", "str", "mnist-10k", help="mnist, mnist-10k or fashion-mnist."),
    Option("config", "Optional[Path]", None,
           help="The spec (default: the tutorial CNN with GroupNorm)."),
    SETS,
)


def run(*, batch_size: list[int], repeats: int, dataset: str, config: Path | None,
        sets: list[str], log: Callable[[str], None] = print) -> dict[str, Any]:
    return bench_floor(batch_sizes=tuple(batch_size), repeats=repeats, log=log, dataset=dataset,
                       overrides=tuple(sets), **({"config": config} if config is not None else {}))
