r"""MicroAdam: Adam on a window of Top-K-compressed gradients with 4-bit error feedback.

Paper: I. Modoranu, M. Safaryan, G. Malinovsky, E. Kurtic, T. Robert, P. Richtárik, D. Alistarh,
"MicroAdam: Accurate Adaptive Optimization with Low Space Overhead and Provable Convergence",
arXiv 2405.15593 (NeurIPS 2024). This is a pure-PyTorch version of the algorithm as the authors'
CUDA package (``ista-daslab-optimizers``) implements it; see ``specs/microadam.md`` §3(b).

Algorithm (per parameter tensor, flattened to d entries, step t = 1, 2, ...)
--------------------------------------------------------------------------------
State: a ring buffer of the last m sparse gradients (block-relative indices I ∈ int16^{m×k} and
values V ∈ bf16^{m×k}), the error e ∈ {0..15}^d packed two codes per byte, and per-bucket
minimum δ_b and maximum Δ_b (bf16) for the ⌈d/q⌉ buckets of q consecutive entries.

1. a = g + Q⁻¹(e; δ, Δ)                                   (error feedback, dequantized)
2. Top-K of |a| block-wise: blocks of d_b entries, the k_b = ⌈d_b·k⌉ largest of each
   (remainder block: ⌈len·k⌉); write (I, V) = (block-relative indices, a[idx]) into ring slot
   s = (t − 1) mod m
3. a[idx] = 0                                             (the rest is the new error)
4. δ_b = min_{j∈b} a_j, Δ_b = max_{j∈b} a_j
5. e = Q(a; δ, Δ): u_b = (Δ_b − δ_b)/15, code_j = ⌊(a_j − δ_b)/u_b + ½⌋ ∈ {0..15}
   (code 0 where Δ_b = δ_b), Q⁻¹(code)_j = δ_b + u_b·code_j
6. p ← p·(1 − lr·wd)                                      (decoupled weight decay)
7. for j in the union of the stored indices (every other coordinate gets update 0):
   M_j = Σ_{i < min(t,m)} β1^{age_i} V_i[j],  S_j = Σ_{i < min(t,m)} β2^{age_i} V_i[j]²,
   age_i = (t − 1 − i) mod m (newest slot has age 0),
   u_j = c1·M_j / (√(c2·S_j) + ε),  c1 = (1 − β1)/(1 − β1^t),  c2 = (1 − β2)/(1 − β2^t)
8. p ← p − lr·u

No dense first or second moment is stored: the statistics are recomputed from the window at every
step, which is Adam's EMA truncated to the last m sparse gradients (with density 1 and no error
quantization it *is* Adam truncated to the window; for t ≤ m it is Adam).

``alpha`` (post-paper knob of the package, v1.1.0; ``alpha = 0`` is the paper): with α ∈ (0, 1)
the update becomes u + α·Q⁻¹(e) (dense), and the error kept for the next step is
(1 − α)·Q⁻¹(e), re-quantized with fresh bucket statistics (steps 4–5 again), as the package does.
The package's special value α = −2 is not offered.

Where this departs from the CUDA package
---------------------------------------
* Any floating dtype and any device: the maths runs in float32 (float64 for float64 parameters);
  the package runs on bf16 parameters and gradients on ``cuda:0`` only.
* Indices are int16 only when the effective Top-K block min(d_b, d) is < 32768, else int32.
  The default block is :data:`DEFAULT_BLOCK` = 4096 (the package derives ≈ 20 k from the GPU's
  shared memory); the choice changes which entries are kept, not the density.
* The stored bucket minimum is rounded *down* and the maximum *up* to bf16 (the package rounds
  to nearest), so every entry lies in [δ_b, Δ_b] and the error of Q is ≤ u_b/2 with the stored
  u_b; codes are clamped to {0..15} and the Δ = δ guard gives code 0.
* Exactly ⌈d/q⌉ buckets (the package allocates one spare) and no spare index padding.
* The step t is counted per parameter (as in ``torch.optim.Adam``): a parameter without a gradient
  on some step does not advance; the package counts optimizer steps. Equal when every parameter
  gets a gradient at every step.
* ``quantize=False`` keeps the error dense in the parameter's dtype and ``state_dtype`` can store
  V, δ, Δ in float32/float64 instead of bf16: both are testing knobs, not the paper's method.
* ``torch.optim.Optimizer.load_state_dict`` casts every state tensor to the parameter's dtype
  (lossy for int16 indices > 256 of a bf16 parameter, the package's "HuggingFace converts I to
  bfloat16" problem); :meth:`MicroAdam.load_state_dict` keeps the saved dtypes.

Memory per parameter (bf16 state, int16 indices): ½ (4-bit error) + 4·m·k (index + value per
stored entry) + 4/q (bf16 δ and Δ per bucket): ≈ 0.96 bytes for m = 10, k = 1 %, q = 64, against
8 bytes for AdamW's float32 moments. :meth:`MicroAdam.state_bytes` measures it from the tensors.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from numbers import Integral, Real
from typing import Any

import torch

__all__ = [
    "DEFAULT_BLOCK",
    "MicroAdam",
    "blockwise_topk",
    "dequantize_4bit",
    "quantize_4bit",
    "topk_layout",
]

DEFAULT_BLOCK = 4096
"""Default Top-K block size d_b (block-relative indices then fit int16)."""

_INT16_LIMIT = 32768
_STATE_DTYPES = (torch.bfloat16, torch.float32, torch.float64)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _round_outward(x: torch.Tensor, dtype: torch.dtype, down: bool) -> torch.Tensor:
    """x rounded to ``dtype`` towards −∞ (``down``) or +∞: the largest representable value ≤ x
    (smallest ≥ x). Exact when ``dtype`` holds x; NaN and ±∞ pass through."""
    y = x.to(dtype)
    if torch.finfo(dtype).bits >= torch.finfo(x.dtype).bits:
        return y
    back = y.to(x.dtype)
    wrong = back > x if down else back < x
    if bool(wrong.any()):
        target = torch.full_like(y, -math.inf if down else math.inf)
        y = torch.where(wrong, torch.nextafter(y, target), y)
    return y


def topk_layout(d: int, block: int, density: float) -> tuple[int, int, int, int, int]:
    """Block layout of the Top-K of a d-vector (Algorithm step 2).

    d_b = min(block, d); n_full = ⌊d/d_b⌋ full blocks keep k_b = ⌈d_b·k⌉ entries each, the
    remainder block of r = d − n_full·d_b entries keeps k_r = ⌈r·k⌉ (0 when r = 0). The ceiling
    ignores a float excess below 1e-9 (so that e.g. 0.07·100 keeps 7, not 8).

    Returns (d_b, n_full, k_b, r, k_r); the slot width is k = n_full·k_b + k_r.
    """
    if d <= 0:
        return 0, 0, 0, 0, 0
    db = min(int(block), d)
    n_full, rem = divmod(d, db)

    def kept(n: int) -> int:
        return min(n, max(1, math.ceil(n * density - 1e-9))) if n else 0

    return db, n_full, kept(db), rem, kept(rem)


def _index_dtype(db: int) -> torch.dtype:
    return torch.int16 if db < _INT16_LIMIT else torch.int32


def _block_offsets(d: int, block: int, density: float, device: torch.device) -> torch.Tensor:
    """For each of the k slot positions, the start of its Top-K block (int64, shape [k])."""
    db, n_full, kb, rem, kr = topk_layout(d, block, density)
    full = torch.arange(n_full, device=device, dtype=torch.int64).repeat_interleave(kb) * db
    last = torch.full((kr,), n_full * db, device=device, dtype=torch.int64)
    return torch.cat([full, last])


def blockwise_topk(
    a: torch.Tensor, k_density: float, block: int = DEFAULT_BLOCK
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise Top-K of |a| (MicroAdam, Algorithm 1 step 2; the package's layout).

    The flattened a is cut into blocks B_1, B_2, ... of d_b = min(block, d) entries (the last
    one possibly shorter, see :func:`topk_layout`); from each block the k_b = ⌈|B|·k⌉ entries of
    largest |a_j| are kept:

        idx_B = argtop_{k_b} { |a_j| : j ∈ B },   vals = a[idx] (signed).

    Returns (idx, vals), both of length k = Σ_B k_B, block after block: ``idx`` is relative to
    its block's start (int16 when d_b < 32768, else int32), ``vals`` has a's dtype. Global
    indices are idx + (start of the block).
    """
    flat = a.reshape(-1)
    d = flat.numel()
    db, n_full, kb, rem, kr = topk_layout(d, block, k_density)
    idx_dtype = _index_dtype(db)
    idx_parts: list[torch.Tensor] = []
    val_parts: list[torch.Tensor] = []
    if n_full:
        full = flat[: n_full * db].view(n_full, db)
        top = full.abs().topk(kb, dim=1, sorted=False).indices
        idx_parts.append(top.reshape(-1))
        val_parts.append(full.gather(1, top).reshape(-1))
    if kr:
        tail = flat[n_full * db :]
        top = tail.abs().topk(kr, sorted=False).indices
        idx_parts.append(top)
        val_parts.append(tail[top])
    if not idx_parts:
        return (torch.zeros(0, dtype=idx_dtype, device=a.device), flat[:0].clone())
    return torch.cat(idx_parts).to(idx_dtype), torch.cat(val_parts)


def quantize_4bit(
    a: torch.Tensor, bucket: int, state_dtype: torch.dtype = torch.bfloat16
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bucketed asymmetric 4-bit quantization Q (MicroAdam, Algorithm 1 steps 7–8).

    The flattened a (n entries) is cut into ⌈n/q⌉ buckets of q consecutive entries (the last
    possibly shorter). Per bucket b:

        δ_b = min_{j∈b} a_j rounded down to ``state_dtype``,
        Δ_b = max_{j∈b} a_j rounded up to ``state_dtype``,
        u_b = (Δ_b − δ_b)/15,
        code_j = clamp(⌊(a_j − δ_b)/u_b + ½⌋, 0, 15)      (deterministic rounding)
        code_j = 0 where u_b = 0 (the guard Δ_b = δ_b).

    Codes are packed two per byte, entry 2i in the high nibble and 2i + 1 in the low one
    (⌈n/2⌉ bytes; the low nibble of the last byte is 0 when n is odd). Since every a_j lies in
    [δ_b, Δ_b], |a_j − Q⁻¹(Q(a))_j| ≤ u_b/2 = (Δ_b − δ_b)/30.

    Returns (packed uint8 [⌈n/2⌉], δ [⌈n/q⌉], Δ [⌈n/q⌉]) with δ, Δ in ``state_dtype``.
    """
    flat = a.reshape(-1)
    if not flat.is_floating_point():
        raise TypeError(f"quantize_4bit needs a floating tensor, got {flat.dtype}")
    flat = flat.to(_compute_dtype(flat.dtype))
    n = flat.numel()
    q = int(bucket)
    nb = -(-n // q)
    if n == 0:
        empty = torch.zeros(0, dtype=state_dtype, device=a.device)
        return torch.zeros(0, dtype=torch.uint8, device=a.device), empty, empty.clone()
    pad = nb * q - n
    # padding with the last entry changes no bucket's min or max
    padded = torch.cat([flat, flat[-1:].expand(pad)]).view(nb, q)
    lo = _round_outward(padded.amin(dim=1), state_dtype, down=True)
    hi = _round_outward(padded.amax(dim=1), state_dtype, down=False)
    lo_c = lo.to(flat.dtype).unsqueeze(1)
    u = ((hi.to(flat.dtype) - lo.to(flat.dtype)) / 15).unsqueeze(1)
    positive = u > 0
    scaled = (padded - lo_c) / torch.where(positive, u, torch.ones_like(u))
    codes = torch.where(positive, torch.floor(scaled + 0.5), torch.zeros_like(scaled))
    codes = codes.clamp_(0, 15).to(torch.uint8).reshape(-1)[:n]
    if n % 2:
        codes = torch.cat([codes, codes.new_zeros(1)])
    pairs = codes.view(-1, 2)
    packed = (pairs[:, 0] << 4) | pairs[:, 1]
    return packed, lo, hi


def dequantize_4bit(
    packed: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    n: int,
    bucket: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Q⁻¹ of :func:`quantize_4bit` (MicroAdam, Algorithm 1 step 4).

    For entry j of bucket b with 4-bit code c_j:  Q⁻¹(c)_j = δ_b + u_b·c_j,
    u_b = (Δ_b − δ_b)/15, computed in ``dtype``. Returns a flat tensor of n entries.
    """
    if n == 0:
        return torch.zeros(0, dtype=dtype, device=packed.device)
    q = int(bucket)
    nb = lo.numel()
    codes = torch.stack([packed >> 4, packed & 15], dim=1).reshape(-1)[:n].to(dtype)
    codes = torch.cat([codes, codes.new_zeros(nb * q - n)]).view(nb, q)
    lo_c = lo.to(dtype).unsqueeze(1)
    u = ((hi.to(dtype) - lo.to(dtype)) / 15).unsqueeze(1)
    return (lo_c + u * codes).reshape(-1)[:n]


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return value


def _integer(name: str, value: object, minimum: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < minimum:
        raise ValueError(f"{name} ({what}) must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def _validate(group: Mapping[str, Any]) -> None:
    """ValueError for any hyperparameter of ``group`` outside its domain."""
    lr = _real("lr", group["lr"])
    if lr < 0:
        raise ValueError(f"lr must be ≥ 0, got {lr}")
    betas = group["betas"]
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (β1, β2), got {betas!r}")
    for i, beta in enumerate(betas, start=1):
        b = _real(f"beta{i}", beta)
        if not 0 <= b < 1:
            raise ValueError(f"beta{i} must lie in [0, 1), got {b}")
    eps = _real("eps", group["eps"])
    if eps < 0:
        raise ValueError(f"eps must be ≥ 0, got {eps}")
    wd = _real("weight_decay", group["weight_decay"])
    if wd < 0:
        raise ValueError(f"weight_decay must be ≥ 0, got {wd}")
    _integer("m", group["m"], 1, "window: number of stored gradients")
    density = _real("density", group["density"])
    if not 0 < density <= 1:
        raise ValueError(f"density (Top-K fraction k) must lie in (0, 1], got {density}")
    _integer("bucket", group["bucket"], 1, "error-feedback quantization bucket q")
    _integer("block", group["block"], 1, "Top-K block size d_b")
    alpha = _real("alpha", group["alpha"])
    if not 0 <= alpha < 1:
        raise ValueError(f"alpha must lie in [0, 1) (0 is the paper's algorithm), got {alpha}")
    if not isinstance(group["quantize"], bool):
        raise ValueError(f"quantize must be a bool, got {group['quantize']!r}")
    if group["state_dtype"] not in _STATE_DTYPES:
        raise ValueError(
            f"state_dtype must be one of {_STATE_DTYPES}, got {group['state_dtype']!r}"
        )


class MicroAdam(torch.optim.Optimizer):
    r"""MicroAdam (arXiv 2405.15593) in pure PyTorch: any dtype, any device.

    Each step, per parameter (see the module docstring for the algorithm as math):
    a = g + Q⁻¹(e); the block-wise Top-K (I, V) of a enters ring slot (t − 1) mod m; the rest of
    a becomes the 4-bit error e; p ← p(1 − lr·wd) − lr·u with u_j = c1·M_j/(√(c2·S_j) + ε) on
    the union of the stored indices, M and S the β1-/β2-weighted sums of V and V² over the
    window, c1 = (1 − β1)/(1 − β1^t), c2 = (1 − β2)/(1 − β2^t).

    Args:
        params: parameters or parameter groups (every key below may be set per group).
        lr: learning rate, ≥ 0.
        betas: (β1, β2), each in [0, 1).
        eps: ε ≥ 0 added to the denominator.
        weight_decay: decoupled weight decay (AdamW-style), ≥ 0.
        m: window, the number of sparse gradients kept (integer ≥ 1).
        density: Top-K fraction k ∈ (0, 1] per block.
        bucket: error-feedback quantization bucket size q (integer ≥ 1).
        block: Top-K block size d_b (default :data:`DEFAULT_BLOCK`); int16 indices when the
            effective block min(d_b, d) < 32768, else int32.
        alpha: in [0, 1); 0 is the paper. Otherwise α·Q⁻¹(e) is added to the update and
            (1 − α)·Q⁻¹(e) is kept (re-quantized) as the error.
        quantize: False keeps the error dense in the parameter's dtype (testing knob).
        state_dtype: dtype of V and of the bucket min/max: bf16 (default, the package's) or
            float32/float64 (testing knob).

    State per parameter: ``step`` (int), ``I`` [m, k] int16/int32, ``V`` [m, k] ``state_dtype``,
    ``e`` uint8 [⌈d/2⌉] (or dense in the parameter's dtype), ``lo``/``hi`` [⌈d/q⌉].
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        m: int = 10,
        density: float = 0.01,
        bucket: int = 64,
        block: int | None = None,
        alpha: float = 0.0,
        quantize: bool = True,
        state_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=tuple(betas) if isinstance(betas, list) else betas,
            eps=eps,
            weight_decay=weight_decay,
            m=m,
            density=density,
            bucket=bucket,
            block=DEFAULT_BLOCK if block is None else block,
            alpha=alpha,
            quantize=quantize,
            state_dtype=state_dtype,
        )
        _validate(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group.get("block") is None:
            group["block"] = DEFAULT_BLOCK
        _validate(group)
        for p in group["params"]:
            if not p.is_floating_point():
                raise ValueError(f"MicroAdam needs floating parameters, got {p.dtype}")

    # ------------------------------------------------------------------ state
    def _init_state(self, p: torch.Tensor, group: Mapping[str, Any]) -> dict[str, Any]:
        d = p.numel()
        db, n_full, kb, _, kr = topk_layout(d, group["block"], group["density"])
        k = n_full * kb + kr
        dev = p.device
        st: dict[str, Any] = self.state[p]
        st["step"] = 0
        st["I"] = torch.zeros(group["m"], k, dtype=_index_dtype(max(db, 1)), device=dev)
        st["V"] = torch.zeros(group["m"], k, dtype=group["state_dtype"], device=dev)
        if group["quantize"]:
            nb = -(-d // group["bucket"])
            st["e"] = torch.zeros(-(-d // 2), dtype=torch.uint8, device=dev)
            st["lo"] = torch.zeros(nb, dtype=group["state_dtype"], device=dev)
            st["hi"] = torch.zeros(nb, dtype=group["state_dtype"], device=dev)
        else:
            st["e"] = torch.zeros(d, dtype=p.dtype, device=dev)
        return st

    def state_bytes(self) -> int:
        """Exact bytes of every tensor in the optimizer state (numel × element size)."""
        total = 0
        for st in self.state.values():
            for v in st.values():
                if torch.is_tensor(v):
                    total += v.numel() * v.element_size()
        return total

    def state_bytes_per_param(self) -> float:
        """:meth:`state_bytes` divided by the number of parameter entries in all groups."""
        n = sum(p.numel() for g in self.param_groups for p in g["params"])
        return self.state_bytes() / n if n else 0.0

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As :meth:`torch.optim.Optimizer.load_state_dict`, except that the state tensors keep
        their dtypes (copied to the parameter's device). The base class casts every state
        tensor to its parameter's dtype, which for bf16 parameters would round int16 indices
        above 256; here the groups go through the base class and the state is copied as is."""
        saved = state_dict["state"]
        super().load_state_dict({**state_dict, "state": {}})
        ids = [pid for g in state_dict["param_groups"] for pid in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        by_id = dict(zip(ids, params, strict=True))
        for pid, st in saved.items():
            if pid not in by_id:
                continue
            p = by_id[pid]
            self.state[p] = {
                key: v.to(device=p.device, copy=True) if torch.is_tensor(v) else copy.deepcopy(v)
                for key, v in st.items()
            }

    # ------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One MicroAdam step on every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("MicroAdam does not support sparse gradients")
                self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: Mapping[str, Any]) -> None:
        st = self.state[p]
        if not st:
            st = self._init_state(p, group)
        st["step"] += 1
        t = st["step"]
        d = p.numel()
        if d == 0:
            return
        lr, eps, wd, alpha = group["lr"], group["eps"], group["weight_decay"], group["alpha"]
        beta1, beta2 = group["betas"]
        m, density, bucket, block = group["m"], group["density"], group["bucket"], group["block"]
        quantize, state_dtype = group["quantize"], group["state_dtype"]
        cd = _compute_dtype(p.dtype)

        # 1. a = g + Q⁻¹(e)
        a = p.grad.reshape(-1).to(cd, copy=True)
        if quantize:
            a += dequantize_4bit(st["e"], st["lo"], st["hi"], d, bucket, cd)
        else:
            a += st["e"].to(cd)

        # 2. block-wise Top-K into ring slot s = (t − 1) mod m
        idx, vals = blockwise_topk(a, density, block)
        s = (t - 1) % m
        st["I"][s] = idx.to(st["I"].dtype)
        st["V"][s] = vals.to(state_dtype)
        offsets = _block_offsets(d, block, density, a.device)

        # 3. what is not kept is the new error; 4.–5. quantize it
        a[offsets + idx.long()] = 0
        self._store_error(st, a, bucket, quantize, state_dtype)

        # 7. statistics over the window, update on the union of stored indices
        slots = torch.arange(m, device=a.device)
        ages = (s - slots) % m
        live = (slots < min(t, m)).to(cd)
        w1 = torch.pow(torch.tensor(beta1, dtype=cd, device=a.device), ages.to(cd)) * live
        w2 = torch.pow(torch.tensor(beta2, dtype=cd, device=a.device), ages.to(cd)) * live
        values = st["V"].to(cd)
        where = (offsets.unsqueeze(0) + st["I"].long()).reshape(-1)
        big_m = torch.zeros(d, dtype=cd, device=a.device)
        big_m.index_add_(0, where, (w1.unsqueeze(1) * values).reshape(-1))
        big_s = torch.zeros(d, dtype=cd, device=a.device)
        big_s.index_add_(0, where, (w2.unsqueeze(1) * values * values).reshape(-1))
        c1 = (1 - beta1) / (1 - beta1**t)
        c2 = (1 - beta2) / (1 - beta2**t)
        update = c1 * big_m / (torch.sqrt(c2 * big_s) + eps)
        update = torch.where(big_s > 0, update, torch.zeros_like(update))

        # alpha knob: densify with α·Q⁻¹(e), keep (1 − α)·Q⁻¹(e) as the error
        if alpha > 0:
            if quantize:
                residual = dequantize_4bit(st["e"], st["lo"], st["hi"], d, bucket, cd)
            else:
                residual = st["e"].to(cd)
            update += alpha * residual
            self._store_error(st, (1 - alpha) * residual, bucket, quantize, state_dtype)

        # 6. decoupled weight decay, 8. p ← p − lr·u
        if p.dtype == cd:
            if wd > 0:
                p.mul_(1 - lr * wd)
            p.add_(update.view(p.shape), alpha=-lr)
        else:
            work = p.to(cd)
            if wd > 0:
                work.mul_(1 - lr * wd)
            work.add_(update.view(p.shape), alpha=-lr)
            p.copy_(work)

    @staticmethod
    def _store_error(
        st: dict[str, Any],
        residual: torch.Tensor,
        bucket: int,
        quantize: bool,
        state_dtype: torch.dtype,
    ) -> None:
        if quantize:
            packed, lo, hi = quantize_4bit(residual, bucket, state_dtype)
            st["e"].copy_(packed)
            st["lo"].copy_(lo)
            st["hi"].copy_(hi)
        else:
            st["e"].copy_(residual)
