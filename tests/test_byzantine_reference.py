"""Byzantine-robust methods against hand-written loops of the papers' pseudo-code.

Each test runs fedsim (inline engine) for a few rounds and replays the same run with a loop
written here from the specifications (specs/byzantine.md §2(b), specs/building-blocks.md
§1.2–1.3) and the documented randomness contract: every draw comes from
``fedsim.rng.generator(seed, round, purpose, pid)``. The loops share no method code with fedsim:
the aggregators, bucketing, clipping and attacks below are written from the papers, and only the
task's data objects (client gradients, weights, x⁰, x*, the evaluation loss) come from fedsim.
Every row (the evaluation after round r) must match to rel 1e-10; each test also checks that the
comparison can fail (a plausible variant of the loop is far off) and that the branches it means to
exercise did occur.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from fedsim.build import task_of
from fedsim.rng import generator
from fedsim.runner import run
from tests.reference import assert_rows_match, deviation

REL = 1e-10
SMALL = (
    "engine=inline",
    "task=logreg_synthetic",
    "num_clients=8",
    "task.samples_per_client=30",
    "task.dim=5",
)


# --------------------------------------------------------------------------- building blocks
def clip(u: np.ndarray, lam: float | None) -> np.ndarray:
    """clip_λ(u) = min{1, λ/‖u‖}·u, clip(0) = 0; λ = None: no clipping."""
    if lam is None:
        return u
    norm = float(np.linalg.norm(u))
    if norm == 0.0:
        return u
    return min(1.0, lam / norm) * u


def coordinate_median(xs: np.ndarray) -> np.ndarray:
    return np.median(xs, axis=0)


def trimmed_mean(xs: np.ndarray, trim: int) -> np.ndarray:
    n = xs.shape[0]
    assert n > 2 * trim
    srt = np.sort(xs, axis=0)
    return srt[trim : n - trim].mean(axis=0)


def smoothed_weiszfeld(xs: np.ndarray, iters: int = 8, nu: float = 0.1) -> np.ndarray:
    """RFA: z ← 0; T times β_k = (1/n)/max(‖z − x_k‖, ν), z = Σβ_k x_k / Σβ_k."""
    n = xs.shape[0]
    z = np.zeros(xs.shape[1])
    for _ in range(iters):
        beta = np.array([(1.0 / n) / max(float(np.linalg.norm(z - x)), nu) for x in xs])
        z = (beta[:, None] * xs).sum(axis=0) / beta.sum()
    return z


def robust_aggregate(vectors: list[np.ndarray], agg: dict, seed: int, rnd: int, nbyz: int):
    """Bucketing (s > 1: one fresh ``(seed, rnd, "aggregator")`` permutation of the stack in
    ascending partition-id order, consecutive groups of s, bucket means) then the base rule."""
    xs = np.stack(vectors)
    s = int(agg.get("bucketing", 1) or 1)
    if s > 1:
        perm = generator(seed, rnd, "aggregator").permutation(xs.shape[0])
        shuffled = xs[perm]
        xs = np.stack([shuffled[j : j + s].mean(axis=0) for j in range(0, len(shuffled), s)])
    name = agg["name"]
    if name == "mean":
        return xs.mean(axis=0)
    if name == "cm":
        return coordinate_median(xs)
    if name == "tm":
        trim = agg.get("trim")
        return trimmed_mean(xs, nbyz if trim is None else int(trim))
    if name == "rfa":
        return smoothed_weiszfeld(xs, int(agg.get("iters", 8)), float(agg.get("nu", 0.1)))
    raise NotImplementedError(name)


def alie_z(n: int, b: int) -> float:
    s = math.floor(n / 2 + 1) - b
    return NormalDist().inv_cdf((n - b - s) / (n - b))


class Attacker:
    """Omniscient attacks (oracle = the cohort's honest vectors) and client-side bit flipping.

    ``vectors`` maps every cohort id to its honest vector; the result lists the received vectors in
    ascending partition-id order. ``shb_target`` is the shift-back vector of this round."""

    def __init__(self, cfg: dict):
        self.attack = cfg["attack"]
        self.name = self.attack["name"]
        self.ids = set(self.attack.get("ids") or [])
        self.n = int(cfg["num_clients"])
        self.shb_majority_rounds: list[int] = []
        self.tiny_honest_rounds: list[int] = []

    def __call__(self, rnd: int, vectors: dict[int, np.ndarray], shb_target=None):
        cohort = sorted(vectors)
        byz = [i for i in cohort if i in self.ids]
        honest = np.stack([vectors[i] for i in cohort if i not in self.ids])
        if self.name == "none" or not byz:
            return [vectors[i] for i in cohort]
        if self.name == "bit_flip":
            return [-vectors[i] if i in self.ids else vectors[i] for i in cohort]
        if self.name == "alie":
            if honest.shape[0] < 2:
                self.tiny_honest_rounds.append(rnd)
            mu, sigma = honest.mean(axis=0), honest.std(axis=0, ddof=1)
            forged = mu - alie_z(self.n, len(self.ids)) * sigma
        elif self.name == "ipm":
            forged = -float(self.attack.get("epsilon", 0.1)) * honest.mean(axis=0)
        elif self.name == "shb":
            if len(byz) > len(cohort) / 2:
                self.shb_majority_rounds.append(rnd)
                forged = shb_target
            else:
                forged = honest.mean(axis=0)
        else:
            raise NotImplementedError(self.name)
        return [forged if i in self.ids else vectors[i] for i in cohort]


def uniform_cohort(seed: int, rnd: int, num_clients: int, size: int) -> list[int]:
    return [
        int(i)
        for i in np.sort(
            generator(seed, rnd, "uniform").choice(num_clients, size=size, replace=False)
        )
    ]


def minibatch(seed: int, rnd: int, purpose: str, pid: int, n: int, b: int) -> np.ndarray:
    return np.sort(generator(seed, rnd, purpose, pid).choice(n, size=min(b, n), replace=False))


def scaled_grad(task, i: int, x: np.ndarray, idx=None) -> np.ndarray:
    """∇f̃_i with f̃_i = M w_i f_i."""
    return task.num_clients * task.weights[i] * task.clients[i].grad(x, idx)


def cohort_size(cfg: dict) -> int:
    if cfg["sampler"]["name"] == "full":
        return int(cfg["num_clients"])
    assert cfg["sampler"]["name"] == "uniform"
    return int(cfg["sampler"]["cohort_size"])


# --------------------------------------------------------------------------- reference loops
def marina_reference(cfg: dict, task, clip_mult="cfg", plus="cfg", agg="cfg", trace=None):
    """Byz-VR-MARINA-PP (Alg. 1; plus: Alg. 3) with g⁰ from a full round 1 at x⁰.

    Returns the model after each round (index 0: x⁰, 1: x⁰ again). The keyword arguments replace
    the configured value (to build deliberately wrong variants)."""
    m, seed, n = cfg["method"], int(cfg["seed"]), int(cfg["num_clients"])
    gamma, p, b = float(m["lr"]), float(m["p"]), int(m["batch_size"])
    alpha = m["clip_mult"] if clip_mult == "cfg" else clip_mult
    plus = bool(m["plus"]) if plus == "cfg" else plus
    agg = dict(cfg["aggregator"]) if agg == "cfg" else agg
    assert m["full_cohort_size"] == n  # Ĉ = M: a full round asks every client
    assert cfg["compressor"]["name"] == "identity"
    c = cohort_size(cfg)
    attacker = Attacker(cfg)
    nbyz = len(attacker.ids)
    trace = {} if trace is None else trace
    trace.update(full=[], diff=[], clipped=[], attacker=attacker)

    x0 = task.x0.copy()
    every = list(range(n))
    got = attacker(1, {i: scaled_grad(task, i, x0) for i in every}, shb_target=(x0 - x0) / gamma)
    g = robust_aggregate(got, agg, seed, 1, nbyz)
    x = x0
    models = [x0, x0]
    for r in range(2, int(cfg["num_rounds"]) + 1):
        if m["full_grad"] == "epoch":
            full = (r - 1) % int(m["epoch_rounds"]) == 0
        else:
            full = generator(seed, r, "marina/coin").random() < p
        x_new = x - gamma * g
        if full:
            trace["full"].append(r)
            honest = {i: scaled_grad(task, i, x_new) for i in every}
            got = attacker(r, honest, shb_target=(x_new - x0) / gamma)
            g = robust_aggregate(got, agg, seed, r, nbyz)
        else:
            trace["diff"].append(r)
            cohort = uniform_cohort(seed, r, n, c) if c < n else every
            honest = {}
            for i in cohort:
                idx = minibatch(seed, r, "marina/batch", i, task.clients[i].num_samples, b)
                honest[i] = scaled_grad(task, i, x_new, idx) - scaled_grad(task, i, x, idx)
            got = attacker(r, honest, shb_target=(x_new - x0) / gamma - g)
            lam = None if alpha is None else float(alpha) * float(np.linalg.norm(x_new - x))
            clipped = [clip(v, lam) for v in got]
            if lam is not None and any(float(np.linalg.norm(v)) > lam for v in got):
                trace["clipped"].append(r)
            if plus:
                g = g + np.stack(clipped).mean(axis=0)
            else:
                g = g + robust_aggregate(clipped, agg, seed, r, nbyz)
        x = x_new
        models.append(x)
    return models


def momentum_reference(cfg: dict, task, clip_mult="cfg", agg="cfg", trace=None, update_all=False):
    """Robust client-momentum SGD; with clip_mult: the heuristic (10) of arXiv 2311.14127.

    ``update_all``: every client updates its buffer every round (the authors' simulator), a
    deliberately wrong variant of the contract (only sampled clients update)."""
    m, seed, n = cfg["method"], int(cfg["seed"]), int(cfg["num_clients"])
    gamma, beta, b = float(m["lr"]), float(m["momentum"]), int(m["batch_size"])
    alpha = m["clip_mult"] if clip_mult == "cfg" else clip_mult
    agg = dict(cfg["aggregator"]) if agg == "cfg" else agg
    c = cohort_size(cfg)
    attacker = Attacker(cfg)
    nbyz = len(attacker.ids)
    trace = {} if trace is None else trace
    trace.update(clipped=0, attacker=attacker, sizes=[])

    buf: dict[int, np.ndarray] = {}
    x = task.x0.copy()
    models = [x]
    g = None
    for r in range(1, int(cfg["num_rounds"]) + 1):
        if alpha is not None and r == 1:
            cohort = list(range(n))
        else:
            cohort = uniform_cohort(seed, r, n, c) if c < n else list(range(n))
        trace["sizes"].append(len(cohort))
        for i in range(n) if update_all else cohort:
            idx = minibatch(seed, r, "momentum/batch", i, task.clients[i].num_samples, b)
            grad = scaled_grad(task, i, x, idx)
            buf[i] = grad if i not in buf else beta * buf[i] + grad
        got = attacker(r, {i: buf[i] for i in cohort})
        if alpha is None or r == 1:
            g = robust_aggregate(got, agg, seed, r, nbyz)
        else:
            lam = float(alpha) * float(np.linalg.norm(models[-1] - models[-2]))
            trace["clipped"] += sum(float(np.linalg.norm(v - g)) > lam for v in got)
            g = g + robust_aggregate([clip(v - g, lam) for v in got], agg, seed, r, nbyz)
        x = x - gamma * g
        models.append(x)
    return models


def fedavg_reference(cfg: dict, task, agg="cfg", attack_on=True):
    """FedAvg with K local GD steps on f_m and a robust aggregator of {M w_m Δ_m}."""
    m, seed, n = cfg["method"], int(cfg["seed"]), int(cfg["num_clients"])
    assert m["local_solver"] == "gd"
    eta_c, eta, steps = float(m["client_lr"]), float(m["server_lr"]), int(m["local_steps"])
    agg = dict(cfg["aggregator"]) if agg == "cfg" else agg
    c = cohort_size(cfg)
    attacker = Attacker(cfg)
    nbyz = len(attacker.ids)
    x = task.x0.copy()
    models = [x]
    for r in range(1, int(cfg["num_rounds"]) + 1):
        cohort = uniform_cohort(seed, r, n, c) if c < n else list(range(n))
        vectors = {}
        for i in cohort:
            y = x.copy()
            for _ in range(steps):
                y = y - eta_c * task.clients[i].grad(y)
            vectors[i] = n * task.weights[i] * (x - y)
        got = attacker(r, vectors) if attack_on else [vectors[i] for i in cohort]
        x = x - eta * robust_aggregate(got, agg, seed, r, nbyz)
        models.append(x)
    return models


# --------------------------------------------------------------------------- 1. sanity (spec §9)
def page_reference(cfg: dict, task):
    """VR-MARINA / PAGE with full participation and no attack: g ← ∇f(x) on coin rounds (the pooled
    objective's own gradient: no per-client scaling involved), g ← g + mean_i Δ_i otherwise."""
    m, seed, n = cfg["method"], int(cfg["seed"]), int(cfg["num_clients"])
    gamma, p, b = float(m["lr"]), float(m["p"]), int(m["batch_size"])
    x = task.x0.copy()
    g = task.full.grad(x)
    models, kinds = [x, x], []
    for r in range(2, int(cfg["num_rounds"]) + 1):
        x_new = x - gamma * g
        if generator(seed, r, "marina/coin").random() < p:
            kinds.append("full")
            g = task.full.grad(x_new)
        else:
            kinds.append("diff")
            deltas = []
            for i in range(n):
                ni = task.clients[i].num_samples
                idx = np.sort(
                    generator(seed, r, "marina/batch", i).choice(ni, size=min(b, ni), replace=False)
                )
                deltas.append(
                    n
                    * task.weights[i]
                    * (task.clients[i].grad(x_new, idx) - task.clients[i].grad(x, idx))
                )
            g = g + np.mean(deltas, axis=0)
        x = x_new
        models.append(x)
    return models, kinds


@pytest.mark.parametrize("partition", ["natural", "dirichlet"])
def test_sanity_full_participation_is_vr_marina(compose, partition):
    cfg = compose(
        *SMALL,
        f"partition={partition}",
        "method=byz_vr_marina_pp",
        "sampler=full",
        "method.clip_mult=null",
        "compressor=identity",
        "attack=none",
        "aggregator=mean",
        "method.p=0.4",
        "method.batch_size=8",
        "num_rounds=8",
        "seed=3",
    )
    task = task_of(cfg)
    rows = run(cfg, None)
    models, kinds = page_reference(cfg, task)
    assert "full" in kinds and "diff" in kinds
    assert_rows_match(rows, models, task)
    # not vacuous: the model moved, and every difference round mattered
    assert rows[-1]["dist_sq"] < 0.9 * rows[0]["dist_sq"]
    if partition == "dirichlet":
        assert np.ptp(task.sizes) > 0  # unequal sizes: the M w_i scaling is exercised
    # the generic reference loop agrees too
    assert deviation(rows, marina_reference(cfg, task), task) < REL
    # a loop that ignored the difference rounds (g kept) is far off
    frozen = [task.x0, task.x0]
    x, g = task.x0, task.full.grad(task.x0)
    for r in range(2, cfg["num_rounds"] + 1):
        x_new = x - cfg["method"]["lr"] * g
        if generator(cfg["seed"], r, "marina/coin").random() < cfg["method"]["p"]:
            g = task.full.grad(x_new)
        x = x_new
        frozen.append(x)
    assert deviation(rows, frozen, task) > 1e-6


# --------------------------------------------------------------------------- 2. Byz-VR-MARINA-PP
MARINA_PP = (
    *SMALL,
    "method=byz_vr_marina_pp",
    "sampler=uniform",
    "method.clip_mult=0.5",
    "aggregator=cm",
    "aggregator.bucketing=2",
    "method.p=0.3",
    "method.batch_size=8",
    "num_rounds=10",
)
BYZ = "attack.ids=[1,4,7]"  # after attack=...: choosing the group resets it


@pytest.mark.parametrize(
    "extra",
    [
        # ALIE's forged vector sits inside the honest spread: a small α makes the clip bite
        ("sampler.cohort_size=4", "attack=alie", "method.clip_mult=0.1", "seed=3"),
        ("sampler.cohort_size=4", "attack=shb", "seed=7"),
        (
            "sampler.cohort_size=4",
            "attack=alie",
            "method.clip_mult=0.1",
            "method.plus=true",
            "seed=3",
        ),
        ("sampler.cohort_size=4", "attack=shb", "method.plus=true", "seed=7"),
        # C = 5: three buckets (2, 2, 1), where CM is no mean and PP+ differs from PP
        ("sampler.cohort_size=5", "attack=alie", "method.clip_mult=0.1", "seed=3"),
        ("sampler.cohort_size=5", "attack=shb", "seed=3"),
        (
            "sampler.cohort_size=5",
            "attack=alie",
            "method.clip_mult=0.1",
            "method.plus=true",
            "seed=3",
        ),
        ("sampler.cohort_size=5", "attack=shb", "method.plus=true", "seed=3"),
        # unequal client sizes: the M w_i scaling of f̃_i
        (
            "sampler.cohort_size=4",
            "attack=alie",
            "method.clip_mult=0.1",
            "partition=dirichlet",
            "seed=3",
        ),
        ("sampler.cohort_size=5", "attack=shb", "partition=dirichlet", "seed=3"),
    ],
    ids=[
        "C4-alie",
        "C4-shb",
        "C4-alie-plus",
        "C4-shb-plus",
        "C5-alie",
        "C5-shb",
        "C5-alie-plus",
        "C5-shb-plus",
        "C4-alie-dirichlet",
        "C5-shb-dirichlet",
    ],
)
def test_byz_vr_marina_pp_matches_algorithm_1(compose, extra):
    cfg = compose(*MARINA_PP, *extra, BYZ)
    assert sorted(cfg["attack"]["ids"]) == [1, 4, 7]
    task = task_of(cfg)
    rows = run(cfg, None)
    trace: dict = {}
    models = marina_reference(cfg, task, trace=trace)
    last = cfg["num_rounds"]  # the estimate of the last round moves no recorded model
    assert trace["full"] and trace["diff"]  # both kinds of rounds occurred
    assert [r for r in trace["clipped"] if r < last]  # clipping was active
    attacker = trace["attacker"]
    if attacker.name == "shb":
        assert [r for r in attacker.shb_majority_rounds if r < last]  # shift-back was taken
    if attacker.name == "alie":
        assert not attacker.tiny_honest_rounds  # σ (ddof=1) is defined in every round
    # round 1 keeps x⁰, later rows follow the model
    assert rows[1]["loss"] == pytest.approx(rows[0]["loss"], rel=REL)
    assert_rows_match(rows, models, task)
    # not vacuous: clipping off, or no bucketing, is far off
    assert deviation(rows, marina_reference(cfg, task, clip_mult=None), task) > 1e-6
    no_bucket = dict(cfg["aggregator"], bucketing=1)
    assert deviation(rows, marina_reference(cfg, task, agg=no_bucket), task) > 1e-6
    if cfg["sampler"]["cohort_size"] == 5:
        # (with C = 4 and s = 2 the CM of two bucket means is their mean: PP+ = PP there)
        other = marina_reference(cfg, task, plus=not cfg["method"]["plus"])
        assert deviation(rows, other, task) > 1e-6


def test_byz_vr_marina_pp_epoch_schedule(compose):
    cfg = compose(
        *MARINA_PP,
        "sampler.cohort_size=4",
        "attack=alie",
        "method.clip_mult=0.1",
        BYZ,
        "method.full_grad=epoch",
        "method.epoch_rounds=3",
        "seed=3",
    )
    task = task_of(cfg)
    rows = run(cfg, None)
    trace: dict = {}
    models = marina_reference(cfg, task, trace=trace)
    assert trace["full"] == [4, 7, 10]
    assert not trace["attacker"].tiny_honest_rounds
    assert_rows_match(rows, models, task)


# --------------------------------------------------------------------------- 3. robust momentum
MOMENTUM = (
    *SMALL,
    "method=robust_momentum",
    "sampler=uniform",
    "sampler.cohort_size=4",
    "method.batch_size=8",
    "method.momentum=0.9",
    "method.lr=0.5",
    "num_rounds=6",
    "attack=bit_flip",
    "attack.ids=[1,4,7]",
)


@pytest.mark.parametrize("clip_mult", ["null", "0.5"])
@pytest.mark.parametrize(
    "agg",
    [
        ("aggregator=cm", "aggregator.bucketing=2"),
        ("aggregator=rfa", "aggregator.bucketing=2"),
        ("aggregator=rfa",),
        ("aggregator=cm", "aggregator.bucketing=2", "partition=dirichlet"),
    ],
    ids=["cm-b2", "rfa-b2", "rfa", "cm-b2-dirichlet"],
)
def test_robust_momentum_matches_reference(compose, clip_mult, agg):
    cfg = compose(*MOMENTUM, *agg, f"method.clip_mult={clip_mult}", "seed=1")
    assert sorted(cfg["attack"]["ids"]) == [1, 4, 7]
    task = task_of(cfg)
    rows = run(cfg, None)
    trace: dict = {}
    models = momentum_reference(cfg, task, trace=trace)
    if clip_mult == "null":
        assert trace["sizes"] == [4] * 6
    else:
        assert trace["sizes"] == [8] + [4] * 5
        assert trace["clipped"] > 0
    assert_rows_match(rows, models, task)
    # not vacuous: toggling the clip, an inactive clip on the same schedule, dropping the attack,
    # or updating every client's momentum every round, is far off
    other = None if clip_mult != "null" else 0.5
    assert deviation(rows, momentum_reference(cfg, task, clip_mult=other), task) > 1e-6
    if clip_mult != "null":
        assert deviation(rows, momentum_reference(cfg, task, clip_mult=1e12), task) > 1e-6
    assert deviation(rows, momentum_reference(cfg, task, update_all=True), task) > 1e-6
    honest_cfg = dict(cfg, attack={"name": "none", "ids": []})
    assert deviation(rows, momentum_reference(honest_cfg, task), task) > 1e-6


# --------------------------------------------------------------------------- 4. FedAvg + TM + IPM
@pytest.mark.parametrize("partition", ["natural", "dirichlet"])
def test_fedavg_trimmed_mean_under_ipm(compose, partition):
    """Per the contract the forged vector replaces a Byzantine client's M w_m Δ_m (the vector the
    aggregator sees) and is computed from the honest M w_m Δ_m of the cohort. With equal client
    sizes (natural) M w_m = 1 and the two readings coincide; dirichlet tells them apart."""
    cfg = compose(
        *SMALL,
        f"partition={partition}",
        "method=fedavg",
        "method.local_solver=gd",
        "method.local_steps=3",
        "method.server_lr=1.5",
        "sampler=uniform",
        "sampler.cohort_size=5",
        "aggregator=tm",
        "aggregator.trim=1",
        "attack=ipm",
        "attack.ids=[1,4,7]",
        "attack.epsilon=0.1",
        "num_rounds=6",
        "seed=2",
    )
    task = task_of(cfg)
    rows = run(cfg, None)
    models = fedavg_reference(cfg, task)
    byz = set(cfg["attack"]["ids"])
    assert sorted(byz) == [1, 4, 7]
    cohorts = [uniform_cohort(cfg["seed"], r, 8, 5) for r in range(1, 7)]
    assert all(byz & set(c) for c in cohorts)  # every round faces the attack
    if partition == "dirichlet":
        assert np.ptp(task.sizes) > 0
    assert_rows_match(rows, models, task)
    # not vacuous: no attack, or the plain mean, is far off
    assert deviation(rows, fedavg_reference(cfg, task, attack_on=False), task) > 1e-6
    assert deviation(rows, fedavg_reference(cfg, task, agg={"name": "mean"}), task) > 1e-6
