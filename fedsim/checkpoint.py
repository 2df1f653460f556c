"""Checkpoints of an inline run, and resuming from them (DESIGN §8: state).

A checkpoint is one pickle, ``<outdir>/checkpoint.pkl``, replaced atomically (a temporary file in
the same folder, then a rename: a ``kill -9`` at any moment leaves the previous checkpoint or the
new one, never half of one). The strategy takes it at the end of a round: the round, the
strategy's state (:meth:`strategies.base.FedsimStrategy.state_dict`: every attribute not
declared ``transient``, so a method's server buffers are saved because they are attributes, with
no code of its own), the metrics rows so far, and every node's ``context.state``, which the
strategy asks each node for with a ``get_properties`` message (:data:`STATE_KEY` = "get"; the
node answers with its state pickled, :func:`pack_state`). Node contexts live where the nodes
live (in process, in Flower's Simulation Engine, on SuperNodes), so the same message works on
every engine. Randomness needs nothing: every draw is keyed by (seed, round, purpose, client)
(:mod:`fedsim.rng`), so the rounds after the checkpoint draw what they would have drawn.

Resuming rebuilds the strategy from the run's ``config.yaml``, loads its state, rewrites
``metrics.csv`` with the checkpoint's rows (rows written after the checkpoint are computed again,
identically), sends every node its state back once the nodes are discovered (``"put"``), and runs
the remaining rounds, Flower's round ``r`` being the run's round ``r + k``.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKPOINT_FILE = "checkpoint.pkl"
VERSION = 2
# the get_properties config that asks a node for its state ("get") or gives it back ("put")
STATE_KEY = "fedsim-state"
STATE_BLOB = "fedsim-state-blob"


@dataclass
class Checkpoint:
    round: int
    strategy: dict[str, Any]
    nodes: dict[int, bytes]  # partition id -> its context.state, pickled by the node
    wall_s: float
    version: int = VERSION


def save(
    outdir: str | Path, rnd: int, strategy: dict[str, Any], nodes: dict[int, bytes], wall_s: float
) -> Path:
    """Write the checkpoint taken after round ``rnd`` atomically; return its path."""
    path = Path(outdir) / CHECKPOINT_FILE
    state = Checkpoint(rnd, strategy, nodes, wall_s)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(outdir: str | Path) -> Checkpoint:
    """The run's checkpoint (a ConfigError when there is none or it cannot be read)."""
    from fedsim.errors import ConfigError

    path = Path(outdir) / CHECKPOINT_FILE
    if not path.exists():
        raise ConfigError(f"{outdir} holds no {CHECKPOINT_FILE}: nothing to resume from")
    try:
        with path.open("rb") as fh:
            state = pickle.load(fh)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f"{path} cannot be read: {err}") from err
    if not isinstance(state, Checkpoint) or state.version != VERSION:
        raise ConfigError(f"{path} is not a fedsim checkpoint of version {VERSION}")
    return state


def pack_state(state: Any) -> bytes:
    """A node's ``context.state`` (a Flower RecordDict) as bytes, for a properties reply."""
    return pickle.dumps(dict(state.items()), protocol=pickle.HIGHEST_PROTOCOL)


def unpack_state_into(state: Any, blob: bytes) -> None:
    """Replace the contents of ``state`` (in place: Flower keeps this object) by ``blob``'s."""
    saved = pickle.loads(blob)
    for key in list(state.keys()):
        del state[key]
    for key, value in saved.items():
        state[key] = value


class Schedule:
    """When to checkpoint: after every ``every`` rounds, or once ``every_s`` seconds have passed
    since the last one (None: never by that rule)."""

    def __init__(self, every: int | None, every_s: float | None) -> None:
        self.every, self.every_s = every, every_s
        self._last = time.monotonic()

    def due(self, rnd: int) -> bool:
        now = time.monotonic()
        hit = (self.every is not None and rnd % self.every == 0) or (
            self.every_s is not None and now - self._last >= self.every_s
        )
        if hit:
            self._last = now
        return hit
