"""Compression operators C: ℝ^d → ℝ^d for the uplink (and downlink) of federated methods.

Two classes of guarantees, in the notation of Beznosikov, Horváth, Richtárik & Safaryan,
"On biased compression for distributed learning" (arXiv 2002.12410):

* **unbiased** with variance ω (:meth:`Compressor.omega`):
  E[C(x)] = x and E‖C(x) − x‖² ≤ ω‖x‖²;
* **contractive** with δ ∈ (0, 1] (:meth:`Compressor.delta`):
  E‖C(x) − x‖² ≤ (1 − δ)‖x‖².

An unbiased compressor with ω < 1 is contractive with δ = 1 − ω, and ``delta`` says so
(identity: ω = 0, δ = 1; natural: ω = 1/8, δ = 7/8); otherwise ``None`` marks a guarantee the
compressor does not have.

**Wire format.** :meth:`Compressor.compress` returns the *payload*: the arrays that really cross
the wire (Flower sends each with ``np.save``; :func:`fedsim.wire.encoded_size` gives its bytes).
:meth:`Compressor.decompress` rebuilds C(x) as a float64 vector from the payload and a generator
in the *same state* as the one ``compress`` used: the receiver re-derives it from the shared seed
(:func:`compressor_rng`), so indices drawn from it are never sent. Index arrays use the smallest
of uint16 (d ≤ 65 535), uint32, uint64 that holds d. Float values keep the input's precision
(float32 stays float32; everything else is sent as float64).

**Counting reals** (:meth:`Compressor.floats`, the papers' "floats communicated"): every
floating-point value in the payload counts, norms and scales included; integer indices,
quantization levels and sign bits do not. The one exception is ``natural``, whose int16 codes
each stand for one low-precision real, so it counts d.

**Randomness.** ``shared = "client"``: the generator is the client's own for the round;
``shared = "cohort"`` (``perm_k``): one generator for the whole cohort, so that the clients'
blocks fit together. :func:`compressor_rng` gives the right one.

Any input shape is flattened (C order); non-finite entries raise ``ValueError``; the zero vector
compresses to the zero vector.

Config keys (``conf/compressor/<name>.yaml``):

=================  ==========================================================================
``name``           one of :data:`COMPRESSOR_NAMES`
``k``              ``rand_k``, ``biased_rand_k``, ``top_k``: K, coordinates kept (null: use
                   ``ratio``); 1 ≤ K ≤ d
``ratio``          the same, as a fraction: K = max(1, round(ratio·d)), 0 < ratio ≤ 1
``shared_seed``    ``rand_k``, ``biased_rand_k``: true sends values only (the receiver redraws
                   the indices); false sends values and indices
``levels``         ``qsgd``: s ≥ 1, quantization levels per sign
=================  ==========================================================================
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np

from fedsim.errors import ConfigError, int_at_least, unknown
from fedsim.rng import SERVER, generator

COMPRESSOR_NAMES: tuple[str, ...] = (
    "identity",
    "rand_k",
    "top_k",
    "biased_rand_k",
    "perm_k",
    "natural",
    "qsgd",
    "sign",
    "scaled_sign",
)

MAX_LEVELS = 2**31 - 1  # qsgd levels travel as int32 at most
NATURAL_BIAS = 1075  # natural code of ±2^e is ±(e + 1075); e ∈ [−1074, 1023], 0 codes zero


@dataclass(frozen=True)
class Slot:
    """Where a client sits in this round's cohort: ``position`` ∈ {0, …, ``cohort_size`` − 1}.

    Only cohort-shared compressors (``perm_k``) use it.
    """

    position: int = 0
    cohort_size: int = 1

    def __post_init__(self) -> None:
        for key in ("position", "cohort_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, Integral):
                raise ValueError(f"Slot.{key} must be an integer; got {value!r}")
        if self.cohort_size < 1 or not 0 <= self.position < self.cohort_size:
            raise ValueError(
                f"Slot needs cohort_size >= 1 and 0 <= position < cohort_size; "
                f"got position={self.position}, cohort_size={self.cohort_size}"
            )


_ALONE = Slot()  # the default slot: a cohort of one


# --------------------------------------------------------------------------- pure helpers


def index_dtype(dim: int) -> np.dtype:
    """The unsigned dtype of index arrays for dimension ``dim``: uint16, uint32 or uint64."""
    if dim <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    if dim <= np.iinfo(np.uint32).max:
        return np.dtype(np.uint32)
    return np.dtype(np.uint64)


def level_dtype(levels: int) -> np.dtype:
    """The signed dtype of QSGD levels in [−s, s]: int8 (s ≤ 127), int16 or int32."""
    for dtype in (np.int8, np.int16, np.int32):
        if levels <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"qsgd levels must be <= {MAX_LEVELS}; got {levels}")


def as_vector(x: np.ndarray) -> np.ndarray:
    """``x`` flattened, as float32 if it is float32 and float64 otherwise; finite or ValueError."""
    a = np.asarray(x)
    if a.dtype != np.float32:
        a = a.astype(np.float64, copy=False)
    a = a.reshape(-1)
    if not np.isfinite(a).all():
        raise ValueError("cannot compress a vector with non-finite entries (nan or inf)")
    return a


def norm2(x: np.ndarray) -> float:
    """‖x‖₂, computed as m·‖x/m‖₂ with m = max|x_i| so that it cannot overflow."""
    a = np.abs(x.astype(np.float64, copy=False))
    m = float(a.max(initial=0.0))
    return 0.0 if m == 0.0 else m * math.sqrt(float(np.sum(np.square(a / m))))


def norm1(x: np.ndarray) -> float:
    """‖x‖₁ = Σ|x_i|, computed as m·Σ|x_i|/m (m = max|x_i|) so that it cannot overflow."""
    a = np.abs(x.astype(np.float64, copy=False))
    m = float(a.max(initial=0.0))
    return 0.0 if m == 0.0 else m * float(np.sum(a / m))


def random_indices(rng: np.random.Generator, dim: int, k: int) -> np.ndarray:
    """K distinct coordinates of {0, …, d−1}, uniformly at random, sorted."""
    idx = rng.choice(dim, size=k, replace=False)
    idx.sort()
    return idx.astype(index_dtype(dim))


def top_indices(x: np.ndarray, k: int) -> np.ndarray:
    """The K coordinates of largest |x_i|, sorted; among equal |x_i| the lowest indices win.

    With t the K-th largest |x_i|: all i with |x_i| > t (fewer than K of them), then the lowest
    indices with |x_i| = t until there are K. O(d), no full sort.
    """
    a = np.abs(x)
    d = a.size
    t = np.partition(a, d - k)[d - k]
    above = np.flatnonzero(a > t)
    ties = np.flatnonzero(a == t)[: k - above.size]
    return np.sort(np.concatenate([above, ties])).astype(index_dtype(d))


def permutation_owners(rng: np.random.Generator, dim: int, n: int) -> np.ndarray:
    """owner[j] = (π(j) + r) mod n: the cohort position that sends coordinate j (perm_k).

    π is a uniform permutation of {0, …, d−1} and r a uniform shift in {0, …, n−1}, drawn in
    this order from ``rng``. Each coordinate has exactly one owner, each client owns ⌊d/n⌋ or
    ⌈d/n⌉ coordinates, and P(owner[j] = i) = 1/n for every j and i, also when d < n.
    """
    pi = rng.permutation(dim)
    r = int(rng.integers(n))
    return (pi + r) % n


def natural_codes(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Natural compression codes (int16) of ``x`` given uniforms ``u`` ∈ [0, 1)^d.

    With 2^a ≤ |x_i| < 2^(a+1), the value becomes sign(x_i)·2^(a+1) with probability
    p_i = |x_i|/2^a − 1 and sign(x_i)·2^a otherwise, so its mean is x_i. The code of
    ±2^e is ±(e + :data:`NATURAL_BIAS`), and 0 codes 0. An exponent of 1024 (only for
    |x_i| ≥ 2^1023) is clipped to 1023, the only case where the rounding is biased.
    """
    a = np.abs(x.astype(np.float64, copy=False))
    # a = mantissa·2^exp with mantissa ∈ [1/2, 1), so 2^(exp−1) ≤ a < 2^exp
    mantissa, exp = np.frexp(a)
    up = u < 2.0 * mantissa - 1.0  # p = (a − 2^(exp−1)) / 2^(exp−1) = 2·mantissa − 1
    e = np.minimum(exp - 1 + up, 1023)
    code = np.where(a > 0, np.sign(x) * (e + NATURAL_BIAS), 0)
    return code.astype(np.int16)


def natural_values(codes: np.ndarray) -> np.ndarray:
    """The float64 values of natural compression codes: 0 ↦ 0, ±c ↦ ±2^(c − bias)."""
    c = codes.astype(np.int64)
    return np.sign(c) * np.ldexp(1.0, np.abs(c) - NATURAL_BIAS)


def qsgd_levels(x: np.ndarray, s: int, u: np.ndarray) -> tuple[float, np.ndarray]:
    """(‖x‖, sign(x_i)·ξ_i) for QSGD with s levels given uniforms ``u`` ∈ [0, 1)^d.

    With r_i = s|x_i|/‖x‖ ∈ [0, s] and l_i = ⌊r_i⌋, ξ_i = l_i + 1 with probability r_i − l_i
    and l_i otherwise, so E[ξ_i] = r_i. The zero vector gives norm 0 and all levels 0.
    """
    norm = norm2(x)
    dtype = level_dtype(s)
    if norm == 0.0:
        return 0.0, np.zeros(x.size, dtype=dtype)
    a = x.astype(np.float64, copy=False)
    r = s * (np.abs(a) / norm)
    low = np.floor(r)
    xi = np.minimum(low + (u < r - low), s)
    return norm, (np.sign(a) * xi).astype(dtype)


def pack_signs(x: np.ndarray) -> np.ndarray:
    """The bits 1{x_i ≥ 0}, eight to a byte (``np.packbits``, uint8, ⌈d/8⌉ bytes)."""
    return np.packbits(x >= 0)


def unpack_signs(bits: np.ndarray, dim: int) -> np.ndarray:
    """±1.0 (float64) from :func:`pack_signs` bits: +1 where the bit is set."""
    if bits.dtype != np.uint8 or bits.size != (dim + 7) // 8:
        raise ValueError(f"sign bits must be {(dim + 7) // 8} uint8 bytes for dim={dim}")
    return 2.0 * np.unpackbits(bits, count=dim).astype(np.float64) - 1.0


def _twin(rng: np.random.Generator) -> np.random.Generator:
    """An independent generator in the same state as ``rng``."""
    bits = rng.bit_generator
    try:
        clone = type(bits)(0)
        clone.state = bits.state
    except (TypeError, ValueError, AttributeError):
        return copy.deepcopy(rng)
    return np.random.Generator(clone)


def _arrays(payload: list[np.ndarray], count: int, name: str) -> list[np.ndarray]:
    if len(payload) != count:
        raise ValueError(f"a {name} payload holds {count} array(s); got {len(payload)}")
    return [np.asarray(a).reshape(-1) for a in payload]


def _scatter(dim: int, idx: np.ndarray, values: np.ndarray, factor: float) -> np.ndarray:
    if idx.size != values.size:
        raise ValueError(f"payload has {values.size} values for {idx.size} indices")
    if idx.size and int(idx.max()) >= dim:
        raise ValueError(f"payload index {int(idx.max())} out of range for dim={dim}")
    out = np.zeros(dim)
    out[idx.astype(np.intp)] = values.astype(np.float64) * factor
    return out


# --------------------------------------------------------------------------- compressors


@dataclass(frozen=True)
class Compressor(ABC):
    """A compression operator C; see the module docstring for the guarantees and the payload.

    Class attributes: ``name`` (its config name), ``unbiased`` (E[C(x)] = x) and ``shared``
    (``"client"``: the client's own generator; ``"cohort"``: one generator for the cohort).
    """

    name: ClassVar[str]
    unbiased: ClassVar[bool]
    shared: ClassVar[str] = "client"

    def omega(self, dim: int, slot: Slot = _ALONE) -> float | None:
        """ω with E‖C(x) − x‖² ≤ ω‖x‖² for unbiased compressors, else None."""
        return None

    def delta(self, dim: int) -> float | None:
        """δ with E‖C(x) − x‖² ≤ (1 − δ)‖x‖², else None (default: 1 − ω when ω < 1)."""
        w = self.omega(dim)
        return None if w is None or w >= 1.0 else 1.0 - w

    @abstractmethod
    def compress(
        self, x: np.ndarray, rng: np.random.Generator, slot: Slot = _ALONE
    ) -> list[np.ndarray]:
        """The payload for ``x``: the arrays that cross the wire."""

    @abstractmethod
    def decompress(
        self, payload: list[np.ndarray], dim: int, rng: np.random.Generator, slot: Slot = _ALONE
    ) -> np.ndarray:
        """C(x) (float64, length ``dim``) from the payload and a generator in the same state
        as the one ``compress`` was given."""

    def floats(self, payload: list[np.ndarray]) -> int:
        """Reals sent: the number of floating-point entries of the payload (indices, levels and
        sign bits are not reals)."""
        return sum(int(np.asarray(a).size) for a in payload if np.asarray(a).dtype.kind == "f")

    def __call__(self, x: np.ndarray, rng: np.random.Generator, slot: Slot = _ALONE) -> np.ndarray:
        """C(x): compress with ``rng`` (which advances as in ``compress``) and decompress with
        a copy of its state from before, so that both sides see the same randomness."""
        twin = _twin(rng)
        payload = self.compress(x, rng, slot)
        return self.decompress(payload, int(np.size(x)), twin, slot)


@dataclass(frozen=True)
class Identity(Compressor):
    """No compression: C(x) = x; payload [x]; ω = 0, δ = 1."""

    name: ClassVar[str] = "identity"
    unbiased: ClassVar[bool] = True

    def omega(self, dim: int, slot: Slot = _ALONE) -> float:
        return 0.0

    def compress(
        self, x: np.ndarray, rng: np.random.Generator, slot: Slot = _ALONE
    ) -> list[np.ndarray]:
        return [as_vector(x).copy()]

    def decompress(
        self, payload: list[np.ndarray], dim: int, rng: np.random.Generator, slot: Slot = _ALONE
    ) -> np.ndarray:
        (values,) = _arrays(payload, 1, self.name)
        if values.size != dim:
            raise ValueError(f"identity payload has {values.size} values for dim={dim}")
        return values.astype(np.float64)


def _check_k(k: object, dim: int | None = None) -> int | None:
    if k is None:
        return None
    high = "d" if dim is None else str(dim)
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 1 or (dim is not None and k > dim):
        raise ConfigError(
            f"compressor.k must be null or an integer in [1, {high}] (d = model dimension); "
            f"got {k!r}"
        )
    return int(k)


def _check_ratio(ratio: object) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, Real) or not 0.0 < float(ratio) <= 1.0:
        raise ConfigError(f"compressor.ratio must be a number in (0, 1]; got {ratio!r}")
    return float(ratio)


def _check_levels(levels: object) -> int:
    if (
        isinstance(levels, bool)
        or not isinstance(levels, Integral)
        or not 1 <= levels <= MAX_LEVELS
    ):
        raise ConfigError(
            f"compressor.levels must be an integer in [1, {MAX_LEVELS}]; got {levels!r}"
        )
    return int(levels)


def _check_flag(key: str, value: object) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise ConfigError(f"compressor.{key} must be true or false; got {value!r}")
    return bool(value)


@dataclass(frozen=True)
class _Sparsifier(Compressor):
    """A compressor that keeps K coordinates: K = k if set, else max(1, round(ratio·d))."""

    k: int | None = None
    ratio: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", _check_k(self.k))
        object.__setattr__(self, "ratio", _check_ratio(self.ratio))

    def keep(self, dim: int) -> int:
        """K for dimension ``dim`` (Python's ``round``: halves to even)."""
        if self.k is None:
            return max(1, round(self.ratio * dim))
        if self.k > dim:
            raise ValueError(f"cannot keep k={self.k} coordinates of a {dim}-vector")
        return self.k


@dataclass(frozen=True)
class RandK(_Sparsifier):
    """Rand-K: C(x) = (d/K) Σ_{i∈S} x_i e_i, S a uniform K-subset of {0, …, d−1}.

    Unbiased with E‖C(x) − x‖² = (d/K − 1)‖x‖², so ω = d/K − 1 (e.g. Stich, Cordonnier &
    Jaggi, "Sparsified SGD with memory", NeurIPS 2018; Beznosikov et al., arXiv 2002.12410).
    Payload [x_S] with ``shared_seed`` (the receiver redraws S), else [x_S, S]. The d/K factor
    is applied on decompression, so the values sent are the input's own.
    """

    name: ClassVar[str] = "rand_k"
    unbiased: ClassVar[bool] = True
    shared_seed: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "shared_seed", _check_flag("shared_seed", self.shared_seed))

    def omega(self, dim: int, slot: Slot = _ALONE) -> float | None:
        return dim / self.keep(dim) - 1.0

    def factor(self, dim: int) -> float:
        """The factor applied to the kept values: d/K."""
        return dim / self.keep(dim)

    def compress(
        self, x: np.ndarray, rng: np.random.Generator, slot: Slot = _ALONE
    ) -> list[np.ndarray]:
        a = as_vector(x)
        idx = random_indices(rng, a.size, self.keep(a.size))
        return [a[idx]] if self.shared_seed else [a[idx], idx]

    def decompress(
        self, payload: list[np.ndarray], dim: int, rng: np.random.Generator, slot: Slot = _ALONE
    ) -> np.ndarray:
        if self.shared_seed:
            (values,) = _arrays(payload, 1, self.name)
            idx = random_indices(rng, dim, self.keep(dim))
        else:
            values, idx = _arrays(payload, 2, self.name)
        return _scatter(dim, idx, values, self.factor(dim))


@dataclass(frozen=True)
class BiasedRandK(RandK):
    """Rand-K without rescaling: C(x) = Σ_{i∈S} x_i e_i, S a uniform K-subset.

    Biased (E[C(x)] = (K/d)x) and contractive: E‖C(x) − x‖² = (1 − K/d)‖x‖², δ = K/d
    (Beznosikov, Horváth, Richtárik & Safaryan, arXiv 2002.12410). Payload as ``rand_k``.
    """

    name: ClassVar[str] = "biased_rand_k"
    unbiased: ClassVar[bool] = False

    def omega(self, dim: int, slot: Slot = _ALONE) -> float | None:
        return None

    def delta(self, dim: int) -> float | None:
        return self.keep(dim) / dim

    def factor(self, dim: int) -> float:
        return 1.0


@dataclass(frozen=True)
class TopK(_Sparsifier):
    """Top-K: C(x) = Σ_{i∈S} x_i e_i, S the K coordinates of largest |x_i| (ties: lowest index).

    Deterministic and contractive: ‖C(x) − x‖² = Σ_{i∉S} x_i² ≤ (1 − K/d)‖x‖², δ = K/d
    (Alistarh et al., "The convergence of sparsified gradient methods", NeurIPS 2018; Stich
    et al., NeurIPS 2018). Payload [x_S, S].
    """

    name: ClassVar[str] = "top_k"
    unbiased: ClassVar[bool] = False

    def delta(self, dim: int) -> float | None:
        return self.keep(dim) / dim

    def compress(
        self, x: np.ndarray, rng: np.random.Generator, slot: Slot = _ALONE
    ) -> list[np.ndarray]:
        a = as_vector(x)
        idx = top_indices(a, self.keep(a.size))
        return [a[idx], idx]

    def decompress(
        self, payload: list[np.ndarray], dim: int, rng: np.random.Generator, slot: Slot = _ALONE
    ) -> np.ndarray:
        values, idx = _arrays(payload, 2, self.name)
        return _scatter(dim, idx, values, 1.0)


@dataclass(frozen=True)
class PermK(Compressor):
    """Perm-K: with n = cohort size, the client at position i sends C_i(x) = n Σ_{j∈B_i} x_j e_j.

    Szlendak, Tyurin & Richtárik, "Permutation compressors for provably faster distributed
    nonconvex optimization", ICLR 2022 (arXiv 2110.03300). The blocks B_i = {j : (π(j) + r)
    mod n = i} come from a permutation π and a shift r drawn from the cohort-shared generator
    (:func:`permutation_owners`): they are disjoint and cover {0, …, d−1}, so
    (1/n) Σ_i C_i(x) = x for every x. Each C_i is unbiased (P(j ∈ B_i) = 1/n) with
    E‖C_i(x) − x‖² = (n − 1)‖x‖², ω = n − 1, for any d (if d < n some clients send nothing).
    Payload [x_{B_i}]; the blocks follow from the shared generator. ``delta`` is None: ω ≥ 1
    for any real cohort.
    """

    name: ClassVar[str] = "perm_k"
    unbiased: ClassVar[bool] = True
    shared: ClassVar[str] = "cohort"

    def omega(self, dim: int, slot: Slot = _ALONE) -> float | None:
        return float(slot.cohort_size - 1)

    def delta(self, dim: int) -> float | None:
        return None

    def compress(
        self, x: np.ndarray, rng: np.random.Generator, slot: Slot = _ALONE
    ) -> list[np.ndarray]:
        a = as_vector(x)
        owners = permutation_owners(rng, a.size, slot.cohort_size)
        return [a[owners == slot.position]]

    def decompress(
        self, payload: list[np.ndarray], dim: int, rng: np.random.Generator, slot: Slot = _ALONE
    ) -> np.ndarray:
        (values,) = _arrays(payload, 1, self.name)
        owners = permutation_owners(rng, dim, slot.cohort_size)
        idx = np.flatnonzero(owners == slot.position)
        return _scatter(dim, idx, values, float(slot.cohort_size))


@dataclass(frozen=True)
class Natural(Compressor):
    """Natural compression: each x_i ≠ 0 is rounded at random to a neighbouring power of two.

    Horváth, Ho, Horváth, Sahu, Canini & Richtárik, "Natural compression for distributed deep
    learning" (arXiv 1905.10988). With 2^a ≤ |x_i| < 2^(a+1):
    C(x)_i = sign(x_i)·2^(a+1) with probability |x_i|/2^a − 1, else sign(x_i)·2^a.
    Unbiased with ω = 1/8 (the worst case |x_i| = (4/3)·2^a), hence also contractive with
    δ = 7/8. Payload: one int16 array of sign-and-exponent codes (:func:`natural_codes`),
    2 bytes per coordinate; ``floats`` counts each code as one (low-precision) real, d in all.
    """

    name: ClassVar[str] = "natural"
    unbiased: ClassVar[bool] = True

    def omega(self, dim: int, slot: Slot = _ALONE) -> float | None:
        return 1.0 / 8.0

    def compress(
        self, x: np.ndarray, rng: np.random.Generator, slot: Slot = _ALONE
    ) -> list[np.ndarray]:
        a = as_vector(x)
        return [natural_codes(a, rng.random(a.size))]

    def decompress(
        self, payload: list[np.ndarray], dim: int, rng: np.random.Generator, slot: Slot = _ALONE
    ) -> np.ndarray:
        (codes,) = _arrays(payload, 1, self.name)
        if codes.dtype != np.int16 or codes.size != dim:
            raise ValueError(f"a natural payload is {dim} int16 codes")
        return natural_values(codes)

    def floats(self, payload: list[np.ndarray]) -> int:
        return int(np.asarray(payload[0]).size)


@dataclass(frozen=True)
class QSGD(Compressor):
    """QSGD with s levels: C(x)_i = ‖x‖·sign(x_i)·ξ_i/s, ξ_i the stochastic rounding of
    s|x_i|/‖x‖ to {0, …, s} (:func:`qsgd_levels`).

    Alistarh, Grubic, Li, Tomioka & Vojnović, "QSGD: communication-efficient SGD via gradient
    quantization and encoding", NeurIPS 2017, Lemma 3.1: unbiased with
    ω = min(d/s², √d/s). Payload [‖x‖ (float64, shape (1,)), sign·ξ (int8 for s ≤ 127, else
    int16/int32)]; one real.
    """

    name: ClassVar[str] = "qsgd"
    unbiased: ClassVar[bool] = True
    levels: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", _check_levels(self.levels))

    def omega(self, dim: int, slot: Slot = _ALONE) -> float | None:
        s = self.levels
        return min(dim / s**2, math.sqrt(dim) / s)

    def compress(
        self, x: np.ndarray, rng: np.random.Generator, slot: Slot = _ALONE
    ) -> list[np.ndarray]:
        a = as_vector(x)
        norm, levels = qsgd_levels(a, self.levels, rng.random(a.size))
        return [np.array([norm], dtype=np.float64), levels]

    def decompress(
        self, payload: list[np.ndarray], dim: int, rng: np.random.Generator, slot: Slot = _ALONE
    ) -> np.ndarray:
        norm, levels = _arrays(payload, 2, self.name)
        if norm.size != 1 or levels.size != dim or levels.dtype.kind != "i":
            raise ValueError(f"a qsgd payload is [norm (1,), {dim} integer levels]")
        return float(norm[0]) * levels.astype(np.float64) / self.levels


@dataclass(frozen=True)
class Sign(Compressor):
    """Sign: C(x)_i = +1 if x_i ≥ 0 else −1 (signSGD; Bernstein, Wang, Azizzadenesheli &
    Anandkumar, ICML 2018); the zero vector maps to 0.

    Neither unbiased nor contractive (‖C(x)‖² = d whatever ‖x‖): ω and δ are None. Payload
    [packed bits 1{x_i ≥ 0}] (uint8, ⌈d/8⌉ bytes; :func:`pack_signs`), no reals; the zero vector
    is sent as an empty byte array.
    """

    name: ClassVar[str] = "sign"
    unbiased: ClassVar[bool] = False

    def compress(
        self, x: np.ndarray, rng: np.random.Generator, slot: Slot = _ALONE
    ) -> list[np.ndarray]:
        a = as_vector(x)
        if not a.any():
            return [np.zeros(0, dtype=np.uint8)]
        return [pack_signs(a)]

    def decompress(
        self, payload: list[np.ndarray], dim: int, rng: np.random.Generator, slot: Slot = _ALONE
    ) -> np.ndarray:
        (bits,) = _arrays(payload, 1, self.name)
        if bits.size == 0:
            return np.zeros(dim)
        return unpack_signs(bits, dim)


@dataclass(frozen=True)
class ScaledSign(Compressor):
    """Scaled sign: C(x) = (‖x‖₁/d)·sign(x), sign(0) = +1.

    Karimireddy, Rebjock, Stich & Jaggi, "Error feedback fixes SignSGD and other gradient
    compression schemes", ICML 2019. Deterministic and contractive:
    ‖C(x) − x‖² = (1 − ‖x‖₁²/(d‖x‖²))‖x‖², and ‖x‖₁² ≥ ‖x‖², so δ = 1/d in the worst case
    (a vector with one nonzero). Payload [‖x‖₁/d (float64, shape (1,)), packed signs]; one real.
    """

    name: ClassVar[str] = "scaled_sign"
    unbiased: ClassVar[bool] = False

    def delta(self, dim: int) -> float | None:
        return 1.0 / dim

    def compress(
        self, x: np.ndarray, rng: np.random.Generator, slot: Slot = _ALONE
    ) -> list[np.ndarray]:
        a = as_vector(x)
        scale = norm1(a) / a.size if a.size else 0.0
        return [np.array([scale], dtype=np.float64), pack_signs(a)]

    def decompress(
        self, payload: list[np.ndarray], dim: int, rng: np.random.Generator, slot: Slot = _ALONE
    ) -> np.ndarray:
        scale, bits = _arrays(payload, 2, self.name)
        if scale.size != 1:
            raise ValueError("a scaled_sign payload starts with one scale")
        return float(scale[0]) * unpack_signs(bits, dim)


# --------------------------------------------------------------------------- building

_CLASSES: dict[str, type[Compressor]] = {
    "identity": Identity,
    "rand_k": RandK,
    "top_k": TopK,
    "biased_rand_k": BiasedRandK,
    "perm_k": PermK,
    "natural": Natural,
    "qsgd": QSGD,
    "sign": Sign,
    "scaled_sign": ScaledSign,
}
_KEYS: dict[str, tuple[str, ...]] = {
    "rand_k": ("k", "ratio", "shared_seed"),
    "biased_rand_k": ("k", "ratio", "shared_seed"),
    "top_k": ("k", "ratio"),
    "qsgd": ("levels",),
}


def build_compressor(cfg: Mapping[str, Any], dim: int) -> Compressor:
    """The compressor described by the ``compressor`` config group, for vectors of length ``dim``.

    ``cfg`` is the group (``name`` and the keys of the module docstring's table) or a whole
    config holding it under ``compressor``; a null key takes its default. Raises
    :class:`~fedsim.errors.ConfigError` for an unknown name, a key the compressor does not take,
    and impossible values (K outside [1, dim], ratio outside (0, 1], levels < 1).
    """
    if isinstance(cfg.get("compressor"), Mapping):
        cfg = cfg["compressor"]
    name = cfg.get("name")
    if name not in COMPRESSOR_NAMES:
        raise unknown("compressor", name, COMPRESSOR_NAMES)
    dim = int_at_least("dim", dim, 1)
    keys = _KEYS.get(name, ())
    extra = sorted(str(key) for key in cfg if key != "name" and key not in keys)
    if extra:
        valid = ", ".join(keys) if keys else "none besides name"
        raise ConfigError(
            f"compressor {name!r} takes no key(s) {', '.join(extra)}; valid keys: {valid}"
        )
    kwargs = {key: cfg[key] for key in keys if cfg.get(key) is not None}
    if "k" in kwargs:
        _check_k(kwargs["k"], dim)
    return _CLASSES[name](**kwargs)


def compressor_rng(comp: Compressor, seed: int, rnd: int, pid: int) -> np.random.Generator:
    """The generator that ``compress`` (client ``pid``) and ``decompress`` share in round ``rnd``.

    ``generator(seed, rnd, "compressor", pid)`` for ``shared == "client"``; for
    ``shared == "cohort"`` the server's ``generator(seed, rnd, "compressor")``, the same for the
    whole cohort. Call it afresh for each side: every call starts from the same state.
    """
    return generator(seed, rnd, "compressor", SERVER if comp.shared == "cohort" else pid)
