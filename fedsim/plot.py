"""Standard convergence figures from fedsim run directories (DESIGN §7).

Usage::

    python -m fedsim.plot DIR... [--out FILE.png] [--label-by KEY[,KEY...]]

Every ``metrics.csv`` under the given directories is one run (a single run directory, or a Hydra
multirun directory with numbered sub-directories). The figure is a grid: one row per error
metric that has data (``gap`` = f(x) − f*, ``dist_sq`` = ‖x − x*‖², ``grad_norm_sq`` = ‖∇f(x)‖²;
``loss`` when none of them has), one column per x-axis: server rounds, cumulative communicated
bits B_t = Σ_{s≤t} (up_bits_s + down_bits_s), and cumulative gradient evaluations
G_t = Σ_{s≤t} grad_evals_s (the CSV holds per-row amounts, not running totals).
Error metrics use a log y-scale. Empty CSV cells mean "not provided" and are never plotted.

A run whose ``summary.json`` says it did not complete is marked in the legend (``[diverged]``,
``[aborted]``, ``[interrupted]``, ``[failed]``, ``[incomplete]`` for one still running or killed).
A curve is drawn up to its last finite value below :data:`BLOWUP` and ends there with an ``x``
when the values after it are non-finite or larger (a diverged run).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure

from fedsim.errors import ConfigError
from fedsim.metrics import read_columns
from fedsim.status import read_summary

METRICS_FILE = "metrics.csv"
BLOWUP = 1e100  # larger values are drawn as the end of a diverged curve (log axes overflow)
STATUS_MARKS = {"running": "incomplete"}
ERROR_METRICS = ("gap", "dist_sq", "grad_norm_sq")
FALLBACK_METRICS = ("loss",)
X_AXES = (
    ("round", "server round"),
    ("bits", "cumulative bits (up + down)"),
    ("evals", "cumulative gradient evaluations"),
)
Y_LABELS = {
    "gap": "f(x) − f*",
    "dist_sq": "‖x − x*‖²",
    "grad_norm_sq": "‖∇f(x)‖²",
    "loss": "loss",
}


@dataclass
class Run:
    """One run: its directory, legend label, config and columns (float arrays, NaN = empty).

    ``data`` holds every CSV column plus the derived cumulative ``bits`` and ``evals``.
    """

    directory: Path
    label: str
    data: dict[str, np.ndarray]
    config: dict[str, Any] = field(default_factory=dict)
    status: str | None = None  # from summary.json; None for a run without one

    def has(self, key: str) -> bool:
        """Whether column ``key`` exists and holds at least one finite value."""
        col = self.data.get(key)
        return col is not None and bool(np.isfinite(col).any())


# ----------------------------------------------------------------------------- reading


def _natural_key(path: Path) -> list[Any]:
    """Sort key under which ``run/10`` comes after ``run/9``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def discover(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories (those holding a ``metrics.csv``) at or below ``paths``, in natural order."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ConfigError(f"no such file or directory: {p}")
        if p.is_file():
            hits = [p] if p.name == METRICS_FILE else []
        else:
            hits = sorted(p.rglob(METRICS_FILE), key=_natural_key)
        found.extend(h.parent for h in hits if h.parent not in found)
    if not found:
        where = ", ".join(str(p) for p in paths)
        raise ConfigError(f"no {METRICS_FILE} found under {where}")
    return found


def cumulative(data: dict[str, np.ndarray], columns: Sequence[str]) -> np.ndarray:
    """C_t = Σ_{s≤t} Σ_{c∈columns} x_{c,s}, empty cells counting 0.

    All-NaN when none of ``columns`` has data (the quantity is not provided, not zero).
    """
    n = len(next(iter(data.values()))) if data else 0
    cols = [data[c] for c in columns if c in data and np.isfinite(data[c]).any()]
    if not cols:
        return np.full(n, np.nan)
    return np.cumsum(np.nansum(np.vstack(cols), axis=0))


def _get(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _load_yaml(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None


def make_label(directory: Path, config: dict[str, Any], label_by: Sequence[str] = ()) -> str:
    """A legend label: ``KEY=value`` for each ``label_by`` key, else the Hydra overrides joined
    (``.hydra/overrides.yaml``), else ``method.name/sampler.name``, else the directory name."""
    if label_by:
        return " ".join(f"{k}={_get(config, k)}" for k in label_by)
    overrides = _load_yaml(directory / ".hydra" / "overrides.yaml")
    if isinstance(overrides, list) and overrides:
        return " ".join(str(o) for o in overrides)
    method, sampler = _get(config, "method.name"), _get(config, "sampler.name")
    if method is not None or sampler is not None:
        return f"{method}/{sampler}"
    return directory.name


def load_runs(paths: Iterable[str | Path], label_by: Sequence[str] = ()) -> list[Run]:
    """Every run at or below ``paths``, with cumulative ``bits`` and ``evals`` columns added."""
    runs = []
    for d in discover(list(paths)):
        data = read_columns(d / METRICS_FILE)
        data["bits"] = cumulative(data, ("up_bits", "down_bits"))
        data["evals"] = cumulative(data, ("grad_evals",))
        if not np.isfinite(data.get("round", np.array([np.nan]))).any():
            data["round"] = np.arange(1.0, len(data["bits"]) + 1)
        config = _load_yaml(d / "config.yaml")
        config = config if isinstance(config, dict) else {}
        status = (read_summary(d) or {}).get("status")
        runs.append(Run(d, make_label(d, config, label_by), data, config, status))
    _disambiguate(runs)
    return runs


def _disambiguate(runs: list[Run]) -> None:
    labels = [r.label for r in runs]
    for r in runs:
        if labels.count(r.label) > 1:
            r.label = f"{r.label} ({r.directory.name})"


def split_common(labels: Sequence[str]) -> tuple[list[str], list[str]]:
    """Words shared by every label, and the labels without them (when that leaves them distinct
    and non-empty); used to move a sweep's fixed overrides into the title."""
    words = [lab.split() for lab in labels]
    if len(labels) < 2:
        return [], list(labels)
    common = [w for w in words[0] if all(w in ws for ws in words[1:])]
    short = [" ".join(w for w in ws if w not in common) for ws in words]
    if not common or "" in short or len(set(short)) < len(short):
        return [], list(labels)
    return common, short


# ----------------------------------------------------------------------------- drawing


def grid(runs: Sequence[Run]) -> tuple[list[str], list[str]]:
    """The figure's rows (metrics) and columns (x-axes) that at least one run has data for."""
    rows = [k for k in ERROR_METRICS if any(r.has(k) for r in runs)]
    rows = rows or [k for k in FALLBACK_METRICS if any(r.has(k) for r in runs)]
    if not rows:
        metrics = ", ".join(ERROR_METRICS + FALLBACK_METRICS)
        raise ConfigError(f"nothing to plot: the columns {metrics} are empty in every run")
    return rows, [x for x, _ in X_AXES if any(r.has(x) for r in runs)]


def _title(runs: Sequence[Run], common: Sequence[str]) -> str:
    tasks = {str(_get(r.config, "task.name")) for r in runs if _get(r.config, "task.name")}
    parts = ["fedsim"]
    if len(tasks) == 1:
        parts.append(f"task {tasks.pop()}")
    if common:
        parts.append(" ".join(common))
    return " — ".join(parts)


def until_blowup(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """The points before the first value that is ±inf or above :data:`BLOWUP` in absolute
    value (NaN cells are "not provided" and kept), and whether there was such a value."""
    bad = np.isinf(ys) | (np.abs(np.nan_to_num(ys)) > BLOWUP)
    if not bad.any():
        return xs, ys, False
    stop = int(np.argmax(bad))
    return xs[:stop], ys[:stop], True


def _default_out(path: str | Path) -> Path:
    p = Path(path)
    return (p.parent if p.is_file() else p) / "curves.png"


def plot_runs(
    paths: Sequence[str | Path], out: Path | None = None, label_by: Sequence[str] = ()
) -> Path:
    """Draw the standard grid for the runs at or below ``paths`` into a PNG; return its path.

    Rows: the error metrics with data (or ``loss``); columns: rounds, cumulative bits,
    cumulative gradient evaluations (an x-axis that no run provides is left out).
    Default ``out``: ``<first path>/curves.png``.
    """
    paths = list(paths)
    if not paths:
        raise ConfigError("no run directory given")
    runs = load_runs(paths, label_by)
    rows, xs = grid(runs)
    cols = [(x, name) for x, name in X_AXES if x in xs]
    common, labels = split_common([r.label for r in runs])
    labels = [
        f"{label} [{STATUS_MARKS.get(r.status, r.status)}]"
        if r.status not in (None, "completed")
        else label
        for r, label in zip(runs, labels, strict=True)
    ]

    fig = Figure(figsize=(4.4 * len(cols), 3.2 * len(rows) + 0.5), layout="constrained")
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    handles: dict[str, Any] = {}
    for i, y in enumerate(rows):
        for j, (x, xname) in enumerate(cols):
            ax = axes[i, j]
            logy = y in ERROR_METRICS
            for run, label, color in zip(runs, labels, colors, strict=True):
                if not (run.has(x) and run.has(y)):
                    continue
                xs, ys = run.data[x], run.data[y]
                xs, ys, blown = until_blowup(xs, ys)
                blown |= run.status == "diverged"
                keep = np.isfinite(xs) & np.isfinite(ys) & ((ys > 0) if logy else True)
                if not keep.any():
                    continue
                marker = "o" if keep.sum() <= 30 else None
                (line,) = ax.plot(xs[keep], ys[keep], color=color, marker=marker, ms=3, lw=1.4)
                if blown:
                    ax.plot(xs[keep][-1:], ys[keep][-1:], "x", color=color, ms=9, mew=2)
                handles.setdefault(label, line)
            if logy:
                ax.set_yscale("log")
            if x != "round":  # bit counts reach 1e9 and more: keep tick labels short
                ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 4), useMathText=True)
            ax.grid(True, alpha=0.3, which="both" if logy else "major")
            if i == len(rows) - 1:
                ax.set_xlabel(xname)
            if j == 0:
                ax.set_ylabel(Y_LABELS.get(y, y))
    fig.suptitle(_title(runs, common))
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="outside lower center",
            ncol=min(len(handles), 3),
            fontsize="small",
            frameon=False,
        )
    out = Path(out) if out is not None else _default_out(paths[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedsim.plot DIR... [--out FILE.png] [--label-by KEY]``; exit status 2 on
    a user error (no metrics found, nothing to plot), with a message and no traceback."""
    parser = argparse.ArgumentParser(
        prog="python -m fedsim.plot",
        description="Plot gap / dist_sq / grad_norm_sq against rounds, cumulative bits and "
        "cumulative gradient evaluations for fedsim runs or Hydra multirun sweeps.",
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run or multirun directories")
    parser.add_argument("--out", type=Path, help="output PNG (default: <first DIR>/curves.png)")
    parser.add_argument(
        "--label-by",
        action="append",
        default=[],
        metavar="KEY",
        help="label runs by these config keys (dotted, e.g. sampler.name; repeat or "
        "comma-separate) instead of their Hydra overrides",
    )
    args = parser.parse_args(argv)
    keys = [k for arg in args.label_by for k in arg.split(",") if k]
    try:
        out = plot_runs(args.dirs, args.out, keys)
    except ConfigError as err:
        parser.error(str(err))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
