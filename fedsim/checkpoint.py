"""Checkpoints of an inline run, and resuming from them (DESIGN §8: state).

A checkpoint is one pickle, ``<outdir>/checkpoint.pkl``, replaced atomically (a temporary file in
the same folder, then a rename: a ``kill -9`` at any moment leaves the previous checkpoint or the
new one, never half of one). It holds the round it was taken after, the strategy's state
(:meth:`strategies.base.FedsimStrategy.state_dict`: every attribute not declared ``transient``,
so a method's server buffers are saved because they are attributes, with no code of its own),
the metrics rows so far, and every node's ``context.state`` (the clients' state, by partition
id). Randomness needs nothing: every draw is keyed by (seed, round, purpose, client)
(:mod:`fedsim.rng`), so the rounds after the checkpoint draw what they would have drawn.

Resuming rebuilds the strategy and the nodes from the run's ``config.yaml``, loads the state,
rewrites ``metrics.csv`` with the checkpoint's rows (rows written after the checkpoint are
computed again, identically) and runs the remaining rounds. Only the inline engine can resume:
on the ray engine the nodes' contexts live inside Flower's Simulation Engine, and on deployment
inside the SuperNodes, where fedsim cannot read or restore them.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.server.client_manager import SimpleClientManager

CHECKPOINT_FILE = "checkpoint.pkl"
VERSION = 1


@dataclass
class Checkpoint:
    round: int
    strategy: dict[str, Any]
    nodes: dict[int, Any]  # partition id -> context.state (a Flower RecordDict)
    wall_s: float
    version: int = VERSION


def node_states(manager: SimpleClientManager) -> dict[int, Any]:
    """Every in-process node's ``context.state``, by partition id."""
    return {
        int(proxy.context.node_config["partition-id"]): proxy.context.state
        for proxy in manager.all().values()
    }


def save(outdir: str | Path, rnd: int, strategy: Any, manager: SimpleClientManager) -> Path:
    """Write the checkpoint taken after round ``rnd`` atomically; return its path."""
    path = Path(outdir) / CHECKPOINT_FILE
    state = Checkpoint(rnd, strategy.state_dict(), node_states(manager), strategy.recorder.wall())
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


def restore(state: Checkpoint, strategy: Any, manager: SimpleClientManager) -> None:
    """Load ``state`` into a freshly built strategy and nodes of the same config."""
    strategy.load_state_dict(state.strategy, state.wall_s)
    saved = state.nodes
    for proxy in manager.all().values():
        proxy.context.state = saved[int(proxy.context.node_config["partition-id"])]


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
