r"""Local update rules of clients: the plain step, or a torch optimizer whose state persists.

A client's local run is *batch order × update rule* (the batch order of
:mod:`fedsim.blocks.solvers`: ``gd``, ``sgd``, ``rr``, ``so``). ``local_optimizer=sgd`` is the plain
step ``y ← y − γ g`` of :func:`fedsim.blocks.solvers.local_solve` (no torch). The other rules run a
torch optimizer on the flat model wrapped as **one** parameter ``p ∈ R^d`` (the objective's torch
dtype and device where it has them, else float64 on the CPU), fed the objective's flat minibatch
gradient ``g = ∇f_B(p)`` at every step of the batch order:

- ``sgdm``: heavy ball, ``torch.optim.SGD(momentum=β, dampening=0)``:
  ``b ← βb + (g + λp)``, ``p ← p − γb`` (coupled L2 ``λ = weight_decay``).
- ``adamw``: ``torch.optim.AdamW`` (Loshchilov & Hutter 2019, Algorithm 2):
  ``p ← p(1 − γλ)``, ``m ← β₁m + (1−β₁)g``, ``v ← β₂v + (1−β₂)g²``,
  ``p ← p − γ (m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε)``.
- ``microadam``: :class:`fedsim.blocks.optim.MicroAdam` (Modoranu et al., arXiv 2405.15593,
  Algorithm 1): Adam statistics over a window of the last ``m`` Top-K (density ``k``) sparse
  gradients, with 4-bit error feedback in buckets of ``q``.

The client sends the displacement ``Δ = p₀ − p_K`` (computed in float64; ``p₀ = x`` exactly for a
float64 parameter, so ``Δ = x − y`` as with the plain step).

**State across rounds.** The optimizer's ``state_dict()`` (moments, step counters, MicroAdam's
window and error) is serialized with ``torch.save`` into bytes (:func:`dump_state`), kept as one
uint8 array in the node's ``context.state`` and loaded back (:func:`load_state`) when the client is
sampled again, so round ``r`` starts from the state the client's last round left (and
checkpoints, which carry every node's ``context.state``, resume it exactly). ``reset_optimizer``
chooses which rounds start fresh: ``false`` (none: the state lives for the whole run), ``true``
(every round: nothing is kept), or ``k ≥ 1`` (rounds 1, k+1, 2k+1, ...). Between two rounds of a
client the server model moves: the kept moments are the client's own history, applied at the new
start point, as a single-node optimizer carried across restarts would be.

**Stepsize.** ``γ = method.client_lr``; ``client_lr=auto`` (:func:`resolve_local_optimizer`) is
``1e-3`` for ``adamw`` and ``microadam`` (Adam's customary default: no theory value exists) and
``(1 − β)·γ_sgd`` for ``sgdm`` (``γ_sgd`` the plain step's ``auto``,
:func:`fedsim.blocks.stepsizes.local_gd_lr`), so that its effective step ``γ/(1 − β)`` is the
plain step's.

**Any task.** The gradient is a flat numpy vector on every task, so every rule runs on every
task, not only on those with a torch model; on a torch task the parameter takes the model's dtype
and device. Torch is imported only when a torch rule runs: validating a config never loads it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsim.blocks.solvers import SOLVERS, epoch_batches
from fedsim.blocks.stepsizes import local_gd_lr
from fedsim.errors import ConfigError, int_at_least, unknown
from fedsim.tasks.base import Objective, Task

if TYPE_CHECKING:
    import torch

OPTIMIZERS: tuple[str, ...] = ("sgd", "sgdm", "adamw", "microadam")
"""``method.local_optimizer`` choices (``sgd``: the plain step, no torch)."""
TORCH_OPTIMIZERS: tuple[str, ...] = ("sgdm", "adamw", "microadam")
ADAM_AUTO_LR = 1e-3
"""``client_lr=auto`` for ``adamw`` and ``microadam`` (torch's default for Adam)."""
STATE_KEY = "local-optimizer"
"""The ``context.state`` key of the serialized optimizer state."""


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _unit(name: str, value: object, closed_top: bool = False) -> float:
    """A number in ``[0, 1)`` (``closed_top``: ``(0, 1]``)."""
    v = _real(name, value)
    if closed_top and not 0 < v <= 1:
        raise ConfigError(f"{name} must lie in (0, 1], got {value!r}")
    if not closed_top and not 0 <= v < 1:
        raise ConfigError(f"{name} must lie in [0, 1), got {value!r}")
    return v


def _reset(value: object) -> bool | int:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value >= 1:
        return int(value)
    raise ConfigError(
        "method.reset_optimizer must be false (keep the state), true (fresh every round) or an "
        f"integer k >= 1 (fresh in rounds 1, k+1, 2k+1, ...), got {value!r}"
    )


@dataclass(frozen=True)
class LocalOptimizer:
    """A validated local update rule (module docstring); build it with :meth:`from_method`.

    ``lr`` γ > 0; ``betas`` (β₁, β₂) ∈ [0, 1)² (adamw, microadam); ``eps`` ε ≥ 0; ``weight_decay``
    λ ≥ 0 (sgdm: coupled L2, adamw and microadam: decoupled); ``momentum`` β ∈ [0, 1) (sgdm);
    ``window`` m ≥ 1, ``density`` k ∈ (0, 1], ``bucket`` q ≥ 1 (microadam); ``reset`` which
    rounds start from a fresh state (false | true | k).
    """

    name: str = "sgd"
    lr: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.9
    window: int = 10
    density: float = 0.01
    bucket: int = 64
    reset: bool | int = False

    @classmethod
    def from_method(cls, method: Mapping[str, Any], lr: object = None) -> LocalOptimizer:
        """The rule a method section describes (ConfigError for any value out of range).

        ``lr`` overrides ``method.client_lr`` (validation before ``auto`` is resolved passes 1).
        A missing key takes the dataclass default, so a section without the keys is ``sgd``.
        """
        name = method.get("local_optimizer", "sgd")
        if name not in OPTIMIZERS:
            raise unknown("method.local_optimizer", name, OPTIMIZERS)
        betas = method.get("optimizer_betas", list(cls.betas))
        if isinstance(betas, str) or not isinstance(betas, Sequence) or len(betas) != 2:
            raise ConfigError(f"method.optimizer_betas must be a pair [β1, β2], got {betas!r}")
        b1 = _unit("method.optimizer_betas[0] (β1)", betas[0])
        b2 = _unit("method.optimizer_betas[1] (β2)", betas[1])
        eps = _real("method.optimizer_eps", method.get("optimizer_eps", cls.eps))
        wd = _real("method.weight_decay", method.get("weight_decay", cls.weight_decay))
        if eps < 0 or wd < 0:
            raise ConfigError(
                f"method.optimizer_eps and method.weight_decay must be >= 0, got {eps!r}, {wd!r}"
            )
        if name == "sgd" and wd != 0:
            raise ConfigError(
                "method.weight_decay applies to local_optimizer=sgdm|adamw|microadam; the plain "
                f"step (local_optimizer=sgd) has none (a ridge term is task.l2), got {wd!r}"
            )
        step = method.get("client_lr", 1.0) if lr is None else lr
        if name in TORCH_OPTIMIZERS and not _real("method.client_lr", step) > 0:
            raise ConfigError(f"method.client_lr must be > 0, got {step!r}")
        numeric = isinstance(step, int | float) and not isinstance(step, bool)
        return cls(
            name=name,
            lr=float(step) if numeric else math.nan,  # the plain step may still read "auto"
            betas=(b1, b2),
            eps=eps,
            weight_decay=wd,
            momentum=_unit("method.momentum", method.get("momentum", cls.momentum)),
            window=int_at_least(
                "method.microadam_window (m, gradients kept)",
                method.get("microadam_window", cls.window),
                1,
            ),
            density=_unit(
                "method.microadam_density (Top-K fraction k)",
                method.get("microadam_density", cls.density),
                closed_top=True,
            ),
            bucket=int_at_least(
                "method.microadam_bucket (error-feedback bucket q)",
                method.get("microadam_bucket", cls.bucket),
                1,
            ),
            reset=_reset(method.get("reset_optimizer", cls.reset)),
        )

    @property
    def uses_torch(self) -> bool:
        return self.name in TORCH_OPTIMIZERS

    def fresh_in(self, rnd: int) -> bool:
        """Whether round ``rnd`` (1-based) starts from a fresh state (``reset``)."""
        if self.reset is True:
            return True
        if self.reset is False:
            return False
        return (int(rnd) - 1) % int(self.reset) == 0

    @property
    def keeps_state(self) -> bool:
        """Whether anything is kept in ``context.state`` between rounds."""
        return self.uses_torch and self.reset is not True

    def build(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        """A fresh torch optimizer of this rule over ``params``."""
        import torch

        from fedsim.blocks.optim.microadam import MicroAdam

        if self.name == "sgdm":
            return torch.optim.SGD(
                params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        if self.name == "adamw":
            return torch.optim.AdamW(
                params, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay
            )
        if self.name == "microadam":
            return MicroAdam(
                params,
                lr=self.lr,
                betas=self.betas,
                eps=self.eps,
                weight_decay=self.weight_decay,
                m=self.window,
                density=self.density,
                bucket=self.bucket,
            )
        raise ValueError(f"local_optimizer {self.name!r} is the plain step, not a torch optimizer")


def resolve_local_optimizer(method: Mapping[str, Any], task: Task) -> dict:
    """Validate the local-optimizer knobs of a method section (ConfigError before any engine
    starts) and resolve ``client_lr=auto`` for the torch rules (module docstring); every other
    key is returned as given, so a resolved section resolves again to itself."""
    out = dict(method)
    rule = LocalOptimizer.from_method(method, lr=1.0)
    lr = method.get("client_lr", "auto")
    if rule.uses_torch and isinstance(lr, str) and lr.strip().lower() == "auto":
        if rule.name == "sgdm":
            solver = method.get("local_solver", "gd")
            if solver not in SOLVERS:
                raise unknown("method.local_solver", solver, SOLVERS)
            out["client_lr"] = (1 - rule.momentum) * local_gd_lr(task, solver)
        else:
            out["client_lr"] = ADAM_AUTO_LR
    if rule.uses_torch:
        LocalOptimizer.from_method(out)  # the lr itself, once it is a number
    return out


# ----------------------------------------------------------------------------- batch order


def batch_order(
    n: int,
    solver: str,
    rng: np.random.Generator | None,
    local_steps: int = 1,
    local_epochs: int = 1,
    batch_size: int = 1,
    fixed_order: np.ndarray | None = None,
) -> Iterator[np.ndarray | None]:
    """The minibatches of one local run, drawn as :func:`~fedsim.blocks.solvers.local_solve`
    draws them (the same generator calls in the same order): ``gd`` ``local_steps`` times None
    (the full gradient); ``sgd`` ``local_steps`` sorted draws of ``min(batch_size, n)`` samples
    without replacement; ``rr``/``so`` ``local_epochs`` passes over a permutation (new every
    epoch / ``fixed_order``) in consecutive minibatches."""
    b = min(batch_size, n)
    if solver == "gd":
        for _ in range(local_steps):
            yield None
    elif solver == "sgd":
        for _ in range(local_steps):
            yield np.sort(rng.choice(n, size=b, replace=False))
    elif solver in ("rr", "so"):
        for _ in range(local_epochs):
            if solver == "rr":
                order = rng.permutation(n)
            elif fixed_order is not None:
                order = fixed_order
            else:
                raise ValueError("solver 'so' needs the client's fixed_order")
            yield from epoch_batches(order, b)
    else:
        raise ValueError(f"unknown local solver {solver!r}; valid choices: {', '.join(SOLVERS)}")


# ----------------------------------------------------------------------------- torch run


def dump_state(optimizer: torch.optim.Optimizer) -> bytes:
    """``optimizer.state_dict()`` through ``torch.save``, as bytes (compact dtypes kept)."""
    import torch

    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    return buffer.getvalue()


def load_state(optimizer: torch.optim.Optimizer, blob: bytes, device: Any = "cpu") -> None:
    """Load what :func:`dump_state` wrote into ``optimizer`` (tensors and plain values only:
    ``weights_only``)."""
    import torch

    state = torch.load(io.BytesIO(blob), map_location=device, weights_only=True)
    optimizer.load_state_dict(state)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in ``optimizer.state`` (numel × element size)."""
    import torch

    return sum(
        v.numel() * v.element_size()
        for st in optimizer.state.values()
        for v in st.values()
        if torch.is_tensor(v)
    )


@dataclass(frozen=True)
class TorchRun:
    """A torch local run: the displacement ``Δ = p₀ − p_K`` (float64), the sample gradients it
    cost, the optimizer's state serialized (:func:`dump_state`) and its tensors' bytes."""

    delta: np.ndarray
    grad_evals: int
    state: bytes
    state_bytes: int


def _placement(objective: Objective) -> tuple[torch.dtype, torch.device]:
    """The objective's torch dtype and device where it has them, else float64 on the CPU."""
    import torch

    dtype = getattr(objective, "dtype", None)
    device = getattr(objective, "device", None)
    return (
        dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float64,
        device if isinstance(device, torch.device) else torch.device("cpu"),
    )


def torch_local_run(
    objective: Objective,
    x: np.ndarray,
    rule: LocalOptimizer,
    batches: Iterator[np.ndarray | None],
    state: bytes | None = None,
) -> TorchRun:
    """Run ``rule``'s torch optimizer from ``x`` over ``batches`` (module docstring), starting
    from the serialized ``state`` (None: a fresh optimizer)."""
    import torch

    dtype, device = _placement(objective)
    start = torch.tensor(np.asarray(x, dtype=np.float64)).to(device=device, dtype=dtype)
    param = torch.nn.Parameter(start.clone())
    optimizer = rule.build([param])
    if state is not None:
        load_state(optimizer, state, device)
    n, evals = objective.num_samples, 0
    for idx in batches:
        y = param.detach().to("cpu", torch.float64).numpy().copy()
        g = objective.grad(y, idx)
        param.grad = torch.as_tensor(g).to(device=device, dtype=dtype)
        optimizer.step()
        evals += n if idx is None else len(idx)
    delta = (start.to(torch.float64) - param.detach().to(torch.float64)).cpu().numpy()
    return TorchRun(delta, evals, dump_state(optimizer), state_bytes(optimizer))


__all__ = [
    "ADAM_AUTO_LR",
    "OPTIMIZERS",
    "STATE_KEY",
    "TORCH_OPTIMIZERS",
    "LocalOptimizer",
    "TorchRun",
    "batch_order",
    "dump_state",
    "load_state",
    "resolve_local_optimizer",
    "state_bytes",
    "torch_local_run",
]
