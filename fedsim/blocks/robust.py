"""The robust server step as one composition of blocks: clip → bucket → aggregate.

Byzantine-robust methods combine the same pieces in the same order (Karimireddy, He & Jaggi,
arXiv 2006.09365; Malinovsky, Richtárik, Horváth & Gorbunov, arXiv 2311.14127, Alg. 1 line 6 and
eq. (10)): each received vector ``v_i`` is taken relative to a reference ``r`` (the previous
estimate, or 0), clipped to a radius ``λ`` (``None``: no clipping), and the robust aggregator
(with its bucketing) combines them,

    out = r + Agg({clip_λ(v_i − r)}_i),    clip_λ(u) = min{1, λ/‖u‖} u.

:class:`RobustStep` is that composition with the aggregator's state (centered clipping's centre)
passed in and returned, never kept in hiding (optax-style ``init``/``__call__``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.blocks.aggregators import Aggregator


def clip_rows(xs: np.ndarray, level: float | None) -> np.ndarray:
    """Each row ``u`` of ``xs`` scaled by ``min{1, level/‖u‖}`` (rows of norm 0 stay 0);
    ``level=None`` returns ``xs`` unchanged."""
    if level is None:
        return xs
    norms = np.linalg.norm(xs, axis=1)
    factor = np.minimum(1.0, level / np.maximum(norms, np.finfo(float).tiny))
    return xs * factor[:, None]


@dataclass(frozen=True)
class RobustStep:
    """``r + Agg(clip_λ(v_i − r))`` over a stack of received vectors (module docstring)."""

    aggregator: Aggregator

    def init(self, dim: int) -> object:
        return self.aggregator.init(dim)

    def __call__(
        self,
        xs: np.ndarray,
        state: object,
        rng: np.random.Generator,
        clip: float | None = None,
        reference: np.ndarray | None = None,
    ) -> tuple[np.ndarray, object]:
        xs = np.asarray(xs, dtype=np.float64)
        rel = xs if reference is None else xs - reference
        out, state = self.aggregator(clip_rows(rel, clip), state, rng)
        return (out if reference is None else reference + out), state

    @property
    def is_mean(self) -> bool:
        """The plain mean without bucketing: the methods' own (weighted, unbiased) average."""
        return self.aggregator.name == "mean" and self.aggregator.bucketing == 1
