"""Tasks: gradients, minibatches, global objective, smoothness bounds, optima, loading, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.optimize as so
import scipy.sparse as sp

from fedsim.errors import ConfigError
from fedsim.tasks import optimum
from fedsim.tasks.data import load_libsvm, synthetic_client
from fedsim.tasks.logreg import BinaryLogistic, MultinomialLogistic
from fedsim.tasks.quadratic import Quadratic, smoothness_spread
from fedsim.tasks.registry import TASK_NAMES, build_task, clear_cache

A9A = Path(__file__).parents[2] / "shared" / "data" / "a9a"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path / "cache"))


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _binary_data(n: int = 60, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = _rng(seed)
    a = rng.normal(size=(n, d))
    y = np.where(a @ rng.normal(size=d) + 0.5 * rng.normal(size=n) > 0, 1.0, -1.0)
    return a, y


def _fd_grad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    e = np.eye(x.shape[0])
    return np.array([(f(x + h * e[i]) - f(x - h * e[i])) / (2 * h) for i in range(x.shape[0])])


def _objectives() -> dict[str, tuple[object, int]]:
    a, y = _binary_data()
    rng = _rng(1)
    am = rng.normal(size=(50, 5))
    ym = rng.integers(0, 4, size=50)
    return {
        "binary_dense": (BinaryLogistic(a, y, 0.1), 8),
        "binary_sparse": (BinaryLogistic(sp.csr_matrix(a * (a > 0.5)), y, 0.1, dense=False), 8),
        "multinomial": (MultinomialLogistic(am, ym, 4, 0.05), 20),
        "quadratic": (
            build_task({"name": "quadratic", "dim": 6}, {"name": "natural"}, 3, 0).clients[1],
            6,
        ),
    }


@pytest.mark.parametrize("name", ["binary_dense", "binary_sparse", "multinomial", "quadratic"])
def test_gradient_matches_finite_differences(name: str) -> None:
    obj, dim = _objectives()[name]
    x = _rng(2).normal(size=dim)
    np.testing.assert_allclose(obj.grad(x), _fd_grad(obj.loss, x), rtol=1e-6, atol=1e-7)
    if name != "quadratic":
        idx = np.array([3, 7, 11, 20])
        np.testing.assert_allclose(
            obj.grad(x, idx), _fd_grad(lambda z: obj.loss(z, idx), x), rtol=1e-6, atol=1e-7
        )


def test_mlp_gradient_matches_finite_differences() -> None:
    task = build_task({"name": "mlp_digits", "hidden": 4}, {"name": "iid"}, 4, 0)
    obj = task.clients[0]
    x = task.x0.copy()
    g = obj.grad(x)
    assert g.shape == (task.dim,) == (64 * 4 + 4 + 4 * 10 + 10,)
    coords = _rng(3).choice(task.dim, size=25, replace=False)
    e = np.eye(task.dim)[coords]
    fd = np.array([(obj.loss(x + 1e-6 * v) - obj.loss(x - 1e-6 * v)) / 2e-6 for v in e])
    np.testing.assert_allclose(g[coords], fd, rtol=1e-5, atol=1e-8)
    assert 0.0 <= obj.accuracy(x) <= 1.0


@pytest.mark.parametrize("name", ["binary_dense", "binary_sparse", "multinomial"])
def test_minibatch_loss_is_batch_mean(name: str) -> None:
    obj, dim = _objectives()[name]
    x = _rng(4).normal(size=dim)
    idx = np.array([0, 5, 9, 13, 21])
    singles = [obj.loss(x, np.array([j])) for j in idx]
    assert obj.loss(x, idx) == pytest.approx(np.mean(singles), rel=1e-12)
    grads = [obj.grad(x, np.array([j])) for j in idx]
    np.testing.assert_allclose(obj.grad(x, idx), np.mean(grads, axis=0), rtol=1e-10, atol=1e-14)
    everyone = np.arange(obj.num_samples)
    assert obj.loss(x, everyone) == pytest.approx(obj.loss(x), rel=1e-12)


def test_sparse_and_dense_agree() -> None:
    a, y = _binary_data()
    a = a * (a > 0.3)
    dense, sparse = BinaryLogistic(a, y, 0.01), BinaryLogistic(sp.csr_matrix(a), y, 0.01, False)
    x = _rng(5).normal(size=a.shape[1])
    assert dense.loss(x) == pytest.approx(sparse.loss(x), rel=1e-13)
    np.testing.assert_allclose(dense.grad(x), sparse.grad(x), rtol=1e-12)
    np.testing.assert_allclose(dense.hessian(x), sparse.hessian(x), rtol=1e-12, atol=1e-15)
    assert dense.smoothness == pytest.approx(sparse.smoothness, rel=1e-10)
    assert dense.accuracy(x) == sparse.accuracy(x)


TASKS = [
    ({"name": "logreg_synthetic", "dim": 5, "samples_per_client": 30}, {"name": "natural"}),
    ({"name": "logreg_synthetic", "dim": 5, "samples_per_client": 30}, {"name": "dirichlet"}),
    ({"name": "logreg_libsvm", "path": str(A9A), "max_samples": 500}, {"name": "by_label"}),
    ({"name": "logreg_sklearn", "dataset": "wine"}, {"name": "sorted"}),
    ({"name": "logreg_sklearn", "dataset": "wine", "multiclass": "multinomial"}, {"name": "iid"}),
    ({"name": "quadratic", "dim": 4}, {"name": "natural"}),
    ({"name": "mlp_digits", "hidden": 8}, {"name": "dirichlet", "alpha": 1.0}),
]


@pytest.mark.parametrize(("task_cfg", "part_cfg"), TASKS, ids=lambda c: c["name"])
def test_full_loss_is_weighted_client_sum(task_cfg: dict, part_cfg: dict) -> None:
    task = build_task(task_cfg, part_cfg, 5, seed=7)
    assert task.num_clients == 5 and task.x0.shape == (task.dim,)
    assert task.weights.sum() == pytest.approx(1.0)
    for x in (task.x0, task.x0 + 0.3 * _rng(6).normal(size=task.dim)):
        weighted = sum(w * c.loss(x) for w, c in zip(task.weights, task.clients, strict=True))
        assert task.full.loss(x) == pytest.approx(weighted, rel=1e-11)
        grads = sum(w * c.grad(x) for w, c in zip(task.weights, task.clients, strict=True))
        np.testing.assert_allclose(task.full.grad(x), grads, rtol=1e-9, atol=1e-12)


def _fd_lambda_max(obj, x: np.ndarray, iters: int = 200) -> float:
    """Largest Hessian eigenvalue by power iteration on finite differences of the gradient."""
    v = _rng(8).normal(size=x.shape[0])
    lam = 0.0
    for _ in range(iters):
        v /= np.linalg.norm(v)
        hv = (obj.grad(x + 1e-5 * v) - obj.grad(x - 1e-5 * v)) / 2e-5
        lam = float(v @ hv)
        v = hv
    return lam


@pytest.mark.parametrize("name", ["binary_dense", "binary_sparse", "multinomial", "quadratic"])
def test_smoothness_bounds_hessian(name: str) -> None:
    obj, dim = _objectives()[name]
    for scale in (0.0, 0.3, 3.0):
        x = scale * _rng(9).normal(size=dim)
        lam = _fd_lambda_max(obj, x)
        assert lam <= obj.smoothness * (1 + 1e-6)
        assert np.linalg.eigvalsh(obj.hessian(x))[-1] == pytest.approx(lam, rel=1e-4)
    for j in (0, 3):  # every sample's function is sample_smoothness-smooth
        single = _fd_lambda_max_single(obj, j, dim)
        assert single <= obj.sample_smoothness * (1 + 1e-6)
    if name == "binary_dense":  # at x = 0 the bound is tight: σ'(0) = 1/4
        assert _fd_lambda_max(obj, np.zeros(dim)) == pytest.approx(obj.smoothness, rel=1e-5)


def _fd_lambda_max_single(obj, j: int, dim: int) -> float:
    class One:
        def grad(self, x: np.ndarray) -> np.ndarray:
            return obj.grad(x, np.array([j]))

    return _fd_lambda_max(One(), np.zeros(dim), iters=50)


@pytest.mark.parametrize("multinomial", [False, True])
def test_newton_matches_lbfgs(multinomial: bool) -> None:
    if multinomial:
        rng = _rng(10)
        a, y = rng.normal(size=(80, 4)), rng.integers(0, 3, size=80)
        obj = MultinomialLogistic(a, y, 3, 0.05)
    else:
        a, y = _binary_data(80, 6, seed=11)
        obj = BinaryLogistic(a, y, 0.02)
    x_star, f_star = optimum.newton(obj, np.zeros(obj.dim))
    assert np.linalg.norm(obj.grad(x_star)) <= 1e-12 * max(
        1.0, np.linalg.norm(obj.grad(0 * x_star))
    )
    ref = so.minimize(
        obj.loss,
        np.zeros(obj.dim),
        jac=obj.grad,
        method="L-BFGS-B",
        options={"gtol": 1e-12, "ftol": 1e-16, "maxiter": 10_000},
    )
    np.testing.assert_allclose(x_star, ref.x, atol=1e-6)
    assert f_star == pytest.approx(ref.fun, abs=1e-12)
    assert f_star == obj.loss(x_star)


def test_task_optimum_is_cached_on_disk(tmp_path: Path) -> None:
    optimum._MEMORY.clear()
    clear_cache()
    task = build_task({"name": "logreg_sklearn"}, {"name": "iid"}, 4, seed=0)
    x_star, f_star = task.optimum()
    assert np.linalg.norm(task.full.grad(x_star)) < 1e-10
    assert all(np.linalg.norm(c.grad(x_star)) > 1e-6 for c in task.clients)  # heterogeneous
    files = list((tmp_path / "cache").glob("optimum-*.npz"))
    assert len(files) == 1
    optimum._MEMORY.clear()
    with np.load(files[0]) as z:
        z_x = z["x"]
    np.testing.assert_array_equal(z_x, x_star)
    x2, f2 = optimum.cached(task.full.fingerprint(), lambda: pytest.fail("recomputed"))
    np.testing.assert_array_equal(x2, x_star)
    assert f2 == f_star
    data = files[0].read_bytes()
    for corrupt in (b"", data[: len(data) // 2], b"not a zip file"):  # recomputed, not a crash
        files[0].write_bytes(corrupt)
        optimum._MEMORY.clear()
        x3, _ = optimum.cached(task.full.fingerprint(), lambda: (x_star + 1.0, f_star))
        np.testing.assert_array_equal(x3, x_star + 1.0)


def test_quadratic_optimum_and_smoothness() -> None:
    task = build_task(
        {"name": "quadratic", "dim": 5, "L_min": 2.0, "L_max": 50.0, "mu": 0.5},
        {"name": "natural"},
        4,
        seed=1,
    )
    x_star, f_star = task.optimum()
    g = sum(w * c.grad(x_star) for w, c in zip(task.weights, task.clients, strict=True))
    assert np.linalg.norm(g) < 1e-12
    f = sum(w * c.loss(x_star) for w, c in zip(task.weights, task.clients, strict=True))
    assert f_star == pytest.approx(f, rel=1e-12)
    np.testing.assert_allclose(task.client_L, smoothness_spread(4, 2.0, 50.0), rtol=1e-12)
    assert task.client_L[0] == pytest.approx(2.0) and task.client_L[-1] == pytest.approx(50.0)
    for c in task.clients:
        assert isinstance(c, Quadratic) and c.strong_convexity == pytest.approx(0.5)
        assert c.num_samples == 1
    assert task.mu == 0.5 and task.num_clients == 4


def test_quadratic_heterogeneity_zero_shares_minimizer() -> None:
    task = build_task({"name": "quadratic", "heterogeneity": 0.0}, {"name": "natural"}, 3, 2)
    x_star, _ = task.optimum()
    assert all(np.linalg.norm(c.grad(x_star)) < 1e-10 for c in task.clients)


def test_quadratic_shared_rotation_keeps_the_condition_number() -> None:
    opts = {"name": "quadratic", "dim": 6, "L_min": 5.0, "L_max": 80.0, "mu": 1.0}
    shared = build_task({**opts, "rotation": "shared"}, {"name": "natural"}, 5, 3)
    mixed = build_task(opts, {"name": "natural"}, 5, 3)
    a0 = shared.clients[0].a
    for c in shared.clients:  # one eigenbasis: the Hessians commute
        np.testing.assert_allclose(c.a @ a0, a0 @ c.a, atol=1e-9)
    assert shared.full.strong_convexity == pytest.approx(1.0)  # f keeps μ along the shared axis
    assert mixed.full.strong_convexity > 2.0  # random axes average the small curvatures away
    with pytest.raises(ConfigError, match="task.rotation"):
        build_task({**opts, "rotation": "tilted"}, {"name": "natural"}, 5, 3)


def test_libsvm_a9a_loads() -> None:
    assert A9A.is_file(), f"{A9A} is missing: the shared data folder must hold a9a"
    a, y = load_libsvm(A9A, max_samples=300)
    assert a.shape == (300, 123) and set(np.unique(y)) == {-1.0, 1.0}
    task = build_task(
        {"name": "logreg_libsvm", "path": str(A9A), "max_samples": 300}, {"name": "iid"}, 3, 0
    )
    assert task.dim == 123 and task.sizes.tolist() == [100.0, 100.0, 100.0]
    assert task.mu == 1e-3 and task.L < 0.25 * 14 + 1e-3 + 1e-12  # rows of a9a have 14 ones
    x_star, _ = task.optimum()
    assert task.full.accuracy(x_star) > 0.8


def test_libsvm_labels_mapped_to_pm_one(tmp_path: Path) -> None:
    path = tmp_path / "tiny.svm"
    path.write_text("2 1:1 3:0.5\n1 2:1\n2 1:0.2\n1 3:1\n")
    a, y = load_libsvm(path, num_features=4)
    assert a.shape == (4, 4) and y.tolist() == [1.0, -1.0, 1.0, -1.0]


def test_missing_libsvm_path_is_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "a9a"
    with pytest.raises(ConfigError, match=r"nowhere.*shared/data"):
        build_task({"name": "logreg_libsvm", "path": str(missing)}, {"name": "iid"}, 2, 0)


def test_synthetic_is_deterministic_and_heterogeneous() -> None:
    a1, y1 = synthetic_client(3, 10, 50, 1.0, 1.0, seed=0)
    a2, y2 = synthetic_client(3, 10, 50, 1.0, 1.0, seed=0)
    a3, _ = synthetic_client(3, 10, 50, 1.0, 1.0, seed=1)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.allclose(a1, a3)
    assert set(np.unique(y1)) <= {-1.0, 1.0}
    task = build_task({"name": "logreg_synthetic"}, {"name": "natural"}, 4, 0)
    assert task.dim == 20 and task.sizes.tolist() == [100.0] * 4 and task.mu == 0.01
    np.testing.assert_allclose(np.linalg.norm(task.full.a, axis=1), 1.0)  # normalize: true
    assert np.all(task.x0 == 0)


def test_sklearn_variants() -> None:
    ovr = build_task(
        {"name": "logreg_sklearn", "dataset": "digits", "positive_class": 3}, {"name": "iid"}, 3, 0
    )
    assert ovr.dim == 64 and np.mean(ovr.full.y == 1) == pytest.approx(183 / 1797)
    multi = build_task(
        {"name": "logreg_sklearn", "dataset": "digits", "multiclass": "multinomial"},
        {"name": "by_label", "classes_per_client": 3},
        10,
        0,
    )
    assert multi.dim == 640
    assert all(len(np.unique(c.y)) <= 3 for c in multi.clients)
    x_star, _ = build_task(
        {"name": "logreg_sklearn", "dataset": "wine", "multiclass": "multinomial"},
        {"name": "iid"},
        2,
        0,
    ).optimum()
    assert x_star.shape == (13 * 3,)


def test_mlp_task() -> None:
    task = build_task({"name": "mlp_digits"}, {"name": "iid"}, 5, seed=0)
    assert task.dim == 64 * 32 + 32 + 32 * 10 + 10 and task.mu == 0.0
    assert task.optimum() is None and task.L == 10.0
    same = build_task({"name": "mlp_digits", "L": 10.0}, {"name": "iid"}, 5, seed=0)
    other = build_task({"name": "mlp_digits"}, {"name": "iid"}, 5, seed=1)
    np.testing.assert_array_equal(task.x0, same.x0)
    assert not np.allclose(task.x0, other.x0)
    assert np.abs(task.x0[: 64 * 32]).max() <= 1 / 8  # U(±1/√64)
    x = task.x0.copy()
    obj = task.clients[0]
    for _ in range(30):  # plain gradient descent makes progress
        x -= 0.5 * obj.grad(x)
    assert obj.loss(x) < obj.loss(task.x0) - 0.5


def test_build_cache_and_read_only_x0() -> None:
    cfg = {"name": "logreg_sklearn", "l2": 0.05}
    task = build_task(cfg, {"name": "iid"}, 3, 0)
    assert build_task(dict(cfg), {"name": "iid"}, 3, 0) is task
    assert build_task(cfg, {"name": "iid"}, 3, 1) is not task
    with pytest.raises(ValueError):
        task.x0[0] = 1.0


@pytest.mark.parametrize(
    ("task_cfg", "part_cfg", "match"),
    [
        ({"name": "nope"}, {"name": "iid"}, "valid choices: " + ", ".join(sorted(TASK_NAMES))),
        ({"name": "quadratic"}, {"name": "iid"}, "partition=natural"),
        ({"name": "logreg_sklearn"}, {"name": "natural"}, "natural"),
        ({"name": "logreg_sklearn", "datset": "wine"}, {"name": "iid"}, "unknown key"),
        ({"name": "logreg_sklearn", "dataset": "iris"}, {"name": "iid"}, "breast_cancer, digits"),
        ({"name": "logreg_sklearn", "multiclass": "x"}, {"name": "iid"}, "multinomial, ovr"),
        (
            {"name": "logreg_sklearn", "dataset": "wine", "positive_class": 5},
            {"name": "iid"},
            "positive_class",
        ),
        ({"name": "logreg_sklearn", "l2": -1}, {"name": "iid"}, "task.l2"),
        ({"name": "quadratic", "mu": 2.0, "L_min": 1.0}, {"name": "natural"}, "L_min"),
        ({"name": "mlp_digits", "activation": "gelu"}, {"name": "iid"}, "relu, tanh"),
        ({"name": "logreg_sklearn"}, {"name": "iid", "beta": 1}, "unknown key"),
    ],
)
def test_config_errors(task_cfg: dict, part_cfg: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_task(task_cfg, part_cfg, 3, 0)
