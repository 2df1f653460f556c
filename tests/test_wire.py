"""fedsim.wire's reader of client state: what Flower's ``Array.numpy()`` returns, faster."""

import numpy as np
import pytest
from flwr.common import Array, ArrayRecord

from fedsim.wire import from_array, from_record

RNG = np.random.default_rng(0)
CASES = [
    np.zeros(3),
    RNG.normal(size=(4, 5)),
    np.array(3.0),
    np.zeros((0, 3)),
    np.arange(7, dtype=np.int32),
    np.array([True, False]),
    RNG.normal(size=(3, 4)).astype(np.float32),
    np.frombuffer(RNG.bytes(1000), dtype=np.uint8),
    RNG.normal(size=(3, 4)).T,  # Fortran order: Flower's path
    RNG.normal(size=(2, 3, 4))[:, ::2],  # not contiguous
    np.zeros(5, ">f8"),  # non-native byte order
    np.array([1 + 2j]),
    np.array(["ab", "c"]),
]


@pytest.mark.parametrize("a", CASES, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_from_array_reads_what_flower_reads(a):
    arr = Array(a)
    ours, flowers = from_array(arr), arr.numpy()
    assert ours.dtype == flowers.dtype and ours.shape == flowers.shape
    np.testing.assert_array_equal(ours, flowers)
    assert ours.flags.writeable  # a client may update its state in place
    ours[...] = ours  # and the record's bytes stay as they were
    assert from_array(arr).tobytes() == flowers.tobytes()


def test_from_record_keeps_the_order_and_a_corrupt_array_takes_flowers_error():
    arrays = [RNG.normal(size=4), np.arange(3)]
    record = ArrayRecord(numpy_ndarrays=arrays)
    for ours, mine in zip(from_record(record), arrays, strict=True):
        np.testing.assert_array_equal(ours, mine)
    good = Array(np.zeros(4))
    short = Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=good.data[:-8])
    with pytest.raises(ValueError):  # np.load's own complaint about the missing bytes
        short.numpy()
    with pytest.raises(ValueError):
        from_array(short)
    lying = Array(dtype="float32", shape=good.shape, stype=good.stype, data=good.data)
    assert from_array(lying).dtype == np.float64  # the header wins, as in np.load
