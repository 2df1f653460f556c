"""Clipped server steps with local steps and reshuffling under (L0,L1)-smoothness: server side.

Paper: "Methods with Local Steps and Random Reshuffling for Generally Smooth Non-Convex Federated
Optimization" (arXiv 2412.02781), and the baselines of its authors' code. The server step is
``θ(v) = 1/(c0 + c1‖v‖)`` (:func:`fedsim.blocks.clipping.clipped_stepsize`) with ``v`` the full
gradient at the round's start (``method.clip_vector = full_gradient``, the theory: clients
send ``∇f_m(x)`` too) or the aggregated update itself (``update``, the authors' practical variant).

- :class:`ClipLocalGDJ` (Algorithm 1, Clip-LocalGDJ): ``x ← x − θ(v) g``, ``g = Σ_m w_m g_m``
  the average of the clients' local gradients; with ``local_steps = 1`` and ``v = g`` it is
  L0L1-GD, clipped gradient descent (``method=l0l1_gd``).
- :class:`CLERR` (Algorithm 2, distributed reading): the same server after one local RR epoch
  per client, the clipped outer step restarted from the round's start point.
- :class:`ClippedRRCLI` (Algorithm 3): cyclic cohorts (``sampler=cyclic``), an intra-epoch
  server step ``η`` per cohort, and the clipped step from the meta-epoch's start at its end.
- :class:`CEFedAvg` (baseline ``CE-FedAvg``): clients clip their update to a norm, the server
  takes a constant step; any sampler (the authors' ``clip_fedavg_pp`` is ``sampler=uniform``).
- :class:`CELGC` (baseline: local clipped SGD): every client step clipped, plain averaging.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedsim.blocks.clipping import clipped_stepsize
from fedsim.blocks.samplers import Cohort, CyclicSampler, Sampler, unbiased_sum
from fedsim.blocks.solvers import SOLVERS
from fedsim.blocks.stepsizes import positive_or_auto
from fedsim.errors import ConfigError, int_at_least
from fedsim.tasks.base import Task
from strategies.base import FedsimStrategy, Reply, RunSettings
from strategies.fedavg import FedAvg

CLIP_VECTORS = ("full_gradient", "update")


def nonnegative(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
    if not np.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return float(value)


def positive(name: str, value: object) -> float:
    """A positive number; these methods have no theory-derived ``auto`` value (their defaults
    are tuned, see ``experiments/generalized_smoothness/tune.py``)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        raise ConfigError(
            f"{name} has no 'auto' value for the clipped methods: give a number (the defaults "
            "in conf/method/ are tuned on the quartic; tune.py tunes them for another task)"
        )
    return positive_or_auto(name, value, 1.0)


def resolve_common(method: Mapping, solvers: tuple[str, ...], clip: bool = True) -> dict:
    """Validate the local-step knobs (and ``c0 > 0``, ``c1 ≥ 0``, ``clip_vector``)."""
    out = dict(method)
    solver = method.get("local_solver", "gd")
    if solver not in solvers:
        raise ConfigError(
            f"method {method['name']!r}: local_solver={solver!r} is not one of {', '.join(solvers)}"
        )
    for key in ("local_steps", "local_epochs", "batch_size"):
        out[key] = int_at_least(f"method.{key}", method.get(key, 1), 1)
    if "client_lr" in method:
        out["client_lr"] = positive("method.client_lr", method["client_lr"])
    if clip:
        out["c0"] = positive("method.c0", method.get("c0"))
        out["c1"] = nonnegative("method.c1", method.get("c1", 0.0))
        vector = method.get("clip_vector", "update")
        if vector not in CLIP_VECTORS:
            raise ConfigError(
                f"method.clip_vector={vector!r}; valid choices: {', '.join(CLIP_VECTORS)}"
            )
    return out


class ClipLocalGDJ(FedsimStrategy):
    """Clip-LocalGDJ (arXiv 2412.02781, Algorithm 1): clients make ``H`` plain local steps of
    size ``γ`` and send ``g_m = Δ_m/(γH)``; the server jumps ``x ← x − θ(v) Σ_m a_m w_m g_m``.
    Only the server step is clipped."""

    solvers: tuple[str, ...] = ("gd", "sgd")

    def __init__(self, task: Task, sampler: Sampler, settings: RunSettings, method: Mapping):
        super().__init__(task, sampler, settings)
        self.c0, self.c1 = float(method["c0"]), float(method["c1"])
        self.full_gradient = method["clip_vector"] == "full_gradient"

    @classmethod
    def resolve(cls, method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        return resolve_common(method, cls.solvers)

    @classmethod
    def from_config(
        cls, method: Mapping, task: Task, sampler: Sampler, settings: RunSettings
    ) -> ClipLocalGDJ:
        return cls(task, sampler, settings, method)

    def fit_config(self, rnd: int, cohort: Cohort) -> dict[int, tuple[list[np.ndarray], dict]]:
        arrays = [self.x]
        return {int(pid): (arrays, {}) for pid in cohort.ids}

    def expected_shapes(self, pid: int) -> list[tuple[int, ...]]:
        return [(self.task.dim,)] * (2 if self.full_gradient else 1)

    def average(self, cohort: Cohort, replies: list[Reply], which: int = 0) -> np.ndarray:
        """``Σ_{m∈S} a_m w_m v_m`` of the replies' array ``which``."""
        pids = np.array([r.pid for r in replies], dtype=np.int64)
        values = np.stack([r.arrays[which] for r in replies])
        return unbiased_sum(cohort, values, self.task.weights[pids], ids=pids)

    def apply(self, rnd: int, cohort: Cohort, replies: list[Reply]) -> None:
        g = self.average(cohort, replies)
        v = self.average(cohort, replies, 1) if self.full_gradient else g
        self.x = self.x - clipped_stepsize(v, self.c0, self.c1) * g


class CLERR(ClipLocalGDJ):
    """CLERR (arXiv 2412.02781, Algorithm 2, distributed reading): each client makes one local
    RR (or shuffle-once) epoch from ``x`` with stepsize ``γ`` and sends the epoch's average
    gradient ``g_m = Σ_B (|B|/n) ∇f_B(z_B)``; the server restarts from ``x``:
    ``x ← x − θ(v) g``. NASTYA is the same loop with a constant outer step."""

    solvers = ("rr", "so")


class ClippedRRCLI(ClipLocalGDJ):
    """Clipped RR-CLI (arXiv 2412.02781, Algorithm 3).

    With ``sampler=cyclic`` (R = M/C cohorts per meta-epoch, each client once), round ``r`` of
    meta-epoch ``t``: the cohort runs one local RR epoch from ``x_{t,r}``, the server steps
    ``x_{t,r+1} = x_{t,r} − η g_{t,r}`` (``η = method.server_lr``) with
    ``g_{t,r} = Σ_{m∈S_r} a_m w_m g_m`` (the cohort mean), and accumulates ``g_{t,r}``; after
    the last cohort, ``x_{t+1} = x_t − θ(g_t) g_t`` with ``g_t`` the mean over the meta-epoch,
    from the meta-epoch's start point. The clip vector is ``g_t`` (``update``): the theory's
    choice under partial participation is not known.
    """

    solvers = ("rr", "so")

    def __init__(self, task: Task, sampler: Sampler, settings: RunSettings, method: Mapping):
        super().__init__(task, sampler, settings, method)
        self.server_lr = float(method["server_lr"])
        self.rounds = sampler.rounds_per_epoch  # type: ignore[attr-defined]
        self._start = self.x
        self._sum = np.zeros(task.dim)
        self._count = 0
        self._epoch = 0

    @classmethod
    def resolve(cls, method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        if sampler is not None and not isinstance(sampler, CyclicSampler):
            raise ConfigError(
                "method 'clipped_rr_cli' takes its cohorts from sampler=cyclic (each client "
                "once per meta-epoch)"
            )
        out = resolve_common(method, cls.solvers)
        if out["clip_vector"] != "update":
            raise ConfigError(
                "method 'clipped_rr_cli' clips with the meta-epoch's update "
                "(clip_vector=update): a full gradient needs every client each round"
            )
        out["server_lr"] = nonnegative("method.server_lr", method.get("server_lr", 0.0))
        return out

    def _finish_epoch(self) -> None:
        if self._count:
            g = self._sum / self._count
            self.x = self._start - clipped_stepsize(g, self.c0, self.c1) * g
        self._start, self._sum, self._count = self.x, np.zeros(self.task.dim), 0

    def apply(self, rnd: int, cohort: Cohort, replies: list[Reply]) -> None:
        epoch, position = divmod(rnd - 1, self.rounds)
        if epoch != self._epoch:  # a failed last round left the previous meta-epoch open
            self._finish_epoch()
            self._epoch = epoch
        g = self.average(cohort, replies)  # the cohort's mean g_{t,r}
        self.x = self.x - self.server_lr * g
        self._sum += g
        self._count += 1
        if position == self.rounds - 1:
            self._finish_epoch()
            self._epoch = epoch + 1


class CEFedAvg(FedAvg):
    """Clip-FedAvg (the authors' ``CE-FedAvg`` and, with a cohort, ``clip_fedavg_pp``): clients
    send ``clip_cl((x − z_H)/H)``, the server steps ``x ← x − η Σ_{m∈S} a_m w_m u_m``. Unlike the
    authors' code, which divides a cohort's sum by M, the step is the unbiased estimate."""

    uses = ()

    @staticmethod
    def resolve(method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        out = resolve_common(method, SOLVERS, clip=False)
        out["server_lr"] = positive("method.server_lr", method.get("server_lr"))
        out["client_clip"] = positive("method.client_clip", method.get("client_clip"))
        return out


class CELGC(FedAvg):
    """Local clipped SGD (the authors' ``CELGC``): every client step ``z ← z − θ(s) s``; the
    server averages the models (``x ← x − Σ a_m w_m (x − z_m)``)."""

    uses = ()

    @staticmethod
    def resolve(method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        out = resolve_common(method, SOLVERS)
        out["server_lr"] = 1.0
        return out
