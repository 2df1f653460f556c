"""Metrics of a run (DESIGN §7): centralized evaluation and communication accounting.

``metrics.csv`` has one row per evaluated round. Traffic columns (``up_bits``, ``down_bits``,
``up_floats``, ``down_floats``, ``grad_evals``, ``clients``, ``failures``) hold the amount since
the previous row, so their cumulative sums are exact whatever ``eval_every`` is. Columns the task
cannot provide are left empty.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from fedsim.errors import ConfigError
from fedsim.tasks.base import Task

COLUMNS = (
    "round",
    "wall_s",
    "clients",
    "loss",
    "grad_norm_sq",
    "gap",
    "dist_sq",
    "accuracy",
    "test_accuracy",
    "up_bits",
    "down_bits",
    "up_floats",
    "down_floats",
    "grad_evals",
    "failures",
)
TRAFFIC = ("clients", "up_bits", "down_bits", "up_floats", "down_floats", "grad_evals", "failures")


def evaluate(task: Task, x: np.ndarray) -> dict[str, float | None]:
    """Centralized evaluation of ``x`` on the global objective ``f = Σ_m w_m f_m``.

    loss = f(x), grad_norm_sq = ‖∇f(x)‖², gap = f(x) − f*, dist_sq = ‖x − x*‖², accuracy (on the
    training data), test_accuracy (on the task's held-out test set); gap and dist_sq are ``None``
    when the task has no optimum, test_accuracy when it has no test set. On a Riemannian task
    (``task.manifold`` set) grad_norm_sq = ‖grad f(x)‖_x² (the Riemannian gradient in the metric
    at x) and dist_sq = ``task.distance_sq(x, x*)`` or the squared geodesic distance d(x, x*)².
    """
    loss = task.full.loss(x)
    g = task.full.grad(x)
    if task.manifold is not None:  # the Riemannian gradient, in the metric at x
        grad_norm_sq = task.manifold.norm_sq(x, task.manifold.egrad_to_rgrad(x, g))
    else:
        grad_norm_sq = float(g @ g)
    out: dict[str, float | None] = {
        "loss": float(loss),
        "grad_norm_sq": float(grad_norm_sq),
        "gap": None,
        "dist_sq": None,
        "accuracy": task.full.accuracy(x),
        "test_accuracy": None if task.test is None else task.test.accuracy(x),
    }
    opt = task.optimum()
    if opt is not None:
        x_star, f_star = opt
        out["gap"] = float(loss - f_star)
        if task.manifold is None and task.distance_sq is None:
            out["dist_sq"] = float(np.sum((x - x_star) ** 2))
        else:
            out["dist_sq"] = task.dist_sq_to_optimum(x, x_star)
    return out


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


class MetricsRecorder:
    """Accumulates traffic between evaluations and appends rows to ``metrics.csv``.

    With ``path=None`` rows are kept in memory only (``rows``).
    """

    def __init__(self, path: Path | None = None, tensorboard: dict | None = None) -> None:
        self.path = path
        self.rows: list[dict[str, object]] = []
        self._tb = (
            TensorBoardSink(path.parent / "tensorboard", tensorboard)
            if (tensorboard is not None and path is not None)
            else None
        )
        self._pending: dict[str, int | None] = dict.fromkeys(TRAFFIC, 0)
        self._t0 = time.perf_counter()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="") as fh:
                csv.writer(fh).writerow(COLUMNS)

    def restart_clock(self) -> None:
        self._t0 = time.perf_counter()

    def wall(self) -> float:
        """Seconds on this run's clock (``wall_s`` of a row written now)."""
        return time.perf_counter() - self._t0

    def state(self) -> dict[str, object]:
        return {"rows": list(self.rows), "pending": dict(self._pending)}

    def load(self, state: dict, wall_s: float) -> None:
        """Continue from a checkpoint's ``state``: its rows replace ``metrics.csv``'s (rows
        written after the checkpoint are dropped: the resumed run writes them again), and the
        clock goes on from ``wall_s``."""
        self.rows = list(state["rows"])
        self._pending = dict(state["pending"])
        if self._tb is not None:  # running totals as of the checkpoint
            for key in TRAFFIC:
                self._tb.totals[key] = float(sum(r.get(key) or 0 for r in self.rows))
        self._t0 = time.perf_counter() - wall_s
        if self.path is not None:
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            with tmp.open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(COLUMNS)
                for row in self.rows:
                    writer.writerow([_cell(row.get(c)) for c in COLUMNS])
            tmp.replace(self.path)

    def add(self, **amounts: int | None) -> None:
        """Add traffic of the current round (keys from :data:`TRAFFIC`). ``None`` means unknown:
        the row's cell stays empty rather than holding a partial sum."""
        for key, value in amounts.items():
            pending = self._pending[key]
            self._pending[key] = None if value is None or pending is None else pending + int(value)

    def row(self, rnd: int, evaluation: dict[str, float | None]) -> dict[str, object]:
        """Write one row for round ``rnd`` with the traffic accumulated since the last row."""
        row: dict[str, object] = {"round": rnd, "wall_s": time.perf_counter() - self._t0}
        row.update(self._pending)
        row.update(evaluation)
        self._pending = dict.fromkeys(TRAFFIC, 0)
        self.rows.append(row)
        if self.path is not None:
            with self.path.open("a", newline="") as fh:
                csv.writer(fh).writerow([_cell(row.get(c)) for c in COLUMNS])
        if self._tb is not None:
            self._tb.write(row)
        return row

    def close(self) -> None:
        """Flush and close the TensorBoard sink (if any)."""
        if self._tb is not None:
            self._tb.close()


class TensorBoardSink:
    """Every row as TensorBoard scalars (step = round): the CSV's columns, and the running totals
    of the traffic columns as ``cum_<column>`` (plus ``cum_bits`` = up + down), the x-axes of
    the standard figure. Written with torch's ``SummaryWriter`` into ``folder``."""

    def __init__(self, folder: Path, options: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder), flush_secs=int(options.get("flush_secs", 10)))
        self.totals: dict[str, float] = dict.fromkeys(TRAFFIC, 0.0)

    def write(self, row: dict[str, object]) -> None:
        step = int(row["round"])  # type: ignore[arg-type]
        for key in COLUMNS[1:]:
            value = row.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        for key in TRAFFIC:
            value = row.get(key)
            if isinstance(value, int | float):
                self.totals[key] += value
                self.writer.add_scalar(f"cum_{key}", self.totals[key], step)
        bits = self.totals["up_bits"] + self.totals["down_bits"]
        self.writer.add_scalar("cum_bits", bits, step)

    def close(self) -> None:
        self.writer.close()


def read_columns(path: Path) -> dict[str, np.ndarray]:
    """The columns of a ``metrics.csv`` as float arrays; empty cells become NaN.

    A file that is empty or holds a non-number raises a ConfigError naming the row and column.
    """
    path = Path(path)
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ConfigError(f"{path} is empty (no header)")
    header, body = [h.strip() for h in rows[0]], [r for r in rows[1:] if r]
    data = {h: np.full(len(body), np.nan) for h in header}
    for i, row in enumerate(body):
        for h, cell in zip(header, row, strict=False):
            cell = cell.strip()
            if not cell:
                continue
            try:
                data[h][i] = float(cell)
            except ValueError:
                raise ConfigError(
                    f"{path}, row {i + 2}, column {h!r}: not a number: {cell!r}"
                ) from None
    return data


def read_metrics(path: Path) -> list[dict[str, float | None]]:
    """The rows of a ``metrics.csv``; empty cells become ``None``."""
    columns = read_columns(path)
    n = len(next(iter(columns.values()), []))
    return [
        {k: (None if np.isnan(v[i]) else float(v[i])) for k, v in columns.items()} for i in range(n)
    ]


def totals(rows: Iterable[dict[str, float | None]]) -> dict[str, float]:
    """Sums of the traffic columns over a run."""
    out = dict.fromkeys(TRAFFIC, 0.0)
    for r in rows:
        for k in TRAFFIC:
            out[k] += r.get(k) or 0.0
    return out
