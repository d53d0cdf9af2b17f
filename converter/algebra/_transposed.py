r"""Transposed convolutions: the weight layouts, and the regular-conv view calibration fits them in.

Pure functions over numpy arrays; no file, format or runtime code.

**Layouts.** A transposed conv with ``g`` groups, ``M`` input and ``N`` output channels stores its weight as
``W_t [M, N/g, *kernel]`` (ONNX ``ConvTranspose``, ``torch.conv_transpose*``): input channel ``gi·M_g + m``
spreads over outputs ``gi·N_g + j`` with ``W_t[gi·M_g + m, j]``. ``ConvLayer`` and the decomposition use the
regular conv layout ``W [N, M/g, *kernel]``; ``from_transposed`` regroups ``W[gi·N_g + j, m] = W_t[gi·M_g + m, j]``
(no flip) and ``to_transposed`` is its inverse. Both are pure regroupings (no arithmetic).

**Why the decomposition carries over unchanged.** With ``T(x, w)`` the single-channel transposed conv (any stride,
padding, output padding, dilation), ``y_n = Σ_c T(x_c, W[n, c])`` and ``T`` is linear in ``w``. So every
factorisation of ``_decompose`` applies with the spatial step a *transposed* conv carrying the original stride,
padding, output padding and dilation, and the 1×1 step a regular 1×1 conv: DW→PW ``W[n, c] = Σ_r P[n, c·K+r] D_r``
gives ``y_n = Σ_{c,r} P[n, c·K+r] T(x_c, D_{c,r})`` (a depthwise transposed conv, then a pointwise conv); PW→DW
``W[n, c] = Σ_r u_{n,r}[c] v_{n,r}`` gives ``y_n = Σ_r T(Σ_c u_{n,r}[c] x_c, v_{n,r})`` (a pointwise conv, then
a grouped transposed conv). A 1×1 conv without bias maps zero to zero and acts per position, so it commutes with
the zero insertion, padding (cropping) and output padding of ``T``: the pair equals the original at full rank.
The spatial steps' weights, computed in the regular layout, are regrouped with ``to_transposed``.

**Calibration: the regular-conv view.** A transposed conv is a regular conv (stride 1, the same dilation ``d``)
of its input zero-upsampled by the stride ``s`` and padded by ``d(k−1) − p_begin`` before and
``d(k−1) − p_end + output_padding`` after, with the kernel flipped in space. Flipping that input in space instead
(``flip(upsample(x))`` = ``upsample(flip(x))``, the two pads swapped) makes the kernel the unflipped ``W``
(in the regular layout) and only reverses the order of the output positions, which sums over positions do not
see. ``regular_view`` returns that input, padded (a negative pad crops), and the ``Geometry`` (stride 1, dilation
``d``, no padding) whose patches ``_refit`` reads: calibration, its statistics and the output-error planner then
fit a transposed layer exactly as a regular conv, with the same weight array. The view holds ``s^r`` times the
input's elements (the size of the layer's output), so memory stays that of the layer's work.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._refit import Geometry

__all__ = ["from_transposed", "regular_view", "to_transposed"]


def from_transposed(weight: np.ndarray, groups: int) -> np.ndarray:
    """A transposed conv's weight ``[M, N/g, *k]`` regrouped to the regular layout ``[N, M/g, *k]``."""
    m, ng = weight.shape[:2]
    k = weight.shape[2:]
    if groups < 1 or m % groups:
        raise ValueError(f"{m} input channels cannot be split into {groups} groups")
    return weight.reshape(groups, m // groups, ng, *k).swapaxes(1, 2).reshape(groups * ng, m // groups, *k)


def to_transposed(weight: np.ndarray, groups: int) -> np.ndarray:
    """A weight in the regular layout ``[N, M/g, *k]`` regrouped to a transposed conv's ``[M, N/g, *k]``."""
    n, mg = weight.shape[:2]
    k = weight.shape[2:]
    if groups < 1 or n % groups:
        raise ValueError(f"{n} output channels cannot be split into {groups} groups")
    return np.ascontiguousarray(
        weight.reshape(groups, n // groups, mg, *k).swapaxes(1, 2).reshape(groups * mg, n // groups, *k))


def regular_view(x: np.ndarray, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
                 pads: Sequence[tuple[int, int]], output_padding: Sequence[int]) -> tuple[np.ndarray, Geometry]:
    """The input ``[B, M, *spatial]`` of a transposed conv as the input of the regular conv (regular-layout
    weight, see the module docstring) that computes the same outputs, in reversed position order, and that
    conv's geometry.

    Args:
        kernel, stride, dilation, output_padding: per spatial dim.
        pads: ``(begin, end)`` per spatial dim (the transposed conv's ``pads``/``padding``: output cropping).
    """
    r = len(kernel)
    if not (len(stride) == len(dilation) == len(pads) == len(output_padding) == r == x.ndim - 2):
        raise ValueError(f"a {r}-D transposed conv cannot read an input of shape {x.shape}")
    b, m, *spatial = x.shape
    up = np.zeros((b, m, *((n - 1) * s + 1 for n, s in zip(spatial, stride, strict=True))), np.float32)
    flipped = x[(slice(None), slice(None), *(slice(None, None, -1) for _ in range(r)))]
    up[(slice(None), slice(None), *(slice(None, None, s) for s in stride))] = flipped
    widen, crop = [], []
    for k, d, (pb, pe), op in zip(kernel, dilation, pads, output_padding, strict=True):
        before, after = d * (k - 1) - pe + op, d * (k - 1) - pb  # swapped by the flip
        widen.append((max(before, 0), max(after, 0)))
        crop.append(slice(max(-before, 0), None if after >= 0 else after))
    out = np.pad(up, [(0, 0), (0, 0), *widen])[(slice(None), slice(None), *crop)]
    return np.ascontiguousarray(out), Geometry(tuple(1 for _ in range(r)), tuple(int(d) for d in dilation),
                                               tuple((0, 0) for _ in range(r)))
