"""The on-disk cache: named ``.npz`` files under ``$FEDSIM_CACHE`` (default ``~/.cache/fedsim``).

What lives there is derived and recomputable: optima (:mod:`fedsim.tasks.optimum`), pretrained
models (:mod:`fedsim.tasks.finetune`), parsed LIBSVM files (:mod:`fedsim.tasks.data`) and
partitions (:mod:`fedsim.partition`). Each is keyed by a digest of everything it depends on, so a
stale entry is never read; an entry that is missing, truncated or foreign reads as ``None`` and is
recomputed. Writes are atomic (temporary file + rename), so parallel runs, Ray workers and
ClientApp processes may share the directory. A deployed ClientApp process starts afresh for every
message, so this cache is what spares it a LIBSVM parse and a Flower Datasets import each round.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np


def cache_dir() -> Path:
    """``$FEDSIM_CACHE`` or ``~/.cache/fedsim``."""
    return Path(os.environ.get("FEDSIM_CACHE") or Path.home() / ".cache" / "fedsim")


def digest(*parts: Any) -> str:
    """A hex key for JSON-able ``parts`` and numpy arrays among them (dtype, shape and bytes)."""
    h = hashlib.sha1()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(f"{part.dtype.str}{part.shape}".encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def entry(kind: str, key: str, version: str) -> Path:
    """The file of one entry: ``<cache>/<kind>-<key[:40]>-v<version>.npz``."""
    return cache_dir() / f"{kind}-{key[:40]}-v{version}.npz"


def load(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays stored at ``path``, or ``None`` when it is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {name: np.array(z[name]) for name in z.files}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def store(path: Path, what: str, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` atomically; a failure is a warning naming ``what``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        warnings.warn(f"could not cache {what} in {path.parent}: {err}", stacklevel=3)
