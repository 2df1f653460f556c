"""Progress of a run: a tqdm bar on a terminal, a log line now and then otherwise.

In a log file (Hydra's ``<outdir>/<job>.log``, a batch system's stdout) a bar turns into
thousands of ``\\r`` updates; :class:`LogProgress` writes one INFO line every ``every_rounds``
rounds or ``every_s`` seconds, whichever comes first, with the last metric shown.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("fedsim")


class LogProgress:
    """The part of tqdm's interface the strategies use (``update``, ``set_postfix``,
    ``close``), as log lines."""

    def __init__(self, total: int, every_rounds: int | None = None, every_s: float = 30.0) -> None:
        self.total = total
        self.every_rounds = every_rounds or max(1, total // 10)
        self.every_s = every_s
        self.n = 0
        self.postfix = ""
        self._t0 = self._last_t = time.monotonic()
        self._last_n = 0
        self.closed = False

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.monotonic()
        due = self.n - self._last_n >= self.every_rounds or now - self._last_t >= self.every_s
        if due and self.n < self.total:
            self._emit(now)

    def set_postfix(self, values: dict, refresh: bool = False) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._emit(time.monotonic())

    def _emit(self, now: float) -> None:
        rate = self.n / max(now - self._t0, 1e-9)
        log.info(
            "round %d/%d (%.0f%%) %s [%.1f rounds/s]",
            self.n,
            self.total,
            100 * self.n / max(self.total, 1),
            self.postfix,
            rate,
        )
        self._last_n, self._last_t = self.n, now


def progress_bar(total: int):
    """A tqdm bar when stderr is a terminal, else :class:`LogProgress`."""
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="rounds", unit="rnd")
    return LogProgress(total)
