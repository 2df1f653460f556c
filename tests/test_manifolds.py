"""Manifolds: the identities of exp/log/transport, holonomy, curvature, gradients, refusals.

Every check compares against an answer computed independently of the code under test: the
spherical excess of a triangle (Van Oosterom–Strackee), closed forms for commuting SPD matrices,
finite differences along geodesics, and the second-order expansion of the distance, whose
``t⁴`` coefficient is the sectional curvature.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from fedsim.blocks.manifolds import (
    MANIFOLDS,
    SPD,
    Euclidean,
    Manifold,
    Sphere,
    build_manifold,
    curvature_factor,
    sphere_transport,
    sym,
)

MANIFOLD_CASES = {
    "euclidean": lambda: Euclidean(5),
    "sphere3": lambda: Sphere(3),
    "sphere7": lambda: Sphere(7),
    "spd2": lambda: SPD(2),
    "spd4": lambda: SPD(4),
}


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _points(m: Manifold, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = _rng(seed)
    x, y = m.random_point(rng), m.random_point(rng)
    return x, y, m.random_tangent(x, rng), m.random_tangent(x, rng)


def _unit(m: Manifold, x: np.ndarray, v: np.ndarray, length: float) -> np.ndarray:
    return length * v / math.sqrt(m.norm_sq(x, v))


@pytest.mark.parametrize("case", sorted(MANIFOLD_CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exp_log_are_inverse(case: str, seed: int) -> None:
    m = MANIFOLD_CASES[case]()
    x, y, v, _ = _points(m, seed)
    v = _unit(m, x, v, 1.3)  # below π: inside the sphere's injectivity radius
    np.testing.assert_allclose(m.exp(x, m.log(x, y)), y, atol=1e-12)
    np.testing.assert_allclose(m.log(x, m.exp(x, v)), v, atol=1e-12)
    m.check_point(m.exp(x, v), tol=1e-12)
    m.check_tangent(x, m.log(x, y), tol=1e-12)


@pytest.mark.parametrize("case", sorted(MANIFOLD_CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transport_is_tangent_isometry(case: str, seed: int) -> None:
    m = MANIFOLD_CASES[case]()
    x, y, u, v = _points(m, seed)
    tu, tv = m.transport(x, y, u), m.transport(x, y, v)
    m.check_tangent(y, tu, tol=1e-12)
    m.check_tangent(y, tv, tol=1e-12)
    scale = math.sqrt(m.norm_sq(x, u) * m.norm_sq(x, v))
    assert abs(m.inner(y, tu, tv) - m.inner(x, u, v)) <= 1e-12 * scale
    assert abs(m.norm_sq(y, tu) - m.norm_sq(x, u)) <= 1e-12 * m.norm_sq(x, u)
    # the geodesic's own velocity is transported to its velocity at the end
    np.testing.assert_allclose(m.transport(x, y, m.log(x, y)), -m.log(y, x), atol=1e-12)
    # there and back along the same geodesic is the identity
    np.testing.assert_allclose(m.transport(y, x, tu), u, atol=1e-12)


@pytest.mark.parametrize("case", ["sphere3", "sphere7", "spd2", "spd4"])
def test_transport_composes_along_one_geodesic(case: str) -> None:
    """x → midpoint → y equals x → y: parallel transport depends only on the path."""
    m = MANIFOLD_CASES[case]()
    x, y, u, _ = _points(m, 3)
    mid = m.exp(x, 0.5 * m.log(x, y))
    np.testing.assert_allclose(
        m.transport(mid, y, m.transport(x, mid, u)), m.transport(x, y, u), atol=1e-12
    )


@pytest.mark.parametrize("dim", [3, 6])
def test_sphere_transport_around_a_great_circle_returns_the_vector(dim: int) -> None:
    m = Sphere(dim)
    rng = _rng(4)
    x = m.random_point(rng)
    u = _unit(m, x, m.random_tangent(x, rng), 1.0)
    v = m.random_tangent(x, rng)
    steps = 7  # each step 2π/7 < π: every leg has a unique minimizing geodesic
    points = [
        math.cos(2 * math.pi * k / steps) * x + math.sin(2 * math.pi * k / steps) * u
        for k in range(steps + 1)
    ]
    w = v.copy()
    for a, b in zip(points[:-1], points[1:], strict=True):
        w = m.transport(a, b, w)
    np.testing.assert_allclose(w, v, atol=1e-12)
    # whereas the projection vector transport shrinks the normal part at every step
    w = v.copy()
    for a, b in zip(points[:-1], points[1:], strict=True):
        w = m.vector_transport(a, b, w)
    assert np.linalg.norm(w - v) > 1e-2


def _spherical_excess(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
    """Area of the geodesic triangle abc on S²: tan(E/2) = |a·(b×c)| / (1 + a·b + b·c + c·a)."""
    triple = float(a @ np.cross(b, c))
    return 2.0 * math.atan2(abs(triple), 1.0 + a @ b + b @ c + c @ a)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sphere_holonomy_of_a_triangle_is_the_spherical_excess(seed: int) -> None:
    """Around a geodesic triangle, parallel transport rotates T_a by the enclosed area (Gauss–
    Bonnet, curvature 1), counter-clockwise for a counter-clockwise triangle; embedded in R⁵ the
    components normal to the triangle's 3-space are untouched."""
    rng = _rng(seed)
    a, b, c = (p / np.linalg.norm(p) for p in rng.standard_normal((3, 3)))
    area = _spherical_excess(a, b, c)
    orientation = math.copysign(1.0, float(a @ np.cross(b, c)))
    e1 = np.cross(a, rng.standard_normal(3))
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(a, e1)
    w = sphere_transport(c, a, sphere_transport(b, c, sphere_transport(a, b, e1)))
    angle = math.atan2(w @ e2, w @ e1)
    assert area > 1e-2
    assert abs(angle - orientation * area) <= 1e-12
    # the same triangle in a random 3-space of R⁵, with a vector leaving that 3-space
    frame = np.linalg.qr(rng.standard_normal((5, 5)))[0]
    emb = frame[:, :3]
    ea, eb, ec = emb @ a, emb @ b, emb @ c
    normal = frame[:, 3]
    v = emb @ e1 + 0.7 * normal
    w5 = sphere_transport(ec, ea, sphere_transport(eb, ec, sphere_transport(ea, eb, v)))
    np.testing.assert_allclose(w5, emb @ w + 0.7 * normal, atol=1e-12)


def test_spd_transport_matches_the_commuting_closed_form() -> None:
    """X = Q diag(a) Qᵀ, Y = Q diag(b) Qᵀ: E = (YX⁻¹)^{1/2} = Q diag(√(b/a)) Qᵀ; the geodesic
    is Q diag(a^{1−t} b^t) Qᵀ."""
    rng = _rng(5)
    n = 4
    q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    a, b = np.exp(rng.standard_normal(n)), np.exp(rng.standard_normal(n))
    x, y = (q * a) @ q.T, (q * b) @ q.T
    xi = sym(rng.standard_normal((n, n)))
    e = (q * np.sqrt(b / a)) @ q.T
    m = SPD(n)
    got = m.mat(m.transport(m.flat(x), m.flat(y), m.flat(xi)))
    np.testing.assert_allclose(got, e @ xi @ e.T, atol=1e-12)
    np.testing.assert_allclose(
        m.mat(m.exp(m.flat(x), 0.3 * m.log(m.flat(x), m.flat(y)))),
        (q * a**0.7 * b**0.3) @ q.T,
        atol=1e-12,
    )
    assert m.dist_sq(m.flat(x), m.flat(y)) == pytest.approx(np.sum(np.log(b / a) ** 2), rel=1e-12)


def _sphere_function(dim: int, seed: int) -> tuple[Callable, Callable]:
    rng = _rng(seed)
    a = sym(rng.standard_normal((dim, dim)))
    b = rng.standard_normal(dim)
    return (lambda x: 0.5 * x @ a @ x + b @ x), (lambda x: a @ x + b)


def _spd_function(n: int, seed: int) -> tuple[Callable, Callable]:
    """f(X) = tr(BX) − log det X + ½‖X‖_F², ∇f = B − X⁻¹ + X (on symmetric matrices)."""
    rng = _rng(seed)
    b = sym(rng.standard_normal((n, n)))

    def f(x: np.ndarray) -> float:
        mat = x.reshape(n, n)
        return float(np.trace(b @ mat) - np.linalg.slogdet(mat)[1] + 0.5 * np.sum(mat * mat))

    def g(x: np.ndarray) -> np.ndarray:
        mat = x.reshape(n, n)
        return (b - np.linalg.inv(mat) + mat).reshape(-1)

    return f, g


@pytest.mark.parametrize("case", ["euclidean", "sphere3", "sphere7", "spd2", "spd4"])
def test_riemannian_gradient_matches_finite_differences_along_geodesics(case: str) -> None:
    """d/dt f(Exp_x(tv)) at t = 0 equals ⟨grad f(x), v⟩_x, and −Log_x(y) is grad ½d²(·, y)."""
    m = MANIFOLD_CASES[case]()
    x, y, v, _ = _points(m, 6)
    if isinstance(m, SPD):
        f, g = _spd_function(m.n, 7)
    else:
        f, g = _sphere_function(m.ambient_dim, 7)
    h = 1e-5
    rgrad = m.egrad_to_rgrad(x, g(x))
    m.check_tangent(x, rgrad, tol=1e-12)
    fd = (f(m.exp(x, h * v)) - f(m.exp(x, -h * v))) / (2 * h)
    assert fd == pytest.approx(m.inner(x, rgrad, v), rel=1e-7, abs=1e-8)
    half_dist = lambda p: 0.5 * m.dist_sq(p, y)  # noqa: E731
    fd = (half_dist(m.exp(x, h * v)) - half_dist(m.exp(x, -h * v))) / (2 * h)
    assert fd == pytest.approx(-m.inner(x, m.log(x, y), v), rel=1e-7, abs=1e-8)


@pytest.mark.parametrize("case", sorted(MANIFOLD_CASES))
@pytest.mark.parametrize("length", [1e-6, 1e-3, 0.5])
def test_distance_of_exp_is_the_norm(case: str, length: float) -> None:
    m = MANIFOLD_CASES[case]()
    x, _, v, _ = _points(m, 8)
    v = _unit(m, x, v, length)
    assert m.dist_sq(x, m.exp(x, v)) == pytest.approx(m.norm_sq(x, v), rel=1e-9)


@pytest.mark.parametrize("case", sorted(MANIFOLD_CASES))
def test_retraction_agrees_with_exp_to_second_order(case: str) -> None:
    """‖R_x(tv) − Exp_x(tv)‖ = O(t³): halving t divides the error by about 8."""
    m = MANIFOLD_CASES[case]()
    x, _, v, _ = _points(m, 9)
    v = _unit(m, x, v, 1.0)
    errs = [float(np.linalg.norm(m.retract(x, t * v) - m.exp(x, t * v))) for t in (0.02, 0.01)]
    if case == "euclidean":
        assert max(errs) == 0.0
        return
    assert errs[0] <= 0.02**3 * 10
    assert 2.7 <= math.log2(errs[0] / errs[1]) <= 3.3
    m.check_point(m.retract(x, 3.0 * v), tol=1e-10)  # far from x still on M


def _orthonormal_pair(
    m: Manifold, x: np.ndarray, u: np.ndarray, v: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    u = u / math.sqrt(m.norm_sq(x, u))
    v = v - m.inner(x, u, v) * u
    return u, v / math.sqrt(m.norm_sq(x, v))


def _sectional_curvature(m: Manifold, x: np.ndarray, u: np.ndarray, v: np.ndarray) -> float:
    """From d²(Exp_x(tu), Exp_x(tv)) = 2t² − (K/3) t⁴ + O(t⁶) for orthonormal u, v."""
    t = 1e-2
    d2 = m.dist_sq(m.exp(x, t * u), m.exp(x, t * v))
    return 3.0 * (2 * t**2 - d2) / t**4


def test_sectional_curvature_constants() -> None:
    """Sphere K = 1; SPD (affine-invariant, tr(X⁻¹UX⁻¹V)) K ∈ [−½, 0], −½ attained: the
    normalization behind SPD.curvature_lower and the task's ζ."""
    s = Sphere(5)
    x, _, u, v = _points(s, 10)
    assert _sectional_curvature(s, x, *_orthonormal_pair(s, x, u, v)) == pytest.approx(1, abs=1e-3)
    m = SPD(3)
    eye = m.flat(np.eye(3))
    e = np.zeros((3, 3))
    up, vp = e.copy(), e.copy()
    up[0, 1] = up[1, 0] = 1 / math.sqrt(2)
    vp[0, 0], vp[1, 1] = 1 / math.sqrt(2), -1 / math.sqrt(2)
    k_min = _sectional_curvature(m, eye, m.flat(up), m.flat(vp))
    assert k_min == pytest.approx(m.curvature_lower, abs=1e-3) and m.curvature_lower == -0.5
    diag = [m.flat(np.diag(d)) for d in ([1.0, 0, 0], [0, 1.0, 0])]
    assert _sectional_curvature(m, eye, *diag) == pytest.approx(0.0, abs=1e-3)
    for seed in range(5):  # random planes at a random point stay in [−½, 0]
        x, _, u, v = _points(m, 20 + seed)
        k = _sectional_curvature(m, x, *_orthonormal_pair(m, x, u, v))
        assert -0.5 - 1e-3 <= k <= 1e-3


def test_curvature_factor() -> None:
    assert curvature_factor(0.0, 5.0) == 1.0 and curvature_factor(-0.5, 0.0) == 1.0
    s = math.sqrt(0.5) * 3.0
    assert curvature_factor(-0.5, 3.0) == pytest.approx(s / math.tanh(s), rel=1e-15)
    assert curvature_factor(-0.5, 1e-9) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("case", sorted(MANIFOLD_CASES))
def test_zero_vectors_and_equal_points_give_no_nan(case: str) -> None:
    m = MANIFOLD_CASES[case]()
    x, _, v, _ = _points(m, 11)
    zero = np.zeros_like(x)
    np.testing.assert_allclose(m.exp(x, zero), x, atol=1e-15)
    np.testing.assert_allclose(m.log(x, x), zero, atol=1e-12)
    np.testing.assert_allclose(m.transport(x, x, v), v, atol=1e-12)
    np.testing.assert_allclose(m.transport(x, m.exp(x, v), zero), zero, atol=1e-15)
    assert m.dist_sq(x, x) == pytest.approx(0.0, abs=1e-24)
    tiny = 1e-200 * v
    for out in (m.exp(x, tiny), m.transport(x, m.exp(x, tiny), v), m.log(x, m.exp(x, tiny))):
        assert np.all(np.isfinite(out))


def test_sphere_antipodal_points_are_refused() -> None:
    m = Sphere(4)
    x = np.array([1.0, 0, 0, 0])
    with pytest.raises(ValueError, match="antipodal"):
        m.log(x, -x)
    with pytest.raises(ValueError, match="antipodal"):
        m.transport(x, -x, np.array([0, 1.0, 0, 0]))


def test_checks_refuse_points_off_the_manifold() -> None:
    s = Sphere(3)
    with pytest.raises(ValueError, match="unit sphere"):
        s.check_point(np.array([1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="length 3"):
        s.check_point(np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="non-finite"):
        s.check_point(np.array([np.nan, 0.0, 0.0]))
    with pytest.raises(ValueError, match="tangent"):
        s.check_tangent(np.array([1.0, 0, 0]), np.array([0.5, 1.0, 0]))
    m = SPD(2)
    with pytest.raises(ValueError, match="positive definite"):
        m.check_point(m.flat(np.array([[1.0, 2.0], [2.0, 1.0]])))
    with pytest.raises(ValueError, match="symmetric"):
        m.check_point(m.flat(np.array([[1.0, 0.5], [0.0, 1.0]])))
    with pytest.raises(ValueError, match="symmetric"):
        m.check_tangent(m.flat(np.eye(2)), m.flat(np.array([[0.0, 1.0], [0.0, 0.0]])))
    with pytest.raises(ValueError, match="positive definite"):
        m.log(m.flat(np.eye(2)), m.flat(-np.eye(2)))
    m.check_point(m.flat(np.eye(2)))
    s.check_point(np.array([0.0, 1.0, 0.0]))


def test_projections_and_to_manifold() -> None:
    s = Sphere(4)
    x, _, _, _ = _points(s, 12)
    g = _rng(13).standard_normal(4)
    np.testing.assert_allclose(s.proj(x, s.proj(x, g)), s.proj(x, g), atol=1e-15)
    assert abs(x @ s.proj(x, g)) < 1e-15
    np.testing.assert_allclose(s.to_manifold(3.0 * x), x, atol=1e-15)
    m = SPD(3)
    x, _, _, _ = _points(m, 14)
    g = _rng(15).standard_normal(9)
    rg = m.egrad_to_rgrad(x, g)
    # the defining property: ⟨grad, V⟩_X = ⟨∇f, V⟩_F for every symmetric V
    v = m.proj(x, _rng(16).standard_normal(9))
    assert m.inner(x, rg, v) == pytest.approx(float(m.proj(x, g) @ v), rel=1e-12)
    skew = m.mat(x) + 1e-9 * np.triu(np.ones((3, 3)), 1)
    np.testing.assert_allclose(m.mat(m.to_manifold(m.flat(skew))), sym(skew), atol=0)


def test_build_manifold() -> None:
    assert MANIFOLDS == ("euclidean", "sphere", "spd")
    assert isinstance(build_manifold("sphere", 4), Sphere)
    spd = build_manifold("spd", 9)
    assert isinstance(spd, SPD) and spd.n == 3 and spd.ambient_dim == 9
    assert isinstance(build_manifold("euclidean", 2), Euclidean)
    with pytest.raises(ValueError, match="n²"):
        build_manifold("spd", 8)
    with pytest.raises(ValueError, match="valid choices: euclidean, sphere, spd"):
        build_manifold("hyperbolic", 3)
