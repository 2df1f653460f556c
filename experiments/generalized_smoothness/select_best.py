"""Pick, per method, the grid point with the lowest mean loss over the last fifth of the run.

(The loss is compared through ``gap = loss − f*`` where the task knows ``f*``: same order,
readable digits.)

The authors' rule (arXiv 2412.02781 code): for each method of a Hydra multirun, average the
``loss`` column of ``metrics.csv`` over the evaluations in the last fifth of the rounds (and over
seeds, when the sweep has several), and keep the setting with the lowest average. Runs that
diverged (a non-finite loss) rank last.

    python experiments/generalized_smoothness/select_best.py SWEEP_DIR [SWEEP_DIR ...]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TUNED_KEYS = ("client_lr", "server_lr", "c0", "c1", "client_clip")


def tail_loss(run: Path) -> float:
    """Mean ``loss`` over the last fifth of the rounds; ``inf`` for a run that stopped early
    (``FAILED``: it diverged) or met a non-finite loss."""
    from fedsim.metrics import read_metrics

    rows = read_metrics(run / "metrics.csv")
    planned = yaml.safe_load((run / "config.yaml").read_text())["num_rounds"]
    last = rows[-1]["round"] if rows else 0
    if (run / "FAILED").exists() or last < planned:
        return math.inf
    # gap = loss − f* ranks the same and prints with all its digits
    key = "gap" if rows[-1].get("gap") is not None else "loss"
    tail = [r[key] for r in rows if r["round"] >= 0.8 * last and r["round"] > 0]
    values = [v for v in tail if v is not None]
    if not values or not all(math.isfinite(v) for v in values):
        return math.inf
    return sum(values) / len(values)


def setting(run: Path) -> tuple[tuple[str, float], ...]:
    method = yaml.safe_load((run / "config.yaml").read_text())["method"]
    return tuple((k, method[k]) for k in TUNED_KEYS if k in method)


def select(sweeps: list[Path]) -> dict[str, tuple[dict, float, int]]:
    """``sweep name -> (best setting, its mean tail loss, grid points tried)``; a sweep
    directory holds one method's grid (its name labels the method)."""
    scores: dict[str, dict] = defaultdict(lambda: defaultdict(list))
    for sweep in sweeps:
        for metrics in sorted(sweep.rglob("metrics.csv")):
            scores[sweep.name][setting(metrics.parent)].append(tail_loss(metrics.parent))
    best = {}
    for name, grid in scores.items():
        means = {k: sum(v) / len(v) for k, v in grid.items()}
        key = min(means, key=means.get)
        best[name] = (dict(key), means[key], len(grid))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweeps", type=Path, nargs="+")
    args = parser.parse_args(argv)
    best = select(args.sweeps)
    if not best:
        print("no runs found", file=sys.stderr)
        return 2
    print(report(best))
    return 0


def report(best: dict[str, tuple[dict, float, int]]) -> str:
    """One markdown table row per method."""
    lines = [
        "| method | selected | mean f − f* (or loss) over the last fifth | settings tried |",
        "|---|---|---|---|",
    ]
    for name, (values, loss, tried) in sorted(best.items()):
        shown = ", ".join(f"{k}={v:g}" for k, v in values.items())
        lines.append(f"| {name} | {shown} | {loss:.4g} | {tried} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
