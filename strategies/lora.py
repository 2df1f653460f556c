"""Low-rank federated fine-tuning, server side: Fed-FPFT, Fed-LoRA, Fed-AsymmLoRA, Fed-CoLA and
Fed-RAC-LoRA (Malinovsky, Michieli, Hammoud, Ceritli, Elesedy, Ozay, Richtárik, "Randomized
Asymmetric Chain of LoRA", arXiv 2410.08305, Algorithms 1 and 2, with its baselines).

**Parametrisation.** The model is fedsim's flat float64 vector ``x``; for every *adapted* layer
``l`` (an ``nn.Linear`` of the task, ``fedsim.tasks.finetune.layers_of``; ``method.layers: all``
or a list of layer names) the weight ``W_l ∈ R^{out×in}`` is a view into ``x`` and

    W_l = W_l^base + s · B_l A_l,   B_l ∈ R^{out×r},  A_l ∈ R^{r×in},  s = α/r

(``r = method.rank``, ``α = method.alpha``). **Scaling:** ``s = α/r`` as in Hu et al. 2021 and
peft (``lora_alpha / r``); the RAC-LoRA code multiplies by the plain ``α``, which is the same
rule with ``α_here = r · α_code`` (identical at the paper's rank 1). The server keeps the base
vector ``base`` (every weight and bias), the factors ``A``, ``B`` of the current link and the link
counter; ``x = merge(base, A, B)`` is the model every metric is computed at.

**Gradients of the factors** (chain rule through ``W = W^base + s B A``), with
``G_l = ∂f/∂W_l`` the weight block of ``∇f`` at the merged ``x``:

    ∇_A f = s B_lᵀ G_l,      ∇_B f = s G_l A_lᵀ.

**Local solver.** ``K = method.local_steps`` full-gradient steps on the client's ``f_m`` over the
trainable parameters (the trained factor(s), plus the adapted layers' biases when
``method.train_bias``), all computed at the same point, from the server's current values. The
client sends the displacement ``Δ_m = start − end`` of each trained array; the server applies the
FedAvg rule ``v ← v − Σ_{m∈S} a_m w_m Δ_m`` (``w_m = n_m/N``, ``a_m`` the sampler's
Horvitz–Thompson multipliers: with full participation the weighted mean of the clients' arrays).

**Randomness** (DESIGN §6). Link ``t`` covers rounds ``tK_l+1 … (t+1)K_l``
(``K_l = method.link_rounds``; one link forever for Fed-LoRA and Fed-AsymmLoRA). Its random factor
of layer ``l`` is drawn from ``generator(seed, t, "lora/factor/<l>")``; RAC-LoRA's coin from
``generator(seed, t, "lora/coin")``: ``u < 1/2`` → *left* (``B`` random and frozen, ``A`` trained
from 0), else *right* (``A`` random and frozen, ``B`` trained from 0). Clients regenerate frozen
factors themselves; they never cross the wire.

**Initialisation** (``method.init``) of a random factor: ``gaussian`` = i.i.d. ``N(0, 1)``
entries (the RAC-LoRA code's Gaussian sketch); ``peft`` = kaiming-uniform with ``a = √5`` on the
factor's fan-in, i.e. ``A ~ U(±1/√in)`` (peft's default ``lora_A``) and, for a random ``B`` (no
peft option exists), ``B ~ U(±1/√r)`` by the same rule with ``B``'s fan-in ``r``. The trained
factor of a chain link and ``B`` of Fed-LoRA/Fed-CoLA start at 0, so every link starts at
``x = base``.

**Stepsizes** (``method.client_lr``; a number: that plain stepsize for every trained entry).
``auto``, per adapted layer, with ``L = max_m L_m`` (``method.smoothness``, derived from the task:
the exact constant of ``linear_torch``, the assumed ``task.L`` of the MLP tasks):

- one trained factor: ``f`` as a function of ``A`` alone is ``L s²‖B‖₂²``-smooth (the map
  ``A ↦ sBA`` has operator norm ``s‖B‖₂``), so ``η_A = 1/(L s²‖B‖₂²)``, ``η_B = 1/(L s²‖A‖₂²)``.
  The step is then ``W⁺ = W − (1/L) (BBᵀ/‖B‖₂²) ∇f`` on the first local step from zero: the
  analysed update of arXiv 2410.08305 (Sec. 5) with ``BBᵀ/‖B‖₂² ≼ H_B`` (equal for ``r = 1``);
- both factors trained (Fed-LoRA, Fed-CoLA): the loss in ``(A, B)`` is not Lipschitz-smooth
  (the bilinear coupling), so the bound is local, at the round's start point ``(A, B)`` of each
  client: ``‖∇²‖ ≤ L s²(‖A‖₂² + ‖B‖₂²) + s‖G‖₂`` (Gauss–Newton part plus the bilinear term
  ``2s⟨G, dB dA⟩``), ``η = 1/(L s²(‖A‖₂² + ‖B‖₂²) + s‖G_m‖₂)``, held for the round's steps;
- biases: ``1/L``.

Different stepsizes on disjoint coordinate blocks keep the descent lemma: with ``D`` the
block-diagonal stepsizes and ``J`` the (block-diagonal) map from the trained parameters to ``x``,
``‖J D^{1/2}‖² = max_l η_l s²‖F_l‖₂² = 1/L``.

**Traffic.** Down: ``base`` (the clients are stateless: a client may not have seen the last merge)
and the trained factor(s); frozen factors are never sent. Up per client and round: the trained
factor(s) only, ``r·in`` (left) or ``out·r`` (right) per adapted layer, ``r·(in+out)`` when both
are trained, plus ``out`` per adapted layer with bias when ``train_bias`` — never ``in·out``.

**Biases** (``method.train_bias``, default ``false``): peft's ``bias="none"`` and the trainable
parameter counts of the paper's Table 3 (133 = the B factors, 912 = the A factors of
``784→64→64→5`` at rank 1). ``true`` trains the adapted layers' biases as full parameters, which
reaching ``x*`` needs whenever the optimum's bias differs from ``x0``'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedsim.blocks.samplers import Cohort, Sampler, unbiased_sum
from fedsim.blocks.stepsizes import positive_or_auto
from fedsim.errors import ConfigError, int_at_least, unknown
from fedsim.rng import generator
from fedsim.tasks.base import Task
from strategies.base import FedsimStrategy, Reply, RunSettings

if TYPE_CHECKING:  # the torch tasks' module imports torch: only torch tasks need it
    from fedsim.tasks.mlp import LinearLayer

# tasks whose objectives list their nn.Linear layers (fedsim.tasks.finetune.layers_of)
TORCH_TASKS = ("finetune_digits", "hf_vision", "linear_torch", "mlp_digits", "mlp_large")
INITS = ("gaussian", "peft")
SIDES = ("coin", "left", "right")
BOTH = "both"  # the side of a link whose two factors are trained


# --------------------------------------------------------------------------- pure rules


def layers_of(task: Task) -> tuple[LinearLayer, ...] | None:
    """The task's ``nn.Linear`` layers (``fedsim.tasks.finetune.layers_of``, without importing
    torch), or None."""
    return getattr(task.full, "layers", None)


def adapted_layers(layers: Sequence[LinearLayer], chosen: object) -> tuple[LinearLayer, ...]:
    """The layers ``method.layers`` names (``all``: every one), in the task's order."""
    if chosen == "all":
        return tuple(layers)
    names = [layer.name for layer in layers]
    if isinstance(chosen, str | int) or not isinstance(chosen, Sequence) or not chosen:
        raise ConfigError(
            f"method.layers must be 'all' or a non-empty list of layer names ({', '.join(names)}),"
            f" got {chosen!r}"
        )
    wanted = [str(c) for c in chosen]
    for name in wanted:
        if name not in names:
            raise unknown("layer name in method.layers", name, names)
    if len(set(wanted)) != len(wanted):
        raise ConfigError(f"method.layers names a layer twice: {wanted}")
    return tuple(layer for layer in layers if layer.name in wanted)


def factor_shape(layer: LinearLayer, which: str, rank: int) -> tuple[int, int]:
    """``A: (r, in)``, ``B: (out, r)``."""
    return (rank, layer.in_features) if which == "A" else (layer.out_features, rank)


def random_factor(
    seed: int, link: int, layer: LinearLayer, which: str, rank: int, init: str
) -> np.ndarray:
    """Link ``link``'s random factor ``which`` (``"A"`` or ``"B"``) of ``layer``, drawn from
    ``(seed, link, "lora/factor/<layer>")`` (module docstring, *Initialisation*)."""
    shape = factor_shape(layer, which, rank)
    rng = generator(seed, link, f"lora/factor/{layer.name}")
    if init == "gaussian":
        return rng.standard_normal(shape)
    bound = 1.0 / math.sqrt(shape[1])  # kaiming_uniform(a=√5): gain √(1/3), bound gain·√(3/fan_in)
    return rng.uniform(-bound, bound, shape)


def link_side(seed: int, link: int, side: str) -> str:
    """``left`` (B frozen, A trained) or ``right`` (A frozen, B trained); ``coin``: Bernoulli(1/2)
    from ``(seed, link, "lora/coin")``, ``u < 1/2`` → left."""
    if side != "coin":
        return side
    return "left" if generator(seed, link, "lora/coin").random() < 0.5 else "right"


def trained_of(side: str) -> tuple[str, ...]:
    """The factors a link of ``side`` trains."""
    return {"left": ("A",), "right": ("B",), BOTH: ("A", "B")}[side]


def frozen_of(side: str) -> str | None:
    """The random frozen factor of a link of ``side`` (None when both are trained)."""
    return {"left": "B", "right": "A", BOTH: None}[side]


def merge(
    base: np.ndarray,
    layers: Sequence[LinearLayer],
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    scale: float,
) -> np.ndarray:
    """``x``: a copy of ``base`` with ``W_l += s B_l A_l`` for every layer."""
    x = np.array(base, dtype=np.float64, copy=True)
    for layer in layers:
        layer.weight(x)[...] += scale * (b[layer.name] @ a[layer.name])
    return x


def factor_grads(
    g: np.ndarray, layer: LinearLayer, a: np.ndarray, b: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(∇_A, ∇_B) = (s Bᵀ G, s G Aᵀ)``, ``G`` the weight block of the flat gradient ``g``."""
    grad_w = layer.weight(g)
    return scale * (b.T @ grad_w), scale * (grad_w @ a.T)


def factor_stepsize(
    side: str,
    smoothness: float,
    scale: float,
    a: np.ndarray,
    b: np.ndarray,
    grad_w: np.ndarray | None = None,
) -> float:
    """The ``auto`` stepsize of one layer's trained factor(s) (module docstring, *Stepsizes*):
    ``1/(L s²‖B‖₂²)`` (left), ``1/(L s²‖A‖₂²)`` (right), ``1/(L s²(‖A‖₂²+‖B‖₂²) + s‖G‖₂)``
    (both; ``grad_w`` = ``G`` at the start point)."""
    norm_a = np.float64(np.linalg.norm(a, 2)) ** 2  # numpy floats: a blown-up run gives inf,
    norm_b = np.float64(np.linalg.norm(b, 2)) ** 2  # not an OverflowError
    if side == "left":
        curv = smoothness * scale**2 * norm_b
    elif side == "right":
        curv = smoothness * scale**2 * norm_a
    else:
        assert grad_w is not None
        curv = smoothness * scale**2 * (norm_a + norm_b) + scale * float(np.linalg.norm(grad_w, 2))
    return float(1.0 / curv) if curv > 0 else 1.0 / smoothness


# --------------------------------------------------------------------------- hyperparameters


@dataclass(frozen=True)
class LoraSettings:
    """The hyperparameters of a LoRA-family method, built once from the resolved config and
    shared by the strategy and its clients (``client_lr = None``: ``auto``)."""

    rank: int
    alpha: float
    layer_names: tuple[str, ...]
    init: str
    side: str  # coin | left | right | both
    link_rounds: int | None  # None: one link for ever (no merge)
    client_lr: float | None
    local_steps: int
    train_bias: bool
    smoothness: float

    @property
    def scale(self) -> float:
        """``s = α/r``."""
        return self.alpha / self.rank

    @classmethod
    def of(cls, method: Mapping, task: Task) -> LoraSettings:
        layers = adapted_layers(layers_of(task) or (), method["layers"])
        lr = method["client_lr"]
        return cls(
            rank=int(method["rank"]),
            alpha=float(method["alpha"]),
            layer_names=tuple(layer.name for layer in layers),
            init=str(method["init"]),
            side=str(method.get("side", BOTH)),
            link_rounds=None if method.get("link_rounds") is None else int(method["link_rounds"]),
            client_lr=None if lr == "auto" else float(lr),
            local_steps=int(method["local_steps"]),
            train_bias=bool(method["train_bias"]),
            smoothness=float(method["smoothness"]),
        )

    def layers(self, task: Task) -> tuple[LinearLayer, ...]:
        return adapted_layers(layers_of(task) or (), list(self.layer_names))


def max_smoothness(task: Task) -> float:
    """``L = max_m L_m``, the constant of the ``auto`` stepsizes."""
    return max(float(c.smoothness) for c in task.clients)


def resolve_lora(method: Mapping, task: Task, sides: tuple[str, ...], chained: bool) -> dict:
    """Validate a LoRA-family method section against the task (a :class:`ConfigError` before
    any engine starts) and derive ``smoothness``."""
    name = method.get("name")
    layers = layers_of(task)
    if not layers:
        raise ConfigError(
            f"method {name!r} adapts nn.Linear layers, and task {task.name!r} has none; "
            f"valid tasks: {', '.join(TORCH_TASKS)}"
        )
    out = dict(method)
    rank = out["rank"] = int_at_least("method.rank", method.get("rank"), 1)
    chosen = method.get("layers", "all")
    if isinstance(chosen, Sequence) and not isinstance(chosen, str):
        chosen = [str(c) for c in chosen]
    out["layers"] = chosen
    for layer in adapted_layers(layers, chosen):
        low = min(layer.in_features, layer.out_features)
        if rank >= low:
            raise ConfigError(
                f"method.rank={rank} must be < min(in, out) = {low} of layer {layer.name!r} "
                f"({layer.in_features} → {layer.out_features}): a rank-{low} update is a full "
                f"one (use method.rank <= {low - 1}, or leave the layer out of method.layers)"
            )
    alpha = method.get("alpha")
    ok = isinstance(alpha, int | float) and not isinstance(alpha, bool)
    if not ok or not (math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"method.alpha must be a finite number > 0, got {alpha!r}")
    out["alpha"] = float(alpha)
    if method.get("init") not in INITS:
        raise unknown("method.init", method.get("init"), INITS)
    if "side" in method and method["side"] not in sides:
        raise unknown("method.side", method["side"], sides)
    if chained:
        out["link_rounds"] = int_at_least("method.link_rounds", method.get("link_rounds"), 1)
    out["local_steps"] = int_at_least("method.local_steps", method.get("local_steps"), 1)
    if not isinstance(method.get("train_bias"), bool):
        raise ConfigError(
            f"method.train_bias must be true or false, got {method.get('train_bias')}"
        )
    lr = method.get("client_lr", "auto")
    auto = isinstance(lr, str) and lr.strip().lower() == "auto"
    out["client_lr"] = "auto" if auto else positive_or_auto("method.client_lr", lr, 1.0)
    out["smoothness"] = max_smoothness(task)
    return out


# --------------------------------------------------------------------------- strategies


class FedFPFT(FedsimStrategy):
    """Fed-FPFT: full-parameter fine-tuning, the upper baseline of arXiv 2410.08305 (Tables 2–3).

    FedAvg (McMahan et al. 2017) with the LoRA family's local solver: every client runs
    ``K = method.local_steps`` gradient steps ``y ← y − γ ∇f_m(y)`` from ``x`` on every
    parameter, sends ``Δ_m = x − y``, and ``x ← x − Σ_{m∈S} a_m w_m Δ_m``. ``γ =
    method.client_lr``, ``auto`` = ``1/max_m L_m``. Uplink ``dim`` floats per client. Runs on
    every task (it needs no layer structure).
    """

    def __init__(self, task: Task, sampler: Sampler, settings: RunSettings) -> None:
        super().__init__(task, sampler, settings)
        self.weights = task.weights

    @staticmethod
    def resolve(method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        out = dict(method)
        out["local_steps"] = int_at_least("method.local_steps", method.get("local_steps"), 1)
        out["client_lr"] = positive_or_auto(
            "method.client_lr", method.get("client_lr", "auto"), 1.0 / max_smoothness(task)
        )
        return out

    @classmethod
    def from_config(
        cls, method: Mapping, task: Task, sampler: Sampler, settings: RunSettings
    ) -> FedFPFT:
        return cls(task, sampler, settings)

    def fit_config(self, rnd: int, cohort: Cohort) -> dict[int, tuple[list[np.ndarray], dict]]:
        arrays = [self.x]
        return {int(pid): (arrays, {}) for pid in cohort.ids}

    def apply(self, rnd: int, cohort: Cohort, replies: list[Reply]) -> None:
        if not replies:
            return
        pids = np.array([r.pid for r in replies], dtype=np.int64)
        deltas = np.stack([r.arrays[0] for r in replies])
        self.x = self.x - unbiased_sum(cohort, deltas, self.weights[pids], ids=pids)


class _LoraStrategy(FedsimStrategy):
    """The machinery of the four low-rank methods (module docstring); a subclass fixes
    :attr:`sides` (the ``method.side`` choices, ``()``: both factors trained) and
    :attr:`chained` (merge and re-initialise every ``method.link_rounds`` rounds)."""

    sides: tuple[str, ...] = ()
    chained: bool = False
    transient = (*FedsimStrategy.transient, "cfg", "layers", "weights")

    def __init__(
        self, task: Task, sampler: Sampler, settings: RunSettings, cfg: LoraSettings
    ) -> None:
        super().__init__(task, sampler, settings)
        self.cfg = cfg
        self.layers = cfg.layers(task)
        self.weights = task.weights
        self.base = np.array(task.x0, dtype=np.float64, copy=True)
        self.link = 0
        self.side = BOTH
        self.A: dict[str, np.ndarray] = {}
        self.B: dict[str, np.ndarray] = {}
        self._begin_link(0)

    @classmethod
    def resolve(cls, method: Mapping, task: Task, sampler: Sampler | None = None) -> dict:
        return resolve_lora(method, task, cls.sides, cls.chained)

    @classmethod
    def from_config(
        cls, method: Mapping, task: Task, sampler: Sampler, settings: RunSettings
    ) -> _LoraStrategy:
        return cls(task, sampler, settings, LoraSettings.of(method, task))

    # ---------------------------------------------------------------- links
    def _begin_link(self, link: int) -> None:
        """Link ``link``'s side and factors: the random one drawn from the seed, the trained one
        (both trained: ``B``) zero."""
        cfg, seed = self.cfg, self.settings.seed
        self.link = link
        self.side = BOTH if not self.sides else link_side(seed, link, cfg.side)
        random = frozen_of(self.side) or "A"
        for layer in self.layers:
            rand = random_factor(seed, link, layer, random, cfg.rank, cfg.init)
            zero = np.zeros(factor_shape(layer, "B" if random == "A" else "A", cfg.rank))
            self.A[layer.name], self.B[layer.name] = (rand, zero) if random == "A" else (zero, rand)
        self.x = merge(self.base, self.layers, self.A, self.B, cfg.scale)

    # ---------------------------------------------------------------- messages
    def _trained(self) -> list[tuple[str, LinearLayer]]:
        return [(w, layer) for layer in self.layers for w in trained_of(self.side)]

    def _biased(self) -> list[LinearLayer]:
        return [la for la in self.layers if self.cfg.train_bias and la.bias_offset is not None]

    def fit_config(self, rnd: int, cohort: Cohort) -> dict[int, tuple[list[np.ndarray], dict]]:
        factors = {"A": self.A, "B": self.B}
        arrays = [self.base, *(factors[w][layer.name] for w, layer in self._trained())]
        config = {"link": self.link, "side": self.side}
        return {int(pid): (arrays, config) for pid in cohort.ids}

    def expected_shapes(self, pid: int) -> list[tuple[int, ...]]:
        shapes = [factor_shape(layer, w, self.cfg.rank) for w, layer in self._trained()]
        return [*shapes, *((layer.out_features,) for layer in self._biased())]

    def apply(self, rnd: int, cohort: Cohort, replies: list[Reply]) -> None:
        if replies:
            pids = np.array([r.pid for r in replies], dtype=np.int64)
            flat = np.stack([np.concatenate([a.reshape(-1) for a in r.arrays]) for r in replies])
            step = unbiased_sum(cohort, flat, self.weights[pids], ids=pids)
            offset = 0
            factors = {"A": self.A, "B": self.B}
            for w, layer in self._trained():
                old = factors[w][layer.name]
                factors[w][layer.name] = old - step[offset : offset + old.size].reshape(old.shape)
                offset += old.size
            for layer in self._biased():
                bias = layer.bias(self.base)
                assert bias is not None
                bias -= step[offset : offset + bias.size]
                offset += bias.size
        if self.chained and rnd % int(self.cfg.link_rounds or 1) == 0:  # the end of a link
            self.base = merge(self.base, self.layers, self.A, self.B, self.cfg.scale)
            self._begin_link(self.link + 1)
        else:
            self.x = merge(self.base, self.layers, self.A, self.B, self.cfg.scale)


class FedLoRA(_LoraStrategy):
    """Fed-LoRA (FedAvg of LoRA adapters; Hu et al. 2021 locally): one block ``W = W⁰ + sBA``
    for the whole run, ``A⁰`` random (``method.init``), ``B⁰ = 0``, both factors trained and
    averaged *separately*:

        A ← A − Σ_{m∈S} a_m w_m (A − A_m),   B ← B − Σ_{m∈S} a_m w_m (B − B_m),

    so the server's update ``s·avg(B)·avg(A)`` is not the average ``s·avg(B_m A_m)`` of the
    clients' updates (the aggregation mismatch that RAC-LoRA's shared frozen factor removes,
    arXiv 2410.08305, Sec. 2 and Alg. 2). No merging: ``W − W⁰`` stays of rank ``≤ r``.
    Uplink ``r(in + out)`` floats per adapted layer.
    """


class FedAsymmLoRA(_LoraStrategy):
    """Fed-AsymmLoRA (Zhu et al. 2024, "Asymmetry in low-rank adapters"; a baseline of
    arXiv 2410.08305): one block for the whole run whose random factor is drawn once from the
    seed and frozen (``method.side``: ``right`` = ``A`` random, ``B`` trained from 0, peft's
    layout; ``left`` = ``B`` random, ``A`` trained; ``coin`` = one Bernoulli(1/2) draw), the other
    trained and averaged, e.g. right: ``B ← B − Σ_{m∈S} a_m w_m (B − B_m)``. Since the frozen
    factor is shared, this averages the clients' updates exactly, but ``W − W⁰`` stays in the
    fixed subspace ``{B A_S}`` (``{B_S A}``): a sub-optimal stationary point in general. Uplink
    ``out·r`` (right) or ``r·in`` (left) floats per adapted layer.
    """

    sides = SIDES


class FedCoLA(_LoraStrategy):
    """Fed-CoLA (Chain of LoRA, Xia, Qin, Hazan 2024; a baseline of arXiv 2410.08305): Fed-LoRA
    on link ``t`` for ``method.link_rounds`` rounds, then the server merges and re-initialises

        W^{base} ← W^{base} + s B A,   A ← fresh random (seed, t+1),   B ← 0,

    so the total update can reach any rank, though each link still averages ``A`` and ``B``
    separately. Uplink ``r(in + out)`` floats per adapted layer.
    """

    chained = True


class FedRACLoRA(_LoraStrategy):
    """Fed-RAC-LoRA, arXiv 2410.08305, Algorithm 2 (the federated form of Algorithm 1).

    Link ``t`` (``method.link_rounds`` rounds): a shared coin (``method.side=coin``;
    ``left``/``right`` fix it) picks the frozen side; the frozen factor is drawn from
    ``(seed, t, layer)`` by the server and by every client (never sent); the other starts at 0.

        left:  B_S^t random,  A ← A − Σ_{m∈S} a_m w_m (A − A_m)   (clients train A from the
               server's current A: 0 at the link's first round)
        right: A_S^t random,  B ← B − Σ_{m∈S} a_m w_m (B − B_m)

    and at the link's end ``W^{t+1} = W^t + s B_S^t Â`` (left) or ``W^t + s B̂ A_S^t`` (right),
    then the next link. Because the frozen factor is the same on every client, the average of the
    trained factor gives exactly the average of the clients' low-rank updates
    ``s·B_S avg(A_m) = avg(s·B_S A_m)``. With one local step per round
    (``method.local_steps=1``) and ``auto`` stepsizes a round is the analysed step
    ``W⁺ = W − (1/L)(B_S B_Sᵀ/‖B_S‖₂²) ∇f(W)`` (Sec. 5; ``H_B`` itself when ``r = 1``), which
    converges to ``x*`` on a convex problem (Theorem 5.5 under PL). Uplink ``r·in`` (left) or
    ``out·r`` (right) floats per adapted layer.
    """

    sides = SIDES
    chained = True
