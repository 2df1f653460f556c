"""Client samplers: meta-epochs, inclusion probabilities, unbiasedness, determinism, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from fedsim.blocks.samplers import (
    SAMPLER_NAMES,
    Cohort,
    CyclicSampler,
    Sampler,
    build_sampler,
    capped_marginals,
    unbiased_sum,
)
from fedsim.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf" / "sampler"
Z = 4.0  # tolerance in standard errors for Monte-Carlo checks (fixed seeds: deterministic)


def make(name: str, m: int = 20, seed: int = 0, **kw) -> Sampler:
    l_m = np.arange(1.0, m + 1)
    return build_sampler({"name": name, **kw}, m, seed, client_L=l_m, bound=(l_m, 0.5))


def cohorts(s: Sampler, rounds: int) -> list[Cohort]:
    return [s.sample(t) for t in range(1, rounds + 1)]


# ----------------------------------------------------------------------------- configs


def test_yaml_files_cover_all_samplers_and_build():
    stems = sorted(p.stem for p in CONF.glob("*.yaml"))
    assert stems == sorted(SAMPLER_NAMES)
    for path in CONF.glob("*.yaml"):
        cfg = yaml.safe_load(path.read_text())
        assert cfg["name"] == path.stem
        s = build_sampler(cfg, 20, 0, client_L=np.ones(20), bound=(np.linspace(1, 9, 20), 1.0))
        assert s.inclusion_probabilities().shape == (20,)
        if path.stem != "full":
            assert cfg["cohort_size"] == 10
    assert yaml.safe_load((CONF / "cyclic.yaml").read_text())["reshuffle"] is True
    assert yaml.safe_load((CONF / "importance.yaml").read_text())["by"] == "bound"


def test_whole_config_is_accepted():
    s = build_sampler({"seed": 3, "sampler": {"name": "uniform", "cohort_size": 4}}, 10, 3)
    assert len(s.sample(1)) == 4


# ----------------------------------------------------------------------------- full / uniform


def test_full_takes_everyone():
    c = make("full", m=7).sample(5)
    np.testing.assert_array_equal(c.ids, np.arange(7))
    np.testing.assert_array_equal(c.scale, np.ones(7))
    np.testing.assert_array_equal(c.inclusion, np.ones(7))


def test_uniform_size_no_duplicates():
    s = make("uniform", m=20, cohort_size=6)
    seen = set()
    for c in cohorts(s, 50):
        assert len(c) == 6 and np.unique(c.ids).size == 6
        assert c.ids.min() >= 0 and c.ids.max() < 20
        np.testing.assert_allclose(c.scale, 20 / 6)
        np.testing.assert_allclose(c.inclusion, 6 / 20)
        seen.add(tuple(c.ids))
    assert len(seen) > 40
    assert s.expected_cohort_size == pytest.approx(6)


# ----------------------------------------------------------------------------- with replacement


def test_with_replacement_multiplicities():
    m, c = 20, 10
    s = make("with_replacement", m=m, cohort_size=c)
    any_duplicate = False
    for co in cohorts(s, 200):
        mult = co.scale * c / m
        np.testing.assert_allclose(mult, np.round(mult), atol=1e-12)
        assert mult.min() >= 1 and mult.sum() == pytest.approx(c)
        assert len(co) == np.count_nonzero(mult)
        any_duplicate |= bool(mult.max() > 1)
        np.testing.assert_allclose(co.inclusion, 1 - (1 - 1 / m) ** c)
    assert any_duplicate  # P(no duplicate in 10 draws of 20) ≈ 0.07 per round


def test_with_replacement_repeats_clients_across_rounds_and_pi():
    m, c, n = 10, 3, 4000
    s = make("with_replacement", m=m, cohort_size=c)
    counts = np.zeros(m)
    # the same client can come back in the very next round (no meta-epoch memory)
    assert any(set(s.sample(t).ids) & set(s.sample(t + 1).ids) for t in range(1, 20))
    for co in cohorts(s, n):
        counts[co.ids] += 1
    pi = 1 - (1 - 1 / m) ** c
    assert np.all(np.abs(counts / n - pi) <= Z * np.sqrt(pi * (1 - pi) / n))
    assert s.expected_cohort_size == pytest.approx(m * pi)


# ----------------------------------------------------------------------------- cyclic


def epoch_orders(s: CyclicSampler, epochs: int) -> list[np.ndarray]:
    r = s.rounds_per_epoch
    out = []
    for e in range(epochs):
        chunks = [s.sample(e * r + k + 1).ids for k in range(r)]
        out.append(np.concatenate(chunks))
    return out


def test_cyclic_each_client_once_per_meta_epoch():
    s = make("cyclic", m=20, cohort_size=5)
    assert isinstance(s, CyclicSampler) and s.rounds_per_epoch == 4
    orders = epoch_orders(s, 6)
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), np.arange(20))
    assert len({tuple(o) for o in orders}) == 6  # reshuffled: different orders
    co = s.sample(3)
    np.testing.assert_allclose(co.scale, 4.0)
    np.testing.assert_allclose(co.inclusion, 0.25)


def test_cyclic_without_reshuffle_repeats_the_order():
    s = make("cyclic", m=20, cohort_size=5, reshuffle=False)
    orders = epoch_orders(s, 4)
    for order in orders:
        np.testing.assert_array_equal(order, orders[0])
    np.testing.assert_array_equal(np.sort(orders[0]), np.arange(20))
    # meta-epoch 0 is the same with and without reshuffling
    np.testing.assert_array_equal(
        epoch_orders(make("cyclic", m=20, cohort_size=5), 1)[0], orders[0]
    )


def test_cyclic_needs_divisible_cohort():
    with pytest.raises(ConfigError, match="divisible") as err:
        make("cyclic", m=20, cohort_size=6)
    assert "1, 2, 4, 5, 10, 20" in str(err.value)


# ----------------------------------------------------------------------------- importance


def test_capped_marginals_hand_computed():
    pi = capped_marginals(np.array([10.0, 1, 1, 1, 1]), 2)
    np.testing.assert_allclose(pi, [1.0, 0.25, 0.25, 0.25, 0.25])
    # two rounds of capping: 1 and then 2 exceed 1
    pi = capped_marginals(np.array([100.0, 8, 1, 1, 1, 1]), 3)
    np.testing.assert_allclose(pi, [1.0, 1.0, 0.25, 0.25, 0.25, 0.25])
    pi = capped_marginals(np.array([3.0, 1, 0, 2]), 2)
    np.testing.assert_allclose(pi, [1.0, 1 / 3, 0.0, 2 / 3])


def test_importance_marginals_from_config():
    s = build_sampler(
        {"name": "importance", "cohort_size": 2, "by": "size"}, 4, 0, sizes=[1, 1, 1, 1]
    )
    np.testing.assert_allclose(s.inclusion_probabilities(), 0.5)
    s = build_sampler({"name": "importance", "cohort_size": 2, "by": "uniform"}, 4, 0)
    np.testing.assert_allclose(s.inclusion_probabilities(), 0.5)
    s = build_sampler({"name": "importance", "cohort_size": 2, "probabilities": [1, 2, 3, 2]}, 4, 0)
    np.testing.assert_allclose(s.inclusion_probabilities(), [0.25, 0.5, 0.75, 0.5])
    assert s.expected_cohort_size == pytest.approx(2)


def test_importance_inclusion_frequencies_match_targets():
    m, c, n = 12, 4, 20_000
    L = np.array([40.0, 9, 5, 4, 3, 3, 2, 2, 1, 1, 0.5, 0.5])  # client 0 would get π > 1
    s = build_sampler(
        {"name": "importance", "cohort_size": c, "by": "smoothness"}, m, 7, client_L=L
    )
    pi = s.inclusion_probabilities()
    assert pi[0] == 1.0 and pi.max() <= 1.0 and pi.sum() == pytest.approx(c)
    np.testing.assert_allclose(pi[1:], (c - 1) * L[1:] / L[1:].sum())
    counts = np.zeros(m)
    for co in cohorts(s, n):
        assert len(co) == c
        np.testing.assert_allclose(co.inclusion, pi[co.ids])
        np.testing.assert_allclose(co.scale, 1 / pi[co.ids])
        counts[co.ids] += 1
    freq = counts / n
    se = np.sqrt(pi * (1 - pi) / n)
    assert counts[0] == n  # π = 1: always in
    assert np.all(np.abs(freq - pi) <= Z * se + 1e-12), np.abs(freq - pi) / np.maximum(se, 1e-12)


# ----------------------------------------------------------------------------- unbiasedness


@pytest.mark.parametrize(
    "name, kw",
    [
        ("full", {}),
        ("uniform", {"cohort_size": 3}),
        ("with_replacement", {"cohort_size": 3}),
        ("importance", {"cohort_size": 3, "by": "smoothness"}),
        ("importance", {"cohort_size": 3, "probabilities": [9, 1, 1, 1, 2, 2, 3, 3, 1, 1, 1, 1]}),
        ("cyclic", {"cohort_size": 3}),
    ],
)
def test_horvitz_thompson_estimate_is_unbiased(name, kw):
    m, n = 12, 3000
    rng = np.random.default_rng(123)
    v = rng.normal(size=(m, 3)) + 1.0
    w = rng.uniform(0.5, 2.0, size=m)
    s = build_sampler({"name": name, **kw}, m, 1, client_L=np.linspace(1, 5, m))
    est = np.array([unbiased_sum(c, v[c.ids], w[c.ids]) for c in cohorts(s, n)])
    truth = w @ v
    se = est.std(axis=0, ddof=1) / np.sqrt(n)
    assert np.all(np.abs(est.mean(axis=0) - truth) <= Z * se + 1e-9), (est.mean(0), truth, se)


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_pure_function_of_seed_and_round(name):
    kw = {} if name == "full" else {"cohort_size": 5}
    a, b, other = make(name, seed=4, **kw), make(name, seed=4, **kw), make(name, seed=5, **kw)
    rounds = [7, 1, 3, 7, 12, 2]
    first = [a.sample(t).ids.tolist() for t in rounds]
    assert first == [b.sample(t).ids.tolist() for t in rounds]  # another instance, any order
    assert first[0] == first[3]  # same round twice
    if name != "full":
        assert first != [other.sample(t).ids.tolist() for t in rounds]


def test_cohort_arrays_are_read_only():
    c = make("uniform", cohort_size=3).sample(1)
    assert c.ids.dtype == np.int64
    with pytest.raises(ValueError):
        c.scale[0] = 0.0


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [0, 21, -1, 2.5, "10", True, None])
@pytest.mark.parametrize("name", ["uniform", "with_replacement", "importance", "cyclic"])
def test_bad_cohort_size(name, bad):
    with pytest.raises(ConfigError, match="cohort_size"):
        make(name, m=20, cohort_size=bad, by="uniform")


def test_unknown_names_list_the_choices():
    with pytest.raises(ConfigError, match="cyclic.*full.*importance.*uniform.*with_replacement"):
        make("round_robin", cohort_size=2)
    with pytest.raises(ConfigError, match="smoothness"):
        make("importance", cohort_size=2, by="loss")


@pytest.mark.parametrize(
    "probs, msg",
    [
        ([1, 1, 1], "one entry per client"),
        ([1, 1, 1, -1], "non-negative"),
        ([1, 0, 0, 0], "positive"),
        ([1, float("nan"), 1, 1], "finite"),
        ("abc", "list"),
    ],
)
def test_bad_probabilities(probs, msg):
    with pytest.raises(ConfigError, match=msg):
        build_sampler({"name": "importance", "cohort_size": 2, "probabilities": probs}, 4, 0)


def test_importance_needs_the_per_client_quantities():
    with pytest.raises(ConfigError, match="smoothness"):
        build_sampler({"name": "importance", "cohort_size": 2, "by": "smoothness"}, 4, 0)
    with pytest.raises(ConfigError, match="sizes"):
        build_sampler({"name": "importance", "cohort_size": 2, "by": "size"}, 4, 0)


def test_bad_reshuffle_and_rounds():
    with pytest.raises(ConfigError, match="reshuffle"):
        make("cyclic", cohort_size=5, reshuffle="yes")
    with pytest.raises(ValueError):
        make("uniform", cohort_size=5).sample(0)
