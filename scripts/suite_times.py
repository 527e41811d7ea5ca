"""Record what the test suites took, from pytest's own summary lines, into
results/examples/tests.json (the README's development section is generated from it).

    python scripts/suite_times.py quick LOG      # a `pytest -m "not slow"` run's output
    python scripts/suite_times.py main LOG       # `make test`'s output (the whole main suite)
    python scripts/suite_times.py legacy LOG     # `make legacy-test`'s output
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "results" / "examples" / "tests.json"
SUMMARY = re.compile(r"^=*\s*(?P<counts>(\d+ \w+(, )?)+) in (?P<seconds>[\d.]+)s", re.M)


def parse(text: str) -> dict:
    """Counts (passed, skipped, deselected, failed, ...) and seconds of the last summary line."""
    found = list(SUMMARY.finditer(text))
    if not found:
        raise SystemExit("no pytest summary line in the log")
    last = found[-1]
    counts = {name: int(n) for n, name in re.findall(r"(\d+) (\w+)", last.group("counts"))}
    return {**counts, "seconds": float(last.group("seconds"))}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("quick", "main", "legacy"):
        print(__doc__, file=sys.stderr)
        return 2
    data = json.loads(OUT.read_text()) if OUT.exists() else {}
    data[argv[0]] = {**parse(Path(argv[1]).read_text()),
                     "date": dt.date.today().isoformat()}
    OUT.write_text(json.dumps(data, indent=2) + "\n")
    print(f"{argv[0]}: {data[argv[0]]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
