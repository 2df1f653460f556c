"""Fault injection: honest clients that crash, hang, send garbage or drop out (``fault=...``).

A fault is not an attack (DESIGN §8): the faulty client means no harm, and the server counts its
round as a failure under the failure policy (``max_failure_fraction``, ``max_failed_rounds``).
:class:`FaultyClient` wraps the honest NumPyClient of a faulty node; every engine builds its
clients through :func:`fedsim.build.client_factory`, so the same wrapper runs in process
(inline), in a Ray actor (ray) and in a SuperNode's ClientApp (deployment).

Which clients, which rounds (the same on every engine, whatever the arrival order):

- the faulty set is ``fault.ids`` or, when that is empty, ``ceil(fraction · num_clients)`` ids
  drawn without replacement from ``generator(seed, 0, "fault/clients")``, fixed for the run;
- a faulty client misbehaves in round ``r`` iff ``r > after_round`` and
  ``generator(seed, r, "fault/coin", pid).random() < prob`` (no draw when ``prob`` is 1);
  other rounds it answers honestly. Only ``fit`` misbehaves; discovery, state checkpoints
  (``get_properties``) and ``evaluate`` pass through.

What a misbehaving ``fit`` does, on every engine unless said otherwise:

- ``crash``: raises :class:`InjectedCrash` before training, so the node's state does not
  advance. inline: the engine logs the exception and counts a failure; ray: one WARNING line
  (partition id, exception), the traceback at DEBUG; deployment: the ClientApp's error reply.
- ``drop``: the message is lost. Raises :class:`DroppedMessage` (a ``ConnectionError``) before
  training: the state does not advance and no valid reply arrives. A real lost message is
  noticed only at the round timeout; this one is reported at once, so it runs inline too and
  costs no waiting (``hang`` is the timeout path).
- ``nan``: trains honestly (the state advances), then sends the reply's float arrays filled
  with NaN (a reply without float arrays becomes float64 NaN); the server's reply check rejects
  it. Hydra reads a bare ``nan`` as a float: choose it as ``'fault="nan"'`` on a command line.
- ``wrong_shape``: trains honestly, then sends every array with one element more; rejected.
- ``slow``: sleeps ``seconds``, then trains and answers correctly, no failure (``seconds`` must
  stay below ``engine.round_timeout``).
- ``hang``: sleeps ``seconds`` (default 3600: far past any timeout, but bounded, so no process
  lives forever), then raises. The server counts a timeout when the round's message expires
  (``engine.round_timeout``). Refused on ``engine=inline``, which has no timeout. ray: the stuck
  actor is killed and replaced at that moment (:mod:`fedsim.engines.ray_backend`), one WARNING
  names the partition id. deployment: a SuperNode (flwr 1.42) handles one message at a time and
  waits for its ClientApp without a timeout, so the node misses every round until the sleep
  ends (one timeout per round; the other nodes are not affected).
- ``mixed``: a kind per faulty client, ``fault.kinds={1: crash, 2: nan, ...}`` (the keys are
  the faulty ids; ``fault.ids`` and ``fraction`` are not used); a ``hang`` sleeps ``seconds``
  (default 3600), a ``slow`` one ``slow_seconds`` (default 1). One federation then exercises
  every kind at once (the deployment test does).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
from flwr.client import NumPyClient
from flwr.common import Context, Scalar

from fedsim.errors import ConfigError, unknown
from fedsim.rng import generator

FAULTS = ("none", "crash", "hang", "nan", "wrong_shape", "slow", "drop", "mixed")
KINDS = tuple(f for f in FAULTS if f not in ("none", "mixed"))  # what one client can do
TIMED = ("hang", "slow")  # faults with a ``seconds`` knob
HANG_SECONDS = 3600.0


class InjectedCrash(RuntimeError):
    """The exception a ``fault=crash`` client raises in ``fit``."""


class DroppedMessage(ConnectionError):
    """The exception a ``fault=drop`` client raises in ``fit``: its message was lost."""


class InjectedHang(TimeoutError):
    """Raised by a ``fault=hang`` client when it wakes up, long after the server gave up on it."""


@dataclass(frozen=True)
class Fault:
    """A configured fault: kind ``name``, the faulty partition ``ids``, the per-round ``prob``,
    the last fault-free round ``after_round`` and ``seconds`` (``hang``, ``slow``)."""

    name: str
    ids: tuple[int, ...]
    prob: float = 1.0
    after_round: int = 0
    seconds: float = 0.0
    kinds: tuple[tuple[int, str], ...] = ()  # fault=mixed: (pid, kind) per faulty client
    slow_seconds: float = 0.0  # fault=mixed: a slow client's sleep

    def kind_of(self, pid: int) -> str:
        """What client ``pid`` does when the fault strikes (``name``, or its ``mixed`` kind)."""
        return dict(self.kinds).get(pid, self.name)

    def used(self) -> set[str]:
        """The kinds some faulty client has."""
        return {k for _, k in self.kinds} if self.name == "mixed" else {self.name}

    def sleep_of(self, kind: str) -> float:
        """Seconds a ``hang`` or ``slow`` client sleeps."""
        return self.slow_seconds if self.name == "mixed" and kind == "slow" else self.seconds

    def strikes(self, seed: int, rnd: int, pid: int) -> bool:
        """Whether client ``pid`` misbehaves in round ``rnd`` (module docstring)."""
        if pid not in self.ids or rnd <= self.after_round or self.prob <= 0:
            return False
        return self.prob >= 1 or generator(seed, rnd, "fault/coin", pid).random() < self.prob


def _real(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not low <= value <= high:
        raise ConfigError(f"fault.{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _ids(ids: object, n: int) -> tuple[int, ...]:
    if ids is None:
        return ()
    if isinstance(ids, str | bytes) or not isinstance(ids, Sequence):
        raise ConfigError(f"fault.ids must be a list of partition ids, got {ids!r}")
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, Integral) or not 0 <= i < n]
    if bad:
        raise ConfigError(
            f"fault.ids must be partition ids in [0, {n}) (num_clients={n}); got {bad}"
        )
    if len(set(ids)) != len(ids):
        raise ConfigError(f"fault.ids must be distinct; got {list(ids)}")
    return tuple(sorted(int(i) for i in ids))


def fault_of(cfg: Mapping) -> Fault:
    """The fault of a config (``name: none`` when it has no fault group); raises ConfigError for
    an unknown name or an impossible value. Engine-specific checks: :func:`check_fault`."""
    raw = dict(cfg.get("fault") or {"name": "none"})
    name = raw.get("name", "none")
    if name not in FAULTS:
        raise unknown("fault", name, FAULTS)
    n, seed = int(cfg["num_clients"]), int(cfg["seed"])
    ids = _ids(raw.get("ids"), n)
    fraction = _real("fraction", raw.get("fraction", 0.0), 0.0, 1.0)
    prob = _real("prob", raw.get("prob", 1.0), 0.0, 1.0)
    after = raw.get("after_round", 0)
    if isinstance(after, bool) or not isinstance(after, Integral) or after < 0:
        raise ConfigError(f"fault.after_round must be an integer >= 0, got {after!r}")
    if name == "none":
        if ids or fraction:
            raise ConfigError(
                "fault=none has no faulty clients: choose a fault "
                f"({', '.join(f for f in FAULTS if f != 'none')}) or leave fault.ids empty "
                "and fault.fraction at 0"
            )
        return Fault("none", ())
    kinds: tuple[tuple[int, str], ...] = ()
    if name == "mixed":
        kinds = _kinds(raw.get("kinds"), n)
        ids = tuple(pid for pid, _ in kinds)
    elif not ids:  # a non-empty ids overrides fraction
        k = math.ceil(fraction * n - 1e-9)
        ids = tuple(sorted(int(i) for i in generator(seed, 0, "fault/clients").choice(n, k, False)))
    used = {k for _, k in kinds} if name == "mixed" else {name}
    # ``seconds`` is the sleep of a hang, or of a slow client outside ``mixed``
    timed = "hang" in used or name == "slow"
    seconds = _seconds(raw, "seconds", HANG_SECONDS if "hang" in used else 1.0) if timed else 0.0
    slow = _seconds(raw, "slow_seconds", 1.0) if name == "mixed" and "slow" in used else 0.0
    return Fault(name, ids, prob, int(after), seconds, kinds, slow)


def _seconds(raw: Mapping, key: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, Real) or not value > 0:
        raise ConfigError(f"fault.{key} must be a number > 0, got {value!r}")
    return float(value)


def _kinds(kinds: object, n: int) -> tuple[tuple[int, str], ...]:
    """``fault.kinds`` of ``fault=mixed``: partition id → kind, at least one."""
    if not isinstance(kinds, Mapping) or not kinds:
        raise ConfigError(
            "fault=mixed needs fault.kinds, a mapping from partition id to a kind, e.g. "
            f"fault.kinds={{1: crash, 2: hang}} (kinds: {', '.join(KINDS)}); got {kinds!r}"
        )
    out = []
    for pid, kind in kinds.items():
        try:
            i = int(pid)
        except (TypeError, ValueError):
            i = -1
        if not 0 <= i < n or isinstance(pid, bool):
            raise ConfigError(
                f"fault.kinds keys must be partition ids in [0, {n}) (num_clients={n}); got {pid!r}"
            )
        kind = "nan" if isinstance(kind, float) and math.isnan(kind) else kind  # a bare nan
        if kind not in KINDS:
            raise unknown(f"fault.kinds[{i}]", kind, KINDS)
        out.append((i, str(kind)))
    if len({i for i, _ in out}) != len(out):
        raise ConfigError(f"fault.kinds names a partition id twice: {dict(kinds)}")
    return tuple(sorted(out))


def check_fault(cfg: Mapping) -> Fault:
    """Validate the ``fault`` group of a resolved config against the population and the engine
    (raises ConfigError); returns the configured :class:`Fault`."""
    fault = fault_of(cfg)
    used = fault.used()
    if not used & set(TIMED):
        return fault
    engine = cfg["engine"]
    name = engine.get("name")
    timeout = engine.get("round_timeout")
    if "hang" in used and name == "inline":
        raise ConfigError(
            "fault=hang on engine=inline would stall the run: the inline engine calls clients "
            "in this process and has no round timeout. Use engine=ray (or deployment) with "
            "engine.round_timeout set, or fault=slow / crash / drop inline"
        )
    if name == "inline" or not fault.ids:
        return fault
    if timeout is None:
        if "hang" in used:
            raise ConfigError(
                f"fault=hang on engine={name} needs engine.round_timeout (seconds), or the round "
                "would wait for the hanging client forever"
            )
        return fault
    if "hang" in used and fault.seconds <= float(timeout):
        raise ConfigError(
            f"fault=hang sleeps fault.seconds={fault.seconds:g} s, not longer than "
            f"engine.round_timeout={timeout}: that client is merely slow (fault=slow); "
            "raise fault.seconds"
        )
    if "slow" in used and fault.sleep_of("slow") >= float(timeout):
        key = "slow_seconds" if fault.name == "mixed" else "seconds"
        raise ConfigError(
            f"fault=slow sleeps fault.{key}={fault.sleep_of('slow'):g} s, not less than "
            f"engine.round_timeout={timeout}: it would time out (that is fault=hang); "
            f"lower fault.{key}"
        )
    return fault


def poisoned(name: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """The reply arrays of a ``nan`` or ``wrong_shape`` fault (module docstring)."""
    if name == "wrong_shape":
        return [np.resize(a, a.size + 1) for a in arrays]
    if not any(np.issubdtype(a.dtype, np.floating) for a in arrays):
        return [np.full(a.shape, np.nan) for a in arrays] or [np.array([np.nan])]
    return [np.full_like(a, np.nan) if np.issubdtype(a.dtype, np.floating) else a for a in arrays]


class FaultyClient(NumPyClient):
    """The honest client of a faulty node; its ``fit`` misbehaves when the fault strikes."""

    def __init__(self, honest: NumPyClient, fault: Fault, pid: int, seed: int) -> None:
        self.honest = honest
        self.fault = fault
        self.pid = pid
        self.seed = seed

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        return self.honest.get_properties(config)

    def get_parameters(self, config: dict[str, Scalar]) -> list[np.ndarray]:
        return self.honest.get_parameters(config)

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        return self.honest.evaluate(parameters, config)

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        rnd = int(config.get("round", 0))
        name = self.fault.kind_of(self.pid)
        if not self.fault.strikes(self.seed, rnd, self.pid):
            return self.honest.fit(parameters, config)
        where = f"client {self.pid}, round {rnd}"
        if name == "crash":
            raise InjectedCrash(f"fault=crash: {where} crashed")
        if name == "drop":
            raise DroppedMessage(f"fault=drop: {where}: the message was lost")
        if name == "hang":
            time.sleep(self.fault.seconds)
            raise InjectedHang(f"fault=hang: {where} woke after {self.fault.seconds:g} s")
        if name == "slow":
            time.sleep(self.fault.sleep_of("slow"))
            return self.honest.fit(parameters, config)
        arrays, num_examples, metrics = self.honest.fit(parameters, config)
        return poisoned(name, arrays), num_examples, metrics


def with_faults(
    cfg: Mapping, make: Callable[[Context], NumPyClient]
) -> Callable[[Context], NumPyClient]:
    """``make`` with the faulty nodes' clients wrapped in :class:`FaultyClient` (``make`` itself
    without a fault)."""
    fault = fault_of(cfg)
    if fault.name == "none" or not fault.ids:
        return make
    seed = int(cfg["seed"])

    def faulty(context: Context) -> NumPyClient:
        client = make(context)
        pid = int(context.node_config["partition-id"])
        return FaultyClient(client, fault, pid, seed) if pid in fault.ids else client

    return faulty
