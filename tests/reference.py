"""Row-by-row comparison of a fedsim run with the models of a hand-written reference loop."""

from __future__ import annotations

import numpy as np
import pytest

REL = 1e-10  # what fedsim must match


def deviation(rows: list[dict], models: list[np.ndarray], task) -> float:
    """Largest relative deviation of fedsim's rows from the models of a loop (loss, dist_sq)."""
    x_star, _ = task.optimum()
    assert len(rows) == len(models)
    worst = 0.0
    for row, x in zip(rows, models, strict=True):
        for key, ref in (
            ("loss", task.full.loss(x)),
            ("dist_sq", float(np.sum((x - x_star) ** 2))),
        ):
            worst = max(worst, abs(row[key] - ref) / max(abs(ref), 1e-300))
    return worst


def assert_rows_match(rows: list[dict], models: list[np.ndarray], task) -> None:
    """Every row's loss and dist_sq equal the loop's models to rel :data:`REL`."""
    x_star, _ = task.optimum()
    assert [row["round"] for row in rows] == list(range(len(models)))
    for r, (row, x) in enumerate(zip(rows, models, strict=True)):
        assert row["loss"] == pytest.approx(task.full.loss(x), rel=REL), f"loss, row {r}"
        assert row["dist_sq"] == pytest.approx(float(np.sum((x - x_star) ** 2)), rel=REL), (
            f"dist_sq, row {r}"
        )
