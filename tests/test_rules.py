"""Every method's update rule against a hand-written loop of its paper's pseudo-code.

Each test runs fedsim (inline engine) for a few rounds and replays the same run with a loop
written here from the specifications (``specs/local-training.md``, ``specs/participation.md``,
``specs/generalized-smoothness.md``) and the documented randomness contract: every draw comes
from ``fedsim.rng.generator(seed, round, purpose, pid)``. The loops share no method code with
fedsim: cohorts, Geometric local-step counts, TAMUNA's pattern and its permutation, random
reshuffling, the Rand-K masks, clipping and the server and client rules are written below; only
the task's data objects (client gradients and sizes, weights, x⁰, x*, the evaluation loss) and the
resolved hyperparameters (``cfg["method"]``) come from fedsim. Every row (the evaluation after
round r, r = 0 the start) must match to rel 1e-10 in ``loss`` and ``dist_sq``, and each test also
checks that the comparison can fail: plausible wrong variants of the loop (a sign, a dropped
correction, a wrong scaling, clipping moved, ...) are off by more than 1e-6.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from fedsim.build import task_of
from fedsim.rng import generator
from fedsim.runner import run
from tests.reference import assert_rows_match, deviation

REL = 1e-10  # what fedsim must match
FAR = 1e-6  # what a wrong variant must miss by

LOGREG = (
    "engine=inline",
    "task=logreg_synthetic",
    "num_clients=5",
    "task.samples_per_client=20",
    "task.dim=6",
)
QUARTIC = ("engine=inline", "task=quartic", "num_clients=4", "task.dim=5", "task.num_points=40")
UNIFORM2 = ("sampler=uniform", "sampler.cohort_size=2")
QUADRATIC = (
    "engine=inline",
    "task=quadratic",
    "num_clients=6",
    "task.dim=4",
    "task.L_min=1",
    "task.L_max=20",
    "task.mu=0.5",
)


def assert_variants_fail(rows: list[dict], task, variants: dict[str, list[np.ndarray]]) -> None:
    """Every deliberately wrong loop is off by more than FAR (so the comparison can fail)."""
    for name, models in variants.items():
        dev = deviation(rows, models, task)
        print(f"wrong variant {name!r}: rel {dev:.1e}")  # shown with pytest -rP
        assert dev > FAR, f"the wrong variant {name!r} matches fedsim too (rel {dev:.1e})"


# --------------------------------------------------------------------------- cohorts
def cohort(cfg: dict, rnd: int) -> tuple[list[int], float]:
    """The sorted cohort of round ``rnd`` and the Horvitz–Thompson multiplier a_m = 1/π_m.

    full: everyone, a = 1. uniform: C of M without replacement from ``(seed, rnd, "uniform")``.
    cyclic: meta-epoch e = ⌊(rnd−1)/R⌋ (R = M/C), position r, clients r·C..(r+1)·C−1 of the
    permutation drawn from ``(seed, e, "cyclic")``."""
    s, n = cfg["sampler"], int(cfg["num_clients"])
    seed = int(cfg["seed"])
    if s["name"] == "full":
        return list(range(n)), 1.0
    c = int(s["cohort_size"])
    if s["name"] == "uniform":
        ids = generator(seed, rnd, "uniform").choice(n, size=c, replace=False)
    elif s["name"] == "cyclic":
        epoch, pos = divmod(rnd - 1, n // c)
        perm = generator(seed, epoch if s.get("reshuffle", True) else 0, "cyclic").permutation(n)
        ids = perm[pos * c : (pos + 1) * c]
    else:
        raise NotImplementedError(s["name"])
    return sorted(int(i) for i in ids), n / c


def iid_cohort(cfg: dict, rnd: int) -> tuple[list[int], float]:
    """A wrong sampler for the cyclic runs: an independent uniform cohort every round."""
    n, c = int(cfg["num_clients"]), int(cfg["sampler"]["cohort_size"])
    ids = generator(int(cfg["seed"]), rnd, "uniform").choice(n, size=c, replace=False)
    return sorted(int(i) for i in ids), n / c


def frozen_cyclic(cfg: dict, rnd: int) -> tuple[list[int], float]:
    """A wrong cyclic sampler: the first meta-epoch's permutation forever (no reshuffle)."""
    return cohort({**cfg, "sampler": {**cfg["sampler"], "reshuffle": False}}, rnd)


def scaled_grad(task, m: int, x: np.ndarray, idx=None) -> np.ndarray:
    """∇f̃_m with f̃_m = M w_m f_m: the uniform-weight form f = (1/M) Σ f̃_m of f = Σ w_m f_m."""
    return task.num_clients * task.weights[m] * task.clients[m].grad(x, idx)


def norm(v: np.ndarray) -> float:
    return float(np.sqrt(np.sum(v * v)))


def theta(v: np.ndarray, c0: float, c1: float) -> float:
    """θ(v) = 1/(c0 + c1‖v‖), the (L0,L1) stepsize of arXiv 2412.02781."""
    return 1.0 / (c0 + c1 * norm(v))


def clip(u: np.ndarray, level: float) -> np.ndarray:
    """min{1, level/‖u‖}·u."""
    n = norm(u)
    return u if n <= level else u * (level / n)


# --------------------------------------------------------------------------- FedAvg / Nastya
def local_epochs_rr(task, m, x, lr, epochs, b, rng, fixed=None):
    """Random reshuffling: each epoch a permutation σ (new unless ``fixed``), then steps over
    consecutive minibatches of σ of size b (the last one may be smaller)."""
    y = x.copy()
    n = task.clients[m].num_samples
    for _ in range(epochs):
        order = rng.permutation(n) if fixed is None else fixed
        for j in range(0, n, min(b, n)):
            y = y - lr * task.clients[m].grad(y, order[j : j + min(b, n)])
    return y


def fedavg_loop(cfg, task, sampler=cohort, server_lr="cfg", scale="ht", rr_order="fresh"):
    """FedAvg with a server stepsize (Nastya with one RR epoch; regularized participation with
    the cyclic sampler, arXiv 2302.03662 Alg. 1): x ← x − η Σ_{m∈S} a_m w_m (x − y_m)."""
    m_cfg, seed = cfg["method"], int(cfg["seed"])
    lr, steps = float(m_cfg["client_lr"]), int(m_cfg["local_steps"])
    eta = float(m_cfg["server_lr"]) if server_lr == "cfg" else server_lr
    x = task.x0.copy()
    models = [x]
    for r in range(1, int(cfg["num_rounds"]) + 1):
        ids, a = sampler(cfg, r)
        step = np.zeros_like(x)
        for m in ids:
            if m_cfg["local_solver"] == "gd":
                y = x.copy()
                for _ in range(steps):
                    y = y - lr * task.clients[m].grad(y)
            else:
                assert m_cfg["local_solver"] == "rr"
                n = task.clients[m].num_samples
                rng = generator(seed, r, "local-solver", m)
                fixed = np.arange(n) if rr_order == "identity" else None
                y = local_epochs_rr(
                    task, m, x, lr, int(m_cfg["local_epochs"]), int(m_cfg["batch_size"]), rng, fixed
                )
            coef = a * task.weights[m] if scale == "ht" else 1.0 / len(ids)
            step += coef * (x - y)
        x = x - eta * step
        models.append(x)
    return models


def test_fedavg_local_gd_uniform_cohort_unequal_clients(compose):
    cfg = compose(
        *LOGREG,
        "partition=dirichlet",
        "method=fedavg",
        "method.local_solver=gd",
        "method.local_steps=4",
        "method.server_lr=1.5",
        "sampler=uniform",
        "sampler.cohort_size=2",
        "num_rounds=4",
    )
    task = task_of(cfg)
    assert np.ptp(task.sizes) > 0  # unequal clients: the weights w_m matter
    rows = run(cfg, None)
    assert_rows_match(rows, fedavg_loop(cfg, task), task)
    assert_variants_fail(
        rows,
        task,
        {
            "no server stepsize": fedavg_loop(cfg, task, server_lr=1.0),
            "plain cohort mean (1/C) instead of a_m w_m": fedavg_loop(cfg, task, scale="mean"),
        },
    )


def test_fedavg_rr_cyclic_is_regularized_participation(compose):
    cfg = compose(
        *LOGREG,
        "num_clients=6",
        "method=fedavg",
        "method.local_solver=rr",
        "method.local_epochs=1",
        "method.batch_size=3",
        "method.server_lr=0.8",
        "sampler=cyclic",
        "sampler.cohort_size=2",
        "num_rounds=4",
    )
    task = task_of(cfg)
    rows = run(cfg, None)
    assert_rows_match(rows, fedavg_loop(cfg, task), task)
    # meta-epochs of R = 3 rounds: rounds 1–3 visit every client once, round 4 starts a new one
    seen = [m for r in (1, 2, 3) for m in cohort(cfg, r)[0]]
    assert sorted(seen) == list(range(6))
    assert_variants_fail(
        rows,
        task,
        {
            "i.i.d. cohorts instead of cyclic": fedavg_loop(cfg, task, sampler=iid_cohort),
            "no reshuffle between meta-epochs": fedavg_loop(cfg, task, sampler=frozen_cyclic),
            "local epoch in data order (no reshuffling)": fedavg_loop(
                cfg, task, rr_order="identity"
            ),
            "no server stepsize": fedavg_loop(cfg, task, server_lr=1.0),
        },
    )


def test_fedavg_rr_uniform_two_epochs(compose):
    cfg = compose(
        *LOGREG,
        "method=fedavg",
        "method.local_solver=rr",
        "method.local_epochs=2",
        "method.batch_size=6",
        "sampler=uniform",
        "sampler.cohort_size=3",
        "num_rounds=3",
    )
    task = task_of(cfg)
    rows = run(cfg, None)
    assert_rows_match(rows, fedavg_loop(cfg, task), task)
    assert_variants_fail(
        rows, task, {"data order instead of RR": fedavg_loop(cfg, task, rr_order="identity")}
    )


def test_fedavg_gd_cyclic(compose):
    cfg = compose(
        *LOGREG,
        "num_clients=4",
        "method=fedavg",
        "method.local_solver=gd",
        "method.local_steps=3",
        "sampler=cyclic",
        "sampler.cohort_size=2",
        "num_rounds=4",
    )
    task = task_of(cfg)
    rows = run(cfg, None)
    assert_rows_match(rows, fedavg_loop(cfg, task), task)
    assert_variants_fail(
        rows,
        task,
        {
            "i.i.d. cohorts": fedavg_loop(cfg, task, sampler=iid_cohort),
            "no reshuffle": fedavg_loop(cfg, task, sampler=frozen_cyclic),
        },
    )


# --------------------------------------------------------------------------- Scaffnew
def local_steps_of(seed: int, rnd: int, p: float) -> int:
    """L ~ Geometric(p) on {1, 2, ...}: the local steps until ProxSkip's coin first shows 1."""
    return int(generator(seed, rnd, "local-steps").geometric(p))


def scaffnew_loop(cfg, task, h_sign=1.0, h_rate="p"):
    """ProxSkip/Scaffnew (arXiv 2202.09357, Alg. 2), full participation, Σ h = 0 at start:
    L ~ Geometric(p) local steps x̂_i = x_i − γ(∇f̃_i(x_i) − h_i), then the prox of the
    consensus: x = (1/n) Σ_j (x̂_j − (γ/p) h_j), and h_i ← h_i + (p/γ)(x − x̂_i)."""
    m_cfg, seed, n = cfg["method"], int(cfg["seed"]), int(cfg["num_clients"])
    gamma, p = float(m_cfg["client_lr"]), float(m_cfg["p"])
    rate = p / gamma if h_rate == "p" else h_rate / gamma
    h = np.zeros((n, task.dim))
    x = task.x0.copy()
    models = [x]
    for r in range(1, int(cfg["num_rounds"]) + 1):
        steps = local_steps_of(seed, r, p)
        hat = []
        for i in range(n):
            y = x.copy()
            for _ in range(steps):
                y = y - gamma * (scaled_grad(task, i, y) - h_sign * h[i])
            hat.append(y)
        x = np.mean([hat[i] - (gamma / p) * h[i] for i in range(n)], axis=0)
        for i in range(n):
            h[i] = h[i] + rate * (x - hat[i])
        models.append(x)
    return models


def test_scaffnew_matches_proxskip(compose):
    cfg = compose(
        *LOGREG,
        "partition=dirichlet",
        "method=scaffnew",
        "method.p=0.4",
        "sampler=full",
        "num_rounds=4",
    )
    task = task_of(cfg)
    assert np.ptp(task.sizes) > 0
    steps = [local_steps_of(int(cfg["seed"]), r, 0.4) for r in range(1, 5)]
    assert max(steps) > 1  # some round makes several local steps
    rows = run(cfg, None)
    assert_rows_match(rows, scaffnew_loop(cfg, task), task)
    assert_variants_fail(
        rows,
        task,
        {
            "control variate with the wrong sign": scaffnew_loop(cfg, task, h_sign=-1.0),
            "h-update at rate 1/γ instead of p/γ": scaffnew_loop(cfg, task, h_rate=1.0),
            "no control variates (local GD)": scaffnew_loop(cfg, task, h_sign=0.0),
        },
    )


# --------------------------------------------------------------------------- TAMUNA
def tamuna_template(d: int, c: int, s: int) -> np.ndarray:
    """TAMUNA's pattern q ∈ {0,1}^{d×c}: if d ≥ c/s, row k has ones in the columns
    (s·k + j) mod c, j = 0..s−1; otherwise column j < s·d holds the row j mod d."""
    q = np.zeros((d, c))
    if s * d >= c:
        for k in range(d):
            for j in range(s):
                q[k, (s * k + j) % c] = 1.0
    else:
        for j in range(s * d):
            q[j % d, j] = 1.0
    assert np.all(q.sum(axis=1) == s)  # every coordinate has s holders
    return q


def tamuna_loop(cfg, task, mask_h=True, eta="cfg", stale=False, h_sign=1.0):
    """TAMUNA (arXiv 2302.09832, Alg. 1), eagerly: cohort Ω, L ~ Geometric(p), the pattern's
    columns permuted by ``(seed, r, "tamuna-pattern")`` (the i-th cohort client in id order gets
    column σ(i)); L steps x_i ← x_i − γ(∇f̃_i(x_i) − h_i) from x̄; x̄⁺ = (1/s) Σ q_i ⊙ x_i;
    h_i ← h_i + (η/γ) q_i ⊙ (x̄⁺ − x_i) for i ∈ Ω.

    Wrong variants: ``mask_h=False`` (h-update on every coordinate), another ``eta``, ``stale``
    (the Flower baseline's reading: the pending update of a client uses the global model of its
    next participation instead of x̄⁺ of its own round), ``h_sign``."""
    m_cfg, seed, n = cfg["method"], int(cfg["seed"]), int(cfg["num_clients"])
    gamma, p, s, c = (float(m_cfg[k]) for k in ("client_lr", "p", "s", "cohort_size"))
    s, c = int(s), int(c)
    eta = float(m_cfg["eta"]) if eta == "cfg" else eta
    q = tamuna_template(task.dim, c, s)
    h = np.zeros((n, task.dim))
    pending: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # stale variant: (mask, x_i)
    x = task.x0.copy()
    models = [x]
    for r in range(1, int(cfg["num_rounds"]) + 1):
        ids, _ = cohort(cfg, r)
        assert len(ids) == c
        steps = local_steps_of(seed, r, p)
        perm = generator(seed, r, "tamuna-pattern").permutation(c)
        if stale:
            for i in ids:
                if i in pending:
                    mask, xi = pending.pop(i)
                    h[i] = h[i] + (eta / gamma) * mask * (x - xi)
        local, masks = {}, {}
        for pos, i in enumerate(ids):
            y = x.copy()
            for _ in range(steps):
                y = y - gamma * (scaled_grad(task, i, y) - h_sign * h[i])
            local[i], masks[i] = y, q[:, perm[pos]]
        x = sum(masks[i] * local[i] for i in ids) / s
        for i in ids:
            if stale:
                pending[i] = (masks[i], local[i])
            else:
                mask = masks[i] if mask_h else 1.0
                h[i] = h[i] + (eta / gamma) * mask * (x - local[i])
        models.append(x)
    return models


@pytest.mark.parametrize(
    "setting",
    [
        (*LOGREG, "partition=dirichlet", "sampler.cohort_size=3", "method.s=2", "method.p=0.5"),
        # s·d = 4 < c = 5: one column is empty; 6 rounds so that a client that skipped rounds
        # makes several local steps on a coordinate its pending update touched
        (*QUADRATIC, "task.dim=2", "sampler.cohort_size=5", "method.s=2", "num_rounds=6"),
    ],
    ids=["logreg-sd>=c", "quadratic-sd<c"],
)
def test_tamuna_matches_algorithm_1(compose, setting):
    cfg = compose("num_rounds=4", "method.p=0.5", *setting, "method=tamuna", "sampler=uniform")
    task = task_of(cfg)
    m = cfg["method"]
    d, c, s = task.dim, int(m["cohort_size"]), int(m["s"])
    assert s < c  # compressed
    rows = run(cfg, None)
    assert_rows_match(rows, tamuna_loop(cfg, task), task)
    # some client skips a round and comes back (the stale reading can differ)
    cohorts = [cohort(cfg, r)[0] for r in range(1, int(cfg["num_rounds"]) + 1)]
    clients = range(int(cfg["num_clients"]))
    presence = ["".join("1" if i in ids else "0" for ids in cohorts) for i in clients]
    assert any(re.search("10+1", row) for row in presence), presence
    assert (s * d >= c) == (d > 2)  # both branches of the pattern template are exercised
    variants = {
        "h-update without the mask q_i": tamuna_loop(cfg, task, mask_h=False),
        "η = p instead of the configured η": tamuna_loop(cfg, task, eta=float(m["p"])),
        "pending h-update with the next participation's model": tamuna_loop(cfg, task, stale=True),
        "control variate with the wrong sign": tamuna_loop(cfg, task, h_sign=-1.0),
    }
    assert_variants_fail(rows, task, variants)


def test_tamuna_with_everyone_and_no_compression_is_scaffnew_two_loops(compose):
    """TAMUNA with c = n, s = c and η = p is Scaffnew: fedsim's TAMUNA matches the TAMUNA loop,
    fedsim's Scaffnew matches the (separate) Scaffnew loop, and the two loops agree."""
    common = (*LOGREG, "partition=dirichlet", "sampler=full", "method.p=0.4", "num_rounds=4")
    sc = compose(*common, "method=scaffnew")
    ta = compose(*common, "method=tamuna", "method.s=5", "method.eta=0.4")
    task = task_of(sc)
    assert ta["method"]["client_lr"] == sc["method"]["client_lr"]
    assert ta["method"]["cohort_size"] == ta["method"]["s"] == 5
    rows_sc, rows_ta = run(sc, None), run(ta, None)
    loop_sc, loop_ta = scaffnew_loop(sc, task), tamuna_loop(ta, task)
    assert_rows_match(rows_sc, loop_sc, task)
    assert_rows_match(rows_ta, loop_ta, task)
    for a, b in zip(loop_sc, loop_ta, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # not vacuous: η = p/2 (still admissible) is another method
    assert_variants_fail(rows_ta, task, {"η = p/2": tamuna_loop(ta, task, eta=0.2)})


# --------------------------------------------------------------------------- 5GCS, 5GCS-CC
def rand_k(x: np.ndarray, seed: int, rnd: int, pid: int, k: int) -> np.ndarray:
    """Rand-K, (d/K)·x on a uniform K-subset drawn from ``(seed, rnd, "compressor", pid)``."""
    d = x.size
    idx = np.sort(generator(seed, rnd, "compressor", pid).choice(d, size=k, replace=False))
    out = np.zeros(d)
    out[idx] = (d / k) * x[idx]
    return out


def fivegcs_loop(
    cfg, task, correction="ht", k=None, shift="cfg", cc_reading="randprox", u_sign=1.0
):
    """5GCS (arXiv 2212.14370, Alg. 1), and with ``k`` 5GCS-CC with Rand-K (arXiv 2306.03240):

        x̂ = (x − γ v)/(1 + γμ),   v = (1/M) Σ u_m
        m ∈ S: y ← K gradient steps on F_m(y) + (τ/2)‖y − (x̂ + u_m/τ)‖² from y = x̂,
               F_m = f̃_m − (μ/2)‖·‖²;   δ_m = ∇F_m(y) − u_m   (5GCS-CC: δ_m = Q(∇F_m(y) − u_m))
               u_m ← u_m + α δ_m   (α = 1 for 5GCS)
        v ← v + (α/M) Σ δ_m;   x ← x̂ − γ (M/C)(1/M) Σ δ_m.

    ``correction``: "ht" (the rule), "none" (x = x̂), "no_MC" (γ (v⁺ − v), no M/C).
    ``cc_reading="spec"``: the spec's reconstruction x ← x̂ − γ(M/C)(v⁺ − v) with v moved by α.
    """
    m_cfg, seed, n = cfg["method"], int(cfg["seed"]), int(cfg["num_clients"])
    gamma, tau, mu = float(m_cfg["primal_lr"]), float(m_cfg["dual_lr"]), float(m_cfg["mu"])
    steps = int(m_cfg["local_steps"])
    alpha = 1.0 if k is None else (float(m_cfg["dual_shift"]) if shift == "cfg" else shift)
    u = np.zeros((n, task.dim))
    v = np.zeros(task.dim)
    x = task.x0.copy()
    models = [x]
    for r in range(1, int(cfg["num_rounds"]) + 1):
        x_hat = (x - gamma * v) / (1 + gamma * mu)
        ids, a = cohort(cfg, r)
        deltas = {}
        for m in ids:
            lm = n * task.weights[m] * task.clients[m].smoothness  # f̃_m is lm-smooth
            lr = (
                1.0 / (lm - mu + tau)
                if m_cfg.get("local_lr", "auto") == "auto"
                else float(m_cfg["local_lr"])
            )
            target = x_hat + u_sign * u[m] / tau
            y = x_hat.copy()
            for _ in range(steps):
                grad_psi = scaled_grad(task, m, y) - mu * y + tau * (y - target)
                y = y - lr * grad_psi
            new = scaled_grad(task, m, y) - mu * y
            deltas[m] = new - u[m] if k is None else rand_k(new - u[m], seed, r, m, k)
        v_old = v.copy()
        for m in ids:
            u[m] = u[m] + alpha * deltas[m]
        v = v + (alpha / n) * sum(deltas[m] for m in ids)
        if correction == "none":
            x = x_hat
        elif correction == "no_MC":
            x = x_hat - gamma * (v - v_old)
        elif cc_reading == "spec":
            x = x_hat - gamma * a * (v - v_old)
        else:
            x = x_hat - gamma * sum(a / n * deltas[m] for m in ids)
        models.append(x)
    return models


def test_fivegcs_matches_algorithm_1(compose):
    cfg = compose(
        *LOGREG,
        "partition=dirichlet",
        "method=fivegcs",
        "method.local_steps=3",
        "sampler=uniform",
        "sampler.cohort_size=2",
        "num_rounds=4",
    )
    task = task_of(cfg)
    assert np.ptp(task.sizes) > 0
    rows = run(cfg, None)
    assert_rows_match(rows, fivegcs_loop(cfg, task), task)
    assert_variants_fail(
        rows,
        task,
        {
            "no server correction": fivegcs_loop(cfg, task, correction="none"),
            "correction without M/C": fivegcs_loop(cfg, task, correction="no_MC"),
            "prox centre x̂ − u_m/τ": fivegcs_loop(cfg, task, u_sign=-1.0),
        },
    )


def test_fivegcs_server_correction_changes_the_result(compose):
    """A regime where the correction x ← x̂ − γ Σ (a_m/M) δ_m matters: few local steps, a small
    cohort (M/C = 3) and a large primal step (γτ = 0.9). Dropping the correction, or its M/C,
    moves the rows by far more than 1e-6 (here: by percents), and fedsim matches the loop
    with the correction to 1e-10."""
    cfg = compose(
        *QUADRATIC,
        "method=fivegcs",
        "method.local_steps=1",
        "sampler=uniform",
        "sampler.cohort_size=2",
        "num_rounds=4",
    )
    task = task_of(cfg)
    assert cfg["method"]["gamma_tau"] == pytest.approx(0.9)
    rows = run(cfg, None)
    right = fivegcs_loop(cfg, task)
    assert_rows_match(rows, right, task)
    none_dev = deviation(rows, fivegcs_loop(cfg, task, correction="none"), task)
    no_mc_dev = deviation(rows, fivegcs_loop(cfg, task, correction="no_MC"), task)
    print(f"no correction: rel {none_dev:.1e}; no M/C: rel {no_mc_dev:.1e}")  # pytest -rP
    assert none_dev > 1e-2, none_dev
    assert no_mc_dev > 1e-2, no_mc_dev


def test_fivegcs_cc_with_rand_k(compose):
    cfg = compose(
        *LOGREG,
        "method=fivegcs_cc",
        "method.local_steps=2",
        "compressor=rand_k",
        "compressor.k=2",
        "sampler=uniform",
        "sampler.cohort_size=3",
        "num_rounds=4",
    )
    task = task_of(cfg)
    alpha = cfg["method"]["dual_shift"]
    assert alpha == pytest.approx(1 / 3)  # ω = d/K − 1 = 2
    rows = run(cfg, None)
    assert_rows_match(rows, fivegcs_loop(cfg, task, k=2), task)
    assert_variants_fail(
        rows,
        task,
        {
            "the spec's reconstruction γ(M/C)(v⁺ − v) (α-scaled correction)": fivegcs_loop(
                cfg, task, k=2, cc_reading="spec"
            ),
            "no dual shift (α = 1)": fivegcs_loop(cfg, task, k=2, shift=1.0),
            "no server correction": fivegcs_loop(cfg, task, k=2, correction="none"),
            "uncompressed increments": fivegcs_loop(cfg, task),
        },
    )


# --------------------------------------------------------------------------- clipped methods
def local_pass(task, m, x, method, seed, rnd, step):
    """A client's local steps z ← z − step(s)·s from x (the minibatches s of its solver, drawn
    from ``(seed, rnd, "local", m)``); returns (z, g) with g the average of the gradients met,
    batch weights |B|/(n·E) for rr/so and 1/H for gd/sgd."""
    obj = task.clients[m]
    n, solver = obj.num_samples, method["local_solver"]
    b = min(int(method["batch_size"]), n)
    rng = generator(seed, rnd, "local", m)
    z, g = x.copy(), np.zeros_like(x)
    if solver in ("gd", "sgd"):
        steps = int(method["local_steps"])
        for _ in range(steps):
            idx = None if solver == "gd" else np.sort(rng.choice(n, size=b, replace=False))
            s = obj.grad(z, idx)
            g = g + s / steps
            z = z - step(s) * s
        return z, g
    epochs = int(method["local_epochs"])
    for _ in range(epochs):
        if solver == "rr":
            order = rng.permutation(n)
        else:
            order = generator(seed, 0, "shuffle-once", m).permutation(n)
        for j in range(0, n, b):
            batch = order[j : j + b]
            s = obj.grad(z, batch)
            g = g + (len(batch) / (n * epochs)) * s
            z = z - step(s) * s
    return z, g


def clip_local_gdj_loop(cfg, task, variant=None):
    """Clip-LocalGDJ (arXiv 2412.02781, Alg. 1): H local steps z ← z − γ∇f_m(z) from x_t,
    Δ_m = x_t − z_H, g = Σ a_m w_m Δ_m/(γH); x ← x − θ(v) g, v = g (update) or ∇f(x_t)
    (full_gradient). With H = 1 it is L0L1-GD.

    Wrong variants: "client_clip" (each client scales its own g_m by θ(g_m)), "v=g" (the clip
    vector g where the run asks for ∇f(x_t)), "no_jump" (the server takes the average local
    model, x ← Σ a_m w_m z_H, then the clipped step from there)."""
    m_cfg, seed = cfg["method"], int(cfg["seed"])
    gamma, c0, c1 = (float(m_cfg[k]) for k in ("client_lr", "c0", "c1"))
    full = m_cfg["clip_vector"] == "full_gradient"
    x = task.x0.copy()
    models = [x]
    for r in range(1, int(cfg["num_rounds"]) + 1):
        ids, a = cohort(cfg, r)
        g, v, zbar = np.zeros_like(x), np.zeros_like(x), np.zeros_like(x)
        for m in ids:
            z, _ = local_pass(task, m, x, m_cfg, seed, r, lambda s: gamma)
            steps = int(m_cfg["local_steps"])
            gm = (x - z) / (gamma * steps)
            if variant == "client_clip":
                gm = theta(gm, c0, c1) * gm
            g = g + a * task.weights[m] * gm
            v = v + a * task.weights[m] * task.clients[m].grad(x)
            zbar = zbar + a * task.weights[m] * z
        if variant == "client_clip":
            x = x - g
        else:
            vec = v if full and variant != "v=g" else g
            start = zbar if variant == "no_jump" else x
            x = start - theta(vec, c0, c1) * g
        models.append(x)
    return models


@pytest.mark.parametrize("clip_vector", ["update", "full_gradient"])
@pytest.mark.parametrize("solver", ["gd", "sgd"])
def test_clip_local_gdj_matches_algorithm_1(compose, clip_vector, solver):
    cfg = compose(
        *QUARTIC,
        "task.num_points=42",  # blocks 11, 11, 10, 10: unequal weights
        "method=clip_local_gdj",
        f"method.clip_vector={clip_vector}",
        f"method.local_solver={solver}",
        "method.local_steps=3",
        "method.batch_size=4",
        "method.client_lr=5e-5",
        "method.c0=4000",
        "method.c1=0.1",
        *(("sampler=full",) if clip_vector == "update" else UNIFORM2),
        "num_rounds=3",
    )
    task = task_of(cfg)
    assert np.ptp(task.sizes) > 0
    rows = run(cfg, None)
    assert_rows_match(rows, clip_local_gdj_loop(cfg, task), task)
    # clipping is active: c1‖v‖ is comparable to c0
    x0 = task.x0
    assert 0.1 < 0.1 * norm(task.full.grad(x0)) / 4000 < 10
    variants = {
        "clipping moved to the clients": clip_local_gdj_loop(cfg, task, "client_clip"),
        "no jump (clipped step from the average local model)": clip_local_gdj_loop(
            cfg, task, "no_jump"
        ),
    }
    if clip_vector == "full_gradient":
        variants["clip vector g instead of ∇f(x_t)"] = clip_local_gdj_loop(cfg, task, "v=g")
    if solver == "sgd":
        variants["full local gradients instead of minibatches"] = clip_local_gdj_loop(
            dict(cfg, method={**cfg["method"], "local_solver": "gd"}), task
        )
    assert_variants_fail(rows, task, variants)


def test_l0l1_gd_is_clipped_gradient_descent(compose):
    cfg = compose(
        *QUARTIC,
        "method=l0l1_gd",
        "method.c0=4000",
        "method.c1=0.1",
        "sampler=full",
        "num_rounds=4",
    )
    task = task_of(cfg)
    c0, c1 = cfg["method"]["c0"], cfg["method"]["c1"]
    rows = run(cfg, None)

    def loop(rule):
        x = task.x0.copy()
        models = [x]
        for _ in range(4):
            x = rule(x)
            models.append(x)
        return models

    def right(x):
        g = task.full.grad(x)
        return x - theta(g, c0, c1) * g

    def client_clipped(x):  # each client clips its own gradient
        return x - sum(
            w * theta(task.clients[m].grad(x), c0, c1) * task.clients[m].grad(x)
            for m, w in enumerate(task.weights)
        )

    assert_rows_match(rows, loop(right), task)
    assert_variants_fail(
        rows,
        task,
        {
            "constant step 1/c0 (no clipping)": loop(lambda x: x - task.full.grad(x) / c0),
            "clipping on the clients": loop(client_clipped),
        },
    )


def clerr_loop(cfg, task, variant=None):
    """CLERR (arXiv 2412.02781, Alg. 2, the distributed reading): each client one local RR
    epoch z ← z − γ ∇f_B(z) over its minibatches B, g_m = Σ_B (|B|/n) ∇f_B(z_B); the server
    averages g = Σ a_m w_m g_m and restarts from x_t: x ← x_t − θ(v) g, v = g or ∇f(x_t).

    Wrong variants: "no_restart" (the clipped step from the average end point of the epoch),
    "per_step_weights" (g_m = (x − z)/(γ·#steps), equal weight for the last, smaller batch)."""
    m_cfg, seed = cfg["method"], int(cfg["seed"])
    gamma, c0, c1 = (float(m_cfg[k]) for k in ("client_lr", "c0", "c1"))
    full = m_cfg["clip_vector"] == "full_gradient"
    x = task.x0.copy()
    models = [x]
    for r in range(1, int(cfg["num_rounds"]) + 1):
        ids, a = cohort(cfg, r)
        g, v, zbar = np.zeros_like(x), np.zeros_like(x), np.zeros_like(x)
        for m in ids:
            z, gm = local_pass(task, m, x, m_cfg, seed, r, lambda s: gamma)
            if variant == "per_step_weights":
                n, b = task.clients[m].num_samples, int(m_cfg["batch_size"])
                gm = (x - z) / (gamma * -(-n // b) * int(m_cfg["local_epochs"]))
            w = a * task.weights[m]
            g, zbar = g + w * gm, zbar + w * z
            v = v + w * task.clients[m].grad(x)
        start = zbar if variant == "no_restart" else x
        x = start - theta(v if full else g, c0, c1) * g
        models.append(x)
    return models


@pytest.mark.parametrize("clip_vector", ["update", "full_gradient"])
def test_clerr_matches_algorithm_2(compose, clip_vector):
    cfg = compose(
        *QUARTIC,
        "method=clerr",
        f"method.clip_vector={clip_vector}",
        "method.local_solver=rr",
        "method.batch_size=3",  # 10 points per client: batches 3, 3, 3, 1
        "method.client_lr=5e-5",
        "method.c0=4000",
        "method.c1=0.1",
        "sampler=full",
        "num_rounds=3",
    )
    task = task_of(cfg)
    rows = run(cfg, None)
    assert_rows_match(rows, clerr_loop(cfg, task), task)
    assert_variants_fail(
        rows,
        task,
        {
            "no restart from x_t": clerr_loop(cfg, task, "no_restart"),
            "equal weight for the short last batch": clerr_loop(cfg, task, "per_step_weights"),
            "shuffle once instead of RR": clerr_loop(
                dict(cfg, method={**cfg["method"], "local_solver": "so"}), task
            ),
        },
    )


def clipped_rr_cli_loop(cfg, task, variant=None, sampler=cohort):
    """Clipped RR-CLI (arXiv 2412.02781, Alg. 3): meta-epoch t of R = M/C cohorts from a
    permutation of the clients; cohort r runs one local RR epoch from x_{t,r}, g_{t,r} = (1/C)
    Σ g_m, x_{t,r+1} = x_{t,r} − η g_{t,r}, g_t += g_{t,r}; after the R-th cohort g_t /= R and
    x_{t+1} = x_t − θ(g_t) g_t from the meta-epoch's start x_t.

    Wrong variant "from_current": the clipped step from x_{t,R} (the current point)."""
    m_cfg, seed, n = cfg["method"], int(cfg["seed"]), int(cfg["num_clients"])
    gamma, eta, c0, c1 = (float(m_cfg[k]) for k in ("client_lr", "server_lr", "c0", "c1"))
    c = int(cfg["sampler"]["cohort_size"])
    big_r = n // c
    x = task.x0.copy()
    models = [x]
    start, acc = x, np.zeros_like(x)
    for rnd in range(1, int(cfg["num_rounds"]) + 1):
        ids, _ = sampler(cfg, rnd)
        g = sum(local_pass(task, m, x, m_cfg, seed, rnd, lambda s: gamma)[1] for m in ids) / c
        x = x - eta * g
        acc = acc + g
        if rnd % big_r == 0:
            gt = acc / big_r
            base = x if variant == "from_current" else start
            x = base - theta(gt, c0, c1) * gt
            start, acc = x, np.zeros_like(x)
        models.append(x)
    return models


def test_clipped_rr_cli_matches_algorithm_3(compose):
    cfg = compose(
        *QUARTIC,
        "method=clipped_rr_cli",
        "method.batch_size=4",
        "method.client_lr=5e-5",
        "method.server_lr=1e-4",
        "method.c0=4000",
        "method.c1=0.1",
        "sampler=cyclic",
        "sampler.cohort_size=2",
        "num_rounds=4",  # two meta-epochs of R = 2 rounds
    )
    task = task_of(cfg)
    assert np.ptp(task.sizes) == 0  # equal clients: the cohort mean is (1/C) Σ g_m
    rows = run(cfg, None)
    assert_rows_match(rows, clipped_rr_cli_loop(cfg, task), task)
    assert_variants_fail(
        rows,
        task,
        {
            "clipped step from the current point": clipped_rr_cli_loop(cfg, task, "from_current"),
            "i.i.d. cohorts": clipped_rr_cli_loop(cfg, task, sampler=iid_cohort),
        },
    )


def ce_fedavg_loop(cfg, task, variant=None):
    """CE-FedAvg / clip-FedAvg (the authors' baseline): H local steps z ← z − γ∇f_m(z),
    u_m = clip_cl((x − z_H)/H), x ← x − η Σ_{m∈S} a_m w_m u_m (full participation: (1/M) Σ).

    Wrong variants: "no_clip", "server_clip" (clip the aggregate instead of each u_m),
    "divide_by_M" (the authors' clip_fedavg_pp code: the cohort's sum over M)."""
    m_cfg, seed, n = cfg["method"], int(cfg["seed"]), int(cfg["num_clients"])
    gamma, eta, level = (float(m_cfg[k]) for k in ("client_lr", "server_lr", "client_clip"))
    x = task.x0.copy()
    models = [x]
    for r in range(1, int(cfg["num_rounds"]) + 1):
        ids, a = cohort(cfg, r)
        agg = np.zeros_like(x)
        for m in ids:
            z, _ = local_pass(task, m, x, m_cfg, seed, r, lambda s: gamma)
            u = (x - z) / int(m_cfg["local_steps"])
            if variant not in ("no_clip", "server_clip"):
                u = clip(u, level)
            coef = 1.0 / n if variant == "divide_by_M" else a * task.weights[m]
            agg = agg + coef * u
        if variant == "server_clip":
            agg = clip(agg, level)
        x = x - eta * agg
        models.append(x)
    return models


@pytest.mark.parametrize("sampler", ["full", "uniform"])
def test_ce_fedavg_matches_the_baseline(compose, sampler):
    cfg = compose(
        *QUARTIC,
        "method=ce_fedavg",
        "method.local_solver=gd",
        "method.local_steps=3",
        "method.client_lr=5e-5",
        "method.client_clip=0.5",
        "method.server_lr=1.0",
        *(("sampler=full",) if sampler == "full" else UNIFORM2),
        "num_rounds=3",
    )
    task = task_of(cfg)
    rows = run(cfg, None)
    assert_rows_match(rows, ce_fedavg_loop(cfg, task), task)
    variants = {
        "no client clipping": ce_fedavg_loop(cfg, task, "no_clip"),
        "clipping moved to the server": ce_fedavg_loop(cfg, task, "server_clip"),
    }
    if sampler == "uniform":
        variants["cohort sum over M (the authors' code)"] = ce_fedavg_loop(cfg, task, "divide_by_M")
    assert_variants_fail(rows, task, variants)


def celgc_loop(cfg, task, variant=None):
    """CELGC / local clipped SGD (the authors' baseline): every local step z ← z − θ(s) s with
    s the step's gradient, θ(s) = 1/(c0 + c1‖s‖); the server averages the local models
    (full participation: x ← (1/M) Σ z_m for equal clients, Σ w_m z_m in general).

    Wrong variants: "frozen_theta" (θ from the first local gradient, kept for the round),
    "no_clip" (plain local steps of 1/c0)."""
    m_cfg, seed = cfg["method"], int(cfg["seed"])
    c0, c1 = float(m_cfg["c0"]), float(m_cfg["c1"])
    x = task.x0.copy()
    models = [x]
    for r in range(1, int(cfg["num_rounds"]) + 1):
        ids, a = cohort(cfg, r)
        new = np.zeros_like(x)
        for m in ids:
            if variant == "frozen_theta":
                t0 = theta(task.clients[m].grad(x), c0, c1)
                z, _ = local_pass(task, m, x, m_cfg, seed, r, lambda s, t0=t0: t0)
            elif variant == "no_clip":
                z, _ = local_pass(task, m, x, m_cfg, seed, r, lambda s: 1.0 / c0)
            else:
                z, _ = local_pass(task, m, x, m_cfg, seed, r, lambda s: theta(s, c0, c1))
            new = new + a * task.weights[m] * z
        x = new
        models.append(x)
    return models


def test_celgc_matches_local_clipped_gd(compose):
    cfg = compose(
        *QUARTIC,
        "method=celgc",
        "method.local_solver=gd",
        "method.local_steps=3",
        "method.c0=4000",
        "method.c1=0.1",
        "sampler=full",
        "num_rounds=3",
    )
    task = task_of(cfg)
    rows = run(cfg, None)
    assert_rows_match(rows, celgc_loop(cfg, task), task)
    assert_variants_fail(
        rows,
        task,
        {
            "θ frozen at the round's first gradient": celgc_loop(cfg, task, "frozen_theta"),
            "no clipping (steps of 1/c0)": celgc_loop(cfg, task, "no_clip"),
        },
    )
