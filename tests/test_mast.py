"""MAST (arXiv 2311.16086): DSGD and L-SVRDSG against a hand-written loop of the paper's
pseudo-code, convergence to the MAST optimum, GD as a special case, wire accounting, bad input,
and inline/ray parity.

The reference loops below share no code with fedsim: their own sketches (dense matrices), their
own logistic gradient, cohorts, minibatches, weights and steps. fedsim supplies only the data
objects, the keyed generators (``fedsim.rng.generator``, the shared seed) and the run.
"""

import numpy as np
import pytest
from flwr.common import ndarray_to_bytes

from fedsim.app import server_fn
from fedsim.build import client_factory, task_of
from fedsim.engines.inline import make_nodes, run_rounds
from fedsim.errors import ConfigError
from fedsim.rng import generator
from fedsim.runner import run

REL = 1e-10
SMALL = (
    "engine=inline",
    "task=logreg_synthetic",
    "task.dim=10",
    "task.samples_per_client=40",
    "num_clients=4",
)


@pytest.fixture(scope="module", autouse=True)
def fresh_optimum_cache(tmp_path_factory):
    """Every optimum of this module is solved here, never read from an earlier run's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDSIM_CACHE", str(tmp_path_factory.mktemp("optimum-cache")))
        yield


# --------------------------------------------------------------------------- reference
def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def logistic_grad(obj, x: np.ndarray, rows=None) -> np.ndarray:
    """∇ of (1/n) Σ log(1 + exp(−y aᵀx)) + (λ/2)‖x‖², written here."""
    a, y = np.asarray(obj.a), np.asarray(obj.y)
    if rows is not None:
        a, y = a[rows], y[rows]
    return a.T @ (-y * sigmoid(-y * (a @ x))) / y.size + obj.l2 * x


def logistic_loss(obj, x: np.ndarray) -> float:
    a, y = np.asarray(obj.a), np.asarray(obj.y)
    return float(np.mean(np.logaddexp(0.0, -y * (a @ x))) + 0.5 * obj.l2 * x @ x)


def rand_k_matrix(seed: int, key: int, purpose: str, pid: int, d: int, k: int) -> np.ndarray:
    """S = (d/K) Σ_{j∈U} e_j e_jᵀ, U a uniform K-subset from the keyed generator."""
    u = generator(seed, key, purpose, pid).choice(d, size=k, replace=False)
    s = np.zeros((d, d))
    s[u, u] = d / k
    return s


def bernoulli_matrix(seed: int, key: int, purpose: str, pid: int, p: np.ndarray) -> np.ndarray:
    """S = Diag(c_j / p_j), c_j ~ Bernoulli(p_j)."""
    c = generator(seed, key, purpose, pid).random(p.size) < p
    return np.diag(c / p)


def cohort_of(cfg: dict, rnd: int) -> tuple[list[int], float]:
    """Sorted cohort and a_m = M/C (uniform) or everyone with a_m = 1 (full)."""
    n = int(cfg["num_clients"])
    if cfg["sampler"]["name"] == "full":
        return list(range(n)), 1.0
    c = int(cfg["sampler"]["cohort_size"])
    ids = generator(int(cfg["seed"]), rnd, "uniform").choice(n, size=c, replace=False)
    return sorted(int(i) for i in ids), n / c


def weights_of(task) -> np.ndarray:
    sizes = np.array([c.y.size for c in task.clients], dtype=float)
    return sizes / sizes.sum()


def dsgd_loop(cfg, task, rounds, sketch_of, v, batch=None, transpose=True, shift=True):
    """MAST Alg. 1 (distributed): y_m = v + S_m(x − v), g = Σ a_m w_m S_mᵀ ∇f_m(y_m), x −= γ g."""
    lr, seed, d = float(cfg["method"]["lr"]), int(cfg["seed"]), task.dim
    w = weights_of(task)
    v = v if shift else np.zeros(d)
    x, models = np.array(task.x0, dtype=float), []
    for t in range(1, rounds + 1):
        ids, a = cohort_of(cfg, t)
        g = np.zeros(d)
        for m in ids:
            s = sketch_of(t, m)
            y = v + s @ (x - v)
            rows = None
            if batch is not None:
                n = task.clients[m].y.size
                rows = np.sort(generator(seed, t, "dsgd/batch", m).choice(n, batch, replace=False))
            grad = logistic_grad(task.clients[m], y, rows)
            g += a * w[m] * (s.T @ grad if transpose else grad)
        x = x - lr * g
        models.append(x)
    return models


def lsvrdsg_loop(cfg, task, rounds, member, v, refresh_h=True, bracket_w=True):
    """L-SVRDSG: refresh rounds h = Σ_m w_m (1/b) Σ_{j∈B_m} S_jᵀ∇f_m(v + S_j(w − v)), g = h;
    other rounds g = h + Σ a_m w_m S_jᵀ(∇f_m(v + S_j(x − v)) − ∇f_m(v + S_j(w − v)));
    x −= γ g; the next round refreshes with probability p."""
    m_cfg = cfg["method"]
    lr, p, big_n, b = (float(m_cfg["lr"]), float(m_cfg["p"]), m_cfg["num_sketches"],
                       m_cfg["sketch_batch"])  # fmt: skip
    seed, d, w = int(cfg["seed"]), task.dim, weights_of(task)
    x = np.array(task.x0, dtype=float)
    ref, h, refresh, models, refreshes = x.copy(), None, True, [], []
    for t in range(1, rounds + 1):
        if refresh:
            refreshes.append(t)
            if h is None or refresh_h:
                ref, h = x.copy(), np.zeros(d)
                for m in range(task.num_clients):
                    chosen = generator(seed, t, "l_svrdsg/batch", m).choice(big_n, b, replace=False)
                    for j in sorted(int(j) for j in chosen):
                        s = member(j, m)
                        h += w[m] / b * (s.T @ logistic_grad(task.clients[m], v + s @ (ref - v)))
            g = h + 0.0
            if not refresh_h and len(refreshes) > 1:  # the stale variant: no new h, a plain step
                g = h.copy()
        else:
            ids, a = cohort_of(cfg, t)
            g = h.copy()
            for m in ids:
                j = int(generator(seed, t, "l_svrdsg/pick", m).choice(big_n, 1, replace=False)[0])
                s = member(j, m)
                gx = logistic_grad(task.clients[m], v + s @ (x - v))
                gw = logistic_grad(task.clients[m], v + s @ (ref - v)) if bracket_w else 0.0
                g += a * w[m] * (s.T @ (gx - gw))
        x = x - lr * g
        refresh = bool(generator(seed, t, "l_svrdsg/coin").random() < p)
        models.append(x)
    return models, refreshes


def fedsim_models(cfg) -> tuple[list[np.ndarray], object]:
    """fedsim's model after every round (inline), and the strategy."""
    strategy = server_fn(cfg, None, False, None).server.strategy
    nodes = make_nodes(client_factory(cfg), cfg["num_clients"], cfg["seed"])
    models: list[np.ndarray] = []
    run_rounds(strategy, nodes, cfg["num_rounds"], lambda rnd: models.append(strategy.x.copy()))
    return models, strategy


def deviation(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    return max(
        float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(got, want, strict=True)
    )


def assert_matches(got, want, variants: dict) -> None:
    assert deviation(got, want) <= REL
    for name, models in variants.items():
        assert deviation(got, models) > 1e-6, f"the wrong variant {name!r} matches fedsim too"


@pytest.fixture
def shift_file(tmp_path):
    """A 'pretrained' shift v (10 numbers) in a .npy file."""
    path = tmp_path / "v.npy"
    np.save(path, np.random.default_rng(5).normal(size=10))
    return path


# --------------------------------------------------------------------------- rule level
def test_dsgd_rand_k_cohort_unequal_clients_with_a_shift_matches_algorithm_1(compose, shift_file):
    cfg = compose(
        *SMALL, "partition=dirichlet", "sampler=uniform", "sampler.cohort_size=3",
        "method=dsgd", "method.sketch.name=rand_k", "method.sketch.q=0.3",
        f"method.shift={shift_file}", "method.lr=0.7", "num_rounds=3",
    )  # fmt: skip
    task = task_of(cfg)
    assert len({c.y.size for c in task.clients}) > 1  # unequal clients: w_m matters
    seed, d, k = cfg["seed"], task.dim, cfg["method"]["sketch"]["k"]
    assert k == 3
    v = np.load(shift_file)
    got, _ = fedsim_models(cfg)

    def sk(t, m):
        return rand_k_matrix(seed, t, "mast/sketch", m, d, k)

    def unscaled(t, m):
        return (sk(t, m) > 0).astype(float)

    want = dsgd_loop(cfg, task, 3, sk, v)
    assert_matches(got, want, {
        "no shift v": dsgd_loop(cfg, task, 3, sk, v, shift=False),
        "gradient not sketched back by Sᵀ": dsgd_loop(cfg, task, 3, sk, v, transpose=False),
        "sketch without the d/K scaling": dsgd_loop(cfg, task, 3, unscaled, v),
    })  # fmt: skip


def test_dsgd_variant_ii_bernoulli_minibatches_matches_algorithm_1(compose):
    p = [0.3, 0.5, 0.9, 1.0, 0.6, 0.4, 0.7, 0.8, 0.5, 0.2]
    cfg = compose(
        *SMALL, "sampler=full", "method=dsgd", "method.sketch.name=bernoulli",
        f"method.sketch.p=[{','.join(map(str, p))}]", "method.batch_size=8",
        "method.shift=x0", "task.x0_scale=0.5", "method.lr=0.5", "num_rounds=3",
    )  # fmt: skip
    task = task_of(cfg)
    seed = cfg["seed"]
    got, _ = fedsim_models(cfg)

    def sk(t, m):
        return bernoulli_matrix(seed, t, "mast/sketch", m, np.array(p))

    v = np.array(task.x0)
    assert np.abs(v).max() > 0
    want = dsgd_loop(cfg, task, 3, sk, v, batch=8)
    assert_matches(got, want, {
        "variant I (all samples)": dsgd_loop(cfg, task, 3, sk, v),
        "no shift v": dsgd_loop(cfg, task, 3, sk, v, shift=False),
    })  # fmt: skip


def test_l_svrdsg_matches_the_loopless_variance_reduced_loop(compose, shift_file):
    cfg = compose(
        *SMALL, "partition=dirichlet", "sampler=uniform", "sampler.cohort_size=2",
        "method=l_svrdsg", "method.num_sketches=6", "method.sketch_batch=4", "method.p=0.4",
        "method.sketch.q=0.4", f"method.shift={shift_file}", "method.lr=0.5", "num_rounds=8",
        "seed=2",
    )  # fmt: skip
    task = task_of(cfg)
    seed, d, k = cfg["seed"], task.dim, cfg["method"]["sketch"]["k"]
    v = np.load(shift_file)
    got, _ = fedsim_models(cfg)

    def member(j, m):
        return rand_k_matrix(seed, j, "mast/set", m, d, k)

    want, refreshes = lsvrdsg_loop(cfg, task, 8, member, v)
    assert refreshes[0] == 1 and len(refreshes) >= 2, refreshes  # a refresh after round 1
    assert len(refreshes) < 8  # and difference rounds
    stale, _ = lsvrdsg_loop(cfg, task, 8, member, v, refresh_h=False)
    no_w, _ = lsvrdsg_loop(cfg, task, 8, member, v, bracket_w=False)
    no_shift, _ = lsvrdsg_loop(cfg, task, 8, member, np.zeros(d))
    assert_matches(got, want, {
        "control variate never refreshed": stale,
        "bracket without −∇f_S(w)": no_w,
        "no shift v": no_shift,
    })  # fmt: skip


def test_mast_loss_column_is_f_d_over_the_evaluation_set(compose):
    cfg = compose(*SMALL, "sampler=full", "method=dsgd", "method.sketch.q=0.5",
                  "method.eval_sketches=7", "method.lr=0.5", "num_rounds=2")  # fmt: skip
    task = task_of(cfg)
    seed, d, k = cfg["seed"], task.dim, cfg["method"]["sketch"]["k"]
    strategy = server_fn(cfg, None, False, None).server.strategy
    nodes = make_nodes(client_factory(cfg), cfg["num_clients"], cfg["seed"])
    models = [np.array(task.x0, dtype=float)]
    run_rounds(strategy, nodes, 2, lambda rnd: models.append(strategy.x.copy()))
    w = weights_of(task)
    for row, x in zip(strategy.recorder.rows, models, strict=True):
        f_d = sum(
            w[m] / 7 * logistic_loss(task.clients[m], s @ x)
            for m in range(4)
            for s in (rand_k_matrix(seed, j, "mast/eval-set", m, d, k) for j in range(7))
        )
        assert row["mast_loss"] == pytest.approx(f_d, rel=REL)
        assert row["mast_gap"] is None and row["mast_dist_sq"] is None  # fresh draws: no F*


# --------------------------------------------------------------------------- special cases
def test_dsgd_with_the_identity_sketch_is_gradient_descent(compose):
    cfg = compose(*SMALL, "partition=dirichlet", "sampler=full", "method=dsgd",
                  "method.sketch.name=identity", "num_rounds=40")  # fmt: skip
    task = task_of(cfg)
    got, _ = fedsim_models(cfg)
    lr, x, want = cfg["method"]["lr"], np.array(task.x0, dtype=float), []
    for _ in range(40):
        x = x - lr * task.full.grad(x)
        want.append(x)
    assert deviation(got, want) <= 1e-12
    assert task.full.loss(want[-1]) < 0.9 * task.full.loss(task.x0)  # it moved


# --------------------------------------------------------------------------- convergence
CONVERGE = (*SMALL, "sampler=full", "method.num_sketches=5", "method.sketch.q=0.5",
            "method.lr=1.0", "num_rounds=1200", "eval_every=100")  # fmt: skip


def test_l_svrdsg_converges_linearly_to_the_mast_optimum_and_dsgd_stalls(compose):
    vr = run(compose(*CONVERGE, "method=l_svrdsg"), None)
    sgd = run(compose(*CONVERGE, "method=dsgd"), None)
    d_vr = np.array([r["mast_dist_sq"] for r in vr])
    d_sgd = np.array([r["mast_dist_sq"] for r in sgd])
    assert d_vr[0] == d_sgd[0] > 1.0  # the same MAST optimum, far from x0 = 0
    assert d_vr[-1] <= 1e-10 * d_vr[0]
    assert d_vr[-1] <= 1e-10
    # linear: every block of 100 rounds until 1e-20 divides the distance by at least 10
    live = d_vr[d_vr > 1e-20]
    assert np.all(live[1:] / live[:-1] < 0.1), live
    # DSGD with the same constant stepsize stays in a neighbourhood of the optimum
    assert d_sgd[-1] < 0.5 * d_sgd[0]  # it did approach
    assert d_sgd[len(d_sgd) // 2 :].min() > 1e-4  # but it stalls
    # gap columns: F(x) − F* ≥ 0 up to rounding, and the ERM optimum is not the MAST one
    assert min(r["mast_gap"] for r in vr) > -1e-12
    assert vr[-1]["dist_sq"] > 1e-3


def test_single_node_l_svrdsg_reaches_the_optimum_and_leaves_unsketched_coordinates(compose):
    """One client, 3 sketches of 2 coordinates: at most 6 of 10 coordinates are ever sketched;
    F does not depend on the others, which stay at x0 (and so does the reported optimum)."""
    cfg = compose(
        *SMALL[:-1], "num_clients=1", "sampler=full", "method=l_svrdsg", "method.num_sketches=3",
        "method.sketch.k=2", "task.x0_scale=0.5", "method.lr=0.5", "num_rounds=300",
        "eval_every=100",
    )  # fmt: skip
    models, strategy = fedsim_models(cfg)
    rows = strategy.recorder.rows
    x0 = np.array(task_of(cfg).x0)
    covered = np.zeros(10, dtype=bool)
    for j in range(3):
        covered[generator(cfg["seed"], j, "mast/set", 0).choice(10, size=2, replace=False)] = True
    assert 0 < covered.sum() <= 6 and np.abs(x0[~covered]).min() > 0
    np.testing.assert_array_equal(models[-1][~covered], x0[~covered])
    np.testing.assert_array_equal(strategy.mast_solution()[0][~covered], x0[~covered])
    assert rows[-1]["mast_dist_sq"] <= 1e-10 * rows[0]["mast_dist_sq"]


P10 = np.array([0.3, 0.5, 0.9, 1.0, 0.6, 0.4, 0.7, 0.8, 0.5, 0.2])


@pytest.mark.parametrize("sketch", ["rand_k", "bernoulli"])
def test_the_mast_optimum_zeroes_the_sketch_averaged_gradient(compose, shift_file, sketch):
    cfg = compose(
        *CONVERGE, "method=l_svrdsg", "partition=dirichlet", "num_rounds=1",
        f"method.sketch.name={sketch}", f"method.sketch.p=[{','.join(map(str, P10))}]",
        f"method.shift={shift_file}",
    )  # fmt: skip
    task = task_of(cfg)
    _, strategy = fedsim_models(cfg)
    x_star, f_star = strategy.mast_solution()
    seed, d, k, w = cfg["seed"], task.dim, cfg["method"]["sketch"]["k"], weights_of(task)
    v = np.load(shift_file)
    grad, loss = np.zeros(d), 0.0
    for m in range(task.num_clients):
        for j in range(5):
            if sketch == "rand_k":
                s = rand_k_matrix(seed, j, "mast/set", m, d, k)
            else:
                s = bernoulli_matrix(seed, j, "mast/set", m, P10)
            y = v + s @ (x_star - v)
            grad += w[m] / 5 * s.T @ logistic_grad(task.clients[m], y)
            loss += w[m] / 5 * logistic_loss(task.clients[m], y)
    assert np.linalg.norm(grad) < 1e-10
    assert f_star == pytest.approx(loss, rel=1e-12)
    x_erm, _ = task.optimum()
    assert np.sum((x_star - x_erm) ** 2) > 1e-3  # the MAST optimum is not the ERM one


# --------------------------------------------------------------------------- wire
def test_dsgd_sends_k_values_each_way_per_client(compose):
    cfg = compose(*SMALL, "sampler=uniform", "sampler.cohort_size=3", "method=dsgd",
                  "method.sketch.k=3", "num_rounds=2")  # fmt: skip
    rows = run(cfg, None)
    k_values = 8 * len(ndarray_to_bytes(np.zeros(3)))  # K float64 values, no indices
    for row in rows[1:]:
        assert row["up_bits"] == row["down_bits"] == 3 * k_values
        assert row["up_floats"] == row["down_floats"] == 3 * 3
        assert row["grad_evals"] == sum(
            task_of(cfg).clients[m].num_samples for m in cohort_of(cfg, row["round"])[0]
        )


def test_l_svrdsg_difference_rounds_send_two_sketched_models_and_get_one(compose):
    cfg = compose(*SMALL, "sampler=full", "method=l_svrdsg", "method.num_sketches=4",
                  "method.sketch_batch=2", "method.sketch.k=5", "method.p=0.01",
                  "num_rounds=3")  # fmt: skip
    rows = run(cfg, None)
    k_values = 8 * len(ndarray_to_bytes(np.zeros(5)))
    assert rows[1]["down_bits"] == rows[1]["up_bits"] == 4 * 2 * k_values  # refresh: b each
    for row in rows[2:]:  # p = 0.01: difference rounds
        assert row["down_bits"] == 4 * 2 * k_values and row["up_bits"] == 4 * k_values
        assert row["down_floats"] == 4 * 10 and row["up_floats"] == 4 * 5


def test_partition_sketches_tile_the_model_across_clients(compose):
    cfg = compose(*SMALL, "sampler=full", "method=dsgd", "method.sketch.name=partition",
                  "num_rounds=3")  # fmt: skip
    strategy = server_fn(cfg, None, False, None).server.strategy
    nodes = make_nodes(client_factory(cfg), cfg["num_clients"], cfg["seed"])
    seen = []

    def after(rnd):
        supports = [strategy._draws[m][0].idx for m in range(4)]
        assert np.array_equal(np.sort(np.concatenate(supports)), np.arange(10))
        seen.append(strategy.x.copy())

    run_rounds(strategy, nodes, 3, after)
    assert len(seen) == 3 and np.abs(seen[-1]).max() > 0


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("method=dsgd", "method.sketch.q=0"), r"q = K/d must lie in \(0, 1\]"),
        (("method=dsgd", "method.sketch.q=1.01"), r"q = K/d must lie in \(0, 1\]"),
        (("method=dsgd", "method.sketch.name=bernoulli", "method.sketch.p=0"), r"\(0, 1\]"),
        (("method=dsgd", "method.sketch.name=bernoulli", "method.sketch.p=1.5"), r"\(0, 1\]"),
        (("method=l_svrdsg", "method.sketch.k=11"), "k=11 is larger than the model"),
        (("method=dsgd", "method.sketch.name=partition", "method.sketch.blocks=11"),
         "blocks=11 is larger than the model"),
        (("method=l_svrdsg", "method.num_sketches=null"), "num_sketches must be an integer"),
        (("method=l_svrdsg", "method.sketch_batch=11"), "sketch_batch=11 exceeds"),
        (("method=l_svrdsg", "method.p=0"), r"method.p must lie in \(0, 1\]"),
        (("method=dsgd", "method.shift=/no/such/file.npy"), "method.shift must be"),
        (("method=dsgd", "method.lr=-1"), "method.lr must be a positive"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_at_config_time(compose, overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose(*SMALL, "sampler=full", *overrides)


def test_a_shift_of_the_wrong_size_is_refused(compose, tmp_path):
    path = tmp_path / "short.npy"
    np.save(path, np.zeros(7))
    with pytest.raises(ConfigError, match="the model needs 10 finite numbers"):
        compose(*SMALL, "sampler=full", "method=dsgd", f"method.shift={path}")


# --------------------------------------------------------------------------- resume, engines
def test_l_svrdsg_resumes_to_the_uninterrupted_run_with_the_mast_columns(compose, tmp_path):
    from fedsim.metrics import read_columns

    base = (*SMALL, "sampler=uniform", "sampler.cohort_size=2", "method=l_svrdsg",
            "method.p=0.3", "num_rounds=9", "seed=7")  # fmt: skip
    run(compose(*base), tmp_path / "full")
    crashing = compose(*base, "checkpoint_every=4")
    outdir = tmp_path / "crashed"
    strategy = server_fn(crashing, str(outdir), False, None).server.strategy
    nodes = make_nodes(client_factory(crashing), 4, 7)

    class Crash(Exception):
        pass

    def after(rnd):
        if rnd == 6:
            raise Crash

    with pytest.raises(Crash):
        run_rounds(strategy, nodes, 9, after)
    run(compose(*base), outdir, resume=True)
    a, b = read_columns(tmp_path / "full" / "metrics.csv"), read_columns(outdir / "metrics.csv")
    for column in ("loss", "dist_sq", "mast_loss", "mast_dist_sq", "up_bits", "down_bits"):
        np.testing.assert_array_equal(b[column], a[column], err_msg=column)
    assert np.isfinite(a["mast_dist_sq"]).all()


@pytest.mark.xdist_group("ray-engines")
def test_dsgd_distributed_agrees_on_inline_and_ray(compose, tmp_path):
    common = ("task=logreg_synthetic", "task.dim=10", "task.samples_per_client=20",
              "num_clients=3", "sampler=full", "method=dsgd", "method.sketch.q=0.3",
              "num_rounds=2", "seed=4")  # fmt: skip
    inline = run(compose(*common, "engine=inline"), tmp_path / "inline")
    ray = run(compose(*common, "engine=ray", "engine.round_timeout=120"), tmp_path / "ray")
    assert len(inline) == len(ray) == 3
    for column in ("loss", "dist_sq", "mast_loss", "up_bits", "down_bits", "grad_evals"):
        a = np.array([r[column] for r in inline], dtype=float)
        b = np.array([r[column] for r in ray], dtype=float)
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=0, err_msg=column)
    assert inline[-1]["loss"] < inline[0]["loss"]
