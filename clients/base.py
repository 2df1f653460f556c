"""Machinery shared by every fedsim client.

A fedsim client knows its partition id (from ``context.node_config``), answers the strategy's
discovery call with it, draws every random number from ``(seed, round, purpose, partition-id)``
and keeps whatever must survive rounds in ``context.state`` only: Flower rebuilds client objects
for every message.
"""

from __future__ import annotations

import numpy as np
from flwr.client import NumPyClient
from flwr.common import ArrayRecord, Context, Scalar

from fedsim.checkpoint import STATE_BLOB, STATE_KEY, pack_state, unpack_state_into
from fedsim.rng import generator
from fedsim.tasks.base import Objective
from fedsim.wire import from_record


class FedsimClient(NumPyClient):
    """Base class of fedsim clients."""

    def __init__(self, pid: int, objective: Objective, seed: int, context: Context) -> None:
        self.pid = pid
        self.objective = objective
        self.seed = seed
        self.state = context.state

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        """The partition id (discovery); with ``config[STATE_KEY]`` = "get" also this node's
        ``context.state`` pickled, with "put" the state given back replaces it (checkpoints,
        :mod:`fedsim.checkpoint`)."""
        out: dict[str, Scalar] = {"partition-id": self.pid}
        action = config.get(STATE_KEY)
        if action == "get":
            out[STATE_BLOB] = pack_state(self.state)
        elif action == "put":
            unpack_state_into(self.state, bytes(config[STATE_BLOB]))  # type: ignore[arg-type]
            out["restored"] = 1
        return out

    def get_parameters(self, config: dict[str, Scalar]) -> list[np.ndarray]:
        return []  # the strategy initializes the model

    def rng(self, rnd: int, purpose: str) -> np.random.Generator:
        return generator(self.seed, rnd, purpose, self.pid)

    def load(self, key: str) -> list[np.ndarray] | None:
        """Arrays kept in ``context.state`` under ``key``, or None."""
        record = self.state.get(key)
        return None if record is None else from_record(record)

    def save(self, key: str, arrays: list[np.ndarray]) -> None:
        """Keep ``arrays`` in ``context.state`` under ``key`` until a later round."""
        self.state[key] = ArrayRecord(numpy_ndarrays=[np.asarray(a) for a in arrays])
