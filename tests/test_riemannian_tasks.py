"""Riemannian tasks: pca_sphere and karcher_spd against independent computations.

x* and f* against ``numpy.linalg.eigh`` on the pooled data (PCA) and the closed form for commuting
matrices (Karcher); gradients against finite differences along geodesics; the stated constants
(geodesic smoothness, strong convexity, ζ and its diameter) against second derivatives along
geodesics and brute-force distances; refusals; metrics columns; Hydra composition.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import yaml

from fedsim.blocks.manifolds import SPD, Manifold, Sphere, curvature_factor
from fedsim.build import task_of
from fedsim.errors import ConfigError
from fedsim.metrics import evaluate
from fedsim.tasks.base import Task
from fedsim.tasks.registry import TASK_DEFAULTS, TASK_NAMES, build_task

ROOT = Path(__file__).resolve().parents[1]
A9A = ROOT.parent / "shared" / "data" / "a9a"
PCA = {"name": "pca_sphere", "dim": 6, "samples_per_client": 40}
KARCHER = {"name": "karcher_spd", "n": 3, "samples_per_client": 6, "spread": 0.8}


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _pca(partition: str = "natural", clients: int = 5, seed: int = 0, **kw: object) -> Task:
    return build_task({**PCA, **kw}, {"name": partition}, clients, seed)


def _karcher(partition: str = "natural", clients: int = 4, seed: int = 0, **kw: object) -> Task:
    return build_task({**KARCHER, **kw}, {"name": partition}, clients, seed)


def _geodesic_fd(
    task: Task, f: Callable[[np.ndarray], float], x: np.ndarray, v: np.ndarray, h: float = 1e-5
) -> float:
    m = task.geometry
    return (f(m.exp(x, h * v)) - f(m.exp(x, -h * v))) / (2 * h)


def _second_derivative(
    f: Callable[[np.ndarray], float], m: Manifold, x: np.ndarray, v: np.ndarray, h: float = 1e-4
) -> float:
    return (f(m.exp(x, h * v)) - 2 * f(x) + f(m.exp(x, -h * v))) / h**2


# --------------------------------------------------------------------------- pca_sphere


def test_pca_optimum_is_the_top_eigenvector_of_the_pooled_data() -> None:
    task = _pca()
    z = np.vstack([c.z for c in task.clients])
    lam, vec = np.linalg.eigh(z.T @ z / z.shape[0])  # independent: the pooled rows
    x_star, f_star = task.optimum()
    assert isinstance(task.manifold, Sphere) and task.dim == 6 and task.mu == 0.0
    assert task.zeta == 1.0
    assert f_star == pytest.approx(-lam[-1] / 2, rel=1e-12)
    assert min(np.linalg.norm(x_star - vec[:, -1]), np.linalg.norm(x_star + vec[:, -1])) < 1e-10
    assert task.full.loss(x_star) == pytest.approx(f_star, rel=1e-12)
    rgrad = task.geometry.egrad_to_rgrad(x_star, task.full.grad(x_star))
    assert np.linalg.norm(rgrad) < 1e-12
    m = task.geometry
    for _ in range(20):  # f* is below every other point of the sphere
        assert task.full.loss(m.random_point(_rng(1))) >= f_star


def test_pca_synthetic_eigengap_and_spectrum() -> None:
    """Population spectrum (1 + gap, 1, ..., 0.1); a large pooled sample shows that gap."""
    task = build_task(
        {"name": "pca_sphere", "dim": 4, "samples_per_client": 2000, "eigengap": 1.5},
        {"name": "natural"},
        10,
        0,
    )
    lam = np.linalg.eigvalsh(task.full.second_moment())
    assert lam[-1] - lam[-2] == pytest.approx(1.5, abs=0.1)
    np.testing.assert_allclose(lam[::-1], [2.5, 1.0, 0.55, 0.1], atol=0.1)


def test_pca_gradients_match_finite_differences_along_geodesics() -> None:
    task = _pca()
    m, obj = task.geometry, task.clients[2]
    rng = _rng(2)
    idx = np.array([0, 3, 7, 11])
    for sel in (None, idx):
        x = m.random_point(rng)
        v = m.random_tangent(x, rng)
        rgrad = m.egrad_to_rgrad(x, obj.grad(x, sel))
        fd = _geodesic_fd(task, lambda p, s=sel: obj.loss(p, s), x, v)
        assert fd == pytest.approx(m.inner(x, rgrad, v), rel=1e-7, abs=1e-9)
        e = np.eye(task.dim)  # and the Euclidean gradient of the ambient extension
        fd_e = [(obj.loss(x + 1e-6 * ei, sel) - obj.loss(x - 1e-6 * ei, sel)) / 2e-6 for ei in e]
        np.testing.assert_allclose(obj.grad(x, sel), fd_e, rtol=1e-6, atol=1e-8)


def test_pca_geodesic_smoothness_bound() -> None:
    """L_m = λ_max(A_m) − λ_min(A_m) bounds |d²/dt² f_m(Exp_x(tv))| for unit v, and is attained
    at x = top, v = bottom eigenvector; per sample the bound is ‖z_j‖²."""
    task = _pca()
    m, rng = task.geometry, _rng(3)
    for obj in task.clients[:3]:
        lam, vec = np.linalg.eigh(obj.second_moment())
        assert obj.smoothness == pytest.approx(lam[-1] - lam[0], rel=1e-12)
        for _ in range(10):
            x = m.random_point(rng)
            v = m.random_tangent(x, rng)
            v /= np.linalg.norm(v)
            assert abs(_second_derivative(obj.loss, m, x, v)) <= obj.smoothness * (1 + 1e-5)
        top, bottom = vec[:, -1], vec[:, 0]
        assert _second_derivative(obj.loss, m, top, bottom) == pytest.approx(
            obj.smoothness, rel=1e-5
        )
        assert obj.sample_smoothness == pytest.approx(np.max(np.sum(obj.z**2, axis=1)))


def test_pca_metrics_are_riemannian_and_sign_invariant() -> None:
    task = _pca()
    x_star, _ = task.optimum()
    m = task.geometry
    v = m.random_tangent(x_star, _rng(4))
    v *= 0.3 / np.linalg.norm(v)
    for sign in (1.0, -1.0):  # both ±x* are solutions
        row = evaluate(task, m.exp(sign * x_star, sign * v))
        assert row["dist_sq"] == pytest.approx(0.09, rel=1e-10)
        assert evaluate(task, sign * x_star)["dist_sq"] == pytest.approx(0.0, abs=1e-24)
    x = m.random_point(_rng(5))
    g = task.full.grad(x)
    row = evaluate(task, x)
    assert row["grad_norm_sq"] == pytest.approx(float(np.sum((g - (x @ g) * x) ** 2)), rel=1e-12)
    assert row["grad_norm_sq"] < float(g @ g)  # not the Euclidean norm
    theta = math.acos(abs(float(x @ x_star)))
    assert row["dist_sq"] == pytest.approx(theta**2, rel=1e-9)
    assert row["gap"] == pytest.approx(task.full.loss(x) - task.optimum()[1])


def test_pca_x0_seeded_on_the_sphere_or_given() -> None:
    task = _pca()
    assert abs(np.linalg.norm(task.x0) - 1) < 1e-15
    np.testing.assert_array_equal(task.x0, _pca().x0)
    assert not np.allclose(task.x0, _pca(seed=1).x0)
    given = np.array([0.0, 0.6, 0.0, 0.8, 0.0, 0.0])
    np.testing.assert_array_equal(_pca(x0=given.tolist()).x0, given)


@pytest.mark.parametrize(
    ("cfg", "partition", "match"),
    [
        ({"x0": [1.0, 1.0, 0, 0, 0, 0]}, "natural", "unit sphere"),
        ({"x0": [1.0, 0.0]}, "natural", "shape"),
        ({"x0": "north"}, "natural", "numbers"),
        ({"eigengap": 0.0}, "natural", "task.eigengap"),
        ({"dim": 1}, "natural", "task.dim"),
        ({"source": "hub"}, "natural", "libsvm, sklearn, synthetic"),
        ({"source": "sklearn", "dataset": "wine"}, "natural", "natural"),
        ({"eigen_gap": 1.0}, "natural", "unknown key"),
        ({}, "bogus", "valid choices"),
    ],
)
def test_pca_refusals(cfg: dict, partition: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _pca(partition, **cfg)


def test_pca_partitions_reuse_the_partition_code() -> None:
    natural = _pca()
    assert [c.num_samples for c in natural.clients] == [40] * 5
    iid = _pca("iid")
    assert sum(c.num_samples for c in iid.clients) == 200
    np.testing.assert_allclose(iid.optimum()[1], natural.optimum()[1], rtol=1e-12)  # same rows
    srt = _pca("sorted")  # by energy along the top direction: heterogeneous clients
    energy = [float(np.linalg.eigvalsh(c.second_moment())[-1]) for c in srt.clients]
    assert energy == sorted(energy) and energy[-1] > 2 * energy[0]
    rep = _pca("replicated")
    assert all(c is rep.full for c in rep.clients)
    byz = build_task(PCA, {"name": "natural"}, 5, 0, byzantine=(0, 3))
    honest = np.vstack([byz.clients[m].z for m in (1, 2, 4)])
    lam = np.linalg.eigvalsh(honest.T @ honest / honest.shape[0])
    assert byz.optimum()[1] == pytest.approx(-lam[-1] / 2, rel=1e-12)


def test_pca_from_a_libsvm_file_centered() -> None:
    assert A9A.is_file(), f"{A9A} is missing: the shared data folder must hold a9a"
    from fedsim.tasks.data import load_libsvm

    task = build_task(
        {"name": "pca_sphere", "source": "libsvm", "path": str(A9A), "max_samples": 400},
        {"name": "by_label"},
        4,
        0,
    )
    a = load_libsvm(A9A, max_samples=400)[0].toarray()
    a -= a.mean(axis=0)
    lam, vec = np.linalg.eigh(a.T @ a / a.shape[0])
    x_star, f_star = task.optimum()
    assert task.dim == 123 and f_star == pytest.approx(-lam[-1] / 2, rel=1e-12)
    assert abs(abs(float(x_star @ vec[:, -1])) - 1) < 1e-10
    # uncentered, unit rows: the rows stay sparse and give the same gradients as dense ones
    cfg = {"name": "pca_sphere", "source": "libsvm", "path": str(A9A), "max_samples": 400}
    sparse = build_task({**cfg, "center": False, "normalize": True}, {"name": "iid"}, 4, 0)
    obj = sparse.clients[1]
    assert sp.issparse(obj.z) and sparse.full.sample_smoothness == pytest.approx(1.0)
    dense = obj.z.toarray()
    x, idx = sparse.x0, np.array([0, 2, 5])
    np.testing.assert_allclose(obj.grad(x, idx), -dense[idx].T @ (dense[idx] @ x) / 3, atol=1e-15)


def test_pca_from_sklearn_with_unit_rows() -> None:
    task = build_task(
        {"name": "pca_sphere", "source": "sklearn", "dataset": "wine", "normalize": True},
        {"name": "iid"},
        3,
        0,
    )
    assert task.dim == 13 and task.full.sample_smoothness == pytest.approx(1.0)
    z = task.full.z
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-12)
    lam = np.linalg.eigvalsh(z.T @ z / z.shape[0])
    assert task.optimum()[1] == pytest.approx(-lam[-1] / 2, rel=1e-12)


# --------------------------------------------------------------------------- karcher_spd


def _commuting(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matrices Q diag(λ_j) Qᵀ sharing eigenvectors, and their spectra λ (k × n)."""
    rng = _rng(seed)
    q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    lam = np.exp(rng.normal(size=(k, n)))
    return np.einsum("ij,kj,lj->kil", q, lam, q), q, lam


def test_karcher_solver_matches_the_commuting_closed_form() -> None:
    """X* = Q diag(exp(mean_j log λ_j)) Qᵀ; with Byzantine clients only the honest matrices."""
    mats, q, lam = _commuting(4, 9, 6)
    cfg = {"name": "karcher_spd", "matrices": mats.tolist()}
    task = build_task(cfg, {"name": "natural"}, 3, 0)
    closed = (q * np.exp(np.log(lam).mean(axis=0))) @ q.T
    x_star, f_star = task.optimum()
    np.testing.assert_allclose(x_star.reshape(4, 4), closed, atol=1e-12)
    dev = np.log(lam) - np.log(lam).mean(axis=0)
    assert f_star == pytest.approx(0.5 * np.mean(np.sum(dev**2, axis=1)), rel=1e-12)
    byz = build_task(cfg, {"name": "natural"}, 3, 0, byzantine=(1,))  # blocks 0-2, 3-5, 6-8
    honest = np.log(lam[[0, 1, 2, 6, 7, 8]]).mean(axis=0)
    np.testing.assert_allclose(
        byz.optimum()[0].reshape(4, 4), (q * np.exp(honest)) @ q.T, atol=1e-12
    )


def test_karcher_optimum_is_stationary_and_strongly_convex() -> None:
    task = _karcher()
    m = task.geometry
    x_star, f_star = task.optimum()
    assert isinstance(m, SPD) and task.mu == 1.0 and task.dim == 9
    m.check_point(x_star, tol=1e-12)
    assert m.norm_sq(x_star, task.full.riemannian_grad(x_star)) < 1e-26
    assert evaluate(task, x_star)["grad_norm_sq"] < 1e-26
    rng = _rng(7)
    for _ in range(5):  # ½‖v‖² ≤ f(Exp_{x*} v) − f* ≤ ½ ζ ‖v‖² near x*
        v = m.random_tangent(x_star, rng)
        v *= 0.2 / math.sqrt(m.norm_sq(x_star, v))
        rise = task.full.loss(m.exp(x_star, v)) - f_star
        assert 0.5 * 0.04 * (1 - 1e-9) <= rise <= 0.5 * task.zeta * 0.04 * (1 + 1e-9)


def test_karcher_gradients_match_finite_differences() -> None:
    task = _karcher()
    m, obj = task.geometry, task.clients[1]
    rng = _rng(8)
    x = m.random_point(rng)
    v = m.random_tangent(x, rng)
    rgrad = m.egrad_to_rgrad(x, obj.grad(x))
    np.testing.assert_allclose(rgrad, obj.riemannian_grad(x), atol=1e-12)
    mean_log = np.mean([m.log(x, SPD.flat(a)) for a in obj.mats], axis=0)
    np.testing.assert_allclose(rgrad, -mean_log, atol=1e-12)
    assert _geodesic_fd(task, obj.loss, x, v) == pytest.approx(m.inner(x, rgrad, v), rel=1e-7)
    idx = np.array([0, 4])
    fd = _geodesic_fd(task, lambda p: obj.loss(p, idx), x, v)
    assert fd == pytest.approx(m.inner(x, m.egrad_to_rgrad(x, obj.grad(x, idx)), v), rel=1e-7)
    # the Euclidean gradient along a symmetric ambient direction
    s = m.proj(x, rng.standard_normal(9))
    fd_e = (obj.loss(x + 1e-6 * s) - obj.loss(x - 1e-6 * s)) / 2e-6
    assert fd_e == pytest.approx(float(obj.grad(x) @ s), rel=1e-6)


def test_karcher_constants_diameter_and_zeta() -> None:
    """D is the exact diameter of {x0} ∪ {A_j} (brute force), ζ = √½D/tanh(√½D), and on that
    set the second derivative of every f_m along unit geodesics lies in [1, ζ]."""
    task = _karcher()
    m = task.geometry
    points = [task.x0] + [SPD.flat(a) for c in task.clients for a in c.mats]
    brute = max(math.sqrt(m.dist_sq(p, q)) for p in points for q in points)
    assert task.full.diameter == pytest.approx(brute, rel=1e-10)
    s = math.sqrt(0.5) * brute
    assert task.zeta == pytest.approx(s / math.tanh(s), rel=1e-10) == task.L
    assert task.zeta == pytest.approx(curvature_factor(-0.5, brute))
    assert all(c.smoothness == task.zeta for c in task.clients)
    rng = _rng(9)
    for x in [task.x0, task.optimum()[0], points[3]]:
        for obj in task.clients:
            v = m.random_tangent(x, rng)
            v /= math.sqrt(m.norm_sq(x, v))
            second = _second_derivative(obj.loss, m, x, v)
            assert 1 - 1e-5 <= second <= task.zeta * (1 + 1e-5)


def test_karcher_synthetic_data_and_x0() -> None:
    task = _karcher()
    np.testing.assert_array_equal(task.x0, np.eye(3).reshape(-1))
    assert [c.num_samples for c in task.clients] == [6] * 4
    for c in task.clients:
        for a in c.mats:
            SPD(3).check_point(SPD.flat(a), tol=1e-13)
    other = _karcher(seed=1)
    assert not np.allclose(task.full.mats, other.full.mats)
    np.testing.assert_array_equal(task.full.mats, _karcher().full.mats)
    x0 = np.diag([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(_karcher(x0=x0.tolist()).x0, x0.reshape(-1))
    srt = _karcher("sorted")
    logdet = [np.linalg.slogdet(c.mats)[1] for c in srt.clients]
    assert all(a.max() <= b.min() for a, b in zip(logdet, logdet[1:], strict=False))


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"matrices": [[[1.0, 2.0], [2.0, 1.0]]] * 4}, r"matrices\[0\].*positive definite"),
        ({"matrices": [np.eye(2).tolist()] * 3 + [[[1.0, 0.5], [0.0, 1.0]]]}, "symmetric"),
        ({"matrices": [[1.0, 2.0], [3.0, 4.0]]}, "n × n matrices"),
        ({"matrices": [np.eye(2).tolist()] * 2}, "every client needs a matrix"),
        ({"x0": [[1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]]}, "task.x0.*positive definite"),
        ({"x0": [[1.0, 0], [0, 1.0]]}, "shape"),
        ({"spread": -1.0}, "task.spread"),
        ({"n": 0}, "task.n"),
        ({"centre": 1}, "unknown key"),
    ],
)
def test_karcher_refusals(cfg: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _karcher(**cfg)


# --------------------------------------------------------------------------- plumbing


def test_composition_from_the_command_line(compose: Callable[..., dict]) -> None:
    base = ("engine=inline", "sampler=full", "num_clients=4")
    task = task_of(compose(*base, "task=karcher_spd", "task.n=2"))
    assert task.name == "karcher_spd" and task.dim == 4 and task.num_clients == 4
    task = task_of(compose(*base, "task=pca_sphere", "task.dim=3", "task.x0=[0,0,1]"))
    assert task.name == "pca_sphere" and isinstance(task.manifold, Sphere)
    np.testing.assert_array_equal(task.x0, [0.0, 0.0, 1.0])
    with pytest.raises(ConfigError, match="unit sphere"):
        compose(*base, "task=pca_sphere", "task.dim=3", "task.x0=[0,1,1]")
    with pytest.raises(ConfigError, match="positive definite"):
        compose(*base, "task=karcher_spd", "task.n=2", "task.x0=[[1,0],[0,0]]")


def test_euclidean_tasks_keep_their_metrics() -> None:
    task = build_task({"name": "quadratic", "dim": 4}, {"name": "natural"}, 3, 0)
    assert task.manifold is None and task.distance_sq is None and task.zeta == 1.0
    assert task.geometry.name == "euclidean" and task.geometry.ambient_dim == 4
    x = _rng(10).standard_normal(4)
    g = task.full.grad(x)
    row = evaluate(task, x)
    assert row["grad_norm_sq"] == float(g @ g)
    assert row["dist_sq"] == float(np.sum((x - task.optimum()[0]) ** 2))


def test_every_task_config_matches_the_registry() -> None:
    stems = sorted(p.stem for p in (ROOT / "conf" / "task").glob("*.yaml"))
    assert stems == sorted(TASK_NAMES)
    assert {"pca_sphere", "karcher_spd"} <= set(TASK_NAMES)
    for name in ("pca_sphere", "karcher_spd"):
        keys = set(yaml.safe_load((ROOT / "conf" / "task" / f"{name}.yaml").read_text())) - {"name"}
        assert keys == set(TASK_DEFAULTS[name])
