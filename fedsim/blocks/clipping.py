"""Clipping rules shared by clients and servers (arXiv 2412.02781 and its baselines)."""

from __future__ import annotations

import numpy as np


def clipped_stepsize(v: np.ndarray, c0: float, c1: float) -> float:
    """``θ(v) = 1/(c0 + c1‖v‖)``, the (L0,L1) stepsize: about ``min(1/c0, 1/(c1‖v‖))``, a step
    of ``1/c0`` that is normalized once ``‖v‖`` exceeds ``c0/c1``."""
    return 1.0 / (c0 + c1 * float(np.linalg.norm(v)))


def clip_to_norm(u: np.ndarray, level: float) -> np.ndarray:
    """``min(1, level/‖u‖)·u``."""
    norm = float(np.linalg.norm(u))
    return u if norm <= level else u * (level / norm)
