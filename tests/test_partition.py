"""Partition schemes: disjoint covers, sizes, label skew, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.errors import ConfigError
from fedsim.partition import PARTITION_NAMES, partition_indices


def _labels(n: int = 1000, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=n)


def _check_cover(parts: list[np.ndarray], n: int, full: bool = True) -> None:
    assert all(len(p) > 0 for p in parts)
    assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted, no repeats
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)  # disjoint
    assert joined.min() >= 0 and joined.max() < n
    if full:
        assert len(joined) == n


SCHEMES = [
    {"name": "iid"},
    {"name": "dirichlet", "alpha": 0.5},
    {"name": "by_label", "classes_per_client": 2},
    {"name": "sorted"},
]


@pytest.mark.parametrize("cfg", SCHEMES, ids=lambda c: c["name"])
def test_disjoint_cover_and_determinism(cfg: dict) -> None:
    y = _labels()
    parts = partition_indices(y, 20, cfg, seed=3)
    assert len(parts) == 20
    _check_cover(parts, len(y))
    again = partition_indices(y, 20, cfg, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_indices(y, 20, cfg, seed=4)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


@pytest.mark.parametrize("name", ["iid", "sorted"])
@pytest.mark.parametrize("n", [1000, 1003])
def test_equal_sizes(name: str, n: int) -> None:
    parts = partition_indices(_labels(n), 10, {"name": name}, seed=0)
    sizes = [len(p) for p in parts]
    assert sum(sizes) == n
    assert max(sizes) - min(sizes) == (0 if n % 10 == 0 else 1)


def test_by_label_limits_classes() -> None:
    y = _labels()
    for k in (1, 2, 3):
        parts = partition_indices(y, 15, {"name": "by_label", "classes_per_client": k}, seed=1)
        _check_cover(parts, len(y))
        assert all(len(np.unique(y[p])) <= k for p in parts)


def _label_skew(y: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each client's label mix and the global one."""
    classes = np.unique(y)
    glob = np.array([np.mean(y == c) for c in classes])
    tv = [0.5 * np.abs(np.array([np.mean(y[p] == c) for c in classes]) - glob).sum() for p in parts]
    return float(np.mean(tv))


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    y = _labels(2000)
    skew = []
    for alpha in (100.0, 1.0, 0.1):
        runs = [
            _label_skew(y, partition_indices(y, 10, {"name": "dirichlet", "alpha": alpha}, s))
            for s in range(3)
        ]
        skew.append(np.mean(runs))
    assert skew[0] < skew[1] < skew[2]
    assert skew[0] < 0.1 and skew[2] > 0.5


def test_dirichlet_every_client_nonempty_under_strong_skew() -> None:
    y = _labels(500)
    parts = partition_indices(y, 50, {"name": "dirichlet", "alpha": 0.1}, seed=0)
    _check_cover(parts, len(y))


def test_sorted_blocks_are_contiguous_in_key_order() -> None:
    y = _labels()
    parts = partition_indices(y, 7, {"name": "sorted"}, seed=2)
    for a, b in zip(parts, parts[1:], strict=False):
        assert y[a].max() <= y[b].min()
    keys = np.random.default_rng(5).normal(size=len(y))
    parts = partition_indices(y, 7, {"name": "sorted"}, seed=2, keys=keys)
    _check_cover(parts, len(y))
    for a, b in zip(parts, parts[1:], strict=False):
        assert keys[a].max() < keys[b].min()


def test_iid_mixes_labels() -> None:
    y = np.repeat(np.arange(4), 250)  # sorted labels: shards of an unshuffled set would be pure
    parts = partition_indices(y, 4, {"name": "iid"}, seed=0)
    assert all(len(np.unique(y[p])) == 4 for p in parts)


def test_float_labels_are_fine() -> None:
    y = np.where(_labels() % 2 == 0, 1.0, -1.0)
    parts = partition_indices(y, 8, {"name": "by_label", "classes_per_client": 1}, seed=0)
    _check_cover(parts, len(y))
    assert all(len(np.unique(y[p])) == 1 for p in parts)


@pytest.mark.parametrize(
    ("cfg", "clients", "match"),
    [
        (
            {"name": "nope"},
            3,
            "valid choices: by_label, dirichlet, iid, natural, replicated, sorted",
        ),
        ({"name": "natural"}, 3, "natural"),
        ({"name": "iid"}, 1001, "1000 samples across 1001 clients"),
        ({"name": "iid"}, 0, "at least 1"),
        ({"name": "by_label", "classes_per_client": 11}, 3, "classes_per_client"),
        ({"name": "by_label", "class_assignment": "x"}, 3, "valid choices"),
        ({"name": "dirichlet", "alpha": 0.0}, 3, "alpha must be > 0"),
        ({"name": "dirichlet", "alpha": -1}, 3, "alpha must be > 0"),
        ({"name": "iid", "alpha": 1.0}, 3, "unknown key"),
    ],
)
def test_errors(cfg: dict, clients: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        partition_indices(_labels(), clients, cfg, seed=0)


def test_names() -> None:
    assert set(PARTITION_NAMES) == {
        "iid",
        "dirichlet",
        "by_label",
        "sorted",
        "natural",
        "replicated",
    }
