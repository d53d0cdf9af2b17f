r"""Data-free decomposition of a convolution kernel into a depthwise-separable pair, from per-slice SVDs.

Pure functions from arrays to arrays: no file, ONNX or torch code lives here.

Notation: a convolution weight ``W`` of shape ``[N, C, *kernel]`` with ``g`` groups has ``N`` output channels,
``M = g·C`` input channels (``C`` per group), ``N_g = N / g`` outputs per group and ``k = prod(kernel)`` taps.
Input channel ``c`` lies in group ``c // C`` at local index ``m = c % C``.

**DW→PW** ("network decoupling", depthwise first). For every input channel ``c`` take the ``N_g × k`` matrix
``A_c = W[group rows, m, :]`` and its SVD ``A_c = Σ_r s_{c,r} u_{c,r} v_{c,r}ᵀ`` (``r < min(N_g, k)``).
Keeping ``K`` terms::

    depthwise D  [M·K, 1, *kernel], groups = M:      D[c·K + r]        = v_{c,r}
    pointwise P  [N, C·K, 1…],      groups = g:      P[n, m·K + r]     = s_{c,r} · u_{c,r}[n − gN_g]

Then ``Σ_m Σ_r P[n, m·K+r] (D[c·K+r] ⋆ x_c) = Σ_m A_c[n] ⋆ x_c``: the original conv when ``K = min(N_g, k)``.
The depthwise conv keeps the original stride, padding and dilation; the pointwise conv carries the bias.

**PW→DW** (the transpose, pointwise first). For every output channel ``n`` take the ``C × k`` matrix
``B_n = W[n]`` and its SVD ``B_n = Σ_r s_{n,r} u_{n,r} v_{n,r}ᵀ`` (``r < min(C, k)``)::

    pointwise P  [N·K, C, 1…],      groups = g:      P[n·K + r, m]     = s_{n,r} · u_{n,r}[m]
    grouped   Q  [N, K, *kernel],   groups = N:      Q[n, r]           = v_{n,r}

The 1×1 conv has no bias and maps zero to zero, so it commutes with the zero padding of the spatial conv: the
pair equals the original at full rank, any stride, padding and dilation.

**Computing the SVD.** The slices are tall and skinny (``k`` columns, typically 9), so their SVDs
``A = U Σ Vᵀ`` are computed from the ``k × k`` Gram matrices ``AᵀA = V Σ² Vᵀ`` (one batched ``eigh``, in float64):
the eigenvalues are the squared singular values, the eigenvectors the right singular vectors. The factors are
``Vᵀ`` and ``A V`` (which is ``U Σ``), with no division by a singular value, so the result stays exact at full
rank however small the trailing singular values are (``V`` is orthonormal to round-off). One ``Spectrum`` per
layer and form serves both the rank policy (energy curve) and the factors.

**Error.** Per slice the Frobenius error of a rank-``K`` truncation is ``Σ_{r≥K} s_r²`` (Eckart–Young), so the
relative weight error of the layer is ``sqrt(Σ discarded s² / Σ s²)`` and its kept *energy* is
``Σ kept s² / Σ s²``: both follow from the singular values alone.

**Lowering** (`lower`). The same factors can be emitted as one depthwise conv with channel multiplier ``K``
(``fused``), or as ``K`` depthwise convs of multiplier 1 whose outputs are concatenated before one pointwise
conv, or summed branch by branch (``split``). Measured on onnxruntime and torch CPU, the multiplier-1 form is
1.6–2.6× faster; the math is identical (the weights are only regrouped).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np

__all__ = [
    "ConvStep",
    "Decomposition",
    "Lowered",
    "Lowering",
    "Order",
    "Spectrum",
    "decompose",
    "energy_curve",
    "lower",
    "max_rank",
    "singular_values",
    "spectrum",
]

Order = Literal["dw-pw", "pw-dw"]
Lowering = Literal["split", "fused", "summed"]
T = TypeVar("T")


def _check(weight: np.ndarray, groups: int) -> tuple[int, int, int, int]:
    if weight.ndim < 3:
        raise ValueError(f"conv weight must be [N, C, *kernel], got shape {weight.shape}")
    n, c = weight.shape[:2]
    if groups < 1 or n % groups:
        raise ValueError(f"{n} output channels cannot be split into {groups} groups")
    k = int(np.prod(weight.shape[2:]))
    return n, c, groups, k


def _slices(weight: np.ndarray, groups: int, order: Order) -> np.ndarray:
    """The matrices whose SVDs define the decomposition, stacked: ``[M, N_g, k]`` or ``[N, C, k]``."""
    n, c, g, k = _check(weight, groups)
    w = weight.reshape(n, c, k)
    if order == "dw-pw":
        # [g, N_g, C, k] -> [g, C, N_g, k] -> [g·C = M, N_g, k]: slice c = gi·C + m is W[group gi rows, m].
        return w.reshape(g, n // g, c, k).transpose(0, 2, 1, 3).reshape(g * c, n // g, k)
    if order == "pw-dw":
        return w
    raise ValueError(f"unknown order {order!r}")


def max_rank(weight_shape: tuple[int, ...], groups: int, order: Order) -> int:
    """The rank at which the decomposition of this layer is exact: ``min(N_g, k)`` or ``min(C, k)``."""
    n, c = weight_shape[:2]
    k = int(np.prod(weight_shape[2:]))
    return min(n // groups, k) if order == "dw-pw" else min(c, k)


@dataclass(frozen=True)
class Spectrum:
    """The SVD of every slice of a layer for one order, as needed by the policies and ``decompose``.

    Attributes:
        order, groups: as given.
        weight_shape: the conv weight's shape.
        sq: squared singular values ``[slices, max_rank]``, largest first (float64, clipped at 0).
        vecs: right singular vectors ``[slices, k, max_rank]``, in the same order (float64).
    """

    order: Order
    groups: int
    weight_shape: tuple[int, ...]
    sq: np.ndarray
    vecs: np.ndarray


def spectrum(weight: np.ndarray, groups: int, order: Order) -> Spectrum:
    """Squared singular values and right singular vectors of every slice, from their Gram matrices."""
    a = _slices(weight.astype(np.float64, copy=False), groups, order)
    r = max_rank(weight.shape, groups, order)
    eigvals, eigvecs = np.linalg.eigh(np.matmul(np.swapaxes(a, 1, 2), a))  # ascending
    sq = np.clip(eigvals[:, ::-1][:, :r], 0.0, None)
    vecs = eigvecs[:, :, ::-1][:, :, :r]
    return Spectrum(order=order, groups=groups, weight_shape=tuple(weight.shape), sq=sq,
                    vecs=np.ascontiguousarray(vecs))


def singular_values(weight: np.ndarray, groups: int, order: Order) -> np.ndarray:
    """Singular values of every slice, ``[slices, max_rank]``, in float64, largest first."""
    return np.sqrt(spectrum(weight, groups, order).sq)


def energy_curve(values: np.ndarray | Spectrum) -> np.ndarray:
    """Kept energy at ranks ``1..max_rank`` of a layer, ``Σ_slices Σ_{r<K} s² / Σ s²`` (1.0 for a zero kernel),
    from its singular values or its ``Spectrum``."""
    sq = values.sq.sum(axis=0) if isinstance(values, Spectrum) else np.square(values).sum(axis=0)
    total = float(sq.sum())
    if total == 0.0:
        return np.ones(sq.shape[0])
    return np.minimum(np.cumsum(sq) / total, 1.0)


@dataclass(frozen=True)
class Decomposition:
    """The two factors of a rank-``rank`` decomposition (float32) and its error.

    For ``dw-pw``: ``first`` is the depthwise weight ``[M·K, 1, *kernel]`` (groups ``M``) and ``second`` the
    pointwise weight ``[N, C·K, 1…]`` (groups ``g``). For ``pw-dw``: ``first`` is the pointwise weight
    ``[N·K, C, 1…]`` (groups ``g``) and ``second`` the grouped weight ``[N, K, *kernel]`` (groups ``N``).
    """

    order: Order
    rank: int
    groups: int
    first: np.ndarray
    second: np.ndarray
    rel_error: float
    energy: float

    @property
    def in_channels(self) -> int:
        if self.order == "dw-pw":
            return self.first.shape[0] // self.rank
        return self.first.shape[1] * self.groups

    @property
    def out_channels(self) -> int:
        return self.second.shape[0]


def decompose(weight: np.ndarray, groups: int, order: Order, rank: int,
              spec: Spectrum | None = None) -> Decomposition:
    """Rank-``rank`` depthwise-separable factors of a conv weight (see the module docstring for the algebra).

    ``rank`` above the layer's maximum is clipped to it, where the result is exact to round-off. ``spec``, the
    layer's ``Spectrum`` for this order, is reused if given (the planner has computed it already).
    """
    n, c, g, _ = _check(weight, groups)
    kernel = weight.shape[2:]
    ones = (1,) * len(kernel)
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if spec is None:
        spec = spectrum(weight, groups, order)
    elif (spec.order, spec.groups, spec.weight_shape) != (order, groups, tuple(weight.shape)):
        raise ValueError("the spectrum was computed for another layer or order")
    rank = min(rank, max_rank(weight.shape, groups, order))
    energy = float(energy_curve(spec)[rank - 1])
    v = spec.vecs[:, :, :rank]  # [slices, k, K]
    us = np.matmul(_slices(weight.astype(np.float64, copy=False), groups, order), v)  # U Σ: [slices, rows, K]
    vt = np.swapaxes(v, 1, 2)  # [slices, K, k]
    if order == "dw-pw":
        m_total = g * c
        # D[c·K + r] = v_{c,r}
        first = vt.reshape(m_total * rank, 1, *kernel)
        # P[n, m·K + r] = s_{c,r} u_{c,r}[j]  with c = gi·C + m and n = gi·N_g + j;  us is [M, N_g, K]
        second = us.reshape(g, c, n // g, rank).transpose(0, 2, 1, 3).reshape(n, c * rank, *ones)
    else:
        # P[n·K + r, m] = s_{n,r} u_{n,r}[m];  us is [N, C, K]
        first = us.transpose(0, 2, 1).reshape(n * rank, c, *ones)
        # Q[n, r] = v_{n,r}
        second = vt.reshape(n, rank, *kernel)
    return Decomposition(
        order=order,
        rank=rank,
        groups=groups,
        first=np.ascontiguousarray(first, dtype=np.float32),
        second=np.ascontiguousarray(second, dtype=np.float32),
        rel_error=float(np.sqrt(max(0.0, 1.0 - energy))),
        energy=energy,
    )


@dataclass(frozen=True)
class ConvStep:
    """One convolution of a lowered decomposition.

    Attributes:
        name: suffix of the new node's name (``dw``, ``pw``, ``dw_1``…); adapters emit ``<layer>/<name>``.
        weight: float32 weight.
        groups: the conv's ``groups``.
        spatial: True for the conv that takes the original stride, padding and dilation; False for a 1×1 conv
            with stride 1 and no padding.
        bias: True if this step carries the original conv's bias.
    """

    name: str
    weight: np.ndarray
    groups: int
    spatial: bool
    bias: bool = False


@dataclass(frozen=True)
class Lowered:
    """A decomposition as a small program of convs: each branch is a chain of steps applied to the layer's
    input; the branches' outputs are joined (``none`` when there is one branch, ``concat`` along channels, or
    ``sum``) and ``tail`` (if any) is applied to the joined tensor."""

    branches: tuple[tuple[ConvStep, ...], ...]
    join: Literal["none", "concat", "sum"]
    tail: ConvStep | None = None

    @property
    def steps(self) -> tuple[ConvStep, ...]:
        out = tuple(s for b in self.branches for s in b)
        return (*out, self.tail) if self.tail is not None else out

    def fold(self, x: T, step: Callable[[ConvStep, T], T], join: Callable[[str, list[T]], T]) -> T:
        """Run the program on ``x`` with the caller's ``step`` and ``join``: a graph emitter, a runtime, or a
        channel counter. Each branch chains its steps from ``x``; ``join(kind, outs)`` is called for ``concat``
        and ``sum`` only; the tail, if any, is applied last."""
        outs = []
        for branch in self.branches:
            v = x
            for s in branch:
                v = step(s, v)
            outs.append(v)
        y = outs[0] if self.join == "none" else join(self.join, outs)
        return step(self.tail, y) if self.tail is not None else y

    def check(self, in_channels: int, out_channels: int, kernel: tuple[int, ...]) -> None:
        """Raise ``ValueError`` (naming the step) unless these convs can replace a conv with these channels and
        spatial kernel: kernels of the right rank and shape, groups that fit the channels they get, branch
        counts that fit the join, and the original bias carried exactly once. Adapters call it before editing
        anything, since a runtime would only notice when the saved model runs."""
        if not self.branches or any(not b for b in self.branches):
            raise ValueError("the decomposition has an empty branch")
        if self.join == "none" and len(self.branches) != 1:
            raise ValueError(f"join 'none' with {len(self.branches)} branches")
        if sum(s.bias for s in self.steps) != 1:
            raise ValueError("the lowered convs must carry the original bias exactly once")

        def through(s: ConvStep, c: int) -> int:
            want = kernel if s.spatial else (1,) * len(kernel)
            if s.weight.ndim != len(kernel) + 2:
                raise ValueError(f"step {s.name} has a {s.weight.ndim - 2}-D kernel, the conv a {len(kernel)}-D one")
            if tuple(s.weight.shape[2:]) != tuple(want):
                raise ValueError(f"step {s.name}: weight shape {s.weight.shape} does not fit a "
                                 f"{'spatial' if s.spatial else '1×1'} conv with kernel {tuple(want)}")
            n, per_group = s.weight.shape[:2]
            if s.groups < 1 or n % s.groups or per_group * s.groups != c:
                raise ValueError(f"step {s.name} takes {per_group * s.groups} channels in {s.groups} groups, "
                                 f"but gets {c}")
            return int(n)

        def joined(kind: str, outs: list[int]) -> int:
            if kind == "concat":
                return sum(outs)
            if kind == "sum" and len(set(outs)) == 1:
                return outs[0]
            raise ValueError(f"cannot join branches of {outs} channels by {kind!r}")

        final = self.fold(in_channels, through, joined)
        if final != out_channels:
            raise ValueError(f"the convs produce {final} channels, the layer {out_channels}")


def lower(dec: Decomposition, lowering: Lowering = "split") -> Lowered:
    """Emit a decomposition as convs.

    ``fused``: two convs (depthwise with channel multiplier K, then pointwise; or pointwise, then one grouped
    conv). ``split``: K depthwise convs of multiplier 1 — for DW→PW without groups their outputs are
    concatenated before one pointwise conv; otherwise each branch is a (depthwise, pointwise) or (pointwise,
    depthwise) pair and the branches are summed. ``summed``: always the summed branches, also for DW→PW without
    groups (no Concat; the runtime can fuse each Add into the next branch's pointwise conv); for every other
    case it is ``split``. With K = 1 all are the same two convs.
    """
    k = dec.rank
    m = dec.in_channels
    n = dec.out_channels
    g = dec.groups
    if lowering not in ("split", "fused", "summed"):
        raise ValueError(f"unknown lowering {lowering!r}")
    if dec.order == "dw-pw":
        if lowering == "fused" or k == 1:
            return Lowered(
                branches=((ConvStep("dw", dec.first, m, True), ConvStep("pw", dec.second, g, False, True)),),
                join="none",
            )
        ones = dec.second.shape[2:]
        c = m // g
        dws = [np.ascontiguousarray(dec.first[r::k]) for r in range(k)]  # D_r[c] = D[c·K + r]
        if g == 1 and lowering == "split":
            # concat order is (r, c): P'[n, r·M + c] = P[n, c·K + r]
            p = dec.second.reshape(n, m, k).transpose(0, 2, 1).reshape(n, k * m, *ones)
            return Lowered(
                branches=tuple((ConvStep(f"dw_{r}", dws[r], m, True),) for r in range(k)),
                join="concat",
                tail=ConvStep("pw", np.ascontiguousarray(p), 1, False, True),
            )
        ps = dec.second.reshape(n, c, k)
        return Lowered(
            branches=tuple(
                (
                    ConvStep(f"dw_{r}", dws[r], m, True),
                    ConvStep(f"pw_{r}", np.ascontiguousarray(ps[:, :, r].reshape(n, c, *ones)), g, False, r == 0),
                )
                for r in range(k)
            ),
            join="sum",
        )
    # pw-dw
    if lowering == "fused" or k == 1:
        return Lowered(
            branches=((ConvStep("pw", dec.first, g, False), ConvStep("dw", dec.second, n, True, True)),),
            join="none",
        )
    c = dec.first.shape[1]
    ones = dec.first.shape[2:]
    kernel = dec.second.shape[2:]
    p = dec.first.reshape(n, k, c, *ones)
    return Lowered(
        branches=tuple(
            (
                ConvStep(f"pw_{r}", np.ascontiguousarray(p[:, r]), g, False),
                ConvStep(f"dw_{r}", np.ascontiguousarray(dec.second[:, r].reshape(n, 1, *kernel)), n, True, r == 0),
            )
            for r in range(k)
        ),
        join="sum",
    )
