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

Defaults: ``auto``, from the task's (L0, L1), ``‖∇²f(x)‖ ≤ L0 + L1‖∇f(x)‖`` (the objectives'
``l0``/``l1`` where a task derives them, the quartic; ``(L, 0)`` for an L-smooth task). The rules
and their derivations are in :mod:`fedsim.blocks.stepsizes` (the paper's numeric constants are
not known: the spec marks them NOT FOUND):

- the server's ``c0, c1 = ν (L0, L1)`` of ``f``, ``ν = 1`` if ``L1 = 0`` else ``e − 1``, so that
  ``f(x⁺) ≤ f(x) − θ‖∇f(x)‖²/2`` (``clipped_server_constants``); on a cohort (a sampler other
  than ``full``) ``c0 ≥ 2𝓛``, SGD's bound with the cohort's expected smoothness
  (``sampled_c0``); Clipped RR-CLI's clipped step averages a whole meta-epoch and keeps ``c0``;
- the clients' ``γ = ε/(2KΛ)``, ``ε = 10⁻³``, ``K`` local steps of curvature at most ``Λ``: the
  path's gradients stay within ``ε`` (relative) of those at the round's start
  (``clipped_client_lr``); Clipped RR-CLI splits that budget between ``γ`` and its intra-epoch
  ``η`` (``intra_epoch_lr``);
- CE-FedAvg: ``γ`` as above, ``η = 1/(c0 γ)``, ``cl = γ c0/c1`` with ``(c0, c1) = 2ν (L0, L1)``
  (∞, no clipping, when ``L1 = 0``: then ``c0 = L``) (``ce_fedavg_constants``);
- CELGC: per step ``(c0, c1) = K (max(ν L0, 2𝓛), ν L1)`` of the clients: ``K`` clipped local
  steps add up to one clipped step (``celgc_constants``).

The quartic tuning of the paper's experiments (``tune.py``) is not a default:
``+experiment=generalized_smoothness`` sets it (its ``tuned`` block, which each method's config
reads).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from fedsim.blocks.clipping import clipped_stepsize
from fedsim.blocks.samplers import Cohort, CyclicSampler, Sampler, unbiased_sum
from fedsim.blocks.solvers import SOLVERS
from fedsim.blocks.stepsizes import (
    ce_fedavg_constants,
    celgc_constants,
    clipped_client_lr,
    clipped_server_constants,
    intra_epoch_lr,
    positive_or_auto,
    sampled_c0,
)
from fedsim.errors import ConfigError, int_at_least
from fedsim.tasks.base import Task
from strategies.base import FedsimStrategy, Reply, RunSettings
from strategies.fedavg import FedAvg

CLIP_VECTORS = ("full_gradient", "update")


def is_auto(value: object) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


def nonnegative(name: str, value: object, auto: Callable[[], float] | None = None) -> float:
    """A finite number ``>= 0``, or ``auto`` → ``auto()`` where the method has a rule."""
    if auto is not None and is_auto(value):
        return float(auto())
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError(f"{name} must be a number >= 0 or 'auto', got {value!r}")
    if not np.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return float(value)


def positive(name: str, value: object, auto: Callable[[], float]) -> float:
    """A positive finite number, or ``auto`` → ``auto()`` (the rules: module docstring)."""
    if is_auto(value):
        return float(auto())
    return positive_or_auto(name, value, 1.0)


def resolve_common(
    method: Mapping,
    solvers: tuple[str, ...],
    task: Task,
    sampler: Sampler | None = None,
    clip: bool = True,
    share: float = 1.0,
) -> dict:
    """Validate the local-step knobs (and ``c0 > 0``, ``c1 ≥ 0``, ``clip_vector``); ``auto``
    ``client_lr`` is :func:`~fedsim.blocks.stepsizes.clipped_client_lr` (``share`` of the drift
    budget), ``auto`` ``c0``/``c1`` :func:`~fedsim.blocks.stepsizes.clipped_server_constants`,
    ``c0`` raised to :func:`~fedsim.blocks.stepsizes.sampled_c0` when the clipped step is taken
    on a cohort of ``sampler``'s."""
    out = dict(method)
    solver = method.get("local_solver", "gd")
    if solver not in solvers:
        raise ConfigError(
            f"method {method['name']!r}: local_solver={solver!r} is not one of {', '.join(solvers)}"
        )
    out["local_solver"] = solver
    for key in ("local_steps", "local_epochs", "batch_size"):
        out[key] = int_at_least(f"method.{key}", method.get(key, 1), 1)
    if "client_lr" in method:
        out["client_lr"] = positive(
            "method.client_lr", method["client_lr"], lambda: clipped_client_lr(task, out, share)
        )
    if clip:
        out["c0"] = positive(
            "method.c0",
            method.get("c0", "auto"),
            lambda: sampled_c0(task, sampler, clipped_server_constants(task)[0]),
        )
        out["c1"] = nonnegative(
            "method.c1", method.get("c1", "auto"), lambda: clipped_server_constants(task)[1]
        )
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
        return resolve_common(method, cls.solvers, task, sampler)

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
        out = resolve_common(method, cls.solvers, task, share=0.5)
        if out["clip_vector"] != "update":
            raise ConfigError(
                "method 'clipped_rr_cli' clips with the meta-epoch's update "
                "(clip_vector=update): a full gradient needs every client each round"
            )
        out["server_lr"] = nonnegative(
            "method.server_lr",
            method.get("server_lr", "auto"),
            lambda: intra_epoch_lr(task, out, sampler, share=0.5),
        )
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
    oracle_ready = False

    @staticmethod
    def resolve(method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        out = resolve_common(method, SOLVERS, task, sampler, clip=False)
        out.setdefault("client_lr", clipped_client_lr(task, out))
        gamma = out["client_lr"]
        out["server_lr"] = positive(
            "method.server_lr",
            method.get("server_lr", "auto"),
            lambda: 1.0 / (ce_fedavg_constants(task, sampler)[0] * gamma),
        )
        clip = method.get("client_clip", "auto")
        if is_auto(clip):  # cl = γ c0/c1: ∞ where L1 = 0 (nothing to clip)
            c0, c1 = ce_fedavg_constants(task, sampler)
            out["client_clip"] = gamma * c0 / c1 if c1 > 0 else float("inf")
        else:
            out["client_clip"] = positive_or_auto("method.client_clip", clip, 1.0)
        return out


class CELGC(FedAvg):
    """Local clipped SGD (the authors' ``CELGC``): every client step ``z ← z − θ(s) s``; the
    server averages the models (``x ← x − Σ a_m w_m (x − z_m)``)."""

    uses = ()
    oracle_ready = False

    @staticmethod
    def resolve(method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        out = resolve_common(method, SOLVERS, task, sampler, clip=False)
        out["c0"] = positive(
            "method.c0", method.get("c0", "auto"), lambda: celgc_constants(task, out, sampler)[0]
        )
        out["c1"] = nonnegative(
            "method.c1", method.get("c1", "auto"), lambda: celgc_constants(task, out, sampler)[1]
        )
        out["server_lr"] = 1.0
        return out
