"""L2-regularized logistic regression, binary and multinomial, on a flat ``float64`` vector.

Binary (labels ``y_j ∈ {-1, +1}``, rows ``a_j ∈ R^d``, ``x ∈ R^d``)::

    f(x) = (1/n) Σ_j log(1 + exp(-y_j a_jᵀx)) + (λ/2)‖x‖²
    ∇f(x) = (1/n) Aᵀ(-y ⊙ σ(-y ⊙ Ax)) + λx,     ∇²f(x) = (1/n) Aᵀ D A + λI,  D = diag(σ(1-σ))

with ``σ`` the logistic function. Since ``σ(1-σ) ≤ 1/4``: ``L = λ_max(AᵀA)/(4n) + λ`` and every
sample is ``‖a_j‖²/4 + λ``-smooth.

Binary, with the non-convex regularizer of the experiments of Demidovich, Malinovsky, Sokolov &
Richtárik, "A guide through the zoo of biased SGD" (arXiv 2305.16296; ``nonconvex`` = ν, the
paper's λ, there 1)::

    f(x) += ν Σ_k x_k²/(1 + x_k²),   ∇ += ν · 2x/(1 + x²)²,   ∇² += ν · diag((2 − 6x²)/(1 + x²)³)

The added curvature lies in [−ν/2, 2ν], so it adds ``2ν`` to ``L`` and to every sample's
constant (the paper's ``L₀ = λ_max(AᵀA)/(4m) + 2λ``, ``L_i = ‖a_i‖²/4 + 2λ``); ``ν = 0`` (the
default) is the plain L2 problem, unchanged.

Multinomial (labels ``y_j ∈ {0..K-1}``, ``x`` = row-major ``W ∈ R^{d×K}``)::

    f(W) = (1/n) Σ_j [logsumexp(Wᵀa_j) - (Wᵀa_j)_{y_j}] + (λ/2)‖W‖²_F
    ∇f(W) = (1/n) Aᵀ(P - Y) + λW,    P = softmax(AW) row-wise, Y = one-hot(y)

Per sample the Hessian is ``(diag(p) - ppᵀ) ⊗ a aᵀ`` and ``λ_max(diag(p) - ppᵀ) ≤ 1/2``, so
``L = λ_max(AᵀA)/(2n) + λ`` and every sample is ``‖a_j‖²/2 + λ``-smooth.

Small feature matrices are stored dense (a 300×123 dense slice computes a gradient about twice as
fast as CSR, and a minibatch about eight times as fast); large sparse ones stay CSR.
"""

from __future__ import annotations

import hashlib
import math
from functools import cached_property

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.special import expit, logsumexp, softmax

from fedsim.tasks.base import Objective

Matrix = np.ndarray | sp.csr_matrix
DENSE_MAX_ENTRIES = 4_000_000  # 32 MB of float64: below this sparse input is densified


def as_matrix(a: Matrix, dense: bool | None = None) -> Matrix:
    """``a`` as C-contiguous float64 ndarray or CSR; ``dense=None`` densifies small matrices."""
    if sp.issparse(a):
        if dense or (dense is None and a.shape[0] * a.shape[1] <= DENSE_MAX_ENTRIES):
            return np.ascontiguousarray(a.toarray(), dtype=np.float64)
        return sp.csr_matrix(a, dtype=np.float64)
    if dense is False:
        return sp.csr_matrix(a, dtype=np.float64)
    return np.ascontiguousarray(a, dtype=np.float64)


def gram_lambda_max(a: Matrix) -> float:
    """``λ_max(AᵀA)``, computed on the smaller of ``AᵀA`` and ``AAᵀ``."""
    n, d = a.shape
    g = (a.T @ a) if d <= n else (a @ a.T)
    g = g.toarray() if sp.issparse(g) else g
    m = g.shape[0]
    return float(sla.eigvalsh(g, subset_by_index=[m - 1, m - 1])[0]) if m else 0.0


def row_norms_sq(a: Matrix) -> np.ndarray:
    """``‖a_j‖²`` for every row."""
    if sp.issparse(a):
        return np.asarray(a.multiply(a).sum(axis=1)).ravel()
    return np.einsum("ij,ij->i", a, a)


def weighted_gram(a: Matrix, w: np.ndarray) -> np.ndarray:
    """``Aᵀ diag(w) A`` as a dense ``d × d`` array."""
    if sp.issparse(a):
        return np.asarray((a.T @ sp.csr_matrix(a.multiply(w[:, None]))).toarray())
    return a.T @ (a * w[:, None])


def fingerprint(*parts: object) -> str:
    """A SHA-256 of arrays (dense or CSR: their bytes, shape and dtype) and scalars."""
    h = hashlib.sha256()
    for p in parts:
        if sp.issparse(p):
            p = sp.csr_matrix(p)
            p.sum_duplicates()
            p.sort_indices()
            h.update(f"csr{p.shape}".encode())
            for arr in (p.data, p.indices, p.indptr):
                h.update(np.ascontiguousarray(arr).tobytes())
        elif isinstance(p, np.ndarray):
            h.update(f"nd{p.shape}{p.dtype}".encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(repr(p).encode())
        h.update(b"|")
    return h.hexdigest()


class _Linear(Objective):
    """Shared storage for a linear model on rows ``a_j``: data, labels, ``λ``, minibatches."""

    curvature: float  # bound on the loss' second derivative along a_j (1/4 or 1/2)

    grad_factor: float  # bound on the loss' derivative along a_j: ‖∇ℓ_j‖ ≤ grad_factor·‖a_j‖

    def __init__(
        self,
        a: Matrix,
        y: np.ndarray,
        l2: float,
        dense: bool | None = None,
        nonconvex: float = 0.0,
    ) -> None:
        self.a = as_matrix(a, dense)
        self.y = np.asarray(y)
        if self.a.shape[0] != self.y.shape[0]:
            raise ValueError(f"{self.a.shape[0]} rows but {self.y.shape[0]} labels")
        self.l2 = float(l2)
        self.nonconvex = float(nonconvex)
        self.num_samples = int(self.a.shape[0])
        self.num_features = int(self.a.shape[1])
        self.dim = self.num_features

    def _rows(self, idx: np.ndarray | None) -> tuple[Matrix, np.ndarray]:
        if idx is None:
            return self.a, self.y
        return self.a[idx], self.y[idx]

    @cached_property
    def smoothness(self) -> float:  # type: ignore[override]
        return (
            self.curvature * gram_lambda_max(self.a) / self.num_samples
            + self.l2
            + 2.0 * self.nonconvex
        )

    @cached_property
    def sample_smoothness(self) -> float:  # type: ignore[override]
        return float(self.sample_smoothnesses.max())

    @cached_property
    def sample_smoothnesses(self) -> np.ndarray:
        """``L_j = curvature·‖a_j‖² + λ + 2ν``: the smoothness constant of every sample's
        ``ℓ_j + r`` (importance sampling, the Biased ABC constants)."""
        return self.curvature * row_norms_sq(self.a) + self.l2 + 2.0 * self.nonconvex

    @cached_property
    def sample_grad_bounds(self) -> np.ndarray:
        """``G_j = grad_factor·‖a_j‖ ≥ sup_x ‖∇ℓ_j(x)‖``: the loss part of a sample's gradient
        is bounded (the regularizer, shared by every sample, is not)."""
        return self.grad_factor * np.sqrt(row_norms_sq(self.a))

    def fingerprint(self) -> str:
        """Identifies the problem (data, labels, ``λ``, ``ν`` if any, loss) for the optimum
        cache."""
        extra = () if self.nonconvex == 0 else (("nonconvex", self.nonconvex),)
        return fingerprint(type(self).__name__, self.a, self.y, self.l2, *extra)


def nonconvex_value(x: np.ndarray) -> float:
    """``Σ_k x_k²/(1 + x_k²)`` (arXiv 2305.16296, its experiments)."""
    s = x * x
    return float(np.sum(s / (1.0 + s)))


def nonconvex_grad(x: np.ndarray) -> np.ndarray:
    """``∇ Σ_k x_k²/(1 + x_k²) = 2x/(1 + x²)²`` (coordinate-wise)."""
    return 2.0 * x / (1.0 + x * x) ** 2


def nonconvex_curvature(x: np.ndarray) -> np.ndarray:
    """The diagonal Hessian of ``Σ_k x_k²/(1 + x_k²)``: ``(2 − 6x²)/(1 + x²)³`` ∈ [−1/2, 2]."""
    s = x * x
    return (2.0 - 6.0 * s) / (1.0 + s) ** 3


class BinaryLogistic(_Linear):
    """Binary logistic regression with labels ``±1`` (module docstring gives the maths), with
    the non-convex regularizer ``ν Σ_k x_k²/(1 + x_k²)`` when ``nonconvex = ν > 0``."""

    curvature = 0.25
    grad_factor = 1.0  # |ℓ'| = σ(−y aᵀx) ≤ 1

    def loss(self, x: np.ndarray, idx: np.ndarray | None = None) -> float:
        a, y = self._rows(idx)
        value = float(np.mean(np.logaddexp(0.0, -y * (a @ x))) + 0.5 * self.l2 * (x @ x))
        return value + self.nonconvex * nonconvex_value(x) if self.nonconvex else value

    def grad(self, x: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        a, y = self._rows(idx)
        r = -y * expit(-y * (a @ x))
        g = np.asarray(a.T @ r) / y.shape[0] + self.l2 * x
        return g + self.nonconvex * nonconvex_grad(x) if self.nonconvex else g

    def hessian(self, x: np.ndarray) -> np.ndarray:
        """``(1/n) Aᵀ diag(σ(z)(1-σ(z))) A + λI`` with ``z = Ax`` (``+ ν diag((2 − 6x²)/(1 +
        x²)³)`` with the non-convex regularizer)."""
        s = expit(self.a @ x)
        h = weighted_gram(self.a, s * (1.0 - s) / self.num_samples)
        h[np.diag_indices_from(h)] += self.l2
        if self.nonconvex:
            h[np.diag_indices_from(h)] += self.nonconvex * nonconvex_curvature(x)
        return h

    def accuracy(self, x: np.ndarray) -> float:
        """``mean(sign(Ax) = y)`` with ``sign(0) = +1``."""
        pred = np.where(self.a @ x >= 0, 1.0, -1.0)
        return float(np.mean(pred == self.y))

    def flipped(self) -> BinaryLogistic:
        """Labels ``y → −y`` (the authors' ``y → 1 − y`` for {0, 1} labels)."""
        return BinaryLogistic(self.a, -self.y, self.l2, nonconvex=self.nonconvex)


class MultinomialLogistic(_Linear):
    """Softmax regression over ``K`` classes, ``x = vec(W)`` row-major, ``W ∈ R^{d×K}``."""

    curvature = 0.5
    grad_factor = math.sqrt(2.0)  # ‖p − e_y‖ ≤ √2

    def __init__(
        self,
        a: Matrix,
        y: np.ndarray,
        num_classes: int,
        l2: float,
        dense: bool | None = None,
    ) -> None:
        super().__init__(a, np.asarray(y, dtype=np.int64), l2, dense)
        self.num_classes = int(num_classes)
        self.dim = self.num_features * self.num_classes

    def _logits(self, x: np.ndarray, a: Matrix) -> np.ndarray:
        return np.asarray(a @ x.reshape(self.num_features, self.num_classes))

    def loss(self, x: np.ndarray, idx: np.ndarray | None = None) -> float:
        a, y = self._rows(idx)
        z = self._logits(x, a)
        data = np.mean(logsumexp(z, axis=1) - z[np.arange(y.shape[0]), y])
        return float(data + 0.5 * self.l2 * (x @ x))

    def grad(self, x: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        a, y = self._rows(idx)
        p = softmax(self._logits(x, a), axis=1)
        p[np.arange(y.shape[0]), y] -= 1.0
        return np.asarray(a.T @ p).ravel() / y.shape[0] + self.l2 * x

    def hessian(self, x: np.ndarray) -> np.ndarray:
        """``(1/n) Σ_j (diag(p_j) - p_j p_jᵀ) ⊗ a_j a_jᵀ + λI`` (index ``i·K + k``)."""
        d, k, n = self.num_features, self.num_classes, self.num_samples
        p = softmax(self._logits(x, self.a), axis=1)
        h = np.zeros((d, k, d, k))
        for c in range(k):
            h[:, c, :, c] = weighted_gram(self.a, p[:, c] / n)
        dense = self.a.toarray() if sp.issparse(self.a) else self.a
        m = (dense[:, :, None] * p[:, None, :]).reshape(n, d * k)
        h = h.reshape(d * k, d * k) - (m.T @ m) / n
        h[np.diag_indices_from(h)] += self.l2
        return h

    def accuracy(self, x: np.ndarray) -> float:
        """``mean(argmax_k (Wᵀa_j)_k = y_j)``."""
        return float(np.mean(np.argmax(self._logits(x, self.a), axis=1) == self.y))

    def flipped(self) -> MultinomialLogistic:
        """Labels ``c → K − 1 − c``."""
        return MultinomialLogistic(self.a, self.num_classes - 1 - self.y, self.num_classes, self.l2)
