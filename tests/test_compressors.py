"""Compressors: unbiasedness and variance (Monte Carlo), contraction, Perm-K blocks, the wire
format through Flower's encoding, wire sizes, and config validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

from fedsim.blocks.compressors import (
    COMPRESSOR_NAMES,
    Compressor,
    Slot,
    build_compressor,
    compressor_rng,
    index_dtype,
)
from fedsim.errors import ConfigError
from fedsim.wire import encoded_size

CONF = Path(__file__).resolve().parents[1] / "conf" / "compressor"
Z = 5.0  # tolerance in standard errors for Monte-Carlo checks (fixed seeds: deterministic)
DRAWS = 20_000
ALONE = Slot()
D = 20


def make(name: str, dim: int = D, **kw) -> Compressor:
    return build_compressor({"name": name, **kw}, dim)


def fixed_x(d: int = D, seed: int = 2024) -> np.ndarray:
    """A vector with entries over several orders of magnitude, one zero and one power of two."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(d) * np.exp(rng.uniform(-3.0, 3.0, d))
    x[3], x[7] = 0.0, -0.5
    return x


def draws(comp: Compressor, x: np.ndarray, slot: Slot = ALONE, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([comp(x, rng, slot) for _ in range(DRAWS)])


def mse_stats(samples: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """Monte-Carlo E‖C(x) − x‖² and Z standard errors of it."""
    err2 = np.sum((samples - x) ** 2, axis=1)
    return float(err2.mean()), Z * float(err2.std(ddof=1)) / np.sqrt(err2.size)


def assert_mean_is(samples: np.ndarray, target: np.ndarray) -> None:
    se = samples.std(axis=0, ddof=1) / np.sqrt(samples.shape[0])
    dev = np.abs(samples.mean(axis=0) - target)
    assert np.all(dev <= Z * se + 1e-12 * np.abs(target)), (dev, se)


def all_compressors(dim: int) -> list[tuple[Compressor, Slot]]:
    comps = [
        (make(name, dim), Slot(1, 3) if name == "perm_k" else Slot()) for name in COMPRESSOR_NAMES
    ]
    comps.append((make("rand_k", dim, shared_seed=False), Slot()))
    comps.append((make("biased_rand_k", dim, shared_seed=False), Slot()))
    return comps


def label(case: tuple[Compressor, Slot]) -> str:
    return repr(case[0])


# ----------------------------------------------------------------------------- configs


def test_yaml_files_cover_all_compressors_and_build():
    stems = sorted(p.stem for p in CONF.glob("*.yaml"))
    assert stems == sorted(COMPRESSOR_NAMES)
    for path in CONF.glob("*.yaml"):
        text = path.read_text()
        assert text.startswith("# "), f"{path.name} must start with a one-line comment"
        cfg = yaml.safe_load(text)
        assert cfg["name"] == path.stem
        comp = build_compressor(cfg, 50)
        assert comp.name == path.stem
        assert comp(np.ones(50), np.random.default_rng(0)).shape == (50,)


def test_build_reads_the_group_from_a_whole_config_and_resolves_k():
    assert make("rand_k", 50).keep(50) == 5  # ratio 0.1 by default
    assert build_compressor({"compressor": {"name": "top_k", "k": 7}}, 50).keep(50) == 7
    assert make("top_k", 50, k=3, ratio=0.9).keep(50) == 3  # k wins over ratio
    assert make("rand_k", 50, ratio=0.001).keep(50) == 1  # at least one coordinate
    assert make("rand_k", 50, k=None, ratio=None).keep(50) == 5  # null keys take the default
    assert make("qsgd", 50, levels=9).levels == 9


@pytest.mark.parametrize(
    "cfg, key",
    [
        ({"name": "rand_k", "k": 0}, "compressor.k"),
        ({"name": "rand_k", "k": 51}, "compressor.k"),
        ({"name": "top_k", "k": 2.5}, "compressor.k"),
        ({"name": "biased_rand_k", "k": True}, "compressor.k"),
        ({"name": "rand_k", "ratio": 0}, "compressor.ratio"),
        ({"name": "top_k", "ratio": 1.5}, "compressor.ratio"),
        ({"name": "top_k", "ratio": "half"}, "compressor.ratio"),
        ({"name": "rand_k", "shared_seed": "yes"}, "compressor.shared_seed"),
        ({"name": "qsgd", "levels": 0}, "compressor.levels"),
        ({"name": "qsgd", "levels": 2**31}, "compressor.levels"),
        ({"name": "qsgd", "k": 3}, "'qsgd' takes no key(s) k"),
        ({"name": "sign", "ratio": 0.5}, "'sign' takes no key(s) ratio"),
        ({"name": "gzip"}, "unknown compressor 'gzip'"),
        ({}, "unknown compressor None"),
    ],
)
def test_build_rejects_bad_values_naming_the_key(cfg, key):
    with pytest.raises(ConfigError) as err:
        build_compressor(cfg, 50)
    assert key in str(err.value)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ConfigError, match="valid choices: biased_rand_k, identity, natural"):
        build_compressor({"name": "nope"}, 10)


def test_bad_dim_and_slot_are_rejected():
    with pytest.raises(ConfigError, match="dim"):
        build_compressor({"name": "identity"}, 0)
    for position, size in [(3, 3), (-1, 2), (0, 0)]:
        with pytest.raises(ValueError, match="Slot"):
            Slot(position, size)


# ----------------------------------------------------------------------------- constants


@pytest.mark.parametrize(
    "name, kw, slot, unbiased, omega, delta",
    [
        ("identity", {}, Slot(), True, 0.0, 1.0),
        ("rand_k", {"k": 5}, Slot(), True, 3.0, None),
        ("biased_rand_k", {"k": 5}, Slot(), False, None, 0.25),
        ("top_k", {"k": 4}, Slot(), False, None, 0.2),
        ("perm_k", {}, Slot(2, 7), True, 6.0, None),
        ("natural", {}, Slot(), True, 0.125, 0.875),
        ("qsgd", {"levels": 1}, Slot(), True, np.sqrt(20.0), None),
        ("qsgd", {"levels": 4}, Slot(), True, np.sqrt(20.0) / 4, None),
        ("qsgd", {"levels": 8}, Slot(), True, 20 / 64, 1 - 20 / 64),
        ("sign", {}, Slot(), False, None, None),
        ("scaled_sign", {}, Slot(), False, None, 1 / 20),
    ],
)
def test_reported_constants(name, kw, slot, unbiased, omega, delta):
    comp = make(name, **kw)
    assert comp.unbiased is unbiased
    assert comp.shared == ("cohort" if name == "perm_k" else "client")
    assert comp.omega(D, slot) == pytest.approx(omega)
    assert comp.delta(D) == pytest.approx(delta)


# ----------------------------------------------------------------------------- unbiased


UNBIASED = [
    ("identity", {}, Slot(), False),
    ("rand_k", {"k": 5}, Slot(), True),
    ("rand_k", {"k": 5, "shared_seed": False}, Slot(), True),
    ("perm_k", {}, Slot(0, 3), True),
    ("perm_k", {}, Slot(1, 3), True),
    ("perm_k", {}, Slot(2, 3), True),
    ("natural", {}, Slot(), False),
    ("qsgd", {"levels": 1}, Slot(), False),
    ("qsgd", {"levels": 4}, Slot(), False),
]


@pytest.mark.parametrize("name, kw, slot, tight", UNBIASED)
def test_unbiased_with_variance_at_most_omega(name, kw, slot, tight):
    """E[C(x)] = x within Z standard errors per coordinate and E‖C(x) − x‖² ≤ ω‖x‖²; where
    the bound is an equality (Rand-K, Perm-K) the Monte-Carlo estimate also matches it."""
    comp, x = make(name, **kw), fixed_x()
    samples = draws(comp, x, slot)
    assert_mean_is(samples, x)
    mse, margin = mse_stats(samples, x)
    bound = comp.omega(D, slot) * float(x @ x)
    assert mse <= bound + margin
    if tight:
        assert abs(mse - bound) <= margin


def test_biased_rand_k_is_contractive_in_expectation():
    comp, x = make("biased_rand_k", k=5), fixed_x()
    samples = draws(comp, x)
    assert_mean_is(samples, 5 / D * x)  # E[C(x)] = (K/d) x
    mse, margin = mse_stats(samples, x)
    bound = (1 - comp.delta(D)) * float(x @ x)  # an equality for biased Rand-K
    assert mse <= bound + margin
    assert abs(mse - bound) <= margin


def vectors(d: int = D) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    one_hot = np.zeros(d)
    one_hot[5] = -2.0
    return [
        fixed_x(d),
        rng.standard_normal(d),
        np.ones(d),
        one_hot,
        np.round(rng.standard_normal(d)),  # zeros and ties
        rng.exponential(size=d) ** 4,  # heavy-tailed
    ]


@pytest.mark.parametrize("k", [1, 4, 19, 20])
def test_top_k_is_contractive(k):
    comp = make("top_k", k=k)
    for x in vectors():
        err = comp(x, np.random.default_rng(0)) - x
        assert err @ err <= (1 - comp.delta(D)) * (x @ x) * (1 + 1e-12)


def test_top_k_keeps_the_largest_magnitudes_ties_to_the_lowest_index():
    x = np.array([1.0, -3.0, 0.5, 3.0, 3.0, -2.0])
    values, idx = make("top_k", 6, k=2).compress(x, np.random.default_rng(0))
    assert idx.tolist() == [1, 3] and values.tolist() == [-3.0, 3.0]
    values, idx = make("top_k", 6, k=4).compress(x, np.random.default_rng(0))
    assert idx.tolist() == [1, 3, 4, 5]


def test_scaled_sign_is_contractive_with_its_exact_delta():
    comp = make("scaled_sign")
    for x in vectors():
        err = comp(x, np.random.default_rng(0)) - x
        delta_x = np.sum(np.abs(x)) ** 2 / (D * (x @ x))
        assert delta_x >= comp.delta(D) - 1e-15
        assert err @ err == pytest.approx((1 - delta_x) * (x @ x), rel=1e-9, abs=1e-12)
        assert err @ err <= (1 - comp.delta(D)) * (x @ x) * (1 + 1e-12)


def test_sign_sends_plus_minus_one():
    x = np.array([0.3, -2.0, 0.0, 5.0, -1e-300])
    out = make("sign", 5)(x, np.random.default_rng(0))
    assert out.tolist() == [1.0, -1.0, 1.0, 1.0, -1.0]


# ----------------------------------------------------------------------------- perm_k


@pytest.mark.parametrize("d, n", [(20, 3), (20, 4), (12, 4), (3, 5), (7, 7), (1, 2)])
def test_perm_k_blocks_partition_the_coordinates_and_average_to_x(d, n):
    comp = make("perm_k", d)
    rng = np.random.default_rng(d * 100 + n)
    for trial in range(5):
        seed = 1000 * trial + d
        x = rng.standard_normal(d)
        x_int = rng.integers(1, 1000, size=d) * rng.choice([-1.0, 1.0], size=d)
        outs = [comp(x, np.random.default_rng(seed), Slot(i, n)) for i in range(n)]
        held = np.array([o != 0 for o in outs])  # x has no zero entry
        assert np.all(held.sum(axis=0) == 1)  # disjoint and covering
        sizes = [
            len(comp.compress(x, np.random.default_rng(seed), Slot(i, n))[0]) for i in range(n)
        ]
        assert sum(sizes) == d and max(sizes) - min(sizes) <= 1
        np.testing.assert_allclose(np.mean(outs, axis=0), x, rtol=5e-16, atol=0)
        outs_int = [comp(x_int, np.random.default_rng(seed), Slot(i, n)) for i in range(n)]
        assert np.array_equal(np.sum(outs_int, axis=0) / n, x_int)  # exact
        if n & (n - 1) == 0:  # a power of two: n·x/n is exact for any float
            assert np.array_equal(np.sum(outs, axis=0) / n, x)


def test_compressor_rng_is_shared_by_the_cohort_only_for_perm_k():
    perm, rand = make("perm_k"), make("rand_k")
    a, b = (compressor_rng(perm, 3, 5, pid).random() for pid in (0, 1))
    assert a == b
    a, b = (compressor_rng(rand, 3, 5, pid).random() for pid in (0, 1))
    assert a != b
    assert compressor_rng(rand, 3, 5, 0).random() == a  # a pure function of its key


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize("case", all_compressors(37), ids=label)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_round_trip_through_flower_encoding(case, dtype):
    comp, slot = case
    x = fixed_x(37).astype(dtype)
    payload = comp.compress(x, np.random.default_rng(5), slot)
    wire = parameters_to_ndarrays(ndarrays_to_parameters(payload))
    assert [(a.dtype, a.shape) for a in wire] == [(a.dtype, a.shape) for a in payload]
    got = comp.decompress(wire, 37, np.random.default_rng(5), slot)
    assert got.dtype == np.float64 and got.shape == (37,)
    assert np.array_equal(got, comp.decompress(payload, 37, np.random.default_rng(5), slot))
    rng = np.random.default_rng(5)
    assert np.array_equal(got, comp(x, rng, slot))
    # __call__ advances the generator exactly as compress does
    after = np.random.default_rng(5)
    comp.compress(x, after, slot)
    assert rng.random() == after.random()


@pytest.mark.parametrize("case", all_compressors(21), ids=label)
def test_zero_round_trips_and_non_finite_is_rejected(case):
    comp, slot = case
    out = comp(np.zeros(21), np.random.default_rng(0), slot)
    assert out.shape == (21,) and not out.any()
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones(21)
        x[4] = bad
        with pytest.raises(ValueError, match="non-finite"):
            comp.compress(x, np.random.default_rng(0), slot)


@pytest.mark.parametrize(
    "name, kw, floats",
    [
        ("identity", {}, 40),
        ("rand_k", {"k": 6}, 6),
        ("rand_k", {"k": 6, "shared_seed": False}, 6),
        ("biased_rand_k", {"k": 6, "shared_seed": False}, 6),
        ("top_k", {"k": 6}, 6),
        ("natural", {}, 40),
        ("qsgd", {}, 1),
        ("sign", {}, 0),
        ("scaled_sign", {}, 1),
    ],
)
def test_floats_count_reals_not_indices_levels_or_bits(name, kw, floats):
    comp = make(name, 40, **kw)
    assert comp.floats(comp.compress(fixed_x(40), np.random.default_rng(0))) == floats


def test_perm_k_floats_are_the_block_size():
    comp = make("perm_k", 40)
    counts = [
        comp.floats(comp.compress(fixed_x(40), np.random.default_rng(0), Slot(i, 3)))
        for i in range(3)
    ]
    assert sorted(counts) == [13, 13, 14]


def wire_bytes(payload: list[np.ndarray]) -> int:
    return sum(encoded_size(a) for a in payload)


def test_wire_sizes():
    d, rng = 1000, np.random.default_rng(0)
    x = rng.standard_normal(d)
    full = wire_bytes(make("identity", d).compress(x, rng))
    assert wire_bytes(make("rand_k", d, k=100).compress(x, rng)) < full / 5
    sparse = make("rand_k", d, k=100, shared_seed=False).compress(x, rng)
    assert sparse[1].dtype == np.uint16
    assert 1000 <= wire_bytes(sparse) <= 1000 + 400  # 8 + 2 bytes per kept coordinate
    nat = wire_bytes(make("natural", d).compress(x, rng))
    assert 2 * d <= nat <= 2 * d + 200  # int16 codes plus the np.save header
    sign = wire_bytes(make("sign", d).compress(x, rng))
    assert d / 8 <= sign <= d / 8 + 200
    qsgd = wire_bytes(make("qsgd", d).compress(x, rng))
    assert d <= qsgd <= d + 400  # int8 levels, one norm


def test_index_dtype_is_the_smallest_that_fits():
    assert index_dtype(10) == np.uint16 and index_dtype(65_535) == np.uint16
    assert index_dtype(65_536) == np.uint32 and index_dtype(2**32 - 1) == np.uint32
    x = np.arange(70_000.0)
    values, idx = make("top_k", 70_000, k=3).compress(x, np.random.default_rng(0))
    assert idx.dtype == np.uint32 and idx.tolist() == [69_997, 69_998, 69_999]


def test_natural_rounds_to_a_neighbouring_power_of_two():
    comp = make("natural", 8)
    x = np.array([0.3, -0.75, 1.0, -4.0, 5e-324, 1e-310, 3e300, -1.5 * 2.0**1023])
    (codes,) = comp.compress(x, np.random.default_rng(0))
    assert codes.dtype == np.int16
    rng = np.random.default_rng(1)
    for _ in range(50):
        out = comp(x, rng)
        assert np.all(np.isfinite(out)) and np.array_equal(np.sign(out), np.sign(x))
        low = 2.0 ** np.floor(np.log2(np.abs(x)))
        assert np.all((np.abs(out) == low) | (np.abs(out) == 2 * np.minimum(low, 2.0**1022)))
        assert out[2] == 1.0 and out[3] == -4.0 and out[4] == 5e-324  # powers of two stay


def test_qsgd_levels_dtype_and_grid():
    x = fixed_x()
    for levels, dtype in [(4, np.int8), (127, np.int8), (128, np.int16), (40_000, np.int32)]:
        comp = make("qsgd", levels=levels)
        norm, lv = comp.compress(x, np.random.default_rng(0))
        assert lv.dtype == dtype and np.abs(lv).max() <= levels
        assert norm.shape == (1,) and norm[0] == pytest.approx(np.linalg.norm(x))
    out = make("qsgd", levels=3)(x, np.random.default_rng(0))
    grid = out / np.linalg.norm(x) * 3
    assert np.allclose(grid, np.round(grid)) and np.abs(grid).max() <= 3 + 1e-12


def test_decompress_rejects_malformed_payloads():
    x = fixed_x()
    with pytest.raises(ValueError):
        make("rand_k", k=5).decompress([x[:5], x[:5]], D, np.random.default_rng(0))
    with pytest.raises(ValueError):
        make("identity").decompress([x], D + 1, np.random.default_rng(0))
    with pytest.raises(ValueError):
        make("top_k", k=2).decompress([x[:2], np.array([3, 99], np.uint16)], D, None)
    with pytest.raises(ValueError):
        make("natural").decompress([x], D, None)
