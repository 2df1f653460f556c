"""Split a pooled data set across clients (``conf/partition/*.yaml``).

:func:`partition_indices` maps ``(labels, num_clients, cfg, seed)`` to one sorted index array per
client. Every client gets at least one sample, clients are disjoint, and together they cover every
sample the scheme uses (``by_label`` may leave out classes no client was given).

Schemes (``cfg["name"]``):

- ``iid``: a seeded permutation cut into ``M`` contiguous shards (Flower Datasets
  ``IidPartitioner``); sizes differ by at most one.
- ``dirichlet``: for every class ``c``, proportions ``p_c ~ Dir(α·1_M)`` split that class across
  clients (Flower Datasets ``DirichletPartitioner``); small ``α`` means skewed label mixes. Keys:
  ``alpha`` (0.5), ``min_size`` (1; draws are repeated, with fresh seeds after the partitioner's own
  retries, until every client has that many samples), ``self_balancing`` (false).
- ``by_label``: every client holds samples of ``k`` classes only; each class is split evenly among
  the clients that hold it (Flower Datasets ``PathologicalPartitioner``). Keys:
  ``classes_per_client`` (2), ``class_assignment`` (``first-deterministic``: client ``m`` gets
  class ``m mod C`` plus ``k-1`` random others, so no class is lost when ``M ≥ C``; or
  ``random`` / ``deterministic``).
- ``sorted``: samples ordered by ``keys`` (default: the labels; ties broken by a seeded
  permutation), then cut into ``M`` contiguous blocks whose sizes differ by at most one.
- ``natural``: the task's own split (only tasks that have one accept it; see the registry).
- ``replicated``: every client holds the whole data set (the homogeneous setting of the
  Byzantine-robust experiments, arXiv 2311.14127 §5: ζ = 0). Clients are not disjoint here; the
  tasks build one objective and share it.

Seeds: the Flower partitioners get ``int_seed(seed, 0, "partition") mod 2**32``; permutations use
``generator(seed, 0, "partition")`` (DESIGN §6).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from fedsim import cache
from fedsim.errors import ConfigError, unknown
from fedsim.rng import generator, int_seed

PARTITION_NAMES: tuple[str, ...] = (
    "iid",
    "dirichlet",
    "by_label",
    "sorted",
    "natural",
    "replicated",
)
_DIRICHLET_SEEDS = 50  # fresh seeds tried, each with the partitioner's own 11 draws
_ASSIGNMENT_MODES = ("first-deterministic", "random", "deterministic")
PARTITION_KEYS: dict[str, tuple[str, ...]] = {
    "iid": (),
    "dirichlet": ("alpha", "min_size", "self_balancing"),
    "by_label": ("classes_per_client", "class_assignment"),
    "sorted": (),
    "natural": (),
    "replicated": (),
}


def check_partition_cfg(cfg: dict[str, Any]) -> str:
    """The scheme's name; :class:`ConfigError` for an unknown name or an unknown key."""
    name = cfg.get("name")
    if name not in PARTITION_NAMES:
        raise unknown("partition", name, PARTITION_NAMES)
    extra = sorted(set(cfg) - set(PARTITION_KEYS[name]) - {"name"})
    if extra:
        valid = ", ".join(PARTITION_KEYS[name]) or "none"
        raise ConfigError(
            f"unknown key(s) {', '.join('partition.' + k for k in extra)} for partition "
            f"{name!r}; valid keys: {valid}"
        )
    return str(name)


def partition_seed(seed: int, attempt: int = 0) -> int:
    """The 32-bit integer seed handed to Flower Datasets partitioners (``attempt`` > 0: retries)."""
    purpose = "partition" if attempt == 0 else f"partition/retry{attempt}"
    return int_seed(seed, 0, purpose) % 2**32


def partition_indices(
    labels: np.ndarray,
    num_clients: int,
    cfg: dict[str, Any],
    seed: int,
    keys: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Split samples ``0..N-1`` (with class ``labels``) into ``num_clients`` sorted index arrays."""
    name = check_partition_cfg(cfg)
    if name == "natural":
        raise ConfigError(
            "partition 'natural' needs a task with its own split (logreg_synthetic, quadratic); "
            f"choose one of: {', '.join(n for n in PARTITION_NAMES if n != 'natural')}"
        )
    labels = np.asarray(labels)
    n = labels.shape[0]
    if num_clients < 1:
        raise ConfigError(f"num_clients must be at least 1, got {num_clients}")
    if name == "replicated":
        return [np.arange(n, dtype=np.int64) for _ in range(num_clients)]
    if num_clients > n:
        raise ConfigError(
            f"cannot split {n} samples across {num_clients} clients: every client needs a sample"
        )
    codes = np.unique(labels, return_inverse=True)[1].reshape(-1)
    if name in ("iid", "dirichlet", "by_label"):
        parts = _flower_split(name, codes, num_clients, cfg, seed)
    else:
        key = codes if keys is None else np.asarray(keys)
        if key.shape != (n,):
            raise ConfigError(f"sorted partition needs one key per sample ({n}), got {key.shape}")
        parts = _sorted(key, num_clients, seed)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _flower_split(
    name: str, codes: np.ndarray, num_clients: int, cfg: dict[str, Any], seed: int
) -> list[np.ndarray]:
    """A Flower Datasets partitioner's split, read back from the disk cache when it holds it
    (:mod:`fedsim.cache`; keyed by the labels, the scheme, ``num_clients``, the seed and the
    flwr-datasets version): importing Flower Datasets costs a deployed ClientApp seconds."""
    from importlib.metadata import version

    key = cache.digest(codes, name, num_clients, dict(cfg), seed, version("flwr-datasets"))
    entry = cache.entry("partition", key, "1")
    z = cache.load(entry)
    if z is not None and {"flat", "ends"} <= z.keys() and z["ends"].shape == (num_clients,):
        return np.split(z["flat"].astype(np.int64), z["ends"][:-1])
    split = {"iid": _iid, "dirichlet": _dirichlet, "by_label": _by_label}[name]
    parts = [np.asarray(p, dtype=np.int64) for p in split(codes, num_clients, cfg, seed)]
    flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    cache.store(entry, "the partition", flat=flat, ends=np.cumsum([len(p) for p in parts]))
    return parts


def _hf_dataset(codes: np.ndarray, idx: np.ndarray) -> Any:
    from datasets import Dataset

    return Dataset.from_dict({"label": codes[idx].astype(np.int64), "idx": idx.astype(np.int64)})


def _collect(partitioner: Any, num_clients: int) -> list[np.ndarray]:
    return [np.asarray(partitioner.load_partition(m)["idx"]) for m in range(num_clients)]


def _iid(codes: np.ndarray, num_clients: int, cfg: dict[str, Any], seed: int) -> list[np.ndarray]:
    from flwr_datasets.partitioner import IidPartitioner

    perm = generator(seed, 0, "partition").permutation(codes.shape[0])
    partitioner = IidPartitioner(num_partitions=num_clients)
    partitioner.dataset = _hf_dataset(codes, perm)
    return _collect(partitioner, num_clients)


def _dirichlet(
    codes: np.ndarray, num_clients: int, cfg: dict[str, Any], seed: int
) -> list[np.ndarray]:
    from flwr_datasets.partitioner import DirichletPartitioner

    alpha = float(cfg.get("alpha", 0.5))
    if not alpha > 0:
        raise ConfigError(f"partition.alpha must be > 0, got {alpha}")
    min_size = int(cfg.get("min_size", 1))
    if min_size < 1 or min_size * num_clients > codes.shape[0]:
        raise ConfigError(
            f"partition.min_size={min_size} is impossible for {codes.shape[0]} samples and "
            f"{num_clients} clients"
        )
    dataset = _hf_dataset(codes, np.arange(codes.shape[0]))
    for attempt in range(_DIRICHLET_SEEDS):
        partitioner = DirichletPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            alpha=alpha,
            min_partition_size=min_size,  # it redraws up to 10 times, then raises ValueError
            self_balancing=bool(cfg.get("self_balancing", False)),
            shuffle=False,
            seed=partition_seed(seed, attempt),
        )
        partitioner.dataset = dataset
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # its "redrawing" notices
            try:
                partitioner.load_partition(0)  # draws the whole split
            except ValueError:
                continue
        return _collect(partitioner, num_clients)
    raise ConfigError(
        f"dirichlet partition with alpha={alpha} left a client with fewer than {min_size} "
        f"samples in {11 * _DIRICHLET_SEEDS} draws; raise partition.alpha or lower num_clients"
    )


def _by_label(
    codes: np.ndarray, num_clients: int, cfg: dict[str, Any], seed: int
) -> list[np.ndarray]:
    from flwr_datasets.partitioner import PathologicalPartitioner

    num_classes = int(codes.max()) + 1
    k = int(cfg.get("classes_per_client", 2))
    if not 1 <= k <= num_classes:
        raise ConfigError(
            f"partition.classes_per_client must be in [1, {num_classes}] (the number of "
            f"classes), got {k}"
        )
    mode = cfg.get("class_assignment", "first-deterministic")
    if mode not in _ASSIGNMENT_MODES:
        raise unknown("partition.class_assignment", mode, _ASSIGNMENT_MODES)
    partitioner = PathologicalPartitioner(
        num_partitions=num_clients,
        partition_by="label",
        num_classes_per_partition=k,
        class_assignment_mode=mode,
        shuffle=False,
        seed=partition_seed(seed),
    )
    partitioner.dataset = _hf_dataset(codes, np.arange(codes.shape[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # we report unused classes ourselves
        try:
            parts = _collect(partitioner, num_clients)
        except ValueError as err:
            raise ConfigError(f"by_label partition impossible: {err}") from err
    used = np.zeros(codes.shape[0], dtype=bool)
    for p in parts:
        used[p] = True
    if not used.all():
        lost = sorted(set(np.unique(codes[~used]).tolist()))
        warnings.warn(
            f"by_label: classes {lost} are held by no client; {int((~used).sum())} samples "
            "are unused",
            stacklevel=3,
        )
    return parts


def _sorted(keys: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
    """Order samples by ``keys`` (ties: seeded permutation) and cut into contiguous blocks."""
    perm = generator(seed, 0, "partition").permutation(keys.shape[0])
    order = perm[np.argsort(keys[perm], kind="stable")]
    return np.array_split(order, num_clients)
