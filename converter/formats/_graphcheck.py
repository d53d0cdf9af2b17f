"""Static check of untrusted model graphs: only tensor math may appear.

A TorchScript archive or a ``.pt2`` program is code. An ordinary op in its graph can reach the host:
``torch.from_file(path, shared=True, …)`` creates and writes files, opening a FIFO blocks forever, and custom or
RPC ops do whatever they were built for. So before anything of an uploaded graph runs (the probe, freezing's
constant propagation, verification), every op of it is checked against an *allowlist* of the ``aten``/``prim``
ops CNNs use; the first op outside it is refused with a one-line ``UnsupportedModelError`` naming the op and
where it appears (method, module, serialized code line).

What is walked:

* TorchScript: the archive's code files before loading (``torch.jit.load`` runs a scripted ``__setstate__``, so a
  class defining one is refused up front); then, after loading, every method of every submodule (hooks
  included) as written and again with every call inlined (functions and class methods it calls), every nested
  block (``prim::If``/``prim::Loop``) and every subgraph attribute.
* ``.pt2`` (``torch.export``): every node of every FX graph module of the program: ``call_function`` targets must
  be allowlisted ``aten``/``prim`` overloads or ``operator.getitem``; ``call_method``/``call_module`` and higher-
  order ops are refused.

A user who trusts a model skips the check with ``ConversionConfig.trust_model`` (CLI ``--trust-model``); the
service never does. This module is a filter, not a sandbox: an allowlisted op with a memory-safety bug is out of
its reach (the service's confinement of the conversion process covers that, see the README's isolation section).
"""

from __future__ import annotations

import contextlib
import contextvars
import operator
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._errors import UnsupportedModelError

__all__ = ["ALLOWED_OPS", "check_fx_graph", "check_torchscript", "check_torchscript_archive", "is_allowed",
           "trusting"]

# Tensor math CNNs use (base names; an in-place ``name_`` is allowed when ``name`` is).
_TENSOR_MATH = """
_convolution _convolution_mode convolution conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d
conv_tbc linear bilinear matmul mm bmm addmm addmv addbmm baddbmm mv dot einsum outer
batch_norm _batch_norm_impl_index native_batch_norm _native_batch_norm_legit _native_batch_norm_legit_no_training
_native_batch_norm_legit_functional instance_norm layer_norm native_layer_norm group_norm native_group_norm
rms_norm local_response_norm
relu relu6 leaky_relu elu selu celu gelu silu mish hardswish hardsigmoid hardtanh sigmoid tanh softplus softsign
prelu _prelu_kernel rrelu threshold log_sigmoid glu hardshrink softshrink tanhshrink softmax log_softmax _softmax
_log_softmax erf erfc exp exp2 expm1 log log1p log2 log10 sqrt rsqrt reciprocal abs neg negative sign sgn sin cos
tan asin acos atan atan2 sinh cosh asinh acosh atanh clamp clamp_min clamp_max clip where minimum maximum fmin fmax
floor ceil round trunc frac pow square fmod remainder lerp addcmul addcdiv xlogy hypot logit sigmoid_backward
max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices
avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d _adaptive_avg_pool2d
_adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d lp_pool1d lp_pool2d
upsample_nearest1d upsample_nearest2d upsample_nearest3d upsample_linear1d upsample_bilinear2d upsample_bicubic2d
upsample_trilinear3d _upsample_nearest_exact1d _upsample_nearest_exact2d _upsample_nearest_exact3d
_upsample_bilinear2d_aa _upsample_bicubic2d_aa _upsample_lanczos2d_aa __interpolate __upsample
__upsample_bilinear grid_sampler grid_sampler_2d grid_sampler_3d affine_grid_generator pixel_shuffle
pixel_unshuffle channel_shuffle native_channel_shuffle
sum mean nanmean max min amax amin aminmax argmax argmin prod std var std_mean var_mean norm frobenius_norm
linalg_vector_norm logsumexp cumsum cumprod all any topk sort argsort kthvalue median count_nonzero
add sub rsub mul div true_divide floor_divide multiply divide subtract eq ne lt le gt ge equal logical_and
logical_or logical_xor logical_not bitwise_and bitwise_or bitwise_xor bitwise_not isnan isinf isfinite isclose
allclose nan_to_num masked_fill masked_select
view view_as reshape reshape_as _reshape_alias flatten unflatten squeeze unsqueeze permute transpose t
contiguous expand expand_as repeat repeat_interleave tile cat concat concatenate stack hstack vstack chunk split
split_with_sizes tensor_split unbind slice select index_select narrow gather scatter scatter_add index index_put
take flip roll pad constant_pad_nd reflection_pad1d reflection_pad2d reflection_pad3d replication_pad1d
replication_pad2d replication_pad3d movedim moveaxis swapaxes swapdims alias detach clone to type_as _to_copy
lift_fresh lift_fresh_copy size numel dim stride is_floating_point is_contiguous
zeros zeros_like ones ones_like full full_like empty empty_like new_zeros new_ones new_full new_empty
new_empty_strided empty_strided scalar_tensor tensor arange linspace eye tril triu diag diagonal
rand rand_like randn randn_like randint bernoulli dropout feature_dropout alpha_dropout feature_alpha_dropout
native_dropout copy fill zero detach_ item
Int Float Bool Complex ScalarImplicit IntImplicit FloatImplicit ComplexImplicit
__getitem__ __setitem__ __contains__ __is__ __isnot__ __not__ __and__ __or__ __xor__ __range_length
__derive_index __round_to_zero_floordiv _set_item len list append extend insert pop clear reverse keys
values items get setdefault dict str format warn floordiv
_assert_tensor_metadata _assert_scalar sym_size sym_numel sym_stride sym_storage_offset sym_constrain_range
sym_constrain_range_for_size _assert_async _functional_assert_async device is_grad_enabled
scaled_dot_product_attention _native_multi_head_attention _transformer_encoder_layer_fwd embedding im2col col2im
cosine_similarity pairwise_distance cdist lstm gru rnn_tanh rnn_relu lstm_cell gru_cell
"""

# ``prim`` ops: control flow, constants, containers, attribute access and type refinements.
_PRIM = """
Constant GetAttr SetAttr If Loop ListConstruct ListUnpack TupleConstruct TupleUnpack TupleIndex TupleSlice
DictConstruct DictIndex RaiseException Uninitialized unchecked_cast unchecked_unwrap_optional isinstance
NumToTensor dtype device layout data requires_grad is_cuda is_cpu is_xpu is_mps is_meta is_quantized
is_sparse is_mkldnn is_nested min max abs ConstantChunk CallMethod Print shape AutogradZero type
"""

#: Every allowed op, ``namespace::name``.
ALLOWED_OPS: frozenset[str] = frozenset(
    [f"aten::{n}" for n in _TENSOR_MATH.split()] + [f"prim::{n}" for n in _PRIM.split()])

_trusted: contextvars.ContextVar[bool] = contextvars.ContextVar("sepconv_trust_model", default=False)

_HINT = ("only tensor math may appear in an uploaded graph; if you trust this model, pass trust_model "
         "(CLI --trust-model)")
_SETSTATE = re.compile(rb"^\s*def\s+__setstate__\s*\(", re.MULTILINE)
_SERIALIZED_AT = re.compile(r'File "(code/[^"]+)", line (\d+)')


def is_allowed(kind: str) -> bool:
    """Whether ``kind`` (``aten::relu_``, ``prim::If``, ``foo::bar``) is on the allowlist."""
    if kind in ALLOWED_OPS:
        return True
    namespace, _, name = kind.partition("::")
    # In-place variants of allowed ops (``relu_``), but never an in-place-only name (``set_``).
    return namespace == "aten" and name.endswith("_") and not name.endswith("__") and f"aten::{name[:-1]}" in \
        ALLOWED_OPS


@contextlib.contextmanager
def trusting(trust: bool) -> Iterator[None]:
    """Within this block, ``check_*`` accept any op when ``trust`` is True (``ConversionConfig.trust_model``)."""
    token = _trusted.set(bool(trust))
    try:
        yield
    finally:
        _trusted.reset(token)


def _refuse(kind: str, where: str, fmt: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{fmt} op {kind} is not allowed ({where}); {_HINT}")


# --- TorchScript -------------------------------------------------------------------------------------------------


def check_torchscript_archive(path: Path) -> None:
    """Refuse, before loading, an archive whose code defines ``__setstate__`` (``torch.jit.load`` runs it).

    Raises:
        UnsupportedModelError: a code file of the archive defines ``__setstate__``.
    """
    if _trusted.get():
        return
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                parts = info.filename.split("/")
                if len(parts) > 2 and parts[1] == "code" and info.filename.endswith(".py"):
                    if info.file_size > 64 * 1024 * 1024:
                        raise UnsupportedModelError(f"TorchScript code file {'/'.join(parts[1:])} is "
                                                    f"{info.file_size} bytes; refusing to read it")
                    with z.open(info) as f:
                        if _SETSTATE.search(f.read()):
                            raise UnsupportedModelError(
                                f"TorchScript class with __setstate__ in {'/'.join(parts[1:])} is not allowed "
                                f"(loading would run it); {_HINT}")
    except zipfile.BadZipFile:
        return  # not ours to judge: the loader says what is wrong with the file


def check_torchscript(module: Any) -> None:
    """Refuse a loaded (not yet frozen) TorchScript module with any op outside ``ALLOWED_OPS``.

    Raises:
        UnsupportedModelError: names the op, the method and module it appears in, and its serialized code line.
    """
    if _trusted.get():
        return
    import torch

    for path, sub in _named_modules(module):
        owner = f"module {path!r}" if path else "the top-level module"
        functions: list[tuple[str, Any]] = [(m, sub._c._get_method(m)) for m in sub._c._method_names()]
        functions += [(f"forward hook {h.name}", h) for h in sub._c._get_forward_hooks()]
        functions += [(f"forward pre-hook {h.name}", h) for h in sub._c._get_forward_pre_hooks()]
        for name, fn in functions:
            graph = fn.graph
            _walk_ts(graph.block(), f"method {name} of {owner}", allow_calls=True)
            inlined = graph.copy()
            torch._C._jit_pass_inline(inlined)
            _walk_ts(inlined.block(), f"a function called by method {name} of {owner}", allow_calls=False)


def _named_modules(module: Any) -> Iterator[tuple[str, Any]]:
    yield "", module
    for path, sub in module.named_modules():
        if path:
            yield path, sub


def _walk_ts(block: Any, where: str, *, allow_calls: bool) -> None:
    for node in block.nodes():
        kind = node.kind()
        if not (is_allowed(kind) or (allow_calls and kind == "prim::CallFunction")):
            raise _refuse(kind, f"in {where}{_code_line(node)}", "TorchScript")
        for sub in node.blocks():
            _walk_ts(sub, where, allow_calls=allow_calls)
        for attr in node.attributeNames():
            if node.kindOf(attr) == "g":
                _walk_ts(node.g(attr).block(), where, allow_calls=allow_calls)


def _code_line(node: Any) -> str:
    try:
        found = _SERIALIZED_AT.findall(str(node.sourceRange()))
    except RuntimeError:
        return ""
    return f", {found[-1][0]} line {found[-1][1]}" if found else ""


# --- torch.export (.pt2) -------------------------------------------------------------------------------------------


_FX_PYTHON_OK = {operator.getitem}


def check_fx_graph(graph_module: Any) -> None:
    """Refuse an FX graph (``ExportedProgram.graph_module``) with a node outside ``ALLOWED_OPS``, in it or in any
    graph module it holds.

    Raises:
        UnsupportedModelError: names the op and the node it appears in.
    """
    if _trusted.get():
        return
    import torch

    for path, gm in graph_module.named_modules():
        graph = getattr(gm, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        where = f"graph module {path!r}" if path else "the exported graph"
        for node in graph.nodes:
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            target = node.target
            if node.op == "call_function" and target in _FX_PYTHON_OK:
                continue
            kind = _fx_kind(target) if node.op == "call_function" else f"{node.op} {target}"
            if node.op != "call_function" or not is_allowed(kind):
                raise _refuse(kind, f"node {node.name} in {where}", ".pt2")


def _fx_kind(target: Any) -> str:
    schema = getattr(target, "_schema", None)
    if schema is not None:  # an OpOverload: schema.name is ``aten::conv2d``
        return str(schema.name)
    name = getattr(target, "__name__", None) or repr(target)
    module = getattr(target, "__module__", None) or "python"
    return f"{module}::{name}"
