"""MAST methods, server side: Double Sketched (S)GD and loopless variance-reduced DSGD.

MAST (model-agnostic sparsified training; Demidovich, Malinovsky, Shulgin, Richtárik, arXiv
2311.16086) trains on the sketched objective instead of ``f = Σ_m w_m f_m``::

    F(x) = Σ_m w_m E_{S~D}[ f_m(v + S(x − v)) ],      ∇_x f_m(v + S(x − v)) = Sᵀ ∇f_m(v + S(x − v))

with a random diagonal sketch ``S`` (``E[S] = I``, :mod:`fedsim.blocks.sketches`, the config's
``method.sketch``) and a shift ``v`` (``method.shift``: ``zero``, ``x0`` or a pretrained model
in a ``.npy`` file). ``w_m = n_m/N`` as in every fedsim method (the paper's ``1/M`` for equal
client sizes). With ``method.num_sketches = N`` each client's ``D`` is the uniform distribution
over its own fixed set ``{S_{m,0}, …, S_{m,N−1}}``, drawn once from the seed; with ``null``
(DSGD only) every round draws fresh sketches from ``D``.

**Wire.** The server draws each client's sketch ``S`` from the shared seed
(:class:`~fedsim.blocks.sketches.SketchSource`) and sends the sketched model
``y = v + S(x − v)`` as its ``|U|`` values on the support ``U`` of ``S`` (Rand-K: K values); the
client re-derives ``U`` from the same seed, rebuilds ``y`` with its copy of ``v``, and answers
``Sᵀ∇f_m(y)`` as its ``|U|`` values on ``U``. Indices never cross the wire, so ``up_bits`` and
``down_bits`` are those of ``|U|`` float64 values per sketch, and the floats are ``|U|``.

**Metrics.** Beside the columns for ``f`` (``loss``, ``gap``, ``dist_sq`` against the ERM
optimum ``x*``) every row holds ``mast_loss`` = ``F(x)`` over the clients' finite sets (exact)
or, for fresh draws, over a fixed evaluation set of ``method.eval_sketches`` draws per client
(an estimate of ``f_D``), and, where ``F`` is exactly the objective over the finite sets and the
clients' objectives have Hessians, ``mast_gap = F(x) − F*`` and ``mast_dist_sq = ‖x − x*_F‖²``
against the MAST optimum computed independently by Newton's method
(:func:`fedsim.tasks.mast_objective.mast_optimum`); otherwise those cells stay empty.

**auto** (``L̃ = max_m M w_m L_m`` the largest client smoothness in uniform form,
``L_S^max = sup_S λ_max(SᵀS)`` of the sketch): DSGD ``γ = 1/(L̃ L_S^max)`` (the paper's
``γ ≤ 1/(L_f L_S^max)``-type bound: each ``f_m(v + S(· − v))`` is ``L̃ L_S^max``-smooth);
L-SVRDSG ``γ = 1/(6 L̃ L_S^max)`` (L-SVRG's ``1/(6L)``, Kovalev, Horváth, Richtárik 2020, with
``L`` the smoothness of one sketched component) and ``p = 1/N``.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from fedsim.blocks.samplers import Cohort, Sampler, unbiased_sum
from fedsim.blocks.sketches import (
    EVAL,
    MEMBER,
    Draw,
    SketchSource,
    build_sketch,
    resolved_sketch_cfg,
)
from fedsim.blocks.stepsizes import positive_or_auto
from fedsim.errors import ConfigError, int_at_least
from fedsim.metrics import COLUMNS, MetricsRecorder
from fedsim.rng import generator
from fedsim.tasks.base import Task
from fedsim.tasks.mast_objective import SHIFTS, SketchedObjective, load_shift, mast_optimum
from strategies.base import FedsimStrategy, Reply, RunSettings

log = logging.getLogger("fedsim")

Instructions = dict[int, tuple[list[np.ndarray], dict]]
MAST_COLUMNS = ("mast_loss", "mast_gap", "mast_dist_sq")


# --------------------------------------------------------------------------- pure rules
def dsgd_step(x: np.ndarray, lr: float, estimate: np.ndarray) -> np.ndarray:
    """``x − γ g`` (MAST, Alg. 1, last line)."""
    return x - lr * estimate


def svrg_estimate(h: np.ndarray, bracket: np.ndarray) -> np.ndarray:
    """``g = h + [∇f_S(x) − ∇f_S(w)]`` (the loopless SVRG estimator over sketches)."""
    return h + bracket


def sketched_sum(
    cohort: Cohort, draws: dict[int, Draw], replies: list[Reply], weights: np.ndarray
) -> np.ndarray:
    """``Σ_{m∈C} a_m w_m S_mᵀ g_m`` from the replies' values on each ``U_m`` (pid order)."""
    pids = np.array([r.pid for r in replies], dtype=np.int64)
    dense = np.stack([draws[r.pid].scatter(r.arrays[0]) for r in replies])
    return unbiased_sum(cohort, dense, np.asarray(weights)[pids], ids=pids)


def component_smoothness(task: Task) -> float:
    """``L̃ = max_m M w_m L_m``: the smoothness of the clients' ``f̃_m = M w_m f_m``."""
    return float(np.max(task.num_clients * task.weights * task.client_L))


# --------------------------------------------------------------------------- metrics
def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


class MastRecorder(MetricsRecorder):
    """``metrics.csv`` with the standard columns and :data:`MAST_COLUMNS` (``extra()`` gives
    their values for the current model when a row is written)."""

    columns = (*COLUMNS, *MAST_COLUMNS)

    def __init__(
        self, path: Path | None, tensorboard: dict | None, extra: Callable[[], dict]
    ) -> None:
        super().__init__(path, tensorboard)
        self.extra = extra
        self._rewrite()

    def _rewrite(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(self.columns)
            for row in self.rows:
                writer.writerow([_cell(row.get(c)) for c in self.columns])
        tmp.replace(self.path)

    def row(self, rnd: int, evaluation: dict) -> dict[str, object]:
        evaluation = {**evaluation, **self.extra()}
        path, self.path = self.path, None  # the base writes no line; this one writes them all
        try:
            row = super().row(rnd, evaluation)
        finally:
            self.path = path
        if path is not None:
            with path.open("a", newline="") as fh:
                csv.writer(fh).writerow([_cell(row.get(c)) for c in self.columns])
        return row

    def load(self, state: dict, wall_s: float) -> None:
        path, self.path = self.path, None
        try:
            super().load(state, wall_s)
        finally:
            self.path = path
        self._rewrite()


# --------------------------------------------------------------------------- validation
def _optional_count(name: str, value: object) -> int | None:
    return None if value is None else int_at_least(name, value, 1)


def probability(name: str, value: object, auto: float) -> float:
    """A probability in (0, 1] (``auto`` → ``auto``), or a ConfigError."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return float(auto)
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not 0 < float(value) <= 1:
        raise ConfigError(f"{name} must lie in (0, 1] or be 'auto', got {value!r}")
    return float(value)


def resolve_mast(method: Mapping, task: Task) -> tuple[dict, float]:
    """The knobs every MAST method shares (sketch, shift, sketch sets), validated, and the
    sketch's ``L_S^max``."""
    if task.manifold is not None:
        raise ConfigError(f"method {method['name']!r} needs a Euclidean task, not {task.name!r}")
    out = dict(method)
    cfg = dict(method.get("sketch") or {"name": "rand_k"})
    sketch = build_sketch(cfg, task.dim, task.num_clients)
    out["sketch"] = resolved_sketch_cfg(cfg, sketch)
    shift = method.get("shift", "zero")
    if shift not in SHIFTS:
        shift = str(Path(str(shift)).expanduser().resolve())
    load_shift(shift, task.x0)  # refuses a missing file or a wrong shape here
    out["shift"] = shift
    out["num_sketches"] = _optional_count("method.num_sketches", method.get("num_sketches"))
    return out, sketch.L_max


# --------------------------------------------------------------------------- base
class _Mast(FedsimStrategy):
    """What DSGD and L-SVRDSG share: sketches, shift, messages and the MAST metrics."""

    transient = (*FedsimStrategy.transient, "source", "v", "_mast", "_mast_opt", "_draws")

    def __init__(
        self, task: Task, sampler: Sampler, settings: RunSettings, method: Mapping
    ) -> None:
        super().__init__(task, sampler, settings)
        self.sketch = build_sketch(method["sketch"], task.dim, task.num_clients)
        self.source = SketchSource(self.sketch, settings.seed)
        self.v = load_shift(method["shift"], task.x0)
        self.lr = float(method["lr"])
        self.num_sketches: int | None = method.get("num_sketches")
        self.eval_sketches = int(method.get("eval_sketches", 20))
        self._mast: SketchedObjective | None = None
        self._mast_opt: tuple[np.ndarray, float] | None | bool = False  # False: not solved yet
        self._draws: dict[int, list[Draw]] = {}  # this round's sketches, per client
        self.recorder.close()
        path = Path(settings.outdir) / "metrics.csv" if settings.outdir else None
        self.recorder = MastRecorder(path, settings.tensorboard, self.mast_metrics)

    @classmethod
    def from_config(
        cls, method: Mapping, task: Task, sampler: Sampler, settings: RunSettings
    ) -> _Mast:
        return cls(task, sampler, settings, method)

    # ----------------------------------------------------------------- sketches
    def pick(self, rnd: int, pid: int, purpose: str, size: int = 1) -> list[int]:
        """``size`` distinct members of client ``pid``'s finite set, uniformly, sorted."""
        rng = generator(self.settings.seed, rnd, purpose, pid)
        assert self.num_sketches is not None
        return sorted(int(j) for j in rng.choice(self.num_sketches, size=size, replace=False))

    def everyone(self) -> Cohort:
        n = self.task.num_clients
        return Cohort(np.arange(n), np.ones(n), np.ones(n))

    def expected_shapes(self, pid: int) -> list[tuple[int, ...]]:
        return [(d.size,) for d in self._draws.get(pid, [])]

    # ----------------------------------------------------------------- metrics
    def mast_objective(self) -> SketchedObjective:
        """``F`` over the finite sets (or the evaluation sets, for fresh draws)."""
        if self._mast is None:
            count, purpose = (
                (self.num_sketches, MEMBER) if self.num_sketches else (self.eval_sketches, EVAL)
            )
            sets = [
                [(d.idx, d.scale) for d in self.source.finite_set(count, pid, purpose)]
                for pid in range(self.task.num_clients)
            ]
            self._mast = SketchedObjective(self.task.clients, self.task.weights, self.v, sets)
        return self._mast

    def mast_solution(self) -> tuple[np.ndarray, float] | None:
        """``(x*_F, F*)`` over the finite sets, or None (fresh draws, no Hessian)."""
        if self._mast_opt is False:
            self._mast_opt = None
            if self.num_sketches:
                try:
                    self._mast_opt = mast_optimum(self.mast_objective(), self.task.x0)
                except (ArithmeticError, RuntimeError, np.linalg.LinAlgError) as err:
                    log.warning("no MAST optimum (mast_gap, mast_dist_sq left empty): %s", err)
        return self._mast_opt  # type: ignore[return-value]

    def mast_metrics(self) -> dict[str, float | None]:
        with np.errstate(over="ignore", invalid="ignore"):
            loss = self.mast_objective().loss(self.x)
        out: dict[str, float | None] = {"mast_loss": loss, "mast_gap": None, "mast_dist_sq": None}
        opt = self.mast_solution()
        if opt is not None:
            out["mast_gap"] = loss - opt[1]
            out["mast_dist_sq"] = float(np.sum((self.x - opt[0]) ** 2))
        return out


# --------------------------------------------------------------------------- DSGD
class DSGD(_Mast):
    """Double Sketched (S)GD, distributed (MAST, arXiv 2311.16086, Alg. 1 and its distributed
    form)::

        server:   S_m^t ~ D for every m ∈ C_t,  sends y_m^t = v + S_m^t (x^t − v)
        client m: g_m^t = (S_m^t)ᵀ ∇f_m(y_m^t)               (variant I, all local samples)
                  g_m^t = (S_m^t)ᵀ ∇f_{m,B}(y_m^t)           (variant II, a minibatch B)
        server:   x^{t+1} = x^t − γ Σ_{m∈C_t} a_m w_m g_m^t

    ``a_m`` are the sampler's multipliers (1 for ``sampler=full``). One client
    (``num_clients=1``, ``sampler=full``) is single-node DSGD; with the identity sketch it is
    (S)GD on ``f``. Variant II is ``method.batch_size = b`` (``b`` distinct samples per client
    from ``(seed, t, "dsgd/batch", m)``), variant I ``batch_size: null``. With
    ``method.num_sketches = N`` the sketch of client ``m`` in round ``t`` is member
    ``j ~ U{0..N−1}`` (from ``(seed, t, "dsgd/pick", m)``) of its finite set, else a fresh draw.
    """

    @staticmethod
    def resolve(method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        """Validated hyperparameters with ``auto`` resolved (module docstring)."""
        out, l_max = resolve_mast(method, task)
        out["batch_size"] = _optional_count("method.batch_size", method.get("batch_size"))
        count = method.get("eval_sketches", 20)
        out["eval_sketches"] = int_at_least("method.eval_sketches", count, 1)
        auto = 1.0 / (component_smoothness(task) * l_max)
        out["lr"] = positive_or_auto("method.lr", method.get("lr", "auto"), auto)
        return out

    def draw_for(self, rnd: int, pid: int) -> tuple[Draw, int]:
        """Client ``pid``'s sketch in round ``rnd`` and its member index (−1: a fresh draw)."""
        if self.num_sketches:
            j = self.pick(rnd, pid, "dsgd/pick")[0]
            return self.source.member(j, pid), j
        return self.source.fresh(rnd, pid), -1

    def fit_config(self, rnd: int, cohort: Cohort) -> Instructions:
        self._draws = {}
        out: Instructions = {}
        for pid in cohort.ids.tolist():
            draw, j = self.draw_for(rnd, pid)
            self._draws[pid] = [draw]
            out[pid] = ([draw.sketched_values(self.x, self.v)], {"kind": "grad", "sketch": j})
        return out

    def apply(self, rnd: int, cohort: Cohort, replies: list[Reply]) -> None:
        if not replies:
            return
        draws = {pid: d[0] for pid, d in self._draws.items()}
        g = sketched_sum(cohort, draws, replies, self.task.weights)
        self.x = dsgd_step(self.x, self.lr, g)


# --------------------------------------------------------------------------- L-SVRDSG
class LSVRDSG(_Mast):
    """L-SVRDSG: loopless variance-reduced DSGD over finite sketch sets (MAST, arXiv
    2311.16086, Section on variance reduction; L-SVRG of Kovalev, Horváth, Richtárik 2020 on the
    finite sum ``F = Σ_m w_m (1/N) Σ_j f_{m,j}``, ``f_{m,j}(x) = f_m(v + S_{m,j}(x − v))``)::

        refresh (round 1, and the round after every heads):  w = x,  every client m gets
                  B_m ⊂ {0..N−1}, |B_m| = b (from (seed, t, "l_svrdsg/batch", m)) and returns
                  S_{m,j}ᵀ ∇f_m(v + S_{m,j}(w − v)) for j ∈ B_m;
                  h = Σ_m w_m (1/b) Σ_{j∈B_m} ∇f_{m,j}(w);   g = h
        otherwise: every m ∈ C_t gets j_m ~ U{0..N−1} (from (seed, t, "l_svrdsg/pick", m)) and
                  returns ∇f_{m,j}(x) − ∇f_{m,j}(w) = S_{m,j}ᵀ[∇f_m(y_x) − ∇f_m(y_w)];
                  g = h + Σ_{m∈C_t} a_m w_m [∇f_{m,j_m}(x) − ∇f_{m,j_m}(w)]
        x ← x − γ g;   with probability p (coin from (seed, t, "l_svrdsg/coin")) the next round
                  is a refresh.

    With ``b = N`` (``method.sketch_batch: null``) ``h = ∇F(w)`` and ``g`` is unbiased for
    ``∇F(x)``: linear convergence to the minimizer of ``F`` on strongly convex ``f``; with
    ``b < N`` to a neighbourhood that shrinks as ``b`` grows. A refresh round with a missing
    reply leaves the model unchanged and is repeated (``h`` from part of the clients would be
    biased). The difference round sends two sketched models (``2|U|`` values) and receives one
    (``|U|``); a refresh sends and receives ``b`` (``b|U|``).
    """

    def __init__(
        self, task: Task, sampler: Sampler, settings: RunSettings, method: Mapping
    ) -> None:
        super().__init__(task, sampler, settings, method)
        self.p = float(method["p"])
        self.b = int(method["sketch_batch"])
        self.w = np.array(self.x, copy=True)
        self.h: np.ndarray | None = None
        self.refresh_next = True
        self._refresh = True

    @staticmethod
    def resolve(method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        """Validated hyperparameters with ``auto`` resolved (module docstring)."""
        out, l_max = resolve_mast(method, task)
        n = out["num_sketches"]
        if n is None:
            raise ConfigError(
                "method.num_sketches must be an integer >= 1 for l_svrdsg (it runs over a "
                "finite set of sketches), got None"
            )
        b = method.get("sketch_batch")
        b = n if b is None else int_at_least("method.sketch_batch", b, 1)
        if b > n:
            raise ConfigError(
                f"method.sketch_batch={b} exceeds method.num_sketches={n}: use 1 <= b <= {n}"
            )
        out["sketch_batch"] = b
        out["p"] = probability("method.p", method.get("p", "auto"), 1.0 / n)
        auto = 1.0 / (6.0 * component_smoothness(task) * l_max)
        out["lr"] = positive_or_auto("method.lr", method.get("lr", "auto"), auto)
        return out

    def coin(self, rnd: int) -> bool:
        return bool(generator(self.settings.seed, rnd, "l_svrdsg/coin").random() < self.p)

    def cohort(self, rnd: int) -> Cohort:
        self._refresh = self.refresh_next
        return self.everyone() if self._refresh else self.sampler.sample(rnd)

    def fit_config(self, rnd: int, cohort: Cohort) -> Instructions:
        self._draws = {}
        out: Instructions = {}
        for pid in cohort.ids.tolist():
            if self._refresh:
                js = self.pick(rnd, pid, "l_svrdsg/batch", self.b)
                draws = [self.source.member(j, pid) for j in js]
                arrays = [d.sketched_values(self.x, self.v) for d in draws]
                config = {"kind": "ref", "sketches": ",".join(map(str, js))}
                self._draws[pid] = draws
            else:
                (j,) = self.pick(rnd, pid, "l_svrdsg/pick")
                d = self.source.member(j, pid)
                arrays = [d.sketched_values(self.x, self.v), d.sketched_values(self.w, self.v)]
                config = {"kind": "diff", "sketch": j}
                self._draws[pid] = [d]
            out[pid] = (arrays, config)
        return out

    def apply(self, rnd: int, cohort: Cohort, replies: list[Reply]) -> None:
        if self._refresh:
            if len(replies) < self.task.num_clients:
                log.warning("round %d: a refresh needs every client; repeated next round", rnd)
                return
            self.w = np.array(self.x, copy=True)
            self.h = self.reference_gradient(replies)
            g = self.h
        else:
            if not replies:
                return
            draws = {pid: d[0] for pid, d in self._draws.items()}
            assert self.h is not None
            g = svrg_estimate(self.h, sketched_sum(cohort, draws, replies, self.task.weights))
        self.x = dsgd_step(self.x, self.lr, g)
        self.refresh_next = self.coin(rnd)

    def reference_gradient(self, replies: list[Reply]) -> np.ndarray:
        """``h = Σ_m w_m (1/b) Σ_{j∈B_m} S_{m,j}ᵀ ∇f_m(y_{m,j})`` (all clients, pid order)."""
        h = np.zeros(self.task.dim)
        for r in replies:
            draws = self._draws[r.pid]
            part = sum(d.scatter(a) for d, a in zip(draws, r.arrays, strict=True))
            h += self.task.weights[r.pid] * part / len(draws)
        return h
