"""Arrays on the wire: Flower ``Parameters`` and what crossing the wire costs.

Every engine moves ``Parameters`` between strategy and clients. Over Ray or gRPC they hold the
``np.save`` bytes of each array (Flower's own encoding). Inside one process (the inline engine)
nothing crosses a wire, so a reply may carry its arrays directly (:func:`local`) and a message
remembers the arrays it was encoded from; :func:`decode` then skips the round trip, and
:func:`wire_bits` still reports the exact bytes Flower's encoding would have sent, so the
``up_bits``/``down_bits`` columns are the same on every engine.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from flwr.common import Array, ArrayRecord, Parameters, ndarray_to_bytes, ndarrays_to_parameters
from flwr.common import parameters_to_ndarrays as _decode

_ARRAYS = "_fedsim_arrays"


def encode(arrays: list[np.ndarray]) -> Parameters:
    """Flower's encoding of ``arrays``; the message also remembers the arrays themselves."""
    params = ndarrays_to_parameters(arrays)
    setattr(params, _ARRAYS, arrays)
    return params


def local(arrays: list[np.ndarray]) -> Parameters:
    """A message that never leaves this process: the arrays without their encoding."""
    params = Parameters(tensors=[], tensor_type="numpy.ndarray")
    setattr(params, _ARRAYS, arrays)
    return params


def decode(params: Parameters, copy: bool = False) -> list[np.ndarray]:
    """The arrays of a message (copies of remembered ones when ``copy``)."""
    arrays = getattr(params, _ARRAYS, None)
    if arrays is None:
        return _decode(params)
    return [np.array(a, copy=True) for a in arrays] if copy else list(arrays)


@lru_cache(maxsize=256)
def _encoded_size(shape: tuple[int, ...], dtype: str, fortran: bool) -> int:
    probe = np.zeros(shape, dtype=np.dtype(dtype), order="F" if fortran else "C")
    return len(ndarray_to_bytes(probe))


def encoded_size(a: np.ndarray) -> int:
    """Bytes of Flower's encoding of ``a`` (depends on shape, dtype and memory order only)."""
    fortran = bool(a.flags.f_contiguous and not a.flags.c_contiguous)
    return _encoded_size(tuple(a.shape), a.dtype.str, fortran)


def wire_bits(params: Parameters) -> int:
    """Bits that cross the wire for ``params``: ``8 · Σ len(encoded array)``."""
    if params.tensors:
        return 8 * sum(len(t) for t in params.tensors)
    total = 0
    for a in getattr(params, _ARRAYS, ()):
        total += encoded_size(a)
    return 8 * total


# Client state (``context.state``) holds ``ArrayRecord``s of ``Array``s in np.save's format.
# Flower's ``Array.numpy()`` reads them through ``np.load``, which parses every header with
# ``ast.literal_eval`` (~40 µs an array); for a stateful method on the inline engine that was
# most of a round. :func:`from_array` reads the same bytes directly where they are np.save's
# plain C-order format and takes Flower's own path for anything else. (Writing is left to Flower:
# a hand-written np.save saved only ~20 %, most of the cost is in Array's own constructor.)
_MAGIC_V1 = b"\x93NUMPY\x01\x00"


def from_array(arr: Array) -> np.ndarray:
    """``arr.numpy()`` as a writable copy, without np.load's header parse when the header says
    exactly ``arr.dtype``, ``arr.shape`` and C order and the data has that many bytes."""
    data = arr.data
    if arr.stype == "numpy.ndarray" and data[:8] == _MAGIC_V1 and len(data) >= 10:
        start = 10 + int.from_bytes(data[8:10], "little")
        header = data[10:start]
        try:
            dtype = np.dtype(arr.dtype)
        except TypeError:
            dtype = None
        shape = tuple(arr.shape)
        if (
            dtype is not None
            and not dtype.hasobject
            and dtype.fields is None
            and b"'fortran_order': False" in header
            and f"'descr': '{dtype.str}'".encode() in header
            and f"'shape': {shape!r}".encode() in header
            and len(data) - start == dtype.itemsize * math.prod(shape)
        ):
            return np.frombuffer(data, dtype=dtype, offset=start).reshape(shape).copy()
    return arr.numpy()


def from_record(record: ArrayRecord) -> list[np.ndarray]:
    """``record.to_numpy_ndarrays()``, each array read by :func:`from_array`."""
    return [from_array(arr) for arr in record.values()]
