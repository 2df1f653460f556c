"""Torch tasks for fine-tuning and memory: a pretrained MLP, one linear layer, a 1M-parameter MLP.

All three run on scikit-learn's bundled ``digits`` (8 × 8 images, 64 standardized features, 1797
samples; nothing is downloaded) through the flat-vector path of
:class:`~fedsim.tasks.mlp.MLPObjective`: ``x`` is the concatenation of the module's
``named_parameters()`` and :func:`torch.func.functional_call` evaluates the network at views into
it.

- ``finetune_digits``: the MNIST transfer experiment of RAC-LoRA (arXiv 2410.08305, Sec. 6.2.2,
  Table 3; ``specs/rac-lora.md`` 2(d)4) scaled to 8 × 8 digits. The network is
  ``64 → hidden → … → hidden → 5`` (``depth`` hidden layers; the paper's ``784 → 64 → 64 → 5`` is
  ``hidden=64, depth=2``), the loss cross-entropy (the paper's log-softmax + NLL). It is
  **pretrained on digits 0–4** (labels 0–4) by :func:`pretrain`, full-batch Adam from the seeded
  default init, and ``x0`` is that pretrained vector. The clients and ``full`` are the
  **fine-tuning problem on digits 5–9 with labels shifted by 5** (``c ↦ c − 5``, as in the
  paper's code, so the 5-way head is reused). Departures from the paper, so that ``f`` is a
  deterministic function of ``x``: no dropout, and full-batch Adam for a fixed number of steps in
  place of AdamW minibatches with early stopping. No ``x*``.
- ``linear_torch``: one ``nn.Linear(64, 5)`` (weight and bias) on the same fine-tuning data,
  ridge least squares to one-hot targets, :class:`LeastSquaresObjective`. Strongly convex, with
  exact constants and the closed-form optimum (``solve``); ``x0`` is the closed-form solution on
  digits 0–4 (``init=pretrained``), PyTorch's seeded default init (``random``) or ``0``.
- ``mlp_large``: a randomly initialized ``64 → hidden → … → hidden → 10`` MLP on all ten digits
  (defaults ``1024 × 2``: 1,126,410 parameters), float32 by default, for memory benchmarks. No
  ``x*``.

**Data.** The held-out rows (``test_fraction``) are those of ``mlp_digits``: one seeded split,
``generator(0, 0, "task/test-split")``, for every run seed. Pretraining uses the train rows of
digits 0–4; clients and ``full`` the train rows of digits 5–9; ``test`` the held-out rows of digits
5–9 (``mlp_large``: all train rows and all held-out rows). Partitions split by the (shifted)
labels: ``iid``, ``dirichlet``, ``by_label``, ``sorted``, ``replicated``.

**Layer structure.** Every objective of these tasks (and of ``mlp_digits``) has ``layers``, a
tuple of :class:`~fedsim.tasks.mlp.LinearLayer` ``(name, out_features, in_features,
weight_offset, bias_offset)``, one per ``nn.Linear`` in order: ``layer.weight(x)`` is the
``out × in`` weight as a view into ``x``. :func:`layers_of` reads it off a task
(``task.full.layers``), ``None`` for tasks without a torch model.

**Pretrained cache.** The pretrained vector is computed once and kept on disk beside the optima
(:func:`fedsim.cache.cache_dir`: ``$FEDSIM_CACHE``, default ``~/.cache/fedsim``) as
``pretrained-<key>-v<version>.npz``, where ``key`` is the SHA-1 of every setting that changes it
(layer sizes, activation, Adam steps and stepsize, init seed, the pretraining rows and labels
themselves, torch's version). Writes are atomic; an unreadable, truncated or wrong-shaped file is
recomputed and replaced, never an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from fedsim.cache import cache_dir, load, store
from fedsim.errors import ConfigError, unknown
from fedsim.partition import partition_indices
from fedsim.rng import generator
from fedsim.tasks import data
from fedsim.tasks.base import Objective, Task
from fedsim.tasks.mlp import LinearLayer, MLPObjective, build_deep_mlp, init_vector

log = logging.getLogger(__name__)

PRETRAIN_CACHE_VERSION = "1"
FINETUNE_SHIFT = 5  # digits 0–4 pretrain, digits 5–9 (labels − 5) fine-tune
HEAD = 5  # the fine-tuning tasks' output size
INITS: tuple[str, ...] = ("pretrained", "random", "zero")  # linear_torch's x0


@dataclass(frozen=True)
class TorchSettings:
    """The knobs every torch task shares: assumed smoothness ``L`` (``auto`` stepsizes only;
    ``linear_torch`` computes its own), ridge ``l2``, ``device``, ``dtype``, ``test_fraction``."""

    L: float = 1.0  # noqa: N815 - the config key
    l2: float = 0.0
    device: str = "cpu"
    dtype: str = "float64"
    test_fraction: float = 0.0


@dataclass(frozen=True)
class DigitsSplit:
    """``digits`` split into train rows ``(a, labels)`` and held-out rows (``None``: none)."""

    a: np.ndarray
    labels: np.ndarray
    a_test: np.ndarray | None = None
    labels_test: np.ndarray | None = None


def digits_split(test_fraction: float) -> DigitsSplit:
    """The standardized ``digits`` with ``round(test_fraction · n)`` rows held out, the same rows
    as ``mlp_digits`` holds out."""
    a, labels = data.load_sklearn("digits")
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"task.test_fraction must be in [0, 1), got {test_fraction}")
    if test_fraction == 0:
        return DigitsSplit(a, labels)
    order = generator(0, 0, "task/test-split").permutation(labels.shape[0])
    cut = int(round(test_fraction * labels.shape[0]))
    if cut < 1:
        raise ConfigError(
            f"task.test_fraction={test_fraction} holds out no sample of {labels.shape[0]}"
        )
    test, train = np.sort(order[:cut]), np.sort(order[cut:])
    return DigitsSplit(a[train], labels[train], a[test], labels[test])


def layers_of(task: Task) -> tuple[LinearLayer, ...] | None:
    """The ``nn.Linear`` layers of a torch task's flat vector, or ``None`` (no torch model)."""
    return getattr(task.full, "layers", None)


def _federate(
    make: Callable[[np.ndarray], Objective],
    labels: np.ndarray,
    partition_cfg: dict[str, Any],
    num_clients: int,
    seed: int,
    honest: list[int],
) -> tuple[list[Objective], Objective]:
    """Clients ``make(rows)`` for the partition's parts of ``labels``; ``full`` on the honest
    clients' rows in client order (``replicated``: one objective shared by every client)."""
    parts = partition_indices(labels, num_clients, partition_cfg, seed)
    if partition_cfg.get("name") == "replicated":
        shared = make(parts[0])
        return [shared] * len(parts), shared
    clients = [make(p) for p in parts]
    return clients, make(np.concatenate([parts[m] for m in honest]))


# --- pretraining and its cache ------------------------------------------------------------


def pretrain(
    obj: Objective,
    x0: np.ndarray,
    steps: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[np.ndarray, float]:
    """``steps`` of full-batch Adam (Kingma & Ba 2015, Algorithm 1; ``torch.optim.Adam``'s
    defaults, no weight decay) on ``obj`` from ``x0``; returns ``(x, f(x))``::

        m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²,  x ← x − lr · (m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε)

    Written in numpy, not ``torch.optim``: the latter's first use imports ``torch._dynamo``
    (seconds), and the loop is the same arithmetic. Deterministic for a given torch build.
    """
    x = np.array(x0, dtype=np.float64)
    m, v = np.zeros_like(x), np.zeros_like(x)
    b1, b2 = betas
    for t in range(1, steps + 1):
        g = obj.grad(x)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        x -= lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return x, float(obj.loss(x))


def fingerprint(*arrays: np.ndarray) -> str:
    """SHA-1 of the arrays' dtypes, shapes and bytes."""
    h = hashlib.sha1()
    for arr in arrays:
        arr = np.ascontiguousarray(arr)
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def pretrained_path(settings: dict[str, Any]) -> Path:
    """The cache file of the pretrained vector that ``settings`` (JSON-able) determine."""
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return cache_dir() / f"pretrained-{key[:40]}-v{PRETRAIN_CACHE_VERSION}.npz"


def cached_pretrained(
    settings: dict[str, Any], dim: int, compute: Callable[[], tuple[np.ndarray, float]]
) -> np.ndarray:
    """The vector ``compute()`` returns, read from its cache file when that holds a finite
    vector of length ``dim``, else computed and stored (atomically)."""
    path = pretrained_path(settings)
    x = _load(path, dim)
    if x is None:
        x, f = compute()
        _store(path, x, f)
    return x


def _load(path: Path, dim: int) -> np.ndarray | None:
    z = load(path)
    if z is None or "x" not in z:
        if path.exists():
            log.warning("unreadable pretrained cache %s: recomputing it", path)
        return None
    x = np.asarray(z["x"], dtype=np.float64)
    if x.shape != (dim,) or not np.all(np.isfinite(x)):
        log.warning(
            "pretrained cache %s holds shape %s, not (%d,): recomputing", path, x.shape, dim
        )
        return None
    return x


def _store(path: Path, x: np.ndarray, f: float) -> None:
    store(path, "the pretrained model", x=x, f=np.float64(f))


# --- finetune_digits ------------------------------------------------------------------------


def _torch_version() -> str:
    return torch.__version__.split("+")[0]


def _objective(module: nn.Module, a: np.ndarray, y: np.ndarray, s: TorchSettings) -> MLPObjective:
    return MLPObjective(module, a, y, s.L, s.l2, s.device, s.dtype)


def _split_test(split: DigitsSplit, keep: np.ndarray | None, shift: int) -> tuple | None:
    """The held-out rows whose label passes ``keep`` (``None``: all), labels ``− shift``."""
    if split.a_test is None or split.labels_test is None:
        return None
    rows = np.ones(split.labels_test.shape[0], bool) if keep is None else keep
    if not rows.any():
        raise ConfigError("task.test_fraction holds out no sample of digits 5–9: raise it")
    return split.a_test[rows], split.labels_test[rows] - shift


def finetune_digits_task(
    hidden: int,
    depth: int,
    activation: str,
    pretrain_steps: int,
    pretrain_lr: float,
    pretrain_seed: int,
    settings: TorchSettings,
    partition_cfg: dict[str, Any],
    num_clients: int,
    seed: int,
    honest: list[int],
) -> Task:
    """``finetune_digits`` (module docstring): fine-tune on digits 5–9 from the cached model
    pretrained on digits 0–4."""
    sizes = [hidden] * depth
    split = digits_split(settings.test_fraction)
    module = build_deep_mlp(split.a.shape[1], sizes, HEAD, activation)
    pre = split.labels < FINETUNE_SHIFT
    a_pre, y_pre = split.a[pre], split.labels[pre]
    # its own module: MLPObjective moves a module to its device and dtype in place
    teacher = MLPObjective(
        build_deep_mlp(split.a.shape[1], sizes, HEAD, activation), a_pre, y_pre, 1
    )
    start = init_vector(module, pretrain_seed)
    if pretrain_steps == 0:
        x0 = start
    else:
        key = {
            "what": "finetune_digits/pretrained",
            "sizes": [int(split.a.shape[1]), *sizes, HEAD],
            "activation": activation,
            "steps": pretrain_steps,
            "lr": pretrain_lr,
            "seed": pretrain_seed,
            "data": fingerprint(a_pre, y_pre),
            "torch": _torch_version(),
        }
        x0 = cached_pretrained(
            key, start.shape[0], lambda: pretrain(teacher, start, pretrain_steps, pretrain_lr)
        )
    a, y = split.a[~pre], split.labels[~pre] - FINETUNE_SHIFT
    clients, full = _federate(
        lambda rows: _objective(module, a[rows], y[rows], settings),
        y,
        partition_cfg,
        num_clients,
        seed,
        honest,
    )
    held = None if split.labels_test is None else split.labels_test >= FINETUNE_SHIFT
    test_data = _split_test(split, held, FINETUNE_SHIFT)
    test = None if test_data is None else _objective(module, *test_data, settings)
    return Task(
        name="finetune_digits",
        dim=full.dim,
        clients=clients,
        full=full,
        x0=x0,
        mu=0.0,
        solve=None,
        test=test,
    )


# --- linear_torch -------------------------------------------------------------------------


class LeastSquaresObjective(MLPObjective):
    """Ridge least squares of one ``nn.Linear(d, K)`` to one-hot targets::

        f(x) = (1/n) Σ_j ½‖W a_j + b − e_{y_j}‖² + (λ/2)‖x‖²,   x = (vec_row W, b) ∈ R^{K(d+1)}

    evaluated through torch like :class:`~fedsim.tasks.mlp.MLPObjective` (so adapters on the
    layer are testable), with exact constants from the augmented covariance
    ``C = (1/n) Σ_j ã_j ã_jᵀ``, ``ã_j = (a_j, 1)``: ``∇²f = I_K ⊗ (C + λI)`` (up to the order of
    coordinates), so ``smoothness = λ_max(C) + λ``, ``strong_convexity = λ_min(C) + λ`` and
    ``sample_smoothness = max_j ‖ã_j‖² + λ``. :meth:`solution` is the closed-form minimizer
    ``Θ = (C + λI)⁻¹ (1/n) Σ_j ã_j e_{y_j}ᵀ`` with ``Θ = [W b]ᵀ``. ``accuracy`` is that of
    ``argmax_k (W a + b)_k``.
    """

    def __init__(
        self,
        module: nn.Module,
        a: np.ndarray,
        y: np.ndarray,
        l2: float,
        device: str = "cpu",
        dtype: str = "float64",
    ) -> None:
        super().__init__(module, a, y, 1.0, l2, device, dtype)
        if len(self.layers) != 1 or self.layers[0].bias_offset is None:
            raise ValueError("LeastSquaresObjective needs a module of one nn.Linear with bias")
        self.bias_offset = int(self.layers[0].bias_offset)
        a = np.asarray(a, dtype=np.float64)
        self.a_aug = np.hstack([a, np.ones((a.shape[0], 1))])
        self.covariance = self.a_aug.T @ self.a_aug / a.shape[0]
        eig = np.linalg.eigvalsh(self.covariance)
        self.smoothness = float(eig[-1] + self.l2)
        self.strong_convexity = float(max(eig[0], 0.0) + self.l2)
        self.sample_smoothness = float(np.max(np.sum(self.a_aug**2, axis=1)) + self.l2)

    def _objective(self, flat: torch.Tensor, idx: np.ndarray | None) -> torch.Tensor:
        a, y = self.a, self.y
        if idx is not None:
            rows = torch.as_tensor(np.asarray(idx), dtype=torch.long, device=self.device)
            a, y = a[rows], y[rows]
        out = functional_call(self.module, self._params(flat), (a,))
        target = nn.functional.one_hot(y, self.num_classes).to(self.dtype)
        value = 0.5 * ((out - target) ** 2).sum(dim=1).mean()
        if self.l2:
            value = value + 0.5 * self.l2 * flat.dot(flat)
        return value

    def _targets(self) -> np.ndarray:
        return np.eye(self.num_classes)[self.y.cpu().numpy()]

    def hessian(self, x: np.ndarray | None = None) -> np.ndarray:
        """``∇²f`` (constant) in the flat vector's coordinates."""
        layer = self.layers[0]
        d, k = layer.in_features, layer.out_features
        block = np.kron(np.eye(k), self.covariance + self.l2 * np.eye(d + 1))
        # block order (k, i) with i = d the bias; flat order: W row-major, then b
        flat = np.empty((k, d + 1), dtype=np.int64)
        flat[:, :d] = layer.weight_offset + np.arange(k * d).reshape(k, d)
        flat[:, d] = self.bias_offset + np.arange(k)
        flat = flat.reshape(-1)
        h = np.zeros_like(block)
        h[np.ix_(flat, flat)] = block
        return h

    def solution(self) -> np.ndarray:
        """The closed-form minimizer ``x*`` (float64)."""
        layer = self.layers[0]
        n = self.a_aug.shape[0]
        lhs = self.covariance + self.l2 * np.eye(self.covariance.shape[0])
        theta = np.linalg.solve(lhs, self.a_aug.T @ self._targets() / n)  # (d + 1) × K
        x = np.zeros(self.dim)
        x[layer.weight_slice] = theta[:-1].T.reshape(-1)
        x[self.bias_offset : self.bias_offset + layer.out_features] = theta[-1]
        return x


def linear_torch_task(
    init: str,
    settings: TorchSettings,
    partition_cfg: dict[str, Any],
    num_clients: int,
    seed: int,
    honest: list[int],
) -> Task:
    """``linear_torch`` (module docstring): ridge least squares of ``nn.Linear(64, 5)`` on digits
    5–9 from the closed-form solution on digits 0–4 (``init``)."""
    if init not in INITS:
        raise unknown("task.init", init, INITS)
    if settings.l2 <= 0:
        raise ConfigError(
            f"task.l2 must be > 0 for linear_torch (a unique optimum: constant pixels make the "
            f"covariance singular), got {settings.l2}"
        )
    split = digits_split(settings.test_fraction)
    module = nn.Sequential(nn.Linear(split.a.shape[1], HEAD))

    def make(a: np.ndarray, y: np.ndarray) -> LeastSquaresObjective:
        return LeastSquaresObjective(module, a, y, settings.l2, settings.device, settings.dtype)

    pre = split.labels < FINETUNE_SHIFT
    a, y = split.a[~pre], split.labels[~pre] - FINETUNE_SHIFT
    clients, full = _federate(
        lambda rows: make(a[rows], y[rows]), y, partition_cfg, num_clients, seed, honest
    )
    assert isinstance(full, LeastSquaresObjective)
    if init == "pretrained":
        x0 = make(split.a[pre], split.labels[pre]).solution()
    elif init == "random":
        x0 = init_vector(module, seed)
    else:
        x0 = np.zeros(full.dim)
    held = None if split.labels_test is None else split.labels_test >= FINETUNE_SHIFT
    test_data = _split_test(split, held, FINETUNE_SHIFT)
    test = None if test_data is None else make(*test_data)

    def solve() -> tuple[np.ndarray, float]:
        x_star = full.solution()
        return x_star, float(full.loss(x_star))

    return Task(
        name="linear_torch",
        dim=full.dim,
        clients=clients,
        full=full,
        x0=x0,
        mu=min(float(c.strong_convexity) for c in clients),
        solve=solve,
        test=test,
    )


# --- mlp_large ------------------------------------------------------------------------------


def mlp_large_task(
    hidden: int,
    depth: int,
    activation: str,
    settings: TorchSettings,
    partition_cfg: dict[str, Any],
    num_clients: int,
    seed: int,
    honest: list[int],
) -> Task:
    """``mlp_large`` (module docstring): a seeded random ``64 → hidden^depth → 10`` MLP on all
    ten digits."""
    split = digits_split(settings.test_fraction)
    sizes: Sequence[int] = [hidden] * depth
    num_classes = int(split.labels.max()) + 1
    module = build_deep_mlp(split.a.shape[1], sizes, num_classes, activation)
    a, y = split.a, split.labels
    clients, full = _federate(
        lambda rows: _objective(module, a[rows], y[rows], settings),
        y,
        partition_cfg,
        num_clients,
        seed,
        honest,
    )
    test_data = _split_test(split, None, 0)
    test = None if test_data is None else _objective(module, *test_data, settings)
    return Task(
        name="mlp_large",
        dim=full.dim,
        clients=clients,
        full=full,
        x0=init_vector(module, seed),
        mu=0.0,
        solve=None,
        test=test,
    )


__all__ = [
    "FINETUNE_SHIFT",
    "INITS",
    "DigitsSplit",
    "LeastSquaresObjective",
    "TorchSettings",
    "cached_pretrained",
    "digits_split",
    "finetune_digits_task",
    "layers_of",
    "linear_torch_task",
    "mlp_large_task",
    "pretrain",
    "pretrained_path",
]
