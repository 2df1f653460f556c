"""Data sets that install offline: LIBSVM files, scikit-learn's bundled sets, Synthetic(α, β).

Loaders return plain arrays ``(A, y)``: ``A`` is ``n × d`` (numpy or scipy CSR), ``y`` holds one
label per row. Nothing here needs the network.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from fedsim import cache
from fedsim.errors import ConfigError, unknown
from fedsim.rng import generator

SKLEARN_DATASETS: tuple[str, ...] = ("breast_cancer", "digits", "wine")
DATA_HINT = (
    "copies of a9a and w8a live in ../shared/data relative to the project root in this repo's "
    "sessions; set task.path (relative paths are read from the directory you run in) or the "
    "FEDSIM_DATA environment variable"
)

_LIBSVM_CACHE: dict[tuple[str, float, int | None], tuple[sp.csr_matrix, np.ndarray]] = {}


def binary_labels(y: np.ndarray) -> np.ndarray:
    """Map a two-valued label vector to ``{-1, +1}``: the larger value becomes ``+1``."""
    values = np.unique(y)
    if values.shape[0] != 2:
        raise ConfigError(f"expected two label values for binary classification, got {values}")
    return np.where(y == values[1], 1.0, -1.0)


def normalize_rows(a: np.ndarray | sp.csr_matrix) -> np.ndarray | sp.csr_matrix:
    """Scale every row to unit Euclidean norm: ``a_j ← a_j / ‖a_j‖`` (zero rows stay zero)."""
    if sp.issparse(a):
        norms = np.sqrt(np.asarray(a.multiply(a).sum(axis=1)).ravel())
        scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        return sp.csr_matrix(sp.diags(scale) @ a)
    norms = np.linalg.norm(a, axis=1)
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return a * scale[:, None]


def load_libsvm(
    path: str | os.PathLike[str],
    num_features: int | None = None,
    max_samples: int | None = None,
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Read a LIBSVM (svmlight) file; labels mapped to ``±1``; the first ``max_samples`` rows.

    Relative paths are resolved against the current working directory. Parsed files are kept
    in-process and on disk (:mod:`fedsim.cache`; keyed by resolved path, size, modification time
    and ``num_features``). A file that
    scikit-learn's reader refuses is a :class:`ConfigError` ``<path>: line N: <reason>`` naming
    its first bad line (:func:`libsvm_error`; the file is re-scanned only then).
    """
    file = Path(os.path.expanduser(str(path))).resolve()
    if not file.is_file():
        raise ConfigError(f"LIBSVM file not found: {str(path)!r} (resolved to {file}); {DATA_HINT}")
    stat = file.stat()
    key = (str(file), stat.st_mtime, num_features)
    if key not in _LIBSVM_CACHE:
        _LIBSVM_CACHE[key] = _parsed_libsvm(file, stat.st_size, stat.st_mtime_ns, num_features)
    a, y = _LIBSVM_CACHE[key]
    if max_samples is not None:
        if max_samples < 1:
            raise ConfigError(f"task.max_samples must be positive, got {max_samples}")
        a, y = a[:max_samples], y[:max_samples]
    return a, y


def _parsed_libsvm(
    file: Path, size: int, mtime_ns: int, num_features: int | None
) -> tuple[sp.csr_matrix, np.ndarray]:
    """``file`` parsed by scikit-learn, or read back from the disk cache (:mod:`fedsim.cache`,
    keyed by path, size, modification time and ``num_features``)."""
    entry = cache.entry("libsvm", cache.digest(str(file), size, mtime_ns, num_features), "1")
    z = cache.load(entry)
    if z is not None and {"data", "indices", "indptr", "shape", "y"} <= z.keys():
        shape = tuple(int(n) for n in z["shape"])
        return sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=shape), z["y"]
    from sklearn.datasets import load_svmlight_file

    try:
        a, y = load_svmlight_file(str(file), n_features=num_features, dtype=np.float64)
    except (ValueError, UnicodeDecodeError) as err:
        raise libsvm_error(file, err, num_features) from None
    if a.shape[0] == 0:
        raise ConfigError(f"{file}: no samples (an empty LIBSVM file)")
    a, y = sp.csr_matrix(a), binary_labels(np.asarray(y))
    arrays = {"data": a.data, "indices": a.indices, "indptr": a.indptr}
    cache.store(entry, f"the parsed {file.name}", **arrays, shape=np.array(a.shape), y=y)
    return a, y


def shown(token: bytes | str, limit: int = 40) -> str:
    """``token`` quoted for a message: all but printable ASCII escaped, ``limit`` characters at
    most (then ``…``)."""
    raw = token if isinstance(token, bytes) else token.encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    text = "".join(
        c if c.isascii() and c.isprintable() else c.encode("unicode_escape").decode() for c in text
    )
    return f"'{text}'" if len(text) <= limit else f"'{text[:limit]}'…"


def _parses(token: bytes, kind: type) -> bool:
    """Whether ``kind(token)`` (``int`` or ``float``, as scikit-learn's reader calls them) works."""
    try:
        kind(token)
    except ValueError:
        return False
    return True


def libsvm_line_error(line: bytes) -> str | None:
    """Why one line of a LIBSVM file is not ``label [qid:Q] index:value ...`` with increasing
    indices ≥ 0 (the rules of scikit-learn's reader), or None for a good line."""
    if b"\0" in line:
        return "binary data (a NUL byte), not a text file"
    tokens = line.split(b"#", 1)[0].split()
    if not tokens:
        return None
    if not _parses(tokens[0], float):
        return f"label {shown(tokens[0])} is not a number"
    features = tokens[1:]
    if features and features[0].startswith(b"qid:"):
        features = features[1:]
    previous = -1
    for token in features:
        index, colon, value = token.partition(b":")
        if not colon:
            return f"feature {shown(token)} is not INDEX:VALUE"
        if not _parses(index, int):
            return f"feature index {shown(index)} is not an integer"
        if int(index) < 0:
            return f"feature index {int(index)} is negative"
        if int(index) <= previous:
            return f"feature index {int(index)} after {previous}: indices must increase"
        if not _parses(value, float):
            return f"feature value {shown(value)} (index {int(index)}) is not a number"
        previous = int(index)
    return None


def libsvm_error(file: Path, err: Exception, num_features: int | None = None) -> ConfigError:
    """``<file>: line N: <reason>`` for the first bad line (scanned only after the fast reader
    failed), else the reader's own reason, escaped and shortened: with every line well formed,
    that is a ``task.num_features`` below the file's feature count."""
    with file.open("rb") as f:
        for number, line in enumerate(f, start=1):
            reason = libsvm_line_error(line)
            if reason is not None:
                return ConfigError(f"{file}: line {number}: not a LIBSVM line: {reason}")
    if num_features is not None:
        return ConfigError(
            f"{file}: task.num_features={num_features} is too small for this file "
            f"({shown(str(err), 120)}); set task.num_features=null to infer it"
        )
    return ConfigError(f"{file}: not a LIBSVM file this task can read: {shown(str(err), 120)}")


def load_sklearn(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A scikit-learn bundled set: features standardized ``(a - mean) / std``, integer labels."""
    from sklearn import datasets
    from sklearn.preprocessing import StandardScaler

    loaders = {
        "breast_cancer": datasets.load_breast_cancer,
        "digits": datasets.load_digits,
        "wine": datasets.load_wine,
    }
    if name not in loaders:
        raise unknown("task.dataset", name, SKLEARN_DATASETS)
    bunch = loaders[name]()
    a = StandardScaler().fit_transform(np.asarray(bunch.data, dtype=np.float64))
    return a, np.asarray(bunch.target, dtype=np.int64)


def synthetic_client(
    k: int, dim: int, samples: int, alpha: float, beta: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Client ``k`` of binary Synthetic(α, β) (FedProx, Li et al. 2020; LEAF).

    ``u_k ~ N(0, α)``, ``w_k ~ N(u_k, I_d)``, ``b_k ~ N(u_k, 1)``; ``B_k ~ N(0, β)``,
    ``v_k ~ N(B_k, I_d)``; rows ``a ~ N(v_k, Σ)`` with ``Σ = diag(j^{-1.2})``, ``j = 1..d``;
    label ``y = sign(w_kᵀa + b_k)`` with ``sign(0) = +1``. ``α`` and ``β`` are variances.
    Draws come from ``generator(seed, 0, "task/synthetic", k)`` only, so client ``k``'s data do
    not depend on how many clients there are.
    """
    rng = generator(seed, 0, "task/synthetic", k)
    u = rng.normal(0.0, np.sqrt(alpha))
    w = rng.normal(u, 1.0, size=dim)
    b = rng.normal(u, 1.0)
    big_b = rng.normal(0.0, np.sqrt(beta))
    v = rng.normal(big_b, 1.0, size=dim)
    std = np.arange(1, dim + 1, dtype=np.float64) ** -0.6
    a = v + std * rng.standard_normal((samples, dim))
    y = np.where(a @ w + b >= 0, 1.0, -1.0)
    return a, y
