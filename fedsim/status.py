"""The status of a run, kept in ``summary.json`` next to ``metrics.csv`` (DESIGN §7).

``status`` is one of

- ``running``: written when the run starts; a run killed with ``kill -9`` keeps it;
- ``completed``: every round ran;
- ``diverged``: an evaluated loss was not finite or grew past ``max_loss_ratio`` times the initial
  one (exit code 3);
- ``aborted``: too many consecutive rounds failed, or the nodes did not match (exit code 1);
- ``interrupted``: SIGINT or SIGTERM (exit code 130 or 143);
- ``failed``: any other error (exit code 1);

with ``reason`` saying why for every status but running and completed. The file is replaced
atomically (a temporary file, then a rename), so a reader never sees half of it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

SUMMARY_FILE = "summary.json"
STATUSES = ("running", "completed", "diverged", "aborted", "interrupted", "failed")
EXIT_CODES = {"completed": 0, "diverged": 3, "aborted": 1, "failed": 1, "interrupted": 130}


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_summary(outdir: str | Path) -> dict | None:
    """The run's ``summary.json``, or None when it has none (or it cannot be read)."""
    try:
        data = json.loads((Path(outdir) / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def mark(outdir: str | Path | None, status: str, reason: str | None = None, **fields) -> None:
    """Set the run's status (and ``reason``, and any other ``fields``) in ``summary.json``,
    keeping what the file already holds."""
    if outdir is None:
        return
    assert status in STATUSES, status
    data = read_summary(outdir) or {}
    data.update(fields, status=status, reason=reason)
    write_json(Path(outdir) / SUMMARY_FILE, data)


class RunStopped(RuntimeError):
    """A run that another process stopped (a deployment ServerApp wrote ``status`` and
    ``reason`` to ``summary.json``)."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by ``python -m fedsim``'s signal handler."""


class RunInterrupted(RuntimeError):
    """A run stopped by SIGINT/SIGTERM after round ``rnd``, with its checkpoint written (raised
    by the strategy: an Exception, so Flower's server thread hands it to the main thread)."""

    status = "interrupted"

    def __init__(self, signum: int, rnd: int) -> None:
        import signal

        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after round {rnd} (checkpoint written)")
        self.signum, self.rnd = signum, rnd


def status_of(err: BaseException) -> str:
    """The status a run stopped by ``err`` ends with."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    status = getattr(err, "status", None)  # RunAborted, RunDiverged, RunStopped
    return status if status in STATUSES else "failed"


def exit_code(err: BaseException) -> int:
    """The exit status of ``python -m fedsim`` for a run stopped by ``err``."""
    import signal

    if isinstance(err, Terminated):
        return 143
    if isinstance(err, RunInterrupted):
        return 143 if err.signum == signal.SIGTERM else 130
    return EXIT_CODES.get(status_of(err), 1)


# A stop asked for by SIGINT/SIGTERM: the signal number, acted on by the strategy after the
# current round (checkpoint, then RunInterrupted). Set by ``python -m fedsim``'s handler while a
# run is on (``graceful``); a second signal stops at once (raise_for).
pending_signal: int | None = None
graceful = False


def raise_for(signum: int) -> None:
    """Raise what ``signum`` stands for: Terminated (SIGTERM) or KeyboardInterrupt."""
    import signal

    if signum == signal.SIGTERM:
        raise Terminated
    raise KeyboardInterrupt
