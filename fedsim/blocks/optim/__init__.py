"""Optimizers written for fedsim (pure PyTorch, any dtype and device).

* :class:`MicroAdam` — Modoranu et al., arXiv 2405.15593: Adam on a window of Top-K gradients
  with 4-bit error feedback (``specs/microadam.md`` §3).
"""

from fedsim.blocks.optim.microadam import MicroAdam

__all__ = ["MicroAdam"]
