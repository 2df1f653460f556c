"""Reproducible randomness.

Every random choice in fedsim draws from a generator derived from
``(seed, round, purpose, partition_id)`` (DESIGN §6), so results depend neither on the engine,
nor on the number of Ray actors, nor on the order in which clients answer.
"""

from __future__ import annotations

import zlib

import numpy as np

SERVER = -1  # partition id used for draws made by the server


def _purpose_key(purpose: str) -> int:
    return zlib.crc32(purpose.encode("utf-8"))


def seed_sequence(seed: int, rnd: int, purpose: str, pid: int = SERVER) -> np.random.SeedSequence:
    """The seed sequence for one ``(seed, round, purpose, partition_id)`` key."""
    # SeedSequence needs non-negative entropy words; shift the signed ids.
    return np.random.SeedSequence([int(seed), int(rnd) + 1, _purpose_key(purpose), int(pid) + 2])


def generator(seed: int, rnd: int, purpose: str, pid: int = SERVER) -> np.random.Generator:
    """A fresh numpy generator for one ``(seed, round, purpose, partition_id)`` key."""
    return np.random.default_rng(seed_sequence(seed, rnd, purpose, pid))


def int_seed(seed: int, rnd: int, purpose: str, pid: int = SERVER) -> int:
    """A 63-bit integer seed (for torch generators) for the same key."""
    return int(seed_sequence(seed, rnd, purpose, pid).generate_state(1, dtype=np.uint64)[0] >> 1)
