"""TAMUNA's uplink pattern: which coordinates each cohort client uploads.

Condat, Agarský, Malinovsky, Richtárik, "TAMUNA" (arXiv 2302.09832), the pattern q ∈ {0,1}^{d×c}
of its compression step. Every coordinate is held by exactly ``s`` of the ``c`` cohort clients and
the clients' loads differ by at most one:

- if ``s·d ≥ c``: row k has ones in the columns ``(s·k + j) mod c``, ``j = 0..s−1`` (the ``s·d``
  ones fill the columns cyclically, so each column holds ``⌊sd/c⌋`` or ``⌈sd/c⌉`` rows);
- otherwise column ``j < s·d`` holds the single row ``j mod d`` and the other columns are empty.

Every round the server permutes the columns uniformly at random; client ``i`` of the cohort gets
column ``σ(i)``. Both sides derive the support of a column from ``(d, c, s, column)``, so the
indices of the uploaded values never cross the wire.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def check_pattern(dim: int, cohort: int, s: int) -> None:
    """Raise ``ValueError`` unless ``2 ≤ s ≤ c`` and ``d ≥ 1``."""
    if dim < 1 or cohort < 1:
        raise ValueError(f"the pattern needs d >= 1 and c >= 1, got d={dim}, c={cohort}")
    if not 1 <= s <= cohort:
        raise ValueError(f"the pattern needs 1 <= s <= c, got s={s}, c={cohort}")


@lru_cache(maxsize=4096)
def _support(dim: int, cohort: int, s: int, column: int) -> np.ndarray:
    check_pattern(dim, cohort, s)
    if not 0 <= column < cohort:
        raise ValueError(f"column {column} outside [0, {cohort})")
    k = np.arange(dim, dtype=np.int64)
    if s * dim >= cohort:
        rows = np.flatnonzero((column - s * k) % cohort < s)
    else:
        rows = np.array([column % dim] if column < s * dim else [], dtype=np.int64)
    rows.setflags(write=False)
    return rows


def support(dim: int, cohort: int, s: int, column: int) -> np.ndarray:
    """The sorted rows k with ``q[k, column] = 1`` (read-only int64 array)."""
    return _support(int(dim), int(cohort), int(s), int(column))


def pattern(dim: int, cohort: int, s: int) -> np.ndarray:
    """The template q ∈ {0,1}^{d×c} (before the column permutation)."""
    q = np.zeros((dim, cohort), dtype=np.int8)
    for j in range(cohort):
        q[support(dim, cohort, s, j), j] = 1
    return q


def columns(rng: np.random.Generator, cohort: int) -> np.ndarray:
    """This round's column permutation σ: cohort member ``i`` uploads column ``σ(i)``."""
    return rng.permutation(cohort)
