"""BiasedSGD (arXiv 2305.16296): the rule against the paper's loop, the authors' stepsizes, the
non-convex objective, the Biased ABC constants by Monte Carlo, convergence, bad input, and one
inline-vs-ray parity run.

The reference loops below share no code with fedsim: their own logistic and regularizer
gradients, probabilities, normalizations, Top-K, Rand-K, scaled sign and clipping. fedsim supplies
only the data (the clients' rows), x⁰, the keyed generators (the clients' coins
``(seed, round, "biased-sgd/coins", pid)``, Rand-K's ``(seed, round, "compressor", pid)``) and
the run.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from fedsim.blocks.compressors import build_compressor
from fedsim.blocks.estimators import (
    BiasedIndependentSampling,
    ClippedGradient,
    CompressedGradient,
    FiniteSum,
    UnbiasedIndependentSampling,
    inclusion_weights,
)
from fedsim.build import task_of
from fedsim.errors import ConfigError
from fedsim.rng import generator
from fedsim.runner import run
from fedsim.tasks.base import Objective
from fedsim.tasks.logreg import BinaryLogistic
from tests.test_local_training import drive

# the LIBSVM copies (a9a, w8a): $FEDSIM_DATA, else ../shared/data beside the project
DATA = os.environ.get("FEDSIM_DATA") or str(Path(__file__).resolve().parents[2] / "shared" / "data")


def paper_task(dataset: str = "a9a", rows: int = 300, clients: int = 1) -> tuple[str, ...]:
    """The paper's objective (λ = 1 non-convex regularizer, no L2, x⁰ ~ N(0, I)) on a slice."""
    return (
        "engine=inline",
        "method=biased_sgd",
        "task=logreg_libsvm",
        f"task.path={DATA}/{dataset}",
        f"task.max_samples={rows}",
        "task.nonconvex=1",
        "task.l2=0",
        "task.x0_scale=1",
        f"num_clients={clients}",
        "partition=iid",
        "sampler=full",
        "output.plot=false",
    )


# --------------------------------------------------------------------------- reference loop


def dense(a) -> np.ndarray:
    return a.toarray() if hasattr(a, "toarray") else np.asarray(a)


def ref_sample_grads(a: np.ndarray, y: np.ndarray, x: np.ndarray, lam: float) -> np.ndarray:
    """Rows ∇f_i(x) = −y_i a_i/(1 + exp(y_i a_iᵀx)) + λ·2x/(1 + x²)² (the authors' logreg_grads)."""
    s = -y / (1.0 + np.exp(y * (a @ x)))
    return a * s[:, None] + lam * 2.0 * x / (1.0 + x**2) ** 2


def ref_constants(rows: list[np.ndarray], lam: float) -> tuple[float, np.ndarray]:
    """L₀ = λ_max(AᵀA/(4m)) + 2λ and L_i = ‖a_i‖²/4 + 2λ of the pooled data."""
    a = np.vstack(rows)
    l0 = float(np.linalg.eigvalsh(a.T @ a / (4 * a.shape[0]))[-1]) + 2 * lam
    return l0, np.sum(a * a, axis=1) / 4 + 2 * lam


def ref_probabilities(big_l: np.ndarray, sampling: str, p: float, batch_prop: float) -> np.ndarray:
    if sampling == "uniform":
        return np.full(big_l.size, p)
    return np.minimum(batch_prop * big_l.size * big_l / big_l.sum(), 1.0)


def ref_lr(variant: str, l0: float, big_l: np.ndarray, probs: np.ndarray, k: int) -> float:
    """The authors' sgd-ind.py rules (factor 1)."""
    if variant == "biased":
        return 1.0 / math.sqrt(l0 * (big_l.max() / probs.min()) * k)
    a = np.max((1 - probs) * big_l / (probs * big_l.size))
    return min(1.0 / l0, 1.0 / math.sqrt(l0 * a * k))


def ref_compress(kind: str, v: np.ndarray, k: int, rng: np.random.Generator, tau: float):
    d = v.size
    if kind == "top_k":
        keep = np.argsort(-np.abs(v), kind="stable")[:k]
        out = np.zeros(d)
        out[keep] = v[keep]
        return out
    if kind == "biased_rand_k":
        keep = np.sort(rng.choice(d, size=k, replace=False))
        out = np.zeros(d)
        out[keep] = v[keep]
        return out
    if kind == "scaled_sign":
        return np.abs(v).sum() / d * np.where(v >= 0, 1.0, -1.0)
    if kind == "clip":
        return v * min(1.0, tau / np.linalg.norm(v))
    if kind == "full":
        return v
    raise AssertionError(kind)


def reference_run(task, seed: int, rounds: int, spec: dict, variant: str | None = None) -> list:
    """The paper's BiasedSGD loop x ← x − γ g(x) on the clients' data (``variant`` swaps one
    piece for a plausible wrong one)."""
    rows = [dense(c.a) for c in task.clients]
    labels = [np.asarray(c.y, dtype=float) for c in task.clients]
    lam, kind = 1.0, spec["kind"]
    l0, big_l = ref_constants(rows, lam)
    n_total = big_l.size
    p = spec.get("p", 1.0)
    probs = ref_probabilities(big_l, spec.get("sampling", "uniform"), p, p)
    if variant == "uncapped":
        probs = p * n_total * big_l / big_l.sum()
    cuts = np.cumsum([0] + [r.shape[0] for r in rows])
    if kind in ("biased", "unbiased"):
        which = {"biased": "unbiased", "unbiased": "biased"}[kind] if variant == "swap" else kind
        gamma = ref_lr(kind, l0, big_l, probs, spec["horizon"])
    else:
        gamma = spec["lr"]
    x = np.array(task.x0, dtype=float)
    path = []
    for rnd in range(1, rounds + 1):
        if kind in ("biased", "unbiased"):
            total, count = np.zeros_like(x), 0
            for m, (a, y) in enumerate(zip(rows, labels, strict=True)):
                p_m = probs[cuts[m] : cuts[m + 1]]
                u = generator(seed, rnd, "biased-sgd/coins", m).random(a.shape[0])
                keep = u < p_m
                grads = ref_sample_grads(a[keep], y[keep], x, lam)
                if which == "unbiased":
                    grads = grads / p_m[keep][:, None]
                total += grads.sum(axis=0)
                count += int(keep.sum())
            if which == "biased":
                g = total / count if count else np.zeros_like(x)
            else:
                g = total / n_total
        else:
            g = np.zeros_like(x)
            for m, (a, y) in enumerate(zip(rows, labels, strict=True)):
                v = ref_sample_grads(a, y, x, lam).mean(axis=0)
                rng = generator(seed, rnd, "compressor", m)
                g += a.shape[0] / n_total * ref_compress(kind, v, spec.get("k", 1), rng, 0.5)
        x = x - gamma * g
        path.append(x.copy())
    return path


RULES = {
    "biased-uniform-1": (
        {"kind": "biased", "p": 0.1},
        ("method.p=0.1",),
        1,
        "swap",
    ),
    "unbiased-uniform-3": (
        {"kind": "unbiased", "p": 0.2},
        ("method.estimator=ind_unbiased", "method.p=0.2"),
        3,
        "swap",
    ),
    "biased-importance-3": (
        {"kind": "biased", "p": 0.3, "sampling": "importance"},
        ("method.sampling=importance", "method.batch_prop=0.3"),
        3,
        "swap",
    ),
    "unbiased-importance-w8a": (
        {"kind": "unbiased", "p": 0.5, "sampling": "importance", "data": "w8a"},
        ("method.estimator=ind_unbiased", "method.sampling=importance", "method.batch_prop=0.5"),
        2,
        "uncapped",
    ),
    "top_k": (
        {"kind": "top_k", "k": 7, "lr": 0.3},
        ("method.estimator=compressed", "compressor=top_k", "compressor.k=7", "method.lr=0.3"),
        2,
        None,
    ),
    "biased_rand_k": (
        {"kind": "biased_rand_k", "k": 9, "lr": 0.3},
        (
            "method.estimator=compressed",
            "compressor=biased_rand_k",
            "compressor.k=9",
            "method.lr=0.3",
        ),
        2,
        None,
    ),
    "scaled_sign": (
        {"kind": "scaled_sign", "lr": 0.3},
        ("method.estimator=compressed", "compressor=scaled_sign", "method.lr=0.3"),
        1,
        None,
    ),
    "clip": (
        {"kind": "clip", "lr": 0.3},
        ("method.estimator=clip", "method.clip_level=0.5", "method.lr=0.3"),
        2,
        None,
    ),
    "full": ({"kind": "full", "lr": 0.3}, ("method.estimator=full", "method.lr=0.3"), 2, None),
}


@pytest.mark.parametrize("name", list(RULES))
def test_the_rule_matches_the_papers_loop(compose, name):
    spec, overrides, clients, wrong = RULES[name]
    rounds = 3
    spec = {**spec, "horizon": 5000}
    cfg = compose(
        *paper_task(spec.get("data", "a9a"), 301, clients),
        *overrides,
        f"num_rounds={rounds}",
        "method.horizon=5000",
        "seed=4",
    )
    xs: list[np.ndarray] = []
    drive(cfg, lambda rnd, strategy, nodes: xs.append(strategy.x.copy()))
    task = task_of(cfg)
    ref = reference_run(task, 4, rounds, spec)
    x0 = np.asarray(task.x0)
    for mine, theirs in zip(xs, ref, strict=True):
        assert np.linalg.norm(mine - theirs) <= 1e-10 * np.linalg.norm(theirs - x0)
    if wrong is not None:  # a plausible wrong loop misses fedsim: the comparison can fail
        bad = reference_run(task, 4, rounds, spec, variant=wrong)
        assert np.linalg.norm(xs[-1] - bad[-1]) > 1e-6 * np.linalg.norm(ref[-1] - x0)


def test_auto_stepsizes_are_the_authors_rules(compose):
    """γ = factor/√(L₀·max L_i/min p_i·K) (biased) and factor·min{1/L₀, 1/√(L₀AK)},
    A = max (1 − p_i)L_i/(p_i m) (unbiased), with the paper's L₀ and L_i computed here."""
    common = (*paper_task("w8a", 400, 2), "method.horizon=5000", "method.lr_factor=8")
    for est in ("ind_biased", "ind_unbiased"):
        for sampling in ("uniform", "importance"):
            check_auto_lr(compose, common, est, sampling)
    # horizon defaults to num_rounds
    cfg = compose(*paper_task("a9a", 200), "num_rounds=77", "method.p=0.5")
    task = task_of(cfg)
    l0, big_l = ref_constants([dense(c.a) for c in task.clients], 1.0)
    assert cfg["method"]["lr"] == pytest.approx(1 / math.sqrt(l0 * big_l.max() / 0.5 * 77))


def check_auto_lr(compose, common: tuple[str, ...], est: str, sampling: str) -> None:
    cfg = compose(
        *common,
        f"method.estimator={est}",
        f"method.sampling={sampling}",
        "method.p=0.05",
        "method.batch_prop=0.05",
    )
    task = task_of(cfg)
    l0, big_l = ref_constants([dense(c.a) for c in task.clients], 1.0)
    probs = ref_probabilities(big_l, sampling, 0.05, 0.05)
    want = 8 * ref_lr("biased" if est == "ind_biased" else "unbiased", l0, big_l, probs, 5000)
    assert cfg["method"]["lr"] == pytest.approx(want, rel=1e-10), (est, sampling)


# --------------------------------------------------------------------------- the objective


def test_the_nonconvex_objective_its_gradient_and_constants(compose):
    cfg = compose(*paper_task("w8a", 200))
    task = task_of(cfg)
    obj = task.full
    a, y = dense(obj.a), np.asarray(obj.y, dtype=float)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(task.dim)
    f = np.mean(np.log1p(np.exp(-y * (a @ x)))) + np.sum(x**2 / (1 + x**2))
    assert obj.loss(x) == pytest.approx(f, rel=1e-12)
    np.testing.assert_allclose(obj.grad(x), ref_sample_grads(a, y, x, 1.0).mean(0), rtol=1e-10)
    e = np.zeros(task.dim)
    for j in (0, 5, 17):
        e[:] = 0
        e[j] = 1e-6
        fd = (obj.loss(x + e) - obj.loss(x - e)) / 2e-6
        assert fd == pytest.approx(obj.grad(x)[j], rel=1e-5, abs=1e-9)
        hd = (obj.grad(x + e) - obj.grad(x - e)) / 2e-6
        np.testing.assert_allclose(obj.hessian(x)[j], hd, rtol=1e-5, atol=1e-8)
    l0, big_l = ref_constants([a], 1.0)
    assert obj.smoothness == pytest.approx(l0, rel=1e-10)
    np.testing.assert_allclose(obj.sample_smoothnesses, big_l, rtol=1e-12)
    assert task.mu == 0 and task.optimum() is None  # non-convex: no x*
    # ν = 0 is the plain L2 problem, with the same optimum-cache key as before
    plain = BinaryLogistic(a, y, 0.01)
    assert plain.loss(x) == pytest.approx(np.mean(np.log1p(np.exp(-y * (a @ x)))) + 0.005 * x @ x)
    from fedsim.tasks.logreg import fingerprint

    assert plain.fingerprint() == fingerprint("BinaryLogistic", plain.a, plain.y, 0.01)


# --------------------------------------------------------------------------- Biased ABC


class SampleQuadratics(Objective):
    """f_i(x) = (L_i/2)‖x − c_i‖², inf f_i = 0: the case where the ABC bounds are equalities."""

    def __init__(self, big_l: np.ndarray, centres: np.ndarray) -> None:
        self.big_l, self.c = np.asarray(big_l, float), np.asarray(centres, float)
        self.num_samples = self.c.shape[0]
        self.sample_smoothnesses = self.big_l
        self.smoothness = float(self.big_l.mean())
        self.sample_smoothness = float(self.big_l.max())

    def loss(self, x, idx=None):
        idx = np.arange(self.num_samples) if idx is None else idx
        return float(np.mean(self.big_l[idx] / 2 * np.sum((x - self.c[idx]) ** 2, axis=1)))

    def grad(self, x, idx=None):
        idx = np.arange(self.num_samples) if idx is None else idx
        return np.mean(self.big_l[idx, None] * (x - self.c[idx]), axis=0)


def moments(draw, grad: np.ndarray, n: int) -> tuple[float, float, float, float]:
    """Monte Carlo ⟨∇f, E g⟩ and E‖g‖² over ``n`` draws, each with its standard error."""
    gs = np.array([draw() for _ in range(n)])
    dots, sq = gs @ grad, np.sum(gs * gs, axis=1)
    return dots.mean(), dots.std() / math.sqrt(n), sq.mean(), sq.std() / math.sqrt(n)


class Pattern:
    """A stand-in generator whose ``random(n)`` selects a given subset (``u = 0`` inside it,
    ``u = 1`` outside, so ``u < p_i`` exactly for its members when ``0 < p_i ≤ 1``)."""

    def __init__(self, members: np.ndarray) -> None:
        self.u = np.where(members, 0.0, 1.0)

    def random(self, n: int) -> np.ndarray:
        assert n == self.u.size
        return self.u


def exact_moments(est, obj, x: np.ndarray, p: np.ndarray) -> tuple[float, float, float, float]:
    """⟨∇f, E g⟩ and E‖g‖² of an independent-sampling estimator, by enumerating every subset
    (zero standard errors)."""
    grad, m = obj.grad(x), obj.num_samples
    dot = sq = 0.0
    for bits in range(2**m):
        members = np.array([(bits >> i) & 1 for i in range(m)], dtype=bool)
        weight = float(np.prod(np.where(members, p, 1.0 - p)))
        g = est(obj, x, Pattern(members), p)
        dot, sq = dot + weight * float(g @ grad), sq + weight * float(g @ g)
    return dot, 0.0, sq, 0.0


def check_abc(abc, measured, obj, x) -> tuple[float, float]:
    """Assert (i) and (ii) at x (4 standard errors of slack); return measured/stated ratios.
    ``f^inf`` cancels: ``2A(f − f^inf) + C = 2A(f − floor)`` with ``C = 2A(f^inf − floor)``,
    so the test's ``f_inf = 0 = floor`` states the same bound."""
    grad = obj.grad(x)
    gsq = float(grad @ grad)
    dot, dot_se, sq, sq_se = measured
    low = abc.first_moment_floor(gsq)
    high = abc.second_moment_ceiling(obj.loss(x), gsq)
    assert dot >= low - 4 * dot_se - 1e-12 * abs(low), (dot, low)
    assert sq <= high + 4 * sq_se + 1e-12 * high, (sq, high)
    return (dot / low if low > 0 else math.nan), sq / high


def logistic_problem(rows: int = 10):
    """The paper's objective on ``rows`` rows of w8a (unequal ‖a_i‖: unequal importance p_i)."""
    from fedsim.tasks.data import load_libsvm

    a, y = load_libsvm(f"{DATA}/w8a", None, 60)
    a = dense(a)
    keep = np.flatnonzero(np.sum(a, axis=1) > 0)[:rows]
    obj = BinaryLogistic(a[keep], y[keep], 0.0, nonconvex=1.0)
    spread = obj.sample_grad_bounds + obj.sample_grad_bounds.mean()
    bound = float(obj.sample_grad_bounds.mean() + 3 * math.sqrt(3) / 8 * math.sqrt(obj.dim))
    problem = FiniteSum(obj.smoothness, obj.sample_smoothnesses, 0.0, 0.0, spread, bound)
    return obj, problem


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("sampling", ["uniform", "importance"])
def test_independent_sampling_satisfies_biased_abc(estimator, sampling):
    est = BiasedIndependentSampling() if estimator == "biased" else UnbiasedIndependentSampling()
    obj, problem = logistic_problem()
    m = obj.num_samples
    p = (
        np.full(m, 0.3)
        if sampling == "uniform"
        else np.minimum(0.3 * m * problem.L / problem.L.sum(), 1.0)
    )
    assert sampling == "uniform" or np.ptp(p) > 0.1
    abc = est.abc(problem, p)
    rng = np.random.default_rng(0)
    for scale in (0.3, 1.0, 3.0):  # Monte Carlo at points near and far from 0
        x = scale * np.random.default_rng(int(10 * scale)).standard_normal(obj.dim)
        draws = moments(lambda x=x: est(obj, x, rng, p), obj.grad(x), 3000)
        check_abc(abc, draws, obj, x)
    x = np.random.default_rng(5).standard_normal(obj.dim)  # and exactly, every subset
    check_abc(abc, exact_moments(est, obj, x, p), obj, x)
    # equality cases: equal L_i and p_i; one centre (biased) or any centres (unbiased)
    d, m = 3, 6
    centres = np.zeros((m, d)) if estimator == "biased" else rng.standard_normal((m, d))
    quad = SampleQuadratics(np.full(m, 2.0), centres)
    pq = np.full(m, 0.3)
    tight = est.abc(FiniteSum(2.0, quad.big_l, 0.0), pq)
    x = np.array([1.0, -2.0, 0.5])
    first, second = check_abc(tight, exact_moments(est, quad, x, pq), quad, x)
    assert second == pytest.approx(1.0, rel=1e-9), second
    if estimator == "biased":
        assert first == pytest.approx(1.0, rel=1e-9), first
        assert tight.b == pytest.approx(1 - 0.7**6) and tight.A == pytest.approx(2 * tight.b)
    else:
        assert (tight.A, tight.B, tight.b, tight.c) == pytest.approx((0.7 * 2 / (0.3 * 6), 1, 1, 0))
    draws = moments(lambda: est(quad, x, rng, pq), quad.grad(x), 4000)
    assert check_abc(tight, draws, quad, x)[1] > 0.95  # Monte Carlo sees it too


def test_inclusion_weights_are_e_chi_over_batch():
    rng = np.random.default_rng(1)
    p = np.array([0.9, 0.05, 0.3, 0.6, 1.0, 0.2, 0.01])
    draws = rng.random((200000, p.size)) < p
    size = draws.sum(axis=1, keepdims=True)
    mc = np.mean(np.where(size > 0, draws / np.maximum(size, 1), 0.0), axis=0)
    np.testing.assert_allclose(inclusion_weights(p), mc, atol=4e-3)
    assert inclusion_weights(np.full(5, 0.2)) == pytest.approx(np.full(5, (1 - 0.8**5) / 5))
    # an empty draw gives g = 0 for the biased estimator, a finite zero for both
    quad = SampleQuadratics(np.ones(3), np.zeros((3, 2)))
    nobody = Pattern(np.zeros(3, dtype=bool))
    for est in (BiasedIndependentSampling(), UnbiasedIndependentSampling()):
        np.testing.assert_array_equal(est(quad, np.ones(2), nobody, np.full(3, 0.5)), 0.0)


@pytest.mark.parametrize("name", ["top_k", "biased_rand_k", "scaled_sign", "clip", "rand_k"])
def test_compressors_and_clipping_satisfy_biased_abc(name):
    d = 8
    quad = SampleQuadratics(np.ones(1), np.zeros((1, d)))  # f = ½‖x‖², ∇f = x
    if name == "clip":
        est = ClippedGradient(1.5)
    else:
        cfg = {"name": name} if name == "scaled_sign" else {"name": name, "k": 3}
        est = CompressedGradient(build_compressor(cfg, d), d)
    rng = np.random.default_rng(2)
    n = 3000 if "rand_k" in name else 1  # the others are deterministic
    for _ in range(3):  # anywhere (clip: within its gradient bound)
        x = rng.standard_normal(d) * 2
        g_bound = float(np.linalg.norm(x)) * 1.5
        abc = est.abc(FiniteSum(1.0, quad.big_l, 0.0, grad_bound=g_bound))
        check_abc(abc, moments(lambda x=x: est(quad, x, rng), quad.grad(x), n), quad, x)
    # the equality cases of the class docstring
    flat, sparse = np.ones(d), np.eye(d)[2] * 3.0
    first_at, second_at = {
        "top_k": (flat, sparse),
        "biased_rand_k": (flat, flat),
        "scaled_sign": (sparse, flat),
        "clip": (flat * 2.0, flat * 0.3),
        "rand_k": (flat, flat),
    }[name]
    for x, which in ((first_at, 0), (second_at, 1)):
        problem = FiniteSum(1.0, quad.big_l, 0.0, grad_bound=float(np.linalg.norm(x)))
        draws = moments(lambda x=x: est(quad, x, rng), quad.grad(x), max(1, n // 10))
        ratios = check_abc(est.abc(problem), draws, quad, x)
        assert ratios[which] == pytest.approx(1.0, rel=1e-9), (which, ratios)
    stated = est.abc(FiniteSum(1.0, quad.big_l, 0.0, grad_bound=10.0))
    want = {"top_k": (3 / 8, 1), "biased_rand_k": (3 / 8, 3 / 8), "scaled_sign": (1 / 8, 1),
            "clip": (0.15, 1), "rand_k": (1, 8 / 3)}[name]  # fmt: skip
    assert (stated.b, stated.B) == pytest.approx(want)


# --------------------------------------------------------------------------- convergence


def test_biased_sgd_converges_at_the_theory_stepsize_faster_for_larger_p(compose):
    """The paper's objective on 2000 rows of a9a, 4000 iterations at factor 1 (K = 4000)."""
    drops = {}
    for p in (0.1, 0.5):
        cfg = compose(*paper_task("a9a", 2000), f"method.p={p}", "num_rounds=4000")
        rows = run({**cfg, "eval_every": 1000}, None)
        g = np.array([r["grad_norm_sq"] for r in rows])
        assert np.all(np.isfinite(g))
        drops[p] = g[0] / g[-1]
    assert drops[0.5] > 1e3, drops
    assert drops[0.5] > 10 * drops[0.1] > 10, drops


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("method.p=0",), "method.p must be a probability in (0, 1]"),
        (("method.p=1.5",), "method.p must be a probability in (0, 1]"),
        (("method.sampling=importance", "method.batch_prop=2"), "method.batch_prop must be"),
        (("method.estimator=sgd",), "unknown method.estimator 'sgd'; valid choices"),
        (("method.sampling=weighted",), "unknown method.sampling 'weighted'"),
        (("sampler=uniform", "sampler.cohort_size=1"), "use sampler=full"),
        (("compressor=top_k",), "does not use compressor='top_k'"),
        (("method.estimator=compressed", "compressor=sign"), "has no Biased ABC constants"),
        (("method.estimator=clip", "method.clip_level=0"), "method.clip_level must be"),
        (("method.lr_factor=-1",), "method.lr_factor must be"),
        (("method.lr=0",), "method.lr must be a positive"),
        (("method.horizon=0",), "method.horizon must be an integer >= 1"),
        (("task.nonconvex=0", "method.sampling=importance"), "p_"),  # a zero row: L_i = 0
    ],
)
def test_bad_input_is_refused_at_config_time(compose, overrides, message):
    with pytest.raises(ConfigError) as err:
        compose(*paper_task("w8a", 300), *overrides)
    assert message in str(err.value)
    if "p_" == message:
        assert "outside (0, 1]" in str(err.value)


def test_importance_needs_per_sample_constants(compose):
    with pytest.raises(ConfigError, match="per-sample smoothness constants"):
        compose("engine=inline", "method=biased_sgd", "task=quadratic", "num_clients=3",
                "sampler=full", "method.sampling=importance")  # fmt: skip


# --------------------------------------------------------------------------- engines


@pytest.mark.xdist_group("ray-engines")
def test_inline_and_ray_agree(compose, tmp_path):
    from fedsim.engines.ray import shared_ray

    common = ("method=biased_sgd", "task=logreg_synthetic", "num_clients=2", "sampler=full",
              "method.estimator=ind_unbiased", "method.p=0.3", "num_rounds=3",
              "output.plot=false")  # fmt: skip
    inline = run(compose(*common, "engine=inline"), tmp_path / "inline")
    with shared_ray():
        ray = run(compose(*common, "engine=ray", "engine.round_timeout=120"), tmp_path / "ray")
    assert len(inline) == len(ray) == 4
    for column in ("loss", "grad_norm_sq", "up_bits", "grad_evals"):
        a = np.array([r[column] for r in inline], dtype=float)
        b = np.array([r[column] for r in ray], dtype=float)
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=0, err_msg=column)
    assert inline[-1]["loss"] != inline[0]["loss"]
