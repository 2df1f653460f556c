"""A one-hidden-layer perceptron (torch) behind the flat-vector :class:`Objective` interface.

Model ``in → hidden → classes`` with an activation between the two ``nn.Linear`` layers; loss
``f(x) = (1/n) Σ_j CE(net_x(a_j), y_j) + (λ/2)‖x‖²``. The flat vector ``x`` is the concatenation
of the parameters in ``named_parameters()`` order; :func:`torch.func.functional_call` evaluates the
network at views into one leaf tensor, so one backward pass yields the flat gradient.

Arithmetic runs in ``dtype`` (default ``float64``: exact enough for finite-difference checks and,
for a 2.4k-parameter network on CPU, no slower in practice); vectors in and out are float64 numpy.
No smoothness constant is known for a neural network: ``smoothness`` is the user's ``L`` knob, used
only to pick ``auto`` stepsizes.

``MLPObjective.layers`` (:func:`linear_layers`) lists every ``nn.Linear`` with the offsets of its
weight and bias in ``x``: what a LoRA adapter needs to find ``W`` inside the flat vector.
:func:`build_deep_mlp` builds the deeper networks of :mod:`fedsim.tasks.finetune`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from fedsim.errors import ConfigError, unknown
from fedsim.rng import int_seed
from fedsim.tasks.base import Objective

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}
DTYPES: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32}


def build_mlp(in_dim: int, hidden: int, out_dim: int, activation: str = "relu") -> nn.Sequential:
    """``Linear(in, hidden) → activation → Linear(hidden, out)``."""
    if activation not in ACTIVATIONS:
        raise unknown("task.activation", activation, tuple(ACTIVATIONS))
    if hidden < 1:
        raise ConfigError(f"task.hidden must be positive, got {hidden}")
    return nn.Sequential(
        nn.Linear(in_dim, hidden), ACTIVATIONS[activation](), nn.Linear(hidden, out_dim)
    )


def build_deep_mlp(
    in_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "relu"
) -> nn.Sequential:
    """``Linear(in, h_1) → act → … → Linear(h_{k−1}, h_k) → act → Linear(h_k, out)``.

    ``hidden = (h_1, …, h_k)``, ``k ≥ 1`` hidden layers; the ``nn.Linear`` layers sit at the even
    indices ``0, 2, …, 2k`` of the ``nn.Sequential`` (their names in :func:`linear_layers`).
    """
    if activation not in ACTIVATIONS:
        raise unknown("task.activation", activation, tuple(ACTIVATIONS))
    if not hidden:
        raise ConfigError("an MLP needs at least one hidden layer (task.depth ≥ 1)")
    if any(int(h) < 1 for h in hidden):
        raise ConfigError(f"task.hidden must be positive, got {list(hidden)}")
    sizes = [int(in_dim), *(int(h) for h in hidden)]
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(sizes[-1], int(out_dim)))
    return nn.Sequential(*layers)


class LinearLayer(NamedTuple):
    """Where one ``nn.Linear`` lives in the flat parameter vector ``x``.

    ``name`` is the layer's name in ``module.named_modules()`` (``"0"``, ``"2"``, ... in an
    ``nn.Sequential``); its weight ``W ∈ R^{out × in}`` is
    ``x[weight_offset : weight_offset + out·in].reshape(out, in)`` (row-major, torch's layout:
    the layer computes ``a ↦ W a + b``) and its bias ``x[bias_offset : bias_offset + out]``
    (``bias_offset`` is ``None`` for a layer without bias).
    """

    name: str
    out_features: int
    in_features: int
    weight_offset: int
    bias_offset: int | None

    @property
    def weight_slice(self) -> slice:
        return slice(self.weight_offset, self.weight_offset + self.out_features * self.in_features)

    def weight(self, x: np.ndarray) -> np.ndarray:
        """``W`` as an ``out × in`` view into ``x`` (writing to it writes ``x``)."""
        return x[self.weight_slice].reshape(self.out_features, self.in_features)

    def bias(self, x: np.ndarray) -> np.ndarray | None:
        """``b`` as a view into ``x``, or ``None``."""
        if self.bias_offset is None:
            return None
        return x[self.bias_offset : self.bias_offset + self.out_features]


def linear_layers(module: nn.Module) -> tuple[LinearLayer, ...]:
    """Every ``nn.Linear`` of ``module`` in ``named_modules()`` order, with its offsets in the
    flat vector (the concatenation of ``named_parameters()``, as :class:`MLPObjective` lays it
    out)."""
    offsets, offset = {}, 0
    for name, p in module.named_parameters():
        offsets[name] = offset
        offset += p.numel()
    found = []
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Linear):
            prefix = f"{name}." if name else ""
            bias = offsets[prefix + "bias"] if layer.bias is not None else None
            found.append(
                LinearLayer(
                    name, layer.out_features, layer.in_features, offsets[prefix + "weight"], bias
                )
            )
    return tuple(found)


def init_vector(module: nn.Module, seed: int) -> np.ndarray:
    """PyTorch's default ``nn.Linear`` init, seeded: weights and biases ``~ U(±1/√fan_in)``.

    Draws from a torch generator seeded with ``int_seed(seed, 0, "task/mlp_init")``.
    """
    gen = torch.Generator().manual_seed(int_seed(seed, 0, "task/mlp_init"))
    chunks = []
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            bound = 1.0 / np.sqrt(layer.in_features)
            for p in (layer.weight, layer.bias):
                u = torch.rand(p.shape, generator=gen, dtype=torch.float64)
                chunks.append(((2.0 * u - 1.0) * bound).reshape(-1))
    return torch.cat(chunks).numpy()


def resolve_device(device: str) -> torch.device:
    """``torch.device(device)``; ``cuda`` without a GPU is a configuration error."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"task.device={device!r} but no CUDA device is available; use 'cpu'")
    return dev


class MLPObjective(Objective):
    """Cross-entropy of ``module`` on ``(a, y)`` as a function of the flat parameter vector."""

    def __init__(
        self,
        module: nn.Module,
        a: np.ndarray,
        y: np.ndarray,
        smoothness: float,
        l2: float = 0.0,
        device: str = "cpu",
        dtype: str = "float64",
    ) -> None:
        self._bind(module, smoothness, l2, device, dtype)
        self.a = torch.as_tensor(np.asarray(a), dtype=self.dtype, device=self.device)
        self.y = torch.as_tensor(np.asarray(y), dtype=torch.long, device=self.device)
        self.num_samples = int(self.a.shape[0])

    def _bind(
        self, module: nn.Module, smoothness: float, l2: float, device: str, dtype: str
    ) -> None:
        """Everything but the data: the module on ``device`` in ``dtype``, its parameters' shapes
        and places in ``x``, and the constants."""
        if dtype not in DTYPES:
            raise unknown("task.dtype", dtype, tuple(DTYPES))
        self.device = resolve_device(device)
        self.dtype = DTYPES[dtype]
        self.module = module.to(device=self.device, dtype=self.dtype)
        self.shapes = [(name, p.shape) for name, p in module.named_parameters()]
        self.layers = linear_layers(module)  # the nn.Linear layers' places in x (LoRA adapters)
        self.dim = int(sum(p.numel() for p in module.parameters()))
        self.num_classes = int(list(module.parameters())[-1].shape[0])  # the output layer's size
        self.l2 = float(l2)
        self.smoothness = float(smoothness)
        self.sample_smoothness = float(smoothness)

    def _params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        params, offset = {}, 0
        for name, shape in self.shapes:
            size = int(np.prod(shape))
            params[name] = flat[offset : offset + size].view(shape)
            offset += size
        return params

    def _objective(self, flat: torch.Tensor, idx: np.ndarray | None) -> torch.Tensor:
        a, y = self.a, self.y
        if idx is not None:
            rows = torch.as_tensor(np.asarray(idx), dtype=torch.long, device=self.device)
            a, y = a[rows], y[rows]
        logits = functional_call(self.module, self._params(flat), (a,))
        value = nn.functional.cross_entropy(logits, y)
        if self.l2:
            value = value + 0.5 * self.l2 * flat.dot(flat)
        return value

    def _tensor(self, x: np.ndarray, requires_grad: bool = False) -> torch.Tensor:
        return torch.tensor(x, dtype=self.dtype, device=self.device, requires_grad=requires_grad)

    def loss(self, x: np.ndarray, idx: np.ndarray | None = None) -> float:
        with torch.no_grad():
            return float(self._objective(self._tensor(x), idx))

    def grad(self, x: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        flat = self._tensor(x, requires_grad=True)
        (g,) = torch.autograd.grad(self._objective(flat, idx), flat)
        return g.detach().to("cpu", torch.float64).numpy()

    def flipped(self) -> MLPObjective:
        """Labels ``c → K − 1 − c`` (the digits ``9 − c``)."""
        twin = copy.copy(self)
        twin.y = self.num_classes - 1 - self.y
        return twin

    def accuracy(self, x: np.ndarray) -> float:
        """``mean(argmax_k net_x(a_j)_k = y_j)``."""
        with torch.no_grad():
            logits = functional_call(self.module, self._params(self._tensor(x)), (self.a,))
            return float((logits.argmax(dim=1) == self.y).double().mean())
