"""The disk cache (fedsim.cache): parsed LIBSVM files and Flower Datasets partitions are read
back without re-parsing or re-partitioning, identical to a fresh computation, and a damaged or
stale entry is recomputed."""

from pathlib import Path

import numpy as np
import pytest
import sklearn.datasets

from fedsim import cache, partition
from fedsim.tasks import data


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path / "cache"))
    data._LIBSVM_CACHE.clear()
    yield
    data._LIBSVM_CACHE.clear()


def write_libsvm(path: Path, rows: int = 12) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(rows):
        feats = sorted(rng.choice(np.arange(1, 9), size=3, replace=False))
        lines.append(f"{1 if i % 3 else -1} " + " ".join(f"{j}:{rng.random():.6f}" for j in feats))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_parsed_libsvm_file_is_read_back_without_parsing(tmp_path, monkeypatch):
    file = write_libsvm(tmp_path / "toy.svm")
    a, y = data.load_libsvm(file)
    data._LIBSVM_CACHE.clear()  # a new process: only the disk cache is left

    def refuse(*args, **kwargs):
        raise AssertionError("parsed again")

    monkeypatch.setattr(sklearn.datasets, "load_svmlight_file", refuse)
    b, z = data.load_libsvm(file)
    assert (a != b).nnz == 0 and a.shape == b.shape
    np.testing.assert_array_equal(y, z)
    # A changed file is a new key: parsed again (here: refused, so the call fails).
    write_libsvm(file, rows=13)
    data._LIBSVM_CACHE.clear()
    with pytest.raises(AssertionError, match="parsed again"):
        data.load_libsvm(file)


def test_a_damaged_entry_is_recomputed(tmp_path):
    file = write_libsvm(tmp_path / "toy.svm")
    a, _ = data.load_libsvm(file)
    (entry,) = cache.cache_dir().glob("libsvm-*.npz")
    entry.write_bytes(b"not a zip file")
    data._LIBSVM_CACHE.clear()
    b, _ = data.load_libsvm(file)
    assert (a != b).nnz == 0
    assert cache.load(entry) is not None  # rewritten


@pytest.mark.parametrize(
    "cfg",
    [{"name": "iid"}, {"name": "dirichlet", "alpha": 0.3}, {"name": "by_label"}],
    ids=lambda c: c["name"],
)
def test_a_flower_partition_is_read_back_identical(cfg, monkeypatch):
    labels = np.random.default_rng(1).integers(0, 4, size=200)
    first = partition.partition_indices(labels, 7, cfg, seed=3)
    monkeypatch.setattr(partition, "_" + cfg["name"], lambda *a: pytest.fail("partitioned again"))
    again = partition.partition_indices(labels, 7, cfg, seed=3)
    assert len(again) == 7
    for p, q in zip(first, again, strict=True):
        np.testing.assert_array_equal(p, q)
    # Another seed or other labels are other keys.
    with pytest.raises(pytest.fail.Exception, match="partitioned again"):
        partition.partition_indices(labels, 7, cfg, seed=4)
