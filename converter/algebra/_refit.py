r"""Calibration math: refit a layer's depthwise-separable factors so that it reproduces the original layer's
output on real activations. Pure functions and one accumulator over arrays; no file, format or runtime code.

Notation as in ``_decompose``: weight ``W`` ``[N, C, *kernel]`` with ``g`` groups, ``N_g = N/g`` outputs and
``C`` inputs per group, ``k`` taps, ``d = C·k``. For one output position, ``p`` is the input *patch* of a group
(the ``d`` values the conv multiplies, ordered ``(channel m, tap t)`` like ``W[n].ravel()``) and ``p̃ = [p; 1]``.

**What is fitted.** The converted layer sees ``x_c`` (its input in the network whose earlier layers are already
converted and calibrated); the target is the original layer on the original network's input ``x_o``:
``y = W_g p_o + b``. Any rank-K factorisation is a dense kernel ``Ŵ`` (the product of its factors, see
``dense``), so for a candidate ``A = [Ŵ_g, b̂]`` the mean squared output error over all positions is::

    E(A) = ( tr(A G Aᵀ) − 2 tr(A X) + Y ) / n,     G = Σ p̃_c p̃_cᵀ,  X = Σ p̃_c yᵀ,  Y = Σ ‖y‖²

``LayerStats`` accumulates ``G`` ``[g, d+1, d+1]``, ``X`` ``[g, d+1, N_g]``, ``Y`` and ``n`` batch by batch,
so memory depends on the layer, not on the number of samples. Everything below is closed-form in them.

**Refit of the last factor and the bias (least squares).** The first factor maps ``p̃`` linearly to features
``z̃ = T p̃`` (``T`` keeps the constant): for DW→PW the depthwise outputs (``T`` block-diagonal of the per-channel
``K × k`` filters), for PW→DW the taps of each pointwise output (``P_n ⊗ I_k`` per output channel ``n``). The
last factor and bias solve the ridge-regularised normal equations
``(T G Tᵀ + λ D) Aᵀ = T X`` (``D`` the identity without the constant, ``λ = ridge · mean diag``).

**Data-aware initialisation (whitening).** DW→PW: per input channel ``c`` with slice ``A_c`` (``N_g × k``) and
per-channel tap moments ``Σ_cc = E[p_c p_cᵀ]``, ``Σ_oc = E[p_o p_cᵀ]`` (``k × k``), the rank-K ``Â_c`` minimising
``E‖A_c p_o − Â_c p_c‖²`` (reduced-rank regression) is ``trunc_K(A_c Σ_oc Σ_cc^{-1/2}) Σ_cc^{-1/2}``: an SVD of the
kernel whitened by the input-patch covariance; its right factor gives the depthwise filters. PW→DW: per output
channel, the SVD of ``Σ_C^{1/2} B_n Σ_k^{1/2}`` with the channel and tap covariances (a Kronecker approximation
of the patch covariance). Either is followed by the least-squares refit above.

**Alternating least squares.** With the last factor fixed the output is linear in the first factor too (PW→DW:
per output channel, features ``Σ_t Q[n,r,t] p[m,t]``; DW→PW: all depthwise filters jointly, normal matrix
``(PᵀP) ∘ G`` blockwise), so ``refit_first`` and ``refit`` alternate, each step lowering ``E``.

**Choice.** ``calibrate_layer`` measures ``E`` for the data-free factors, the data-free factors refitted, the
whitened factors refitted, and the better of those two after alternating least squares, on the same statistics,
and keeps the smallest (the report says which).

**Size.** ``G`` has ``(d + 1)²`` entries per group, so ``LayerStats`` takes patches up to ``MAX_PATCH_DIM − 1``
values; wider ones are calibrated from statistics in the first factor's output space (``_factored``), and
``_factored.layer_stats`` picks between the two.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ._decompose import Decomposition

__all__ = [
    "CalibratedLayer",
    "Geometry",
    "LayerStats",
    "alternate",
    "calibrate_layer",
    "dense",
    "out_shape",
    "output_error",
    "patches",
    "patches_at",
    "refit",
    "refit_first",
    "whitened",
]

#: Largest augmented patch dimension ``C·k + 1`` per group whose Gram matrix is accumulated (≈ 290 MB float64).
MAX_PATCH_DIM = 6000
_CHUNK_ELEMENTS = 1 << 22  # patch elements processed at a time


@dataclass(frozen=True)
class Geometry:
    """Where a conv reads its input: per spatial dim stride, dilation and padding.

    ``pads`` is ``((begin, end), …)`` per spatial dim, or ``"SAME_UPPER"``/``"SAME_LOWER"`` (ONNX ``auto_pad``:
    resolved from the input size, extra padding at the end or the beginning).
    """

    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: tuple[tuple[int, int], ...] | Literal["SAME_UPPER", "SAME_LOWER"]


def _resolve_pads(geo: Geometry, spatial: tuple[int, ...], kernel: tuple[int, ...]) -> list[tuple[int, int]]:
    if not isinstance(geo.pads, str):
        return list(geo.pads)
    out = []
    for size, k, s, d in zip(spatial, kernel, geo.stride, geo.dilation, strict=True):
        total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        out.append((small, big) if geo.pads == "SAME_UPPER" else (big, small))
    return out


def patches(x: np.ndarray, kernel: tuple[int, ...], geo: Geometry) -> np.ndarray:
    """The input patches a conv multiplies: ``x`` ``[B, M, *spatial]`` → ``[B·P_out, M, k]`` (float32), rows in
    output-position order, taps in kernel order."""
    b, m, *spatial = x.shape
    r = len(kernel)
    pads = _resolve_pads(geo, tuple(spatial), kernel)
    xp = np.pad(x.astype(np.float32, copy=False), [(0, 0), (0, 0), *pads])
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, geo.dilation, strict=True)]
    win = np.lib.stride_tricks.sliding_window_view(xp, extent, axis=tuple(range(2, 2 + r)))
    sl = (slice(None), slice(None), *(slice(None, None, s) for s in geo.stride),
          *(slice(None, None, d) for d in geo.dilation))
    win = win[sl]  # [B, M, *out, *kernel]
    out = win.shape[2:2 + r]
    order = (0, *range(2, 2 + r), 1, *range(2 + r, 2 + 2 * r))
    return np.ascontiguousarray(win.transpose(order)).reshape(b * int(np.prod(out)), m, int(np.prod(kernel)))


def out_shape(spatial: tuple[int, ...], kernel: tuple[int, ...], geo: Geometry) -> tuple[int, ...]:
    """The conv's output spatial shape for an input of spatial shape ``spatial``."""
    pads = _resolve_pads(geo, spatial, kernel)
    return tuple((size + a + b - (k - 1) * d - 1) // s + 1
                 for size, (a, b), k, d, s in zip(spatial, pads, kernel, geo.dilation, geo.stride, strict=True))


def patches_at(x: np.ndarray, kernel: tuple[int, ...], geo: Geometry, rows: np.ndarray) -> np.ndarray:
    """Only the rows ``rows`` of ``patches(x, kernel, geo)`` (``[len(rows), M, k]``, float32), gathered without
    forming the others: memory is that of the rows and one padded copy of ``x``."""
    return Padded(x, kernel, geo).rows(rows)


class Padded:
    """One padded copy of a layer's input, from which rows of its patch matrix are gathered a few at a time
    (``rows``): the patch matrix itself (``C·k`` values per output position) is never formed whole."""

    def __init__(self, x: np.ndarray, kernel: tuple[int, ...], geo: Geometry) -> None:
        b, _, *spatial = x.shape
        pads = _resolve_pads(geo, tuple(spatial), kernel)
        self.out = out_shape(tuple(spatial), kernel, geo)
        self.total = b * math.prod(self.out)
        self._shape = (b, *self.out)
        self._xp = np.pad(x.astype(np.float32, copy=False), [(0, 0), (0, 0), *pads])
        self._taps = np.unravel_index(np.arange(int(np.prod(kernel))), kernel)
        self._geo = geo

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` of the patch matrix, ``[len(rows), M, k]`` float32."""
        batch, *pos = np.unravel_index(np.asarray(rows, dtype=np.int64), self._shape)
        index = [p[:, None] * s + t[None, :] * d
                 for p, t, s, d in zip(pos, self._taps, self._geo.stride, self._geo.dilation, strict=True)]
        got = self._xp[(batch[:, None], slice(None), *index)]  # advanced indices split by a slice: [rows, k, M]
        return np.ascontiguousarray(got.transpose(0, 2, 1))


class LayerStats:
    """Running sums for one layer (see the module docstring): fed batches of its input in the converted network
    (``x_conv``) and in the original network (``x_orig``). Of each batch's output positions at most
    ``max_rows`` (a seeded random subset) are added."""

    statistics = "full"

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, groups: int, geometry: Geometry,
                 max_rows: int = 4096, seed: int = 0) -> None:
        n, c = weight.shape[:2]
        self.kernel = tuple(weight.shape[2:])
        self.k = int(np.prod(self.kernel))
        self.groups, self.c, self.ng = groups, c, n // groups
        self.d = c * self.k
        if self.d + 1 > MAX_PATCH_DIM:
            raise ValueError(f"patches of {self.d} values are too large to calibrate (limit {MAX_PATCH_DIM - 1})")
        self.geometry = geometry
        self.weight = weight.astype(np.float64)
        self.bias = np.zeros(n) if bias is None else bias.astype(np.float64)
        self._w = self.weight.reshape(groups, self.ng, self.d)
        self.G = np.zeros((groups, self.d + 1, self.d + 1))
        self.X = np.zeros((groups, self.d + 1, self.ng))
        self.Y = 0.0
        self.S_co = np.zeros((groups * c, self.k, self.k))  # Σ p_o p_cᵀ per input channel
        self.n = 0
        self.max_rows = max_rows
        self._rng = np.random.default_rng(seed)

    @property
    def stats_bytes(self) -> int:
        """Bytes the running sums hold (they grow with the patch, ``g·(C·k + 1)²``, not with the samples)."""
        return self.G.nbytes + self.X.nbytes + self.S_co.nbytes

    def next_pass(self) -> bool:
        """Whether another pass over the same samples is wanted (never: one pass gives all the sums)."""
        return False

    def update(self, x_conv: np.ndarray, x_orig: np.ndarray) -> None:
        """Add one batch: the layer's input in the converted and in the original network (same samples)."""
        if x_conv.shape != x_orig.shape:
            raise ValueError(f"input shapes differ: {x_conv.shape} vs {x_orig.shape}")
        total = x_conv.shape[0] * math.prod(out_shape(tuple(x_conv.shape[2:]), self.kernel, self.geometry))
        if total > self.max_rows:
            # Neighbouring positions are redundant: a random subset per batch keeps the cost per batch bounded,
            # and only those rows are gathered (the whole patch matrix of a high-resolution layer is large).
            keep = np.sort(self._rng.choice(total, self.max_rows, replace=False))
            pc = patches_at(x_conv, self.kernel, self.geometry, keep)
            po = patches_at(x_orig, self.kernel, self.geometry, keep)
        else:
            pc = patches(x_conv, self.kernel, self.geometry)
            po = patches(x_orig, self.kernel, self.geometry)
        rows = max(1, _CHUNK_ELEMENTS // max(1, pc.shape[1] * pc.shape[2]))
        for s in range(0, pc.shape[0], rows):
            self._add(pc[s:s + rows].astype(np.float64), po[s:s + rows].astype(np.float64))

    def _add(self, pc: np.ndarray, po: np.ndarray) -> None:
        rows = pc.shape[0]
        self.S_co += np.matmul(po.transpose(1, 2, 0), pc.transpose(1, 0, 2))  # [M, k, rows] @ [M, rows, k]
        ones = np.ones((rows, 1))
        for gi in range(self.groups):
            a = pc[:, gi * self.c:(gi + 1) * self.c].reshape(rows, self.d)
            y = po[:, gi * self.c:(gi + 1) * self.c].reshape(rows, self.d) @ self._w[gi].T
            y += self.bias[gi * self.ng:(gi + 1) * self.ng]
            at = np.concatenate([a, ones], axis=1)
            self.G[gi] += at.T @ at
            self.X[gi] += at.T @ y
            self.Y += float(np.sum(y * y))
        self.n += rows


def dense(dec: Decomposition) -> np.ndarray:
    """The dense kernel ``[N, C, *kernel]`` equal to the factors' composition (float64)."""
    k, g = dec.rank, dec.groups
    if dec.order == "dw-pw":
        m = dec.first.shape[0] // k
        kernel = dec.first.shape[2:]
        n = dec.second.shape[0]
        c = m // g
        d = dec.first.reshape(g, c, k, -1).astype(np.float64)  # [g, C, K, taps]
        p = dec.second.reshape(g, n // g, c, k).astype(np.float64)  # [g, N_g, C, K]
        w = np.einsum("gncr,gcrt->gnct", p, d)
        return w.reshape(n, c, *kernel)
    n = dec.second.shape[0]
    c = dec.first.shape[1]
    kernel = dec.second.shape[2:]
    p = dec.first.reshape(n, k, c).astype(np.float64)  # [N, K, C]
    q = dec.second.reshape(n, k, -1).astype(np.float64)  # [N, K, taps]
    return np.einsum("nrc,nrt->nct", p, q).reshape(n, c, *kernel)


def output_error(stats: LayerStats, weight: np.ndarray, bias: np.ndarray | None) -> float:
    """Relative output error ``sqrt(Σ‖ŷ − y‖² / Σ‖y‖²)`` of a dense kernel and bias on the accumulated samples."""
    w = np.asarray(weight, dtype=np.float64).reshape(stats.groups, stats.ng, stats.d)
    b = np.zeros(stats.groups * stats.ng) if bias is None else np.asarray(bias, dtype=np.float64)
    err = stats.Y
    for gi in range(stats.groups):
        a = np.concatenate([w[gi], b[gi * stats.ng:(gi + 1) * stats.ng, None]], axis=1)  # [N_g, d+1]
        err += float(np.sum((a @ stats.G[gi]) * a)) - 2.0 * float(np.sum(a * stats.X[gi].T))
    return float(np.sqrt(max(err, 0.0) / stats.Y)) if stats.Y > 0 else 0.0


def _solve(gram: np.ndarray, cross: np.ndarray, ridge: float) -> np.ndarray:
    """``Aᵀ`` from ``(gram + λ D) Aᵀ = cross``, the last row/column being the constant (not regularised)."""
    f = gram.shape[-1] - 1
    scale = np.trace(gram[..., :f, :f], axis1=-2, axis2=-1)[..., None, None] / max(f, 1)
    reg = np.zeros(gram.shape[-1])
    reg[:f] = 1.0
    a = gram + ridge * np.maximum(scale, 1e-30) * np.diag(reg) + 1e-12 * np.eye(gram.shape[-1])
    return np.linalg.solve(a, cross)


def refit(stats: LayerStats, dec: Decomposition, ridge: float = 1e-3) -> tuple[Decomposition, np.ndarray]:
    """Keep the first factor, refit the last factor and the bias by least squares; returns the new
    decomposition (float32) and bias ``[N]`` (float32)."""
    g, c, k, ng, kk = stats.groups, stats.c, stats.k, stats.ng, dec.rank
    n = g * ng
    bias = np.zeros(n)
    if dec.order == "dw-pw":
        filt = dec.first.reshape(g, c, kk, k).astype(np.float64)  # per channel K filters
        second = np.zeros((n, c * kk))
        for gi in range(g):
            # z̃ = T p̃: T[(m, r), (m, t)] = D[m, r, t]; the constant passes through.
            t = np.zeros((c * kk + 1, stats.d + 1))
            for m in range(c):
                t[m * kk:(m + 1) * kk, m * k:(m + 1) * k] = filt[gi, m]
            t[-1, -1] = 1.0
            sol = _solve(t @ stats.G[gi] @ t.T, t @ stats.X[gi], ridge)  # [(C·K)+1, N_g]
            second[gi * ng:(gi + 1) * ng] = sol[:-1].T
            bias[gi * ng:(gi + 1) * ng] = sol[-1]
        out = Decomposition(dec.order, kk, g, dec.first, second.reshape(dec.second.shape).astype(np.float32),
                            dec.rel_error, dec.energy)
        return out, bias.astype(np.float32)
    # pw-dw: per output channel n, features (r, t) = Σ_m P[n·K + r, m] p[m, t]; refit Q[n] and b[n].
    p = dec.first.reshape(n, kk, c).astype(np.float64)
    second = np.zeros((n, kk * k))
    for gi in range(g):
        gm = stats.G[gi]
        g4 = gm[:-1, :-1].reshape(c, k, c, k)
        gc = gm[:-1, -1].reshape(c, k)
        xg = stats.X[gi]
        step = max(1, _CHUNK_ELEMENTS // max(1, kk * stats.d * k))
        for lo in range(0, ng, step):
            hi = min(ng, lo + step)
            pg = p[gi * ng + lo:gi * ng + hi]  # [n, K, C]
            h = np.einsum("nrm,mtlu->nrtlu", pg, g4, optimize=True)  # [n, K, k, C, k], through BLAS
            gram = np.zeros((hi - lo, kk * k + 1, kk * k + 1))
            gram[:, :-1, :-1] = np.einsum("nrtlu,nsl->nrtsu", h, pg, optimize=True).reshape(hi - lo, kk * k,
                                                                                           kk * k)
            gram_c = np.einsum("nrm,mt->nrt", pg, gc).reshape(hi - lo, kk * k)
            gram[:, :-1, -1] = gram_c
            gram[:, -1, :-1] = gram_c
            gram[:, -1, -1] = gm[-1, -1]
            cross = np.einsum("nrm,mtn->nrt", pg, xg[:-1, lo:hi].reshape(c, k, hi - lo)).reshape(hi - lo, kk * k)
            rhs = np.concatenate([cross, xg[-1, lo:hi, None]], axis=1)[..., None]
            sol = _solve(gram, rhs, ridge)[..., 0]  # [n, K·k + 1]
            second[gi * ng + lo:gi * ng + hi] = sol[:, :-1]
            bias[gi * ng + lo:gi * ng + hi] = sol[:, -1]
    out = Decomposition(dec.order, kk, g, dec.first, second.reshape(dec.second.shape).astype(np.float32),
                        dec.rel_error, dec.energy)
    return out, bias.astype(np.float32)


def refit_first(stats: LayerStats, dec: Decomposition, bias: np.ndarray, ridge: float = 1e-3,
                limit: int = MAX_PATCH_DIM) -> tuple[Decomposition, np.ndarray] | None:
    """Keep the last factor, refit the first by least squares (one step of alternating least squares); returns
    the new factors and bias, or None where the normal equations would exceed ``limit`` unknowns per solve.

    PW→DW: per output channel ``n`` the output is linear in ``P[n·K + r, m]`` with features
    ``Σ_t Q[n, r, t] p[m, t]``; the bias is refitted with it. DW→PW: the output is linear in all depthwise
    filters at once, ``AᵀA[(c,r,t),(c',r',t')] = (PᵀP)[(c,r),(c',r')] · G[(c,t),(c',t')]``; the bias is kept.
    """
    g, c, k, ng, kk = stats.groups, stats.c, stats.k, stats.ng, dec.rank
    n = g * ng
    bias = np.asarray(bias, dtype=np.float64)
    if dec.order == "pw-dw":
        if kk * c + 1 > limit:
            return None
        q = dec.second.reshape(n, kk, k).astype(np.float64)
        first = np.zeros((n, kk, c))
        new_bias = np.zeros(n)
        for gi in range(g):
            gm, xg = stats.G[gi], stats.X[gi]
            # The Gram of channel n's features, block (r, s): Σ_{t,u} Q[n,r,t] Q[n,s,u] G[m,t,l,u]. With G laid
            # out once per group as [(t, u), (m, l)], a chunk of channels is one matrix product of their taps'
            # outer products with it: G is read once per chunk, not copied or reread per channel.
            gtu = np.ascontiguousarray(gm[:-1, :-1].reshape(c, k, c, k).transpose(1, 3, 0, 2)).reshape(k * k, -1)
            gc = gm[:-1, -1].reshape(c, k)
            step = max(1, 2 * _CHUNK_ELEMENTS // max(1, kk * kk * c * c))
            for lo in range(0, ng, step):
                hi = min(ng, lo + step)
                qn = q[gi * ng + lo:gi * ng + hi]  # [n, K, k]
                m = hi - lo
                outer = np.einsum("nrt,nsu->nrstu", qn, qn).reshape(m * kk * kk, k * k)
                blocks = (outer @ gtu).reshape(m, kk, kk, c, c)  # [n, r, s, m, l]
                gram = np.zeros((m, kk * c + 1, kk * c + 1))
                gram[:, :-1, :-1] = blocks.transpose(0, 1, 3, 2, 4).reshape(m, kk * c, kk * c)
                gram_c = np.einsum("nrt,mt->nrm", qn, gc).reshape(m, kk * c)
                gram[:, :-1, -1] = gram_c
                gram[:, -1, :-1] = gram_c
                gram[:, -1, -1] = gm[-1, -1]
                cross = np.einsum("nrt,mtn->nrm", qn, xg[:-1, lo:hi].reshape(c, k, m)).reshape(m, kk * c)
                rhs = np.concatenate([cross, xg[-1, lo:hi, None]], axis=1)[..., None]
                sol = _solve(gram, rhs, ridge)[..., 0]
                first[gi * ng + lo:gi * ng + hi] = sol[:, :-1].reshape(m, kk, c)
                new_bias[gi * ng + lo:gi * ng + hi] = sol[:, -1]
        out = Decomposition(dec.order, kk, g, first.reshape(dec.first.shape).astype(np.float32), dec.second,
                            dec.rel_error, dec.energy)
        return out, new_bias.astype(np.float32)
    if c * kk * k > limit:
        return None
    p = dec.second.reshape(g, ng, c * kk).astype(np.float64)
    filt = np.zeros((g, c, kk, k))
    for gi in range(g):
        gm, xg = stats.G[gi], stats.X[gi]
        ptp = (p[gi].T @ p[gi]).reshape(c, kk, c, kk)
        g4 = gm[:-1, :-1].reshape(c, k, c, k)
        ata = np.einsum("crds,ctdu->crtdsu", ptp, g4).reshape(c * kk * k, c * kk * k)
        b = bias[gi * ng:(gi + 1) * ng]
        target = xg[:-1].reshape(c, k, ng) - gm[:-1, -1].reshape(c, k)[:, :, None] * b[None, None, :]
        atb = np.einsum("ncr,ctn->crt", p[gi].reshape(ng, c, kk), target).reshape(-1)
        reg = ridge * max(float(np.trace(ata)) / ata.shape[0], 1e-30)
        filt[gi] = np.linalg.solve(ata + reg * np.eye(ata.shape[0]), atb).reshape(c, kk, k)
    first = filt.reshape(dec.first.shape)
    out = Decomposition(dec.order, kk, g, first.astype(np.float32), dec.second, dec.rel_error, dec.energy)
    return out, bias.astype(np.float32)


def alternate(stats: LayerStats, dec: Decomposition, bias: np.ndarray, ridge: float = 1e-3,
              rounds: int = 3) -> tuple[Decomposition, np.ndarray]:
    """Alternating least squares from refitted factors: the first factor, then the last factor and the bias,
    ``rounds`` times (each step can only lower the output error, up to the ridge)."""
    for _ in range(rounds):
        step = refit_first(stats, dec, bias, ridge)
        if step is None:
            break
        dec, bias = refit(stats, step[0], ridge)
    return dec, bias


def _inv_sqrt(cov: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """``(S^{1/2}, S^{-1/2})`` of symmetric PSD matrices (batched), eigenvalues floored at ``eps``·mean."""
    vals, vecs = np.linalg.eigh(cov)
    floor = eps * np.maximum(vals.mean(axis=-1, keepdims=True), 1e-30)
    vals = np.maximum(vals, floor)
    half = (vecs * np.sqrt(vals)[..., None, :]) @ np.swapaxes(vecs, -1, -2)
    inv = (vecs / np.sqrt(vals)[..., None, :]) @ np.swapaxes(vecs, -1, -2)
    return half, inv


def _top_right(m: np.ndarray, rank: int) -> np.ndarray:
    """Top ``rank`` right singular vectors ``[…, cols, rank]`` of a batch of matrices, from their Gram."""
    _, vecs = np.linalg.eigh(np.swapaxes(m, -1, -2) @ m)
    return vecs[..., ::-1][..., :rank]


def whitened(stats: LayerStats, dec: Decomposition) -> Decomposition:
    """Data-aware factors of the same order and rank as ``dec`` (see the module docstring); the last factor is
    a first guess, meant to be refitted."""
    g, c, k = stats.groups, stats.c, stats.k
    gm = stats.G[:, :-1, :-1].reshape(g, c, k, c, k)
    if dec.order == "dw-pw":
        # per input channel: Σ_cc from the Gram's diagonal blocks, Σ_oc accumulated apart
        s_cc = np.stack([gm[gi, m, :, m, :] for gi in range(g) for m in range(c)])  # [M, k, k]
        return whiten_dw_pw(stats.weight, stats.kernel, dec, s_cc, stats.S_co)
    return whiten_pw_dw(stats.weight, stats.kernel, dec, np.einsum("gmtlt->gml", gm), np.einsum("gmtmu->gtu", gm))


def whiten_dw_pw(weight: np.ndarray, kernel: tuple[int, ...], dec: Decomposition, s_cc: np.ndarray,
                 s_co: np.ndarray) -> Decomposition:
    """DW→PW whitened factors from the per-input-channel tap moments ``Σ_cc``, ``Σ_oc`` ``[M, k, k]``."""
    g, kk = dec.groups, dec.rank
    n, c = weight.shape[:2]
    k, ng = int(np.prod(kernel)), n // g
    _, inv = _inv_sqrt(s_cc)
    a = weight.reshape(g, ng, c, k).transpose(0, 2, 1, 3).reshape(g * c, ng, k)  # A_c
    target = a @ s_co @ inv  # A_c Σ_oc Σ_cc^{-1/2} (the 1/n factors cancel in the direction)
    v = _top_right(target, kk)  # [M, k, K]
    filt = np.swapaxes(v, 1, 2) @ inv  # rows of V_Kᵀ Σ_cc^{-1/2}
    filt /= np.maximum(np.linalg.norm(filt, axis=-1, keepdims=True), 1e-30)
    us = a @ np.swapaxes(filt, 1, 2)  # a first guess, refitted afterwards
    first = filt.reshape(g * c * kk, 1, *kernel)
    second = us.reshape(g, c, ng, kk).transpose(0, 2, 1, 3).reshape(n, c * kk, *(1,) * len(kernel))
    return Decomposition(dec.order, kk, g, np.ascontiguousarray(first, dtype=np.float32),
                         np.ascontiguousarray(second, dtype=np.float32), dec.rel_error, dec.energy)


def whiten_pw_dw(weight: np.ndarray, kernel: tuple[int, ...], dec: Decomposition, s_chan: np.ndarray,
                 s_tap: np.ndarray) -> Decomposition:
    """PW→DW whitened factors from the per-group channel ``[g, C, C]`` and tap ``[g, k, k]`` covariances."""
    g, kk = dec.groups, dec.rank
    n, c = weight.shape[:2]
    k, ng = int(np.prod(kernel)), n // g
    w = weight.reshape(n, c, k)
    half_c, inv_c = _inv_sqrt(s_chan)
    half_k, inv_k = _inv_sqrt(s_tap)
    pw = np.zeros((n, c, kk))
    dw = np.zeros((n, kk, k))
    for gi in range(g):
        rows = slice(gi * ng, (gi + 1) * ng)
        m = half_c[gi] @ w[rows] @ half_k[gi]  # [N_g, C, k]
        v = _top_right(m, kk)  # [N_g, k, K]
        pw[rows] = inv_c[gi] @ (m @ v)  # Σ_C^{-1/2} U S
        dw[rows] = np.swapaxes(v, 1, 2) @ inv_k[gi]
    scale = np.maximum(np.linalg.norm(dw, axis=-1, keepdims=True), 1e-30)
    first = (np.swapaxes(pw, 1, 2) * scale).reshape(n * kk, c, *(1,) * len(kernel))
    second = (dw / scale).reshape(n, kk, *kernel)
    return Decomposition(dec.order, kk, g, np.ascontiguousarray(first, dtype=np.float32),
                         np.ascontiguousarray(second, dtype=np.float32), dec.rel_error, dec.energy)


@dataclass(frozen=True)
class CalibratedLayer:
    """The factors and bias calibration chose for a layer, how, and the output errors it measured.

    Attributes:
        decomposition, bias: the factors and the bias to write (bias None: keep the original bias).
        method: ``data-free`` (nothing beat the data-free factors), ``refit`` (data-free first factor, last
            factor and bias by least squares), ``whitened`` (data-aware first factor, then the refit) or
            ``alternating`` (the better of those, then alternating least squares on both factors).
        errors: relative output error on the calibration samples of each candidate, by method.
        statistics: ``full`` (the dense patch Gram matrix, ``LayerStats``) or ``factored`` (statistics in the
            first factor's output space and per input channel, ``_factored``, for patches too large for it).
    """

    decomposition: Decomposition
    bias: np.ndarray | None
    method: str
    errors: dict[str, float]
    statistics: str = "full"


def calibrate_layer(stats: LayerStats, dec: Decomposition, ridge: float = 1e-3) -> CalibratedLayer:
    """The best of the data-free, refitted and whitened-then-refitted factors by measured output error."""
    orig_bias = stats.bias.astype(np.float32)
    candidates: dict[str, tuple[Decomposition, np.ndarray | None]] = {"data-free": (dec, None)}
    candidates["refit"] = refit(stats, dec, ridge)
    with contextlib.suppress(np.linalg.LinAlgError):  # a degenerate covariance: the other candidates remain
        candidates["whitened"] = refit(stats, whitened(stats, dec), ridge)
    errors = {name: output_error(stats, dense(d), orig_bias if b is None else b)
              for name, (d, b) in candidates.items()}
    errors = {k: v for k, v in errors.items() if np.isfinite(v)}
    start = min((k for k in errors if k != "data-free"), key=lambda k: errors[k], default=None)
    if start is not None:
        with contextlib.suppress(np.linalg.LinAlgError):
            d, b = candidates[start]
            candidates["alternating"] = alternate(stats, d, b, ridge)
            errors["alternating"] = output_error(stats, dense(candidates["alternating"][0]),
                                                 candidates["alternating"][1])
            errors = {k: v for k, v in errors.items() if np.isfinite(v)}
    best = min(errors, key=lambda name: (errors[name], name != "data-free"))
    d, b = candidates[best]
    return CalibratedLayer(d, b, best, {k: round(v, 6) for k, v in errors.items()})
