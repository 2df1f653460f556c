"""Byzantine attacks: ALIE's z, the omniscient vectors by hand, shift-back's majority rule,
label flipping, the choice of Byzantine clients, and config validation."""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
import yaml

from fedsim.blocks.attacks import (
    ATTACK_NAMES,
    CLIENT_SIDE,
    OMNISCIENT,
    ORACLES,
    Attack,
    alie,
    alie_z,
    bit_flip,
    build_attack,
    byzantine_ids,
    flip_labels,
    gaussian,
    ipm,
    shift_back,
)
from fedsim.errors import ConfigError
from fedsim.rng import generator

CONF = Path(__file__).resolve().parents[1] / "conf" / "attack"
HONEST = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]])  # mean [3, 4], sample std [2, 2√3]


def make(name: str, n: int = 20, seed: int = 0, **kw) -> Attack:
    return build_attack({"name": name, **kw}, n, seed)


# ----------------------------------------------------------------------------- pure attacks


def test_alie_z_matches_baruch_et_al():
    assert alie_z(20, 5) == pytest.approx(0.2533, abs=1e-4)  # s = 6, Φ⁻¹(9/15)
    assert alie_z(3, 1) == pytest.approx(0.0)  # s = 1, Φ⁻¹(1/2)
    # n = 50, b = 12: s = 26 − 12 = 14, Φ⁻¹(24/38), checked against the standard library
    assert alie_z(50, 12) == pytest.approx(NormalDist().inv_cdf(24 / 38), abs=1e-9)
    for n, b in ((20, 0), (20, 10), (1, 1), (20, 2.0)):
        with pytest.raises(ValueError):
            alie_z(n, b)


def test_alie_ipm_bit_flip_by_hand():
    sd = np.array([2.0, 2.0 * np.sqrt(3.0)])  # ddof = 1, as torch.std
    assert np.allclose(alie(HONEST, 1.5), np.array([3.0, 4.0]) - 1.5 * sd)
    assert np.allclose(alie(HONEST[:1], 3.0), HONEST[0])  # one honest vector: σ = 0
    assert np.allclose(ipm(HONEST, 0.1), [-0.3, -0.4])
    assert np.array_equal(bit_flip(np.array([1.0, -2.0, 0.0])), [-1.0, 2.0, 0.0])
    with pytest.raises(ValueError):
        alie(np.zeros((0, 2)), 1.0)
    with pytest.raises(ValueError):
        ipm(np.zeros(2), 0.1)  # honest vectors are a 2-D stack


def test_shift_back_sends_the_target_only_with_a_majority():
    target = np.array([-7.0, 7.0])
    assert np.array_equal(shift_back(HONEST, target, True), target)
    assert np.allclose(shift_back(HONEST, target, False), [3.0, 4.0])


def test_gaussian_replaces_the_vector_by_noise():
    draw = gaussian(np.random.default_rng(0), (200_000,), 3.0)
    assert draw.shape == (200_000,)
    assert abs(draw.mean()) < 5 * 3.0 / np.sqrt(draw.size)
    assert draw.std() == pytest.approx(3.0, rel=0.01)
    again = gaussian(np.random.default_rng(0), (200_000,), 3.0)
    assert np.array_equal(draw, again)


def test_flip_labels_for_the_three_conventions():
    signed = np.array([1.0, -1.0, -1.0, 1.0])
    assert np.array_equal(flip_labels(signed, 2), -signed)
    binary = np.array([0, 1, 1, 0])
    flipped = flip_labels(binary, 2)
    assert np.array_equal(flipped, [1, 0, 0, 1]) and flipped.dtype == binary.dtype
    digits = np.arange(10)
    assert np.array_equal(flip_labels(digits, 10), 9 - digits)
    assert np.array_equal(flip_labels(np.array([0, 2]), 3), [2, 0])
    # all ones fit both two-class conventions: the caller says which
    ones = np.ones(3)
    with pytest.raises(ValueError, match="signed"):
        flip_labels(ones, 2)
    assert np.array_equal(flip_labels(ones, 2, signed=True), -ones)
    assert np.array_equal(flip_labels(ones, 2, signed=False), 0 * ones)
    for y, k in (([0, 2], 2), ([-1, 0], 2), ([0, 10], 10), ([-1, 3], 5)):
        with pytest.raises(ValueError):
            flip_labels(np.array(y), k)
    with pytest.raises(ValueError):
        flip_labels(np.array([1, 0]), 2, signed=True)


# ----------------------------------------------------------------------------- Byzantine ids


def test_byzantine_ids_are_drawn_from_the_seed():
    cfg = {"name": "alie", "num_byzantine": None, "fraction": 0.25, "ids": []}
    ids = byzantine_ids(20, cfg, seed=3)
    assert len(ids) == 5 and list(ids) == sorted(ids) and len(set(ids)) == 5
    assert all(isinstance(i, int) for i in ids)
    draw = generator(3, 0, "attack/byzantine").choice(20, 5, replace=False)
    assert ids == tuple(sorted(int(i) for i in draw))
    assert byzantine_ids(20, cfg, seed=3) == ids
    assert any(byzantine_ids(20, cfg, seed=s) != ids for s in range(4, 10))
    assert len(byzantine_ids(20, {**cfg, "num_byzantine": 7}, 3)) == 7
    assert len(byzantine_ids(20, {**cfg, "fraction": 0.49}, 3)) == 9
    assert len(byzantine_ids(100, {**cfg, "fraction": 0.29}, 3)) == 29  # not 28.999…
    assert len(byzantine_ids(20, {"name": "ipm"}, 3)) == 5  # default fraction 0.25


def test_explicit_ids_override_count_and_fraction():
    cfg = {"name": "bit_flip", "num_byzantine": None, "fraction": 0.4, "ids": [7, 2, 11]}
    assert byzantine_ids(20, cfg, seed=0) == (2, 7, 11)
    assert byzantine_ids(20, {**cfg, "num_byzantine": 3}, seed=0) == (2, 7, 11)
    with pytest.raises(ConfigError, match="attack.num_byzantine"):
        byzantine_ids(20, {**cfg, "num_byzantine": 5}, seed=0)


def test_none_has_no_byzantine_client():
    cfg = yaml.safe_load((CONF / "none.yaml").read_text())
    assert byzantine_ids(20, cfg, 0) == ()
    assert byzantine_ids(20, {"name": "none"}, 0) == ()
    attack = build_attack(cfg, 20, 0)
    assert attack.ids == () and not attack.is_omniscient and not attack.is_client_side


@pytest.mark.parametrize(
    "cfg, n, message",
    [
        ({"name": "ipm", "num_byzantine": 10}, 20, "fewer than half"),
        ({"name": "ipm", "num_byzantine": 2}, 4, "fewer than half"),
        ({"name": "alie", "ids": list(range(10))}, 20, "fewer than half"),
        ({"name": "ipm", "fraction": 0.5}, 20, "attack.fraction"),
        ({"name": "ipm", "fraction": -0.1}, 20, "attack.fraction"),
        ({"name": "ipm", "fraction": "a lot"}, 20, "attack.fraction"),
        ({"name": "ipm", "num_byzantine": -1}, 20, "attack.num_byzantine"),
        ({"name": "ipm", "num_byzantine": 1.5}, 20, "attack.num_byzantine"),
        ({"name": "ipm", "ids": [1, 1]}, 20, "distinct"),
        ({"name": "ipm", "ids": [20]}, 20, "integers in [0, 20)"),
        ({"name": "ipm", "ids": [-1]}, 20, "integers in [0, 20)"),
        ({"name": "ipm", "ids": [1.0]}, 20, "integers in [0, 20)"),
        ({"name": "ipm", "ids": [True]}, 20, "integers in [0, 20)"),
        ({"name": "ipm", "ids": "0,1"}, 20, "list of client ids"),
        ({"name": "none", "ids": [3]}, 20, "choose an attack"),
        ({"name": "none", "num_byzantine": 2}, 20, "choose an attack"),
        ({"name": "none", "fraction": 0.25}, 20, "choose an attack"),
        ({"name": "gaussian", "num_byzantine": 0}, 20, "attack=gaussian with no Byzantine"),
        ({"name": "bit_flip", "fraction": 0.01}, 20, "attack=bit_flip with no Byzantine"),
        ({"name": "flood"}, 20, "unknown attack 'flood'"),
    ],
)
def test_byzantine_ids_refusals(cfg, n, message):
    with pytest.raises(ConfigError) as err:
        byzantine_ids(n, cfg, 0)
    assert message in str(err.value)
    with pytest.raises(ConfigError):
        build_attack(cfg, n, 0)


# ----------------------------------------------------------------------------- configured attack


def test_yaml_files_cover_all_attacks_and_build():
    stems = sorted(p.stem for p in CONF.glob("*.yaml"))
    assert stems == sorted(ATTACK_NAMES)
    assert set(CLIENT_SIDE) | set(OMNISCIENT) | {"none"} == set(ATTACK_NAMES)
    assert not set(CLIENT_SIDE) & set(OMNISCIENT)
    for path in CONF.glob("*.yaml"):
        text = path.read_text()
        assert text.startswith("# "), f"{path.name} must start with a one-line comment"
        cfg = yaml.safe_load(text)
        assert cfg["name"] == path.stem
        attack = build_attack(cfg, 20, 0)
        assert attack.name == path.stem
        assert attack.num_byzantine == (0 if path.stem == "none" else 5)
        assert attack.is_omniscient == (path.stem in OMNISCIENT)
        assert attack.is_client_side == (path.stem in CLIENT_SIDE)


def test_build_reads_parameters():
    assert make("gaussian", sigma=2.5).sigma == 2.5
    assert make("ipm", epsilon=0.5).epsilon == 0.5
    assert make("alie", z=1).z == 1.0
    assert make("alie", z=None).alie_z() == pytest.approx(alie_z(20, 5))
    assert make("shb", oracle="all").oracle == "all"
    attack = make("bit_flip", ids=[4, 1])
    assert attack.ids == (1, 4) and attack.is_byzantine(4) and not attack.is_byzantine(2)


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"name": "gaussian", "sigma": 0.0}, "attack.sigma"),
        ({"name": "gaussian", "sigma": -1.0}, "attack.sigma"),
        ({"name": "gaussian", "sigma": "big"}, "attack.sigma"),
        ({"name": "ipm", "epsilon": 0}, "attack.epsilon"),
        ({"name": "alie", "z": float("nan")}, "attack.z"),
        ({"name": "alie", "z": True}, "attack.z"),
        ({"name": "alie", "oracle": "everyone"}, "attack.oracle"),
        ({"name": "shb", "oracle": "sampled"}, "attack.oracle"),
        ({"name": "bit_flip", "sigma": 1.0}, "'bit_flip' takes no key(s) sigma"),
        ({"name": "gaussian", "oracle": "all"}, "valid keys: num_byzantine, fraction, ids, sigma"),
        ({"name": "ipm", "z": 1.0}, "valid keys: num_byzantine, fraction, ids, epsilon, oracle"),
        ({"name": "shb", "epsilon": 1.0}, "valid keys: num_byzantine, fraction, ids, oracle"),
        ({"name": "none", "oracle": "all"}, "'none' takes no key(s) oracle"),
        ({}, "unknown attack None"),
    ],
)
def test_build_attack_refusals(cfg, message):
    with pytest.raises(ConfigError) as err:
        build_attack(cfg, 20, 0)
    assert message in str(err.value)
    assert set(ORACLES) == {"cohort", "all"}


def test_forge_by_hand():
    alie_attack = make("alie", z=1.5)
    sd = np.array([2.0, 2.0 * np.sqrt(3.0)])
    assert np.allclose(alie_attack.forge(HONEST, 2, 5), np.array([3.0, 4.0]) - 1.5 * sd)
    default_z = make("alie").forge(HONEST, 2, 5)
    assert np.allclose(default_z, np.array([3.0, 4.0]) - alie_z(20, 5) * sd)
    assert np.allclose(make("ipm").forge(HONEST, 1, 4), [-0.3, -0.4])
    # no honest vector seen: zeros of the dimension the (0, d) array carries
    empty = np.zeros((0, 3))
    assert np.array_equal(make("alie").forge(empty, 4, 4), np.zeros(3))
    assert np.array_equal(make("ipm").forge(empty, 4, 4), np.zeros(3))
    for name in ("none", *CLIENT_SIDE):
        with pytest.raises(ValueError, match="not omniscient"):
            build_attack({"name": name, "num_byzantine": 0 if name == "none" else 2}, 20, 0).forge(
                HONEST, 1, 4
            )
    with pytest.raises(ValueError, match="2-D"):
        make("ipm").forge(np.zeros(2), 1, 4)
    with pytest.raises(ValueError):
        make("ipm").forge(HONEST, 5, 4)  # more Byzantine clients than the cohort


def test_shb_majority_is_strict():
    attack = make("shb")
    target = np.array([-7.0, 7.0])
    honest = HONEST[:2]  # mean [2, 2]
    # 2 of 4 is not a strict majority: behave honestly
    assert np.allclose(attack.forge(honest, 2, 4, target), [2.0, 2.0])
    # 3 of 4 is
    assert np.array_equal(attack.forge(honest[:1], 3, 4, target), target)
    assert np.array_equal(attack.forge(np.zeros((0, 2)), 1, 1, target), target)
    assert np.array_equal(attack.forge(np.zeros((0, 2)), 1, 3, target), np.zeros(2))
    assert np.allclose(attack.forge(honest, 1, 3, target), [2.0, 2.0])
    with pytest.raises(ValueError, match="target"):
        attack.forge(honest, 3, 4, None)
    with pytest.raises(ValueError, match="length 2"):
        attack.forge(honest, 3, 4, np.zeros(3))


def test_attack_dataclass_validates_directly():
    with pytest.raises(ConfigError, match="fewer than half"):
        Attack("ipm", (0, 1), 4)
    with pytest.raises(ConfigError, match="integers in"):
        Attack("ipm", (0, 9), 4)
    with pytest.raises(ConfigError, match="choose an attack"):
        Attack("none", (0,), 4)
    with pytest.raises(ConfigError, match="unknown attack"):
        Attack("nope", (0,), 4)
    assert Attack("ipm", (3, 0), 7).ids == (0, 3)
