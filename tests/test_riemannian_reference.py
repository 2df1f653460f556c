"""The Riemannian methods against hand-written loops of their pseudo-code.

Each test runs fedsim (inline engine) for a few rounds and replays the same run with a loop
written here from the algorithms (R-GD; R-SGD, Bonnabel 2013; R-SVRG, Zhang–Reddi–Sra 2016,
Alg. 1; R-LSVRG, R-PAGE and R-MARINA, arXiv 2403.06677 with L-SVRG, PAGE and MARINA's
structure) and the randomness contract: every draw comes from
``fedsim.rng.generator(seed, round, purpose, pid)``. The geometry below (sphere and SPD
exponential maps, retractions, parallel and projection transports, Riemannian gradients,
distances) is written here with numpy/scipy and shares no code with
``fedsim.blocks.manifolds``; fedsim supplies only the data objects (the clients' Euclidean
gradients, sizes, x⁰, x*, the evaluation loss) and the resolved hyperparameters. Every row (the
evaluation after round r) must match to rel 1e-10 in loss and dist_sq, and each test also checks
that plausible wrong variants of the loop miss by more than 1e-6 and that the branches it means
to exercise (coins, full and difference rounds) occurred.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg as sla

from fedsim.build import task_of
from fedsim.rng import generator
from fedsim.runner import run

REL = 1e-10
FAR = 1e-6

SPHERE = (
    "engine=inline",
    "task=pca_sphere",
    "task.dim=6",
    "task.samples_per_client=12",
    "num_clients=6",
)
SPD = (
    "engine=inline",
    "task=karcher_spd",
    "task.n=3",
    "task.samples_per_client=4",
    "num_clients=6",
)
EUCLID = (
    "engine=inline",
    "task=logreg_synthetic",
    "task.dim=5",
    "task.samples_per_client=15",
    "num_clients=6",
)
# unequal client sizes everywhere, so that f̃_m = M w_m f_m (not f_m) is what the loops must use
TASKS = {
    kind: (*t, "partition=dirichlet")
    for kind, t in (("sphere", SPHERE), ("spd", SPD), ("euclidean", EUCLID))
}
COHORT3 = ("sampler=uniform", "sampler.cohort_size=3")


# --------------------------------------------------------------------------- geometry by hand
def sym(a: np.ndarray) -> np.ndarray:
    return 0.5 * (a + a.T)


class Geometry:
    """The three geometries, written from their textbook formulas."""

    def __init__(self, kind: str, dim: int, retraction: str = "exp", transport: str = "parallel"):
        self.kind, self.dim = kind, dim
        self.n = math.isqrt(dim)
        self.retraction, self.transport_kind = retraction, transport

    # --- the sphere S^{d-1} ⊂ ℝ^d
    @staticmethod
    def _sphere_exp(x, v):
        t = float(np.sqrt(v @ v))
        if t == 0.0:
            return x.copy()
        return math.cos(t) * x + math.sin(t) * (v / t)

    @staticmethod
    def _sphere_transport(x, y, v):
        """Parallel transport along the great circle x → y: with u the unit initial direction
        and τ the angle, v − (uᵀv)[(1 − cos τ) u + sin τ x]."""
        w = y - (x @ y) * x
        s = float(np.sqrt(w @ w))
        if s == 0.0:
            return v.copy()
        u, tau = w / s, math.atan2(s, float(x @ y))
        return v - (u @ v) * ((1.0 - math.cos(tau)) * u + math.sin(tau) * x)

    # --- SPD(n), affine-invariant metric
    def _mat(self, x):
        return np.asarray(x, dtype=float).reshape(self.n, self.n)

    @staticmethod
    def _roots(a):
        r = np.real(sla.sqrtm(a))
        return sym(r), sym(np.linalg.inv(r))

    def _spd_exp(self, x, v):
        a, b = self._mat(x), self._mat(v)
        r, ri = self._roots(a)
        return sym(r @ sla.expm(sym(ri @ b @ ri)) @ r).reshape(-1)

    def _spd_transport(self, x, y, v):
        """Γ_{X→Y}(V) = E V Eᵀ with E = (Y X⁻¹)^{1/2}, computed as
        X^{1/2} (X^{-1/2} Y X^{-1/2})^{1/2} X^{-1/2}."""
        a, b = self._mat(x), self._mat(y)
        r, ri = self._roots(a)
        e = r @ np.real(sla.sqrtm(sym(ri @ b @ ri))) @ ri
        return sym(e @ self._mat(v) @ e.T).reshape(-1)

    # --- what the methods use
    def rgrad(self, x, egrad):
        if self.kind == "sphere":
            return egrad - (x @ egrad) * x
        if self.kind == "spd":
            a = self._mat(x)
            return (a @ sym(self._mat(egrad)) @ a).reshape(-1)
        return egrad

    def proj(self, x, v):
        if self.kind == "sphere":
            return v - (x @ v) * x
        if self.kind == "spd":
            return sym(self._mat(v)).reshape(-1)
        return v

    def step(self, x, v):
        """R_x(v), then back onto the manifold (renormalize / symmetrize)."""
        if self.kind == "sphere":
            y = self._sphere_exp(x, v) if self.retraction == "exp" else x + v
            return y / np.sqrt(y @ y)
        if self.kind == "spd":
            if self.retraction == "exp":
                return self._spd_exp(x, v)
            a, b = self._mat(x), self._mat(v)
            return sym(a + b + 0.5 * b @ np.linalg.solve(a, b)).reshape(-1)
        return x + v

    def transport(self, x, y, v):
        if self.kind == "euclidean":
            return v
        if self.transport_kind == "projection":
            return self.proj(y, v)
        if self.kind == "sphere":
            return self._sphere_transport(x, y, v)
        return self._spd_transport(x, y, v)

    def dist_sq(self, x, x_star):
        if self.kind == "sphere":  # to the nearer of ±x*
            t = math.acos(min(1.0, abs(float(x @ x_star))))
            return t * t
        if self.kind == "spd":
            _, ri = self._roots(self._mat(x))
            lam = np.linalg.eigvalsh(sym(ri @ self._mat(x_star) @ ri))
            return float(np.sum(np.log(lam) ** 2))
        return float(np.sum((x - x_star) ** 2))


def geometry_of(kind: str, cfg: dict, task) -> Geometry:
    m = cfg["method"]
    return Geometry(kind, task.dim, m.get("retraction", "exp"), m.get("transport", "parallel"))


# --------------------------------------------------------------------------- the pieces
def uniform_cohort(cfg: dict, rnd: int) -> list[int]:
    n, s = int(cfg["num_clients"]), cfg["sampler"]
    if s["name"] == "full":
        return list(range(n))
    ids = generator(int(cfg["seed"]), rnd, "uniform").choice(
        n, size=int(s["cohort_size"]), replace=False
    )
    return sorted(int(i) for i in ids)


def coin(cfg: dict, rnd: int, purpose: str, p: float | None = None) -> bool:
    p = float(cfg["method"]["p"]) if p is None else p
    return bool(generator(int(cfg["seed"]), rnd, purpose).random() < p)


class Grads:
    """grad f̃_m(x) = M w_m · rgrad(x, ∇f_m(x)), counting nothing, sharing nothing with fedsim."""

    def __init__(self, task, geo: Geometry, euclidean: bool = False, scaled: bool = True):
        self.task, self.geo, self.euclidean, self.scaled = task, geo, euclidean, scaled

    def __call__(self, m: int, x: np.ndarray, idx=None) -> np.ndarray:
        t = self.task
        egrad = t.clients[m].grad(x, idx)
        g = egrad if self.euclidean else self.geo.rgrad(x, egrad)
        return t.num_clients * t.weights[m] * g if self.scaled else g


def mean(vectors) -> np.ndarray:
    return np.mean(np.stack(list(vectors)), axis=0)


# --------------------------------------------------------------------------- reference loops
def rgd_loop(cfg, task, geo, grads, rounds=None):
    eta = float(cfg["method"]["lr"])
    n = int(cfg["num_clients"])
    x = task.x0.copy()
    models = [x]
    for _ in range(int(rounds or cfg["num_rounds"])):
        x = geo.step(x, -eta * mean(grads(m, x) for m in range(n)))
        models.append(x)
    return models


def rsgd_loop(cfg, task, geo, grads, cohort=uniform_cohort):
    eta, b = float(cfg["method"]["lr"]), cfg["method"]["batch_size"]
    seed = int(cfg["seed"])
    x = task.x0.copy()
    models = [x]
    for r in range(1, int(cfg["num_rounds"]) + 1):
        vs = []
        for m in cohort(cfg, r):
            idx = None
            if b is not None:
                nm = task.clients[m].num_samples
                idx = np.sort(
                    generator(seed, r, "rsgd/batch", m).choice(nm, size=min(b, nm), replace=False)
                )
            vs.append(grads(m, x, idx))
        x = geo.step(x, -eta * mean(vs))
        models.append(x)
    return models


def rsvrg_loop(cfg, task, geo, grads, sign=1.0, trace=None):
    """Zhang–Reddi–Sra Alg. 1, Option I: epochs of m rounds; the first is the snapshot
    (w = x, G = grad f(w)) with the inner step t = 0 (estimate G), then t = 1..m−1 with
    v = mean_{i∈S}[grad f̃_i(x) − Γ_w^x(grad f̃_i(w) − G)]."""
    eta, steps, n = (
        float(cfg["method"]["lr"]),
        int(cfg["method"]["inner_steps"]),
        int(cfg["num_clients"]),
    )
    trace = [] if trace is None else trace
    x = task.x0.copy()
    w = big_g = None
    models = [x]
    for r in range(1, int(cfg["num_rounds"]) + 1):
        if (r - 1) % steps == 0:
            trace.append("full")
            w, big_g = x, mean(grads(m, x) for m in range(n))
            v = big_g
        else:
            trace.append("inner")
            v = mean(
                grads(i, x) - sign * geo.transport(w, x, grads(i, w) - big_g)
                for i in uniform_cohort(cfg, r)
            )
        x = geo.step(x, -eta * v)
        models.append(x)
    return models


def rlsvrg_loop(cfg, task, geo, grads, refresh=True, new_point=False, trace=None):
    """L-SVRG on the manifold (w^{k+1} = x^k with probability p; grad f(w) kept): round 1 the
    full pass at x⁰ = w⁰; round k+1 draws c_k from (seed, k+1, "rlsvrg/coin")."""
    eta, n = float(cfg["method"]["lr"]), int(cfg["num_clients"])
    trace = [] if trace is None else trace
    x = task.x0.copy()
    w, big_g = x, mean(grads(m, x) for m in range(n))
    x = geo.step(x, -eta * big_g)
    models = [task.x0.copy(), x]
    for r in range(2, int(cfg["num_rounds"]) + 1):
        c = coin(cfg, r, "rlsvrg/coin")
        trace.append("refresh" if c else "keep")
        g = mean(
            grads(i, x) - geo.transport(w, x, grads(i, w) - big_g) for i in uniform_cohort(cfg, r)
        )
        x_new = geo.step(x, -eta * g)
        if c and refresh:
            w = x_new if new_point else x
            big_g = mean(grads(m, w) for m in range(n))
        x = x_new
        models.append(x)
    return models


def page_loop(
    cfg, task, geo, grads, purpose, compress=None, reproject=True, transport=True, trace=None
):
    """PAGE/MARINA on the manifold: g⁰ = grad f(x⁰); then with probability p the full gradient,
    else Γ g + mean_{S}[grad f̃_i(x^k) − Γ grad f̃_i(x^{k−1})] (compressed and re-projected for
    MARINA); x^{k+1} = R_{x^k}(−η g^k)."""
    eta, n = float(cfg["method"]["lr"]), int(cfg["num_clients"])
    seed = int(cfg["seed"])
    trace = [] if trace is None else trace
    move = geo.transport if transport else (lambda a, b, v: v)
    x = task.x0.copy()
    g = mean(grads(m, x) for m in range(n))
    x_prev, x = x, geo.step(x, -eta * g)
    models = [task.x0.copy(), x]
    for r in range(2, int(cfg["num_rounds"]) + 1):
        if coin(cfg, r, purpose):
            trace.append("full")
            g = mean(grads(m, x) for m in range(n))
        else:
            trace.append("diff")
            ids = list(range(n)) if compress else uniform_cohort(cfg, r)
            vs = []
            for i in ids:
                d = grads(i, x) - move(x_prev, x, grads(i, x_prev))
                if compress:
                    d = compress(d, generator(seed, r, "compressor", i))
                    if reproject:
                        d = geo.proj(x, d)
                vs.append(d)
            g = move(x_prev, x, g) + mean(vs)
        x_prev, x = x, geo.step(x, -eta * g)
        models.append(x)
    return models


def rand_k(k: int):
    """Rand-K with a shared seed: K distinct coordinates drawn by rng.choice, scaled by d/K."""

    def q(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        d = v.size
        idx = np.sort(rng.choice(d, size=k, replace=False))
        out = np.zeros(d)
        out[idx] = v[idx] * (d / k)
        return out

    return q


# --------------------------------------------------------------------------- comparison
def deviation(rows, models, task, geo) -> float:
    x_star, _ = task.optimum()
    assert len(rows) == len(models)
    worst = 0.0
    for row, x in zip(rows, models, strict=True):
        for key, ref in (("loss", task.full.loss(x)), ("dist_sq", geo.dist_sq(x, x_star))):
            worst = max(worst, abs(row[key] - ref) / max(abs(ref), 1e-300))
    return worst


def check(rows, models, task, geo, variants: dict | None = None) -> None:
    assert [r["round"] for r in rows] == list(range(len(models)))
    dev = deviation(rows, models, task, geo)
    assert dev <= REL, f"fedsim differs from the loop by rel {dev:.1e}"
    for name, wrong in (variants or {}).items():
        off = deviation(rows, wrong, task, geo)
        print(f"wrong variant {name!r}: rel {off:.1e}")
        assert off > FAR, f"the wrong variant {name!r} matches fedsim too (rel {off:.1e})"


def setup(compose, kind: str, *overrides: str):
    cfg = compose(*TASKS[kind], *overrides)
    task = task_of(cfg)
    assert np.ptp(task.sizes) > 0  # unequal clients: the weights w_m matter
    geo = geometry_of(kind, cfg, task)
    return cfg, task, geo, Grads(task, geo)


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("kind", ["sphere", "spd"])
def test_rgd_matches_riemannian_gradient_descent(compose, kind):
    cfg, task, geo, grads = setup(compose, kind, "method=rgd", "sampler=full", "num_rounds=3")
    rows = run(cfg, None)
    check(
        rows,
        rgd_loop(cfg, task, geo, grads),
        task,
        geo,
        {
            "Euclidean gradient": rgd_loop(cfg, task, geo, Grads(task, geo, euclidean=True)),
            "clients on f_m, not M w_m f_m": rgd_loop(
                cfg, task, geo, Grads(task, geo, scaled=False)
            ),
        },
    )


@pytest.mark.parametrize("kind", ["sphere", "spd"])
def test_rgd_with_the_retraction(compose, kind):
    cfg, task, geo, grads = setup(
        compose, kind, "method=rgd", "sampler=full", "method.retraction=retraction", "num_rounds=3"
    )
    rows = run(cfg, None)
    exp = Geometry(kind, task.dim)
    check(
        rows, rgd_loop(cfg, task, geo, grads), task, geo, {"Exp": rgd_loop(cfg, task, exp, grads)}
    )


@pytest.mark.parametrize("kind", ["sphere", "spd"])
@pytest.mark.parametrize("batch", [None, 3])
def test_rsgd_matches_bonnabel(compose, kind, batch):
    extra = () if batch is None else (f"method.batch_size={batch}",)
    cfg, task, geo, grads = setup(compose, kind, "method=rsgd", *COHORT3, *extra, "num_rounds=3")
    rows = run(cfg, None)
    full = lambda c, r: list(range(int(c["num_clients"])))  # noqa: E731
    check(
        rows,
        rsgd_loop(cfg, task, geo, grads),
        task,
        geo,
        {"every client": rsgd_loop(cfg, task, geo, grads, cohort=full)},
    )


@pytest.mark.parametrize("kind", ["sphere", "spd", "euclidean"])
def test_rsvrg_matches_zhang_reddi_sra(compose, kind):
    cfg, task, geo, grads = setup(
        compose,
        kind,
        "method=rsvrg",
        *COHORT3,
        "method.inner_steps=2",
        "method.lr=0.1",
        "num_rounds=4",
    )
    rows = run(cfg, None)
    trace: list[str] = []
    models = rsvrg_loop(cfg, task, geo, grads, trace=trace)
    assert trace == ["full", "inner", "full", "inner"]
    variants = {"wrong sign of the SVRG correction": rsvrg_loop(cfg, task, geo, grads, sign=-1.0)}
    if kind != "euclidean":
        flat = Geometry(kind, task.dim, transport="projection")
        variants["projection instead of parallel transport"] = rsvrg_loop(cfg, task, flat, grads)
    check(rows, models, task, geo, variants)


@pytest.mark.parametrize("kind", ["sphere", "spd", "euclidean"])
def test_rlsvrg_matches_loopless_svrg(compose, kind):
    cfg, task, geo, grads = setup(
        compose,
        kind,
        "method=rlsvrg",
        *COHORT3,
        "method.p=0.5",
        "method.lr=0.1",
        "num_rounds=5",
        "seed=1",
    )
    rows = run(cfg, None)
    trace: list[str] = []
    models = rlsvrg_loop(cfg, task, geo, grads, trace=trace)
    assert "refresh" in trace and "keep" in trace, trace
    check(
        rows,
        models,
        task,
        geo,
        {
            "w never refreshed": rlsvrg_loop(cfg, task, geo, grads, refresh=False),
            "w refreshed to x^{k+1}": rlsvrg_loop(cfg, task, geo, grads, new_point=True),
        },
    )
    # the refresh rounds ask every client: n client gradients at x plus 2 per cohort member...
    n, b = int(cfg["num_clients"]), 3
    sizes = task.sizes
    for r, kind_r in zip(range(2, 6), trace, strict=True):
        ids = uniform_cohort(cfg, r)
        evals = 2 * sum(sizes[i] for i in ids)
        if kind_r == "refresh":
            evals += sum(sizes[m] for m in range(n) if m not in ids)
        assert rows[r]["grad_evals"] == evals, (r, kind_r)
        assert rows[r]["clients"] == (n if kind_r == "refresh" else b)


@pytest.mark.parametrize(
    "transport, kind",
    [(t, k) for t in ("parallel", "projection") for k in ("sphere", "spd")]
    + [("parallel", "euclidean")],
)
def test_rpage_matches_page_on_the_manifold(compose, kind, transport):
    cfg, task, geo, grads = setup(
        compose,
        kind,
        "method=rpage",
        *COHORT3,
        "method.p=0.4",
        f"method.transport={transport}",
        "num_rounds=5",
        "seed=2",
    )
    rows = run(cfg, None)
    trace: list[str] = []
    models = page_loop(cfg, task, geo, grads, "rpage/coin", trace=trace)
    assert "full" in trace and "diff" in trace, trace
    variants = {}
    if kind != "euclidean":
        if not (kind == "spd" and transport == "projection"):  # SPD's projection transport is I
            variants["no transport Γ"] = page_loop(
                cfg, task, geo, grads, "rpage/coin", transport=False
            )
        other = "projection" if transport == "parallel" else "parallel"
        variants[f"{other} transport"] = page_loop(
            cfg, task, Geometry(kind, task.dim, transport=other), grads, "rpage/coin"
        )
    check(rows, models, task, geo, variants)


@pytest.mark.parametrize("kind", ["sphere", "spd", "euclidean"])
def test_rmarina_rand_k_matches_marina_on_the_manifold(compose, kind):
    cfg, task, geo, grads = setup(
        compose,
        kind,
        "method=rmarina",
        "sampler=full",
        "compressor=rand_k",
        "compressor.k=2",
        "method.p=0.4",
        "num_rounds=5",
        "seed=2",
    )
    rows = run(cfg, None)
    trace: list[str] = []
    q = rand_k(2)
    models = page_loop(cfg, task, geo, grads, "rmarina/coin", compress=q, trace=trace)
    assert "full" in trace and "diff" in trace, trace
    variants = {}
    if kind == "sphere":  # on SPD, Exp only sees sym(V) and Γ is linear: P is a no-op there
        variants["not re-projected"] = page_loop(
            cfg, task, geo, grads, "rmarina/coin", compress=q, reproject=False
        )
    if kind != "euclidean":
        variants["no transport Γ"] = page_loop(
            cfg, task, geo, grads, "rmarina/coin", compress=q, transport=False
        )
    check(rows, models, task, geo, variants)
    # floats up: d per client on dense rounds, K on compressed ones; bits include the indices
    # for nobody (shared seed)
    n, d = int(cfg["num_clients"]), task.dim
    for r, kind_r in zip(range(2, 6), trace, strict=True):
        assert rows[r]["up_floats"] == n * (d if kind_r == "full" else 2)
        assert rows[r]["down_floats"] == n * (d if kind_r == "full" else 2 * d)
