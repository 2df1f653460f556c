"""Byzantine attacks: what the Byzantine clients send instead of their honest vectors.

A run has B Byzantine clients out of n, B < n/2, chosen once by :func:`byzantine_ids`. Two kinds:

* **client-side** (:data:`CLIENT_SIDE`): a real client can mount them on its own —
  ``bit_flip`` sends −x, ``gaussian`` sends noise, ``label_flip`` trains on flipped labels
  (:func:`flip_labels`, or the task's ``Objective.flipped``);
* **omniscient** (:data:`OMNISCIENT`): the adversary sees the honest vectors of the round and
  all Byzantine clients of the round send the one vector :meth:`Attack.forge` returns
  (``alie``, ``ipm``, ``shb``). A real client cannot see the others, so these exist in
  simulation only, as a server-side hook between decoding and aggregation. ``oracle`` says what
  the adversary sees (:data:`ORACLES`): ``cohort``, the honest vectors of this round's cohort,
  or ``all``, every honest client's vector (the authors' simulator; it needs every client to
  compute one).

The attacks and their defaults follow the official code of Karimireddy, He & Jaggi (arXiv
2006.09365, github.com/epfml/byzantine-robust-noniid-optimizer) and of Byz-VR-MARINA-PP
(Malinovsky, Horváth, Richtárik & Gorbunov, arXiv 2311.14127, github.com/SamuelHorvath/
VR_Byzantine), ``code/attacks/*.py``.

Config keys (``conf/attack/<name>.yaml``):

=================  ==========================================================================
``name``           one of :data:`ATTACK_NAMES`
``num_byzantine``  B, an integer ≥ 0 (null: ⌊fraction·n⌋)
``fraction``       B/n when ``num_byzantine`` is null, in [0, 0.5)
``ids``            explicit Byzantine partition ids (non-empty: overrides both)
``sigma``          ``gaussian``: standard deviation σ > 0 of the noise
``epsilon``        ``ipm``: ε > 0
``z``              ``alie``: z (null: Baruch et al.'s z for n and B, :func:`alie_z`)
``oracle``         ``alie``, ``ipm``, ``shb``: ``cohort`` or ``all``
=================  ==========================================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np
from scipy.special import ndtri  # Φ⁻¹; scipy.stats costs ~1 s of import in every ClientApp

from fedsim.blocks.aggregators import count, is_real
from fedsim.errors import ConfigError, int_at_least, unknown
from fedsim.rng import generator

ATTACK_NAMES: tuple[str, ...] = ("none", "bit_flip", "label_flip", "gaussian", "alie", "ipm", "shb")
CLIENT_SIDE: tuple[str, ...] = ("bit_flip", "label_flip", "gaussian")
OMNISCIENT: tuple[str, ...] = ("alie", "ipm", "shb")
ORACLES: tuple[str, ...] = ("cohort", "all")

DEFAULT_FRACTION = 0.25  # 5 of the 20 clients of arXiv 2311.14127's experiments
# Xie, Koyejo & Gupta (arXiv 1802.10116) replace gradients by N(0, 200² I); ByzFL's default is 1.
DEFAULT_SIGMA = 200.0
DEFAULT_EPSILON = 0.1  # IPM's ε in arXiv 2006.09365 and 2311.14127 (run_a9a.py, run_mnist.py)


# --------------------------------------------------------------------------- pure attacks


def alie_z(n: int, b: int) -> float:
    """ALIE's z for n clients of which b are Byzantine: s = ⌊n/2 + 1⌋ − b supporters are needed,
    z = Φ⁻¹((n − b − s)/(n − b)), Φ the standard normal CDF.

    Baruch, Baruch & Goldberg, "A little is enough: circumventing defenses for distributed
    learning", NeurIPS 2019 (z_max of their Algorithm 3). n = 20, b = 5: s = 6,
    z = Φ⁻¹(0.6) ≈ 0.2533. Needs 1 ≤ b < n/2 (ValueError otherwise), which keeps the
    argument of Φ⁻¹ in (0, 1).
    """
    n = count("n", n, 1)
    b = count("b", b, 1)
    if 2 * b >= n:
        raise ValueError(f"alie_z needs 1 <= b < n/2; got n={n}, b={b}")
    s = math.floor(n / 2 + 1) - b
    return float(ndtri((n - b - s) / (n - b)))


def alie(honest: np.ndarray, z: float) -> np.ndarray:
    """A little is enough: μ − z·σ, μ and σ the coordinate-wise mean and standard deviation of
    the k honest vectors (Baruch et al., NeurIPS 2019).

    σ is the *sample* standard deviation (ddof = 1, divisor k − 1), as ``torch.std`` computes it
    in the authors' code (``attacks/alittle.py``); with one honest vector σ = 0 (torch would
    give nan) and the attack sends that vector.
    """
    h = _honest(honest)
    if h.shape[0] == 0:
        raise ValueError("alie needs at least one honest vector")
    sd = h.std(axis=0, ddof=1) if h.shape[0] > 1 else np.zeros(h.shape[1])
    return h.mean(axis=0) - float(z) * sd


def ipm(honest: np.ndarray, epsilon: float) -> np.ndarray:
    """Inner-product manipulation: −ε·(1/k) Σ_i h_i over the k honest vectors.

    Xie, Koyejo & Gupta, "Fall of empires: breaking Byzantine-tolerant SGD by inner product
    manipulation", UAI 2020 (arXiv 1903.03936); ε = 0.1 in the authors' code of arXiv
    2006.09365 / 2311.14127 (``attacks/xie.py``).
    """
    h = _honest(honest)
    if h.shape[0] == 0:
        raise ValueError("ipm needs at least one honest vector")
    return -float(epsilon) * h.mean(axis=0)


def shift_back(honest: np.ndarray, target: np.ndarray, majority: bool) -> np.ndarray:
    """Shift-back (SHB): ``target`` if the Byzantine clients are a strict majority of the
    round's participants, else the honest mean (1/k) Σ_i h_i (behave honestly, unseen).

    Malinovsky, Horváth, Richtárik & Gorbunov, "Byzantine robustness and partial participation
    can be achieved at once: just clip gradient differences", arXiv 2311.14127. ``target`` is
    the vector that, aggregated and applied, takes the model back to its start x⁰: the caller
    builds it (as a displacement x⁰ − x^k, or as a gradient (x^k − x⁰)/γ for a step x − γg,
    which is the authors' ``attacks/shiftback.py`` with ``mult = 'lr'``).
    """
    if majority:
        return np.array(target, dtype=np.float64).reshape(-1)
    h = _honest(honest)
    if h.shape[0] == 0:
        raise ValueError("shift_back without a Byzantine majority needs an honest vector")
    return h.mean(axis=0)


def bit_flip(x: np.ndarray) -> np.ndarray:
    """Bit flipping: −x, the negated honest vector (arXiv 2006.09365, ``attacks/bitflipping.py``;
    "sign flipping" elsewhere)."""
    return -np.asarray(x, dtype=np.float64)


def gaussian(rng: np.random.Generator, shape: int | tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian attack: a draw of N(0, σ² I) of the given shape, sent *instead of* the honest
    vector (not added to it).

    Xie, Koyejo & Gupta, "Generalized Byzantine-tolerant SGD" (arXiv 1802.10116) use σ = 200;
    ByzFL's ``Gaussian`` has the same definition (mean μ, default σ = 1).
    """
    return float(sigma) * rng.standard_normal(shape)


def flip_labels(y: np.ndarray, num_classes: int, *, signed: bool | None = None) -> np.ndarray:
    """Label flipping, the labels a label-flipping client trains on (its dtype kept).

    * two classes in {−1, +1}: y → −y;
    * two classes in {0, 1}: y → 1 − y (the authors' LIBSVM scripts);
    * K > 2 classes 0, …, K − 1: y → K − 1 − y (9 − y for MNIST and CIFAR-10, as in the
      authors' ``attacks/labelflipping.py``; the official MNIST run script of arXiv 2311.14127
      reuses 1 − y, which maps classes outside {0, 1}, which looks like a bug we do not copy).

    For two classes, ``signed`` says which convention y uses (True: ±1, False: {0, 1}); None
    infers it from the values (a −1: signed; a 0: {0, 1}) and raises ValueError when every label
    is 1, which both conventions allow. Labels outside the convention raise ValueError.
    """
    k = count("num_classes", num_classes, 2)
    a = np.asarray(y)
    values = set(np.unique(a).tolist())
    if k > 2:
        if not values <= set(range(k)):
            raise ValueError(f"labels of {k} classes must lie in 0..{k - 1}")
        return (k - 1 - a).astype(a.dtype, copy=False)
    if signed is None:
        if -1 in values:
            signed = True
        elif 0 in values:
            signed = False
        elif values:
            raise ValueError("all labels are 1: pass signed=True (±1) or signed=False ({0, 1})")
        else:
            return a.copy()
    allowed = {-1, 1} if signed else {0, 1}
    if not values <= allowed:
        raise ValueError(f"two-class labels must lie in {sorted(allowed)}; got {sorted(values)}")
    return (-a if signed else 1 - a).astype(a.dtype, copy=False)


# --------------------------------------------------------------------------- Byzantine clients


def byzantine_ids(num_clients: int, cfg: Mapping[str, Any], seed: int) -> tuple[int, ...]:
    """The sorted partition ids of the Byzantine clients, fixed for the whole run.

    A non-empty ``ids`` is used as given (distinct integers in [0, n)); otherwise B =
    ``num_byzantine``, or ⌊fraction·n⌋ when it is null, ids drawn without replacement from
    ``generator(seed, 0, "attack/byzantine")``. Refuses (ConfigError) 2B ≥ n, Byzantine clients
    with ``name: none`` and an attack with no Byzantine client.
    """
    n = int_at_least("num_clients", num_clients, 1)
    name = cfg.get("name")
    if name not in ATTACK_NAMES:
        raise unknown("attack", name, ATTACK_NAMES)
    fraction = cfg.get("fraction")
    if fraction is None:
        fraction = 0.0 if name == "none" else DEFAULT_FRACTION
    if not is_real(fraction) or not 0.0 <= float(fraction) < 0.5:
        raise ConfigError(f"attack.fraction must be a number in [0, 0.5), got {fraction!r}")
    count = cfg.get("num_byzantine")
    if count is not None:
        count = int_at_least("attack.num_byzantine", count, 0)
    ids = _given_ids(cfg.get("ids"), n)
    if ids:
        _check_count(name, len(ids), n)
        if count is not None and count != len(ids):
            raise ConfigError(
                f"attack.ids lists {len(ids)} client(s) but attack.num_byzantine is {count}; "
                "set attack.num_byzantine: null (or to the same number)"
            )
        return ids
    # ⌊fraction·n⌋, forgiving the rounding of fraction·n just below an integer (0.29·100)
    b = count if count is not None else math.floor(float(fraction) * n + 1e-9)
    _check_count(name, b, n)
    draw = generator(seed, 0, "attack/byzantine").choice(n, size=b, replace=False)
    return tuple(sorted(int(i) for i in draw))


# --------------------------------------------------------------------------- the configured attack


@dataclass(frozen=True)
class Attack:
    """A configured attack: its ``name``, the Byzantine partition ``ids`` among ``num_clients``
    and the parameters of its rule (``sigma``: gaussian, ``epsilon``: ipm, ``z``: alie, null for
    :func:`alie_z` of n and B; ``oracle``: which honest vectors the omniscient attacks see).
    """

    name: str
    ids: tuple[int, ...]
    num_clients: int
    sigma: float = DEFAULT_SIGMA
    epsilon: float = DEFAULT_EPSILON
    z: float | None = None
    oracle: str = "cohort"

    def __post_init__(self) -> None:
        if self.name not in ATTACK_NAMES:
            raise unknown("attack", self.name, ATTACK_NAMES)
        n = int_at_least("num_clients", self.num_clients, 1)
        ids = _given_ids(list(self.ids), n)
        object.__setattr__(self, "ids", ids)
        _check_count(self.name, len(ids), n)
        for key in ("sigma", "epsilon"):
            value = getattr(self, key)
            if not is_real(value) or not 0.0 < float(value) < math.inf:
                raise ConfigError(f"attack.{key} must be a finite number > 0, got {value!r}")
            object.__setattr__(self, key, float(value))
        if self.z is not None:
            if not is_real(self.z) or not math.isfinite(float(self.z)):
                raise ConfigError(f"attack.z must be null or a finite number, got {self.z!r}")
            object.__setattr__(self, "z", float(self.z))
        if self.oracle not in ORACLES:
            raise ConfigError(
                f"attack.oracle must be one of {', '.join(ORACLES)}; got {self.oracle!r}"
            )

    @property
    def is_omniscient(self) -> bool:
        """True for the attacks that need the round's honest vectors (:data:`OMNISCIENT`)."""
        return self.name in OMNISCIENT

    @property
    def is_client_side(self) -> bool:
        """True for the attacks a client mounts on its own (:data:`CLIENT_SIDE`)."""
        return self.name in CLIENT_SIDE

    @property
    def num_byzantine(self) -> int:
        """B, the number of Byzantine clients of the run."""
        return len(self.ids)

    def is_byzantine(self, pid: int) -> bool:
        """Whether partition id ``pid`` is a Byzantine client."""
        return int(pid) in self.ids

    def alie_z(self) -> float:
        """The z ALIE uses: ``z`` if set, else :func:`alie_z` (num_clients, B)."""
        return self.z if self.z is not None else alie_z(self.num_clients, self.num_byzantine)

    def forge(
        self,
        honest: np.ndarray,
        num_byzantine_in_cohort: int,
        cohort_size: int,
        target: np.ndarray | None = None,
    ) -> np.ndarray:
        """The one vector every Byzantine client of this cohort sends (omniscient attacks).

        ``honest`` is a 2-D (k, d) array of the honest vectors the adversary sees (per
        ``oracle``); k may be 0 and d is always ``honest.shape[1]`` (pass
        ``np.empty((0, d))``). With k = 0, ``alie`` and ``ipm`` send zeros of length d.
        ``shb`` needs ``target`` (length d, ValueError if None) and sends it when the
        Byzantine clients are a strict majority of the cohort,
        ``num_byzantine_in_cohort > cohort_size / 2``; otherwise the honest mean (zeros when
        k = 0). Non-omniscient attacks raise ValueError: they have nothing to forge here.
        """
        if not self.is_omniscient:
            raise ValueError(f"attack {self.name!r} is not omniscient: forge has nothing to do")
        h = _honest(honest)
        d = h.shape[1]
        cohort_size = count("cohort_size", cohort_size, 1)
        byz = count("num_byzantine_in_cohort", num_byzantine_in_cohort, 0)
        if byz > cohort_size:
            raise ValueError(f"{byz} Byzantine clients in a cohort of {cohort_size}")
        if self.name == "shb":
            if target is None:
                raise ValueError("the shb attack needs a target (the shift back to x⁰)")
            t = np.asarray(target, dtype=np.float64).reshape(-1)
            if t.shape != (d,):
                raise ValueError(f"the shb target must have length {d}; got {t.size}")
            majority = byz > cohort_size / 2
            if not majority and h.shape[0] == 0:
                return np.zeros(d)
            return shift_back(h, t, majority)
        if h.shape[0] == 0:
            return np.zeros(d)
        if self.name == "alie":
            return alie(h, self.alie_z())
        return ipm(h, self.epsilon)


_KEYS: dict[str, tuple[str, ...]] = {
    "gaussian": ("sigma",),
    "ipm": ("epsilon", "oracle"),
    "alie": ("z", "oracle"),
    "shb": ("oracle",),
}
_COMMON = ("num_byzantine", "fraction", "ids")


def build_attack(cfg: Mapping[str, Any], num_clients: int, seed: int) -> Attack:
    """The attack described by the ``attack`` config group, with its Byzantine clients drawn by
    :func:`byzantine_ids`. A null key takes its default (``z`` stays null). Raises
    :class:`~fedsim.errors.ConfigError` for an unknown name, a key the attack does not take
    (listing the valid ones) and impossible values."""
    name = cfg.get("name")
    if name not in ATTACK_NAMES:
        raise unknown("attack", name, ATTACK_NAMES)
    keys = _COMMON + _KEYS.get(name, ())
    extra = sorted(str(key) for key in cfg if key != "name" and key not in keys)
    if extra:
        raise ConfigError(
            f"attack {name!r} takes no key(s) {', '.join(extra)}; valid keys: {', '.join(keys)}"
        )
    ids = byzantine_ids(num_clients, cfg, seed)
    kwargs = {key: cfg[key] for key in _KEYS.get(name, ()) if cfg.get(key) is not None}
    return Attack(name=name, ids=ids, num_clients=num_clients, **kwargs)


# --------------------------------------------------------------------------- helpers


def _honest(honest: np.ndarray) -> np.ndarray:
    h = np.asarray(honest, dtype=np.float64)
    if h.ndim != 2:
        raise ValueError(f"honest vectors must be a 2-D (k, d) array; got shape {h.shape}")
    return h


def _given_ids(ids: object, n: int) -> tuple[int, ...]:
    """Explicit ids: distinct integers in [0, n), sorted; () for null or an empty list."""
    if ids is None:
        return ()
    if isinstance(ids, str | bytes) or not isinstance(ids, Sequence):
        raise ConfigError(f"attack.ids must be a list of client ids, got {ids!r}")
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, Integral) or not 0 <= i < n]
    if bad:
        raise ConfigError(f"attack.ids must be integers in [0, {n}); got {bad}")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"attack.ids must be distinct; got {list(ids)}")
    return tuple(sorted(int(i) for i in ids))


def _check_count(name: str, b: int, n: int) -> None:
    if name == "none" and b > 0:
        raise ConfigError(
            f"attack=none with {b} Byzantine client(s): choose an attack "
            f"({', '.join(a for a in ATTACK_NAMES if a != 'none')}) or set "
            "attack.num_byzantine: 0 and attack.ids: []"
        )
    if name != "none" and b == 0:
        raise ConfigError(
            f"attack={name} with no Byzantine client: set attack.num_byzantine, "
            "attack.fraction or attack.ids (or choose attack=none)"
        )
    if 2 * b >= n:
        raise ConfigError(
            f"Byzantine clients must be fewer than half of the clients: B={b} of "
            f"num_clients={n} (2B >= n); lower attack.num_byzantine, attack.fraction or attack.ids"
        )
