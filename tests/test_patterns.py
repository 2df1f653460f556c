"""TAMUNA's pattern: every coordinate held by exactly s clients, loads within one of each other."""

import numpy as np
import pytest

from fedsim.blocks.patterns import pattern, support


@pytest.mark.parametrize(
    ("d", "c", "s"), [(124, 10, 2), (124, 10, 10), (7, 5, 3), (20, 20, 2), (3, 10, 2), (1, 4, 2)]
)
def test_every_row_has_s_holders_and_loads_differ_by_at_most_one(d, c, s):
    q = pattern(d, c, s)
    assert q.shape == (d, c)
    np.testing.assert_array_equal(q.sum(axis=1), np.full(d, s))
    loads = q.sum(axis=0)
    if s * d >= c:
        assert loads.max() - loads.min() <= 1
        assert loads.max() == -(-s * d // c)
    else:  # fewer ones than clients: s*d clients upload one value each, the others nothing
        assert sorted(loads.tolist()) == [0] * (c - s * d) + [1] * (s * d)


def test_s_equal_c_means_everyone_uploads_everything():
    for j in range(6):
        np.testing.assert_array_equal(support(9, 6, 6, j), np.arange(9))


def test_decompression_is_exact_when_all_cohort_models_agree():
    d, c, s = 31, 7, 3
    x = np.random.default_rng(0).standard_normal(d)
    total = np.zeros(d)
    for j in range(c):
        rows = support(d, c, s, j)
        total[rows] += x[rows]
    np.testing.assert_allclose(total / s, x, rtol=0, atol=1e-15)


def test_bad_pattern_arguments_are_refused():
    with pytest.raises(ValueError):
        support(10, 4, 5, 0)
    with pytest.raises(ValueError):
        support(10, 4, 2, 4)
