"""Robust aggregators: hand-computed vectors, bucketing, cc's explicit state, input counts,
config validation, agreement with Flower 1.42's aggregation functions, and a Monte Carlo check
of the (δ, c)-robustness bound E‖Agg − x̄_good‖² ≤ C·δσ² against arbitrary Byzantine inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from flwr.server.strategy.aggregate import (
    aggregate,
    aggregate_krum,
    aggregate_median,
    aggregate_trimmed_avg,
)

from fedsim.blocks.aggregators import (
    AGGREGATOR_NAMES,
    Aggregator,
    bucket_means,
    build_aggregator,
    centered_clip,
    coordinate_median,
    geometric_median,
    krum,
    krum_scores,
    mean,
    trimmed_mean,
)
from fedsim.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf" / "aggregator"
RNG = np.random.default_rng


# ----------------------------------------------------------------------------- hand vectors


def test_mean_and_median_by_hand():
    assert np.array_equal(mean(np.array([[0.0, 0.0], [2.0, 4.0], [4.0, 2.0]])), [2.0, 2.0])
    # even n: the mean of the two middle values, per coordinate
    xs = np.array([[1.0, 10.0], [3.0, -2.0], [2.0, 5.0], [100.0, 0.0]])
    assert np.array_equal(coordinate_median(xs), [2.5, 2.5])
    assert np.array_equal(coordinate_median(xs[:3]), [2.0, 5.0])


def test_trimmed_mean_by_hand():
    xs = np.array([[1.0, 10.0], [3.0, -2.0], [2.0, 5.0], [100.0, 0.0], [4.0, 1.0]])
    # coordinate 0: 1 2 3 4 100 -> mean(2, 3, 4); coordinate 1: -2 0 1 5 10 -> mean(0, 1, 5)
    assert np.allclose(trimmed_mean(xs, 1), [3.0, 2.0])
    assert np.allclose(trimmed_mean(xs, 2), [3.0, 1.0])  # the median for n = 2·trim + 1
    assert np.allclose(trimmed_mean(xs, 0), xs.mean(axis=0))
    with pytest.raises(ValueError, match="n > 2\\*trim"):
        trimmed_mean(xs[:4], 2)


def test_krum_by_hand_with_ties_to_the_lowest_index():
    xs = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0]])
    # squared distances: d01 = d02 = 1, d12 = 2, d03 = 200, d13 = d23 = 181; n - f - 2 = 2
    assert np.allclose(krum_scores(xs, 0), [2.0, 3.0, 3.0, 362.0])
    assert np.allclose(krum_scores(xs, 1), [1.0, 1.0, 1.0, 181.0])  # one neighbour each
    assert np.array_equal(krum(xs, 0), [0.0, 0.0])
    assert np.allclose(krum(xs, 0, multi=2), [0.5, 0.0])  # 1 and 2 tie: index 1 wins
    assert np.allclose(krum(xs, 0, multi=3), [1 / 3, 1 / 3])
    assert np.array_equal(krum(xs, 1), [0.0, 0.0])  # three-way tie: index 0
    with pytest.raises(ValueError, match="n - f - 2 >= 1"):
        krum_scores(xs, 2)
    with pytest.raises(ValueError, match="multi <= n"):
        krum(xs, 0, multi=5)


def test_geometric_median_by_hand():
    xs = np.array([[3.0, 0.0], [0.0, 4.0]])
    # z = 0: β ∝ (1/2)/3, (1/2)/4, so z = (x_1/6 + x_2/8)/(1/6 + 1/8) = (12/7, 12/7), which the
    # next iterations keep (distances 15/7 and 20/7 give the same 4 : 3 weights)
    assert np.allclose(geometric_median(xs, iters=1), [12 / 7, 12 / 7])
    assert np.allclose(geometric_median(xs, iters=5), [12 / 7, 12 / 7])
    # ν caps the weight of the inputs z sits on: β = (10/3, 10/3, 1/3) at z = 0
    xs = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    assert np.allclose(geometric_median(xs, iters=1, nu=0.1), [1 / 21, 0.0])
    # in 1-D the geometric median of 0, 1, 10 is 1, a fixed point of the smoothed iteration
    assert np.allclose(geometric_median(np.array([[0.0], [1.0], [10.0]]), iters=200), [1.0])


def test_centered_clip_by_hand():
    xs = np.array([[3.0, 4.0], [0.0, 0.0]])
    # v = 0: clip_1([3, 4]) = [0.6, 0.8], clip(0) = 0 -> v = [0.3, 0.4]
    assert np.allclose(centered_clip(xs, np.zeros(2), tau=1.0, iters=1), [0.3, 0.4])
    # then [2.7, 3.6] -> [0.6, 0.8] and [-0.3, -0.4] (norm 0.5, kept) -> v += [0.15, 0.2]
    assert np.allclose(centered_clip(xs, np.zeros(2), tau=1.0, iters=2), [0.45, 0.6])
    # a radius larger than every distance: one iteration is the mean, whatever the centre
    assert np.allclose(centered_clip(xs, np.array([1.0, -1.0]), tau=100.0, iters=1), [1.5, 2.0])
    with pytest.raises(ValueError, match="centre"):
        centered_clip(xs, np.zeros(3))


def test_bucket_means_with_a_fixed_generator():
    xs = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    # default_rng(0).permutation(4) = [2, 0, 1, 3]: buckets {2, 0} and {1, 3}
    assert np.array_equal(bucket_means(xs, 2, RNG(0)), [[0.0, 5.0], [10.0, 5.0]])
    # default_rng(1).permutation(4) = [0, 1, 2, 3]: buckets {0, 1} and {2, 3}
    assert np.array_equal(bucket_means(xs, 2, RNG(1)), [[5.0, 0.0], [5.0, 10.0]])
    # 5 inputs, s = 2: permutation [2, 4, 3, 0, 1] -> {2, 4}, {3, 0}, {1} (the last one smaller)
    xs5 = np.arange(10.0).reshape(5, 2)
    expect = [(xs5[2] + xs5[4]) / 2, (xs5[3] + xs5[0]) / 2, xs5[1]]
    assert np.array_equal(bucket_means(xs5, 2, RNG(0)), expect)
    assert np.array_equal(bucket_means(xs5, 1, RNG(0)), xs5[[2, 4, 3, 0, 1]])
    assert np.allclose(bucket_means(xs5, 9, RNG(0)), [xs5.mean(axis=0)])


def test_aggregator_buckets_first_then_applies_the_rule():
    xs = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    out, state = Aggregator("cm", bucketing=2)(xs, None, RNG(0))
    assert np.array_equal(out, [5.0, 5.0]) and state is None  # median of [0,5], [10,5]
    out, _ = Aggregator("krum", bucketing=1, f=1)(xs, None, RNG(0))
    assert np.array_equal(out, xs[0])
    # s = 1 does not touch the generator
    rng = RNG(3)
    Aggregator("rfa")(xs, None, rng)
    assert rng.random() == RNG(3).random()


def test_cc_state_round_trips():
    xs = np.array([[3.0, 4.0], [0.0, 0.0]])
    agg = Aggregator("cc", tau=1.0, iters=1)
    state = agg.init(2)
    assert np.array_equal(state, [0.0, 0.0])
    out1, state1 = agg(xs, state, RNG(0))
    assert np.allclose(out1, [0.3, 0.4]) and np.array_equal(state1, out1)
    assert np.array_equal(state, [0.0, 0.0])  # the old state is not modified
    out2, state2 = agg(xs, state1, RNG(0))
    assert np.allclose(out2, [0.45, 0.6]) and np.array_equal(state2, out2)
    assert np.allclose(out2, centered_clip(xs, np.zeros(2), tau=1.0, iters=2))
    out1[:] = 99.0  # the returned state is not the returned aggregate
    assert np.allclose(state1, [0.3, 0.4])
    assert np.allclose(agg(xs, None, RNG(0))[0], [0.3, 0.4])  # state None: from 0
    for name in ("mean", "cm", "tm", "krum", "rfa"):
        assert Aggregator(name).init(2) is None
    assert Aggregator("rfa").iters == 8 and Aggregator("cc").iters == 3
    assert Aggregator("cm").iters is None


def test_inputs_must_be_finite_2d_arrays():
    for bad in (np.zeros(3), np.zeros((0, 3)), np.array([[0.0, np.nan]]), [[np.inf, 1.0]]):
        with pytest.raises(ValueError):
            mean(bad)


# ----------------------------------------------------------------------------- input counts


@pytest.mark.parametrize(
    "agg, need",
    [
        (Aggregator("tm", trim=2), 5),
        (Aggregator("tm", trim=2, bucketing=2), 9),
        (Aggregator("tm", trim=0, bucketing=3), 1),
        (Aggregator("krum", f=1), 4),
        (Aggregator("krum", f=1, bucketing=2), 7),
        (Aggregator("krum", f=0, multi=5), 5),
        (Aggregator("krum", f=0, multi=5, bucketing=2), 9),
        (Aggregator("cm", bucketing=4), 1),
        (Aggregator("cc"), 1),
    ],
)
def test_min_inputs_is_the_smallest_count_the_rule_runs_on(agg, need):
    assert agg.min_inputs() == need
    for n in range(1, need + 4):
        xs = RNG(n).standard_normal((n, 3))
        if n < need:
            with pytest.raises(ConfigError):
                agg(xs, agg.init(3), RNG(0))
        else:
            assert agg(xs, agg.init(3), RNG(0))[0].shape == (3,)


def test_check_inputs_names_the_key_to_change():
    with pytest.raises(ConfigError, match="aggregator.trim") as err:
        Aggregator("tm", trim=3).check_inputs(6, "the cohort")
    assert "the cohort has 6" in str(err.value) and "at least 7" in str(err.value)
    with pytest.raises(ConfigError, match="aggregator.bucketing"):
        Aggregator("tm", trim=1, bucketing=2).check_inputs(4)
    with pytest.raises(ConfigError, match="aggregator.f or aggregator.multi"):
        Aggregator("krum", f=5).check_inputs(7)
    with pytest.raises(ConfigError, match="aggregator.bucketing"):
        Aggregator("krum", f=1, bucketing=2).check_inputs(6)
    Aggregator("krum", f=1, bucketing=2).check_inputs(7)
    Aggregator("mean").check_inputs(1)


# ----------------------------------------------------------------------------- configs


def test_yaml_files_cover_all_aggregators_and_build():
    stems = sorted(p.stem for p in CONF.glob("*.yaml"))
    assert stems == sorted(AGGREGATOR_NAMES)
    xs = RNG(0).standard_normal((20, 4))
    for path in CONF.glob("*.yaml"):
        text = path.read_text()
        assert text.startswith("# "), f"{path.name} must start with a one-line comment"
        cfg = yaml.safe_load(text)
        assert cfg["name"] == path.stem and cfg["bucketing"] == 1
        agg = build_aggregator(cfg, 5)
        assert agg.name == path.stem
        out, _ = agg(xs, agg.init(4), RNG(0))
        assert out.shape == (4,)


def test_build_resolves_defaults():
    assert build_aggregator({"name": "tm", "trim": None}, 4).trim == 4
    assert build_aggregator({"name": "tm", "trim": 1}, 4).trim == 1
    assert build_aggregator({"name": "krum"}, 3) == Aggregator("krum", f=3)
    assert build_aggregator({"name": "krum", "f": 0, "multi": 4}, 3).multi == 4
    assert build_aggregator({"name": "rfa", "iters": None}, 0) == Aggregator("rfa", iters=8)
    cc = build_aggregator({"name": "cc", "tau": 2, "iters": 1, "bucketing": 2}, 0)
    assert (cc.tau, cc.iters, cc.bucketing) == (2.0, 1, 2)
    assert build_aggregator({"name": "mean"}, 0) == Aggregator("mean")


@pytest.mark.parametrize(
    "cfg, key",
    [
        ({"name": "median"}, "unknown aggregator 'median'"),
        ({}, "unknown aggregator None"),
        ({"name": "mean", "trim": 1}, "'mean' takes no key(s) trim; valid keys: bucketing"),
        ({"name": "cm", "f": 1, "tau": 2}, "'cm' takes no key(s) f, tau"),
        ({"name": "tm", "nu": 0.1}, "valid keys: bucketing, trim"),
        ({"name": "krum", "trim": 1}, "valid keys: bucketing, f, multi"),
        ({"name": "rfa", "tau": 1.0}, "valid keys: bucketing, iters, nu"),
        ({"name": "cc", "nu": 1.0}, "valid keys: bucketing, tau, iters"),
        ({"name": "cm", "bucketing": 0}, "aggregator.bucketing"),
        ({"name": "cm", "bucketing": 2.0}, "aggregator.bucketing"),
        ({"name": "tm", "trim": -1}, "aggregator.trim"),
        ({"name": "tm", "trim": True}, "aggregator.trim"),
        ({"name": "krum", "f": -1}, "aggregator.f"),
        ({"name": "krum", "multi": 0}, "aggregator.multi"),
        ({"name": "rfa", "iters": 0}, "aggregator.iters"),
        ({"name": "rfa", "nu": 0.0}, "aggregator.nu"),
        ({"name": "rfa", "nu": "small"}, "aggregator.nu"),
        ({"name": "cc", "tau": -1.0}, "aggregator.tau"),
        ({"name": "cc", "tau": float("inf")}, "aggregator.tau"),
        ({"name": "cc", "iters": 1.5}, "aggregator.iters"),
    ],
)
def test_build_rejects_bad_configs_naming_the_key(cfg, key):
    with pytest.raises(ConfigError) as err:
        build_aggregator(cfg, 2)
    assert key in str(err.value)


def test_build_rejects_a_bad_byzantine_count():
    with pytest.raises(ConfigError, match="num_byzantine"):
        build_aggregator({"name": "tm"}, -1)


# ----------------------------------------------------------------------------- Flower 1.42


def _results(xs: np.ndarray, counts: list[int] | None = None) -> list[tuple[list, int]]:
    counts = counts or [1] * len(xs)
    return [([x.copy()], c) for x, c in zip(xs, counts, strict=True)]


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_median_equals_flower_aggregate_median(n):
    xs = RNG(n).standard_normal((n, 6))
    counts = list(range(1, n + 1))  # Flower ignores the counts too
    (flower,) = aggregate_median(_results(xs, counts))
    assert np.array_equal(coordinate_median(xs), flower)


@pytest.mark.parametrize("n, proportion", [(5, 0.0), (5, 0.2), (10, 0.3), (11, 0.45), (20, 0.15)])
def test_trimmed_mean_equals_flower_with_trim_floor_of_proportion_times_n(n, proportion):
    xs = RNG(n).standard_normal((n, 7)) * 10.0
    counts = list(range(1, n + 1))  # ignored by Flower as well
    (flower,) = aggregate_trimmed_avg(_results(xs, counts), proportiontocut=proportion)
    trim = int(proportion * n)  # Flower cuts ⌊p·n⌋ per side
    assert np.allclose(trimmed_mean(xs, trim), flower, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("n, f", [(4, 0), (6, 1), (10, 3), (20, 5)])
def test_krum_equals_flower_aggregate_krum(n, f):
    xs = RNG(100 + n).standard_normal((n, 5))
    if f:
        xs[-f:] += 3.0  # some outliers
    (flower,) = aggregate_krum(_results(xs), num_malicious=f, to_keep=0)
    assert np.array_equal(krum(xs, f), flower)
    for m in range(1, n + 1):  # Multi-Krum with equal example counts
        (flower,) = aggregate_krum(_results(xs), num_malicious=f, to_keep=m)
        assert np.allclose(krum(xs, f, multi=m), flower, rtol=1e-13, atol=1e-13)


def test_where_flower_differs_weights_and_neighbours():
    xs = RNG(7).standard_normal((6, 3))
    counts = [1, 1, 1, 1, 1, 100]
    # Flower's mean and Multi-Krum weight by example counts; fedsim's rules do not
    (flower_mean,) = aggregate(_results(xs, counts))
    assert not np.allclose(mean(xs), flower_mean)
    (flower_mean,) = aggregate(_results(xs))
    assert np.allclose(mean(xs), flower_mean)
    # with n - f - 2 < 1 Flower still uses one neighbour; fedsim refuses
    aggregate_krum(_results(xs), num_malicious=5, to_keep=0)
    with pytest.raises(ValueError):
        krum(xs, 5)


# ----------------------------------------------------------------------------- Monte Carlo

N, BYZ, D, SIGMA2, TRIALS = 20, 3, 10, 1.0, 200
DELTA = BYZ / N
C = 2.0  # E‖Agg − x̄_good‖² ≤ C·δσ² for every robust rule below and every distance A
ROBUST = {
    "cm": Aggregator("cm", bucketing=2),
    "tm": Aggregator("tm", bucketing=2, trim=BYZ),
    "krum": Aggregator("krum", bucketing=2, f=BYZ),
    "rfa": Aggregator("rfa", bucketing=2),
    # cc's radius must be of the order of σ (Karimireddy et al.): with τ = 10 > A = 10 it would
    # clip nothing and be the mean
    "cc": Aggregator("cc", bucketing=2, tau=1.0),
}


def robust_error(agg: Aggregator, distance: float, seed: int = 0) -> float:
    """Monte Carlo E‖Agg − x̄_good‖²: 17 good inputs i.i.d. N(μ, σ²/(2d) I), so that
    E‖x_i − x_j‖² = σ², and 3 Byzantine inputs all at μ + A·u, ‖u‖ = 1, in random positions."""
    rng = RNG(seed)
    mu = np.full(D, 0.3)
    u = rng.standard_normal(D)
    u /= np.linalg.norm(u)
    errors = []
    for _ in range(TRIALS):
        good = mu + rng.standard_normal((N - BYZ, D)) * np.sqrt(SIGMA2 / (2 * D))
        xs = np.vstack([good, np.tile(mu + distance * u, (BYZ, 1))])[rng.permutation(N)]
        out, _ = agg(xs, agg.init(D), rng)
        errors.append(float(np.sum((out - good.mean(axis=0)) ** 2)))
    return float(np.mean(errors))


@pytest.mark.parametrize("name", sorted(ROBUST))
@pytest.mark.parametrize("distance", [10.0, 1e3, 1e6])
def test_robust_aggregators_keep_the_error_below_c_delta_sigma2(name, distance):
    err = robust_error(ROBUST[name], distance)
    assert err <= C * DELTA * SIGMA2, (name, distance, err / (DELTA * SIGMA2))


@pytest.mark.parametrize("distance", [10.0, 1e3, 1e6])
def test_mean_error_grows_like_a_squared(distance):
    err = robust_error(Aggregator("mean", bucketing=2), distance)
    expect = (DELTA * distance) ** 2  # the mean moves by δ·A towards the Byzantine point
    assert 0.9 * expect <= err <= 1.1 * expect + SIGMA2
    assert err > C * DELTA * SIGMA2
