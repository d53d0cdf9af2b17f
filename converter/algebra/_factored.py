r"""Calibration math for layers whose patch is too large for the dense patch Gram matrix of ``_refit``
(``C·k + 1 > MAX_PATCH_DIM``: wide 1-D kernels, 128 channels × 64 taps = 8,192 values, 1024 × 64 = 65,536):
statistics kept in the first factor's output space and per input channel, never ``(C·k)²``. Pure numpy.

Notation as in ``_refit``. A rank-K candidate with first factor ``T`` computes ``ŷ = L z̃`` with ``z̃ = [T p_c; 1]``
(``L`` the last factor and the bias), so for that ``T`` the mean squared output error is closed-form in
``G_z = Σ z̃ z̃ᵀ``, ``X_z = Σ z̃ yᵀ`` and ``Y = Σ‖y‖²`` (``y = W p_o + b`` the original layer on the original
network's input), exactly as ``E(A)`` in ``_refit`` with ``G = Tᵀ G_z T``:

* **DW→PW**: ``z`` are the depthwise outputs, ``C·K`` per group; ``G_z`` ``[g, C·K+1, C·K+1]``, ``X_z``
  ``[g, C·K+1, N_g]``. The pointwise weights and bias solve ``(G_z + λ D) Aᵀ = X_z``.
* **PW→DW**: output channel ``n`` reads only its own ``K`` pointwise outputs, so only their taps
  ``z_n = (Σ_m P[n·K+r, m] p[m, t])_{r,t}`` (``K·k`` values) enter its fit: one ``G_n`` ``[K·k+1, K·k+1]`` and
  ``X_n`` ``[K·k+1]`` per output channel, and ``Q[n], b[n]`` solve ``(G_n + λ D) a_n = X_n``.

Memory is ``g·(C·K+1)·(C·K+1+N_g)`` (DW→PW) or ``N·(K·k+1)²`` (PW→DW) doubles plus the moments below: bounded by the
factors' sizes, not by ``C·k`` squared nor by the number of samples; the patches themselves are gathered a few
rows at a time. Work per patch row is about ``C·k·(N + C + N·K)``, so the rows sampled per batch are capped by
``ROW_WORK`` (at least 256): only layers far wider than 128 × 64 taps (e.g. 1024 × 64) sample fewer rows.

**Whitening** needs only block moments of the patches, the same ones ``_refit`` reads off its full Gram matrix:
DW→PW the per-input-channel tap moments ``Σ_cc``, ``Σ_oc`` ``[M, k, k]``, PW→DW the channel covariance
``Σ_C = Σ_t G[(m,t),(l,t)]`` ``[g, C, C]`` and the tap covariance ``Σ_k = Σ_m G[(m,t),(m,u)]`` ``[g, k, k]``. So the
whitened first factor is the one the full path would compute; but its ``G_z`` can only be gathered once it is
known, hence **two passes** over the same samples (the same rows are drawn in both): the first accumulates the
moments and the data-free factor's ``G_z``; the second the whitened factor's.

**Alternating least squares.** PW→DW: with the last factor fixed, output channel ``n`` is linear in its
pointwise row and bias with features ``Σ_t Q[n, r, t] p[m, t]`` (``K·C`` of them, ``_FirstSpace``), so one round
(two more passes: that Gram, then the new first factor's ``G_z``) is done where ``N·(K·C + 1)²`` fits
``ALS_VALUES``. DW→PW: refitting the depthwise filters needs all cross-channel patch moments (the full ``G``), so
it is not done. The report names the statistics used.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from ._decompose import Decomposition
from ._refit import (
    _CHUNK_ELEMENTS,
    MAX_PATCH_DIM,
    CalibratedLayer,
    Geometry,
    LayerStats,
    Padded,
    _solve,
    calibrate_layer,
    whiten_dw_pw,
    whiten_pw_dw,
)

__all__ = ["FactoredStats", "calibrate_stats", "layer_stats"]


class _Space:
    """``G_z``, ``X_z``, ``Y`` for one first factor (see the module docstring)."""

    def __init__(self, dec: Decomposition, groups: int, c: int, k: int, ng: int) -> None:
        self.dec, self.g, self.c, self.k, self.ng = dec, groups, c, k, ng
        kk = dec.rank
        if dec.order == "dw-pw":
            self.filt = dec.first.reshape(groups * c, kk, k).astype(np.float64)  # D[m, r, t]
            self.G = np.zeros((groups, c * kk + 1, c * kk + 1))
            self.X = np.zeros((groups, c * kk + 1, ng))
        else:
            self.pw = dec.first.reshape(groups, ng, kk, c).astype(np.float64)  # P[n, r, m] per group
            self.G = np.zeros((groups * ng, kk * k + 1, kk * k + 1))
            self.X = np.zeros((groups * ng, kk * k + 1))
        self.Y = 0.0
        self.n = 0

    @property
    def nbytes(self) -> int:
        return self.G.nbytes + self.X.nbytes

    def width(self) -> int:
        """Feature values per patch row this space forms while adding (to size the row chunks)."""
        return self.G.shape[-1] * (1 if self.dec.order == "dw-pw" else self.ng)

    def add(self, pc: np.ndarray, y: np.ndarray) -> None:
        """Add rows: converted-network patches ``[r, M, k]`` and the original layer's outputs ``[r, N]``."""
        rows = pc.shape[0]
        ones = np.ones((rows, 1))
        if self.dec.order == "dw-pw":
            z = np.matmul(pc.transpose(1, 0, 2), self.filt.transpose(0, 2, 1))  # [M, r, K]
            z = z.transpose(1, 0, 2).reshape(rows, self.g, -1)
            for gi in range(self.g):
                zt = np.concatenate([z[:, gi], ones], axis=1)
                self.G[gi] += zt.T @ zt
                self.X[gi] += zt.T @ y[:, gi * self.ng:(gi + 1) * self.ng]
        else:
            kk = self.dec.rank
            for gi in range(self.g):
                pg = pc[:, gi * self.c:(gi + 1) * self.c]  # [r, C, k]
                # z[n, r, (s, t)] = Σ_m P[n, s, m] p[r, m, t]: one product per group, rows last for the Gram
                z = (self.pw[gi].reshape(self.ng * kk, self.c) @ pg.transpose(1, 0, 2).reshape(self.c, -1))
                # features major, rows last and contiguous: each channel's Gram is one BLAS product
                zt = np.empty((self.ng, kk * self.k + 1, rows))
                zt[:, :-1] = z.reshape(self.ng, kk, rows, self.k).transpose(0, 1, 3, 2).reshape(self.ng, -1, rows)
                zt[:, -1] = 1.0
                sl = slice(gi * self.ng, (gi + 1) * self.ng)
                self.G[sl] += np.matmul(zt, zt.transpose(0, 2, 1))
                self.X[sl] += np.matmul(zt, np.ascontiguousarray(y[:, sl].T)[:, :, None])[..., 0]
        self.Y += float(np.sum(y * y))
        self.n += rows

    def refit(self, ridge: float) -> tuple[Decomposition, np.ndarray]:
        """The last factor and bias by least squares for this first factor."""
        dec = self.dec
        if dec.order == "dw-pw":
            sol = _solve(self.G, self.X, ridge)  # [g, C·K + 1, N_g]
            second = sol[:, :-1].transpose(0, 2, 1).reshape(dec.second.shape)
            bias = sol[:, -1].reshape(-1)
        else:
            sol = _solve(self.G, self.X[..., None], ridge)[..., 0]  # [N, K·k + 1]
            second, bias = sol[:, :-1].reshape(dec.second.shape), sol[:, -1]
        out = Decomposition(dec.order, dec.rank, dec.groups, dec.first, second.astype(np.float32), dec.rel_error,
                            dec.energy)
        return out, bias.astype(np.float32)

    def error(self, second: np.ndarray, bias: np.ndarray) -> float:
        """Relative output error of this first factor with last factor ``second`` and ``bias``."""
        b = np.asarray(bias, dtype=np.float64)
        if self.dec.order == "dw-pw":
            p = np.asarray(second, dtype=np.float64).reshape(self.g, self.ng, -1)
            a = np.concatenate([p, b.reshape(self.g, self.ng, 1)], axis=2)  # [g, N_g, C·K + 1]
            quad = float(np.sum((a @ self.G) * a))
            lin = float(np.sum(a * self.X.transpose(0, 2, 1)))
        else:
            q = np.asarray(second, dtype=np.float64).reshape(self.g * self.ng, -1)
            a = np.concatenate([q, b[:, None]], axis=1)  # [N, K·k + 1]
            quad = float(np.einsum("na,nab,nb->", a, self.G, a))
            lin = float(np.sum(a * self.X))
        err = self.Y + quad - 2.0 * lin
        return float(np.sqrt(max(err, 0.0) / self.Y)) if self.Y > 0 else 0.0


class _FirstSpace:
    """PW→DW with the last factor ``Q`` fixed: per output channel ``n`` the Gram ``H_n`` of its features
    ``f_n = (Σ_t Q[n, r, t] p[m, t])_{r,m}`` and the constant (``K·C + 1``), and ``h_n = Σ f̃_n y_n``: the pointwise
    factor and the bias solve ``(H_n + λ D) a_n = h_n`` (one step of alternating least squares)."""

    def __init__(self, dec: Decomposition, bias: np.ndarray, groups: int, c: int, k: int, ng: int) -> None:
        self.dec, self.bias, self.g, self.c, self.k, self.ng = dec, bias, groups, c, k, ng
        kk = dec.rank
        self.q = dec.second.reshape(groups, ng * kk, k).astype(np.float64)
        self.G = np.zeros((groups * ng, kk * c + 1, kk * c + 1))
        self.X = np.zeros((groups * ng, kk * c + 1))
        self.Y = 0.0
        self.n = 0

    @property
    def nbytes(self) -> int:
        return self.G.nbytes + self.X.nbytes

    def width(self) -> int:
        return self.ng * self.G.shape[-1]

    def add(self, pc: np.ndarray, y: np.ndarray) -> None:
        rows, kk = pc.shape[0], self.dec.rank
        for gi in range(self.g):
            pg = pc[:, gi * self.c:(gi + 1) * self.c]  # [r, C, k]
            f = self.q[gi] @ pg.transpose(2, 0, 1).reshape(self.k, -1)  # [n·K, r·C]
            ft = np.empty((self.ng, kk * self.c + 1, rows))
            ft[:, :-1] = f.reshape(self.ng, kk, rows, self.c).transpose(0, 1, 3, 2).reshape(self.ng, -1, rows)
            ft[:, -1] = 1.0
            sl = slice(gi * self.ng, (gi + 1) * self.ng)
            self.G[sl] += np.matmul(ft, ft.transpose(0, 2, 1))
            self.X[sl] += np.matmul(ft, np.ascontiguousarray(y[:, sl].T)[:, :, None])[..., 0]
        self.Y += float(np.sum(y * y))
        self.n += rows

    def refit(self, ridge: float) -> tuple[Decomposition, np.ndarray]:
        """The pointwise factor and the bias by least squares for this last factor."""
        dec = self.dec
        sol = _solve(self.G, self.X[..., None], ridge)[..., 0]  # [N, K·C + 1]
        out = Decomposition(dec.order, dec.rank, dec.groups, sol[:, :-1].reshape(dec.first.shape).astype(np.float32),
                            dec.second, dec.rel_error, dec.energy)
        return out, sol[:, -1].astype(np.float32)


#: Multiply-adds per pass and batch the patch rows of a factored layer may cost (see ``FactoredStats``).
ROW_WORK = 1 << 36

#: Largest ``N·(K·C + 1)²`` (doubles) for which PW→DW's alternating step is gathered: the size of the largest
#: dense Gram matrix the full path accumulates.
ALS_VALUES = MAX_PATCH_DIM ** 2


class FactoredStats:
    """Streamed statistics of a large-patch layer (see the module docstring) for the data-free factors ``dec``:
    fed like ``LayerStats``, but over two passes of the same samples (four for PW→DW with the alternating
    round), ``next_pass`` between them."""

    statistics = "factored"

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, groups: int, geometry: Geometry,
                 dec: Decomposition, max_rows: int = 4096, seed: int = 0, ridge: float = 1e-3) -> None:
        n, c = weight.shape[:2]
        self.kernel = tuple(weight.shape[2:])
        self.k = int(np.prod(self.kernel))
        self.groups, self.c, self.ng = groups, c, n // groups
        self.d = c * self.k
        self.geometry = geometry
        self.weight = weight.astype(np.float64)
        self.bias = np.zeros(n) if bias is None else bias.astype(np.float64)
        self._w = self.weight.reshape(groups, self.ng, self.d)
        self.order = dec.order
        if dec.order == "dw-pw":
            self.S_cc = np.zeros((groups * c, self.k, self.k))
            self.S_co = np.zeros((groups * c, self.k, self.k))
        else:
            self.S_chan = np.zeros((groups, c, c))
            self.S_tap = np.zeros((groups, self.k, self.k))
        self.spaces = {"data-free": _Space(dec, groups, c, self.k, self.ng)}
        self._active = ["data-free"]
        # Each row costs about d·(N + C + N·K) multiply-adds per pass (the original output, the moments, the first
        # factor's outputs): a 1024 × 64-tap layer would spend 2 TFLOP on 4096 rows of every batch, so rows per
        # batch are capped by that work (never below 256; a 128 × 64-tap layer keeps all 4096).
        per_row = self.d * (n + c + n * dec.rank)
        self.max_rows = min(max_rows, max(256, ROW_WORK // per_row))
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.passes = 1
        self.ridge = ridge
        self.whiten_error: str | None = None
        self._first: _FirstSpace | None = None

    @property
    def stats_bytes(self) -> int:
        """Bytes the running sums hold: the spaces' ``G_z``/``X_z`` and the block moments."""
        moments = (self.S_cc.nbytes + self.S_co.nbytes if self.order == "dw-pw"
                   else self.S_chan.nbytes + self.S_tap.nbytes)
        first = self._first.nbytes if self._first is not None else 0
        return moments + first + sum(s.nbytes for s in self.spaces.values())

    def next_pass(self) -> bool:
        """Between passes over the same samples (the same rows are drawn in each): after the first, build the
        whitened first factor from the moments and gather its statistics; for PW→DW within ``ALS_VALUES``, then
        one round of alternating least squares from the better start (the pointwise factor refitted with the
        last factor fixed, then that factor's statistics). False when there is nothing more to do."""
        self._rng = np.random.default_rng(self.seed)
        if self.passes == 1:
            dec = self.spaces["data-free"].dec
            try:
                if self.order == "dw-pw":
                    white = whiten_dw_pw(self.weight, self.kernel, dec, self.S_cc, self.S_co)
                else:
                    white = whiten_pw_dw(self.weight, self.kernel, dec, self.S_chan, self.S_tap)
            except np.linalg.LinAlgError as e:  # a degenerate covariance: the data-free space remains
                self.whiten_error = str(e)
                return False
            self.spaces["whitened"] = _Space(white, self.groups, self.c, self.k, self.ng)
            self._active = ["whitened"]
        elif self.passes == 2:
            n, kk = self.groups * self.ng, self.spaces["data-free"].dec.rank
            if self.order != "pw-dw" or n * (kk * self.c + 1) ** 2 > ALS_VALUES:
                return False
            start = self._candidates(self.ridge)
            best = min((name for name in start if name != "data-free"), key=lambda name: start[name][2],
                       default=None)
            if best is None:
                return False
            dec, bias, _ = start[best]
            self._first = _FirstSpace(dec, bias, self.groups, self.c, self.k, self.ng)
            self._active = []
        elif self.passes == 3 and self._first is not None:
            try:
                dec, _ = self._first.refit(self.ridge)
            except np.linalg.LinAlgError:
                return False
            self.spaces["alternating"] = _Space(dec, self.groups, self.c, self.k, self.ng)
            self._first, self._active = None, ["alternating"]
        else:
            return False
        self.passes += 1
        return True

    def update(self, x_conv: np.ndarray, x_orig: np.ndarray) -> None:
        """Add one batch: the layer's input in the converted and in the original network (same samples)."""
        if x_conv.shape != x_orig.shape:
            raise ValueError(f"input shapes differ: {x_conv.shape} vs {x_orig.shape}")
        pc_all, po_all = Padded(x_conv, self.kernel, self.geometry), Padded(x_orig, self.kernel, self.geometry)
        total = pc_all.total
        keep = (np.sort(self._rng.choice(total, self.max_rows, replace=False)) if total > self.max_rows
                else np.arange(total))
        spaces = [self.spaces[name] for name in self._active] + ([self._first] if self._first else [])
        width = max(self.d, *(space.width() for space in spaces))
        step = max(1, _CHUNK_ELEMENTS // width)
        for s in range(0, len(keep), step):
            rows = keep[s:s + step]
            pc = pc_all.rows(rows).astype(np.float64)
            po = po_all.rows(rows).astype(np.float64)
            y = np.concatenate([po[:, gi * self.c:(gi + 1) * self.c].reshape(len(rows), self.d) @ self._w[gi].T
                                for gi in range(self.groups)], axis=1) + self.bias
            if self.passes == 1:
                self._moments(pc, po)
            for space in spaces:
                space.add(pc, y)

    def _moments(self, pc: np.ndarray, po: np.ndarray) -> None:
        if self.order == "dw-pw":
            pct = pc.transpose(1, 0, 2)  # [M, r, k]
            self.S_cc += np.matmul(pct.transpose(0, 2, 1), pct)
            self.S_co += np.matmul(po.transpose(1, 2, 0), pct)
            return
        for gi in range(self.groups):
            pg = pc[:, gi * self.c:(gi + 1) * self.c]  # [r, C, k]
            flat = pg.transpose(1, 0, 2).reshape(self.c, -1)
            self.S_chan[gi] += flat @ flat.T
            taps = pg.reshape(-1, self.k)
            self.S_tap[gi] += taps.T @ taps

    def _candidates(self, ridge: float) -> dict[str, tuple[Decomposition, np.ndarray | None, float]]:
        """Each candidate's factors, bias and output error, measured in its own first factor's space."""
        free = self.spaces["data-free"]
        out: dict[str, tuple[Decomposition, np.ndarray | None, float]] = {
            "data-free": (free.dec, None, free.error(free.dec.second, self.bias))}
        for name, space in (("refit", free), *((k, v) for k, v in self.spaces.items() if k != "data-free")):
            if space.n == 0:
                continue
            with contextlib.suppress(np.linalg.LinAlgError):
                dec, bias = space.refit(ridge)
                out[name] = (dec, bias, space.error(dec.second, bias))
        return {k: v for k, v in out.items() if math.isfinite(v[2])}

    def calibrate(self, ridge: float = 1e-3) -> CalibratedLayer:
        """The best of the data-free, refitted, whitened-then-refitted and (PW→DW) alternating factors by
        measured output error (each measured in its own first factor's space, on the same rows)."""
        got = self._candidates(ridge)
        best = min(got, key=lambda name: (got[name][2], name != "data-free"))
        d, b, _ = got[best]
        return CalibratedLayer(d, b, best, {k: round(v[2], 6) for k, v in got.items()}, statistics="factored")


def layer_stats(weight: np.ndarray, bias: np.ndarray | None, groups: int, geometry: Geometry, dec: Decomposition,
                max_rows: int = 4096, seed: int = 0, ridge: float = 1e-3) -> LayerStats | FactoredStats:
    """The accumulator for a layer: the dense patch Gram matrix (``LayerStats``, the most accurate: it also
    allows alternating least squares) where the patch fits ``MAX_PATCH_DIM``, else ``FactoredStats``."""
    d = weight.shape[1] * math.prod(weight.shape[2:])
    if d + 1 <= MAX_PATCH_DIM:
        return LayerStats(weight, bias, groups, geometry, max_rows=max_rows, seed=seed)
    return FactoredStats(weight, bias, groups, geometry, dec, max_rows=max_rows, seed=seed, ridge=ridge)


def calibrate_stats(stats: LayerStats | FactoredStats, dec: Decomposition, ridge: float = 1e-3) -> CalibratedLayer:
    """``calibrate_layer`` for full statistics, ``FactoredStats.calibrate`` (for the factors it was built with)
    for factored ones."""
    if isinstance(stats, FactoredStats):
        return stats.calibrate(ridge)
    return calibrate_layer(stats, dec, ridge)
