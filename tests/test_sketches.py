"""MAST sketches (fedsim/blocks/sketches.py): E[S] = I and the stated constants L_D, μ_D and
L_S^max of E[SᵀS], by Monte Carlo on dense matrices; the wire operations; bad input."""

import numpy as np
import pytest

from fedsim.blocks.sketches import (
    BernoulliSketch,
    IdentitySketch,
    PartitionSketch,
    RandKSketch,
    SketchSource,
    build_sketch,
)
from fedsim.errors import ConfigError

D = 12
DRAWS = 20_000


def monte_carlo(sketch, draws: int = DRAWS, pid: int = 0, seed: int = 0):
    """E[S], E[SᵀS] as dense matrices and the largest λ_max(SᵀS) seen, over ``draws`` draws."""
    rng = np.random.default_rng(seed)
    mean = np.zeros((sketch.dim, sketch.dim))
    gram = np.zeros_like(mean)
    top = 0.0
    for _ in range(draws):
        s = sketch.draw(rng, pid).matrix()
        mean += s
        sts = s.T @ s
        gram += sts
        top = max(top, float(np.linalg.eigvalsh(sts)[-1]))
    return mean / draws, gram / draws, top


P = np.linspace(0.2, 1.0, D)
CASES = {
    "identity": (IdentitySketch(D), 1.0, 1.0, 1.0),
    "bernoulli": (BernoulliSketch(D, P), 1 / 0.2, 1.0, 1 / 0.2**2),
    "rand_k": (RandKSketch(D, 3), D / 3, D / 3, (D / 3) ** 2),
    "partition": (PartitionSketch(D, 4), 4.0, 4.0, 16.0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_unbiased_and_the_stated_spectral_constants_by_monte_carlo(name):
    sketch, l_d, mu_d, l_max = CASES[name]
    assert (sketch.L_D, sketch.mu_D, sketch.L_max) == pytest.approx((l_d, mu_d, l_max), rel=1e-12)
    mean, gram, top = monte_carlo(sketch)
    # E[S] = I: standard error of one diagonal entry is sqrt(Var/DRAWS) <= sqrt(L_D/DRAWS)
    se = np.sqrt(l_d / DRAWS)
    np.testing.assert_allclose(mean, np.eye(D), atol=5 * se)
    eig = np.linalg.eigvalsh(gram)
    assert eig[-1] == pytest.approx(l_d, rel=0.05)
    assert eig[0] == pytest.approx(mu_d, rel=0.05)
    np.testing.assert_allclose(np.diag(gram), sketch.gram_diagonal(), rtol=0.06)
    assert top <= l_max * (1 + 1e-12)
    assert top == pytest.approx(l_max, rel=1e-12)  # the sup is attained (p_min's coordinate kept)


def test_every_partition_block_is_unbiased_and_one_draw_tiles_the_coordinates():
    sketch = PartitionSketch(D, 5)  # 12 = 5 + 5 + 2: blocks of unequal size, still unbiased
    for pid in range(5):
        mean, _, _ = monte_carlo(sketch, draws=8000, pid=pid, seed=pid)
        np.testing.assert_allclose(np.diag(mean), np.ones(D), atol=5 * np.sqrt(5 / 8000))
    source = SketchSource(sketch, seed=3)
    for rnd in range(1, 4):
        supports = [source.fresh(rnd, pid).idx for pid in range(5)]
        joined = np.concatenate(supports)
        assert np.array_equal(np.sort(joined), np.arange(D))  # disjoint and covering
    # client 5 shares block 0 (5 mod 5); a client's own draws differ from round to round
    assert np.array_equal(source.fresh(1, 5).idx, source.fresh(1, 0).idx)
    assert not np.array_equal(source.fresh(1, 0).idx, source.fresh(2, 0).idx)


def test_the_wire_operations_are_those_of_the_matrix():
    rng = np.random.default_rng(1)
    x, v, g = rng.normal(size=(3, D))
    for sketch, *_ in CASES.values():
        draw = sketch.draw(rng)
        s = draw.matrix()
        y = v + s @ (x - v)
        values = draw.sketched_values(x, v)
        assert values.shape == (draw.size,)
        np.testing.assert_allclose(draw.point(values, v), y, rtol=1e-15, atol=1e-15)
        back = s.T @ g
        np.testing.assert_allclose(draw.scatter(draw.back_values(g)), back, rtol=1e-15)
        assert np.all(back[np.setdiff1d(np.arange(D), draw.idx)] == 0)  # zero off the support
        np.testing.assert_allclose(draw.apply(g), s @ g, rtol=1e-15)


def test_server_and_client_sources_draw_the_same_sketches():
    a = SketchSource(RandKSketch(D, 4), seed=9)
    b = SketchSource(RandKSketch(D, 4), seed=9)
    assert np.array_equal(a.fresh(3, 2).idx, b.fresh(3, 2).idx)
    assert np.array_equal(a.member(1, 2).idx, b.member(1, 2).idx)
    assert not np.array_equal(a.fresh(3, 2).idx, a.fresh(3, 1).idx)  # per client
    assert not np.array_equal(a.member(0, 2).idx, a.member(1, 2).idx)  # per member
    assert not np.array_equal(a.member(0, 2).idx, a.evaluation(0, 2).idx)  # separate streams


def test_config_builds_the_sketch_and_derives_k():
    assert build_sketch({"name": "rand_k", "q": 0.25, "k": None}, 40).k == 10
    assert build_sketch({"name": "rand_k", "q": 0.001, "k": None}, 40).k == 1
    assert build_sketch({"name": "rand_k", "q": 0.5, "k": 7}, 40).k == 7
    assert build_sketch({"name": "partition", "blocks": None}, 40, num_clients=6).blocks == 6
    p = build_sketch({"name": "bernoulli", "p": [0.5, 1.0, 0.25]}, 3).p
    np.testing.assert_array_equal(p, [0.5, 1.0, 0.25])


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"name": "rand_k", "q": 0.0}, r"q = K/d must lie in \(0, 1\]"),
        ({"name": "rand_k", "q": 1.5}, r"q = K/d must lie in \(0, 1\]"),
        ({"name": "rand_k", "q": 0.5, "k": 41}, "k=41 is larger than the model"),
        ({"name": "rand_k", "q": 0.5, "k": 0}, "k must be an integer >= 1"),
        ({"name": "bernoulli", "p": 0.0}, r"p must lie in \(0, 1\]"),
        ({"name": "bernoulli", "p": 1.2}, r"p must lie in \(0, 1\]"),
        ({"name": "bernoulli", "p": [0.5] * 39 + [-0.1]}, r"p_39 = -0.1"),
        ({"name": "bernoulli", "p": [0.5, 0.5]}, "has 2 probabilities but the model has d=40"),
        ({"name": "partition", "blocks": 41}, "blocks=41 is larger than the model"),
        ({"name": "partition", "blocks": 0}, "blocks must be an integer >= 1"),
        ({"name": "gaussian"}, "unknown method.sketch.name 'gaussian'"),
    ],
)
def test_bad_sketches_are_refused(cfg, message):
    with pytest.raises(ConfigError, match=message):
        build_sketch(cfg, 40)
