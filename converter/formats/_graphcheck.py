r"""Static check of untrusted model graphs: only tensor math may appear.

A TorchScript archive or a ``.pt2`` program is code. An ordinary op in its graph can reach the host:
``torch.from_file(path, shared=True, …)`` creates and writes files, opening a FIFO blocks forever, and custom or
RPC ops do whatever they were built for. So before anything of an uploaded graph runs (the probe, freezing's
constant propagation, verification), every op of it is checked against an *allowlist* of the ``aten``/``prim``
ops CNNs use; the first op outside it is refused with a one-line ``UnsupportedModelError`` naming the op and
where it appears (method, module, serialized code line).

What is walked:

* TorchScript: before loading, the archive (``formats._archive.check_archive``: no path tricks, the unpack cap)
  and every code file in it, found the way torch's reader finds them (case-insensitively: ``CODE/__torch__.PY``
  is read for ``code/__torch__.py``): ``torch.jit.load`` runs a scripted ``__setstate__``, so a code file that
  names ``__setstate__`` anywhere, in any spelling (a ``def \`` line continuation included), is refused. Then,
  after loading (``load_torchscript``, which keeps the compilation unit torch would drop), every function
  torch compiled from the archive — every method of every class and module (so every implementation an
  interface-typed attribute can hold), hooks and free functions — as parsed graphs, every nested block
  (``prim::If``/``prim::Loop``) and every subgraph attribute; and again every method of every submodule with
  its calls inlined. ``prim::CreateObject`` is allowed for the archive's own classes (their methods are all
  checked), never for a C++ (TorchBind) class, and so are ``prim::Enter``/``prim::Exit`` (a ``with`` block
  calling such an object's checked ``__enter__``/``__exit__``); ``prim::CallMethod`` on a TorchBind object only
  for the quantized packed-parameter classes.
* ``.pt2`` (``torch.export``): every node of every FX graph module of the program: ``call_function`` targets must
  be allowlisted ``aten``/``prim`` overloads or ``operator.getitem``; ``call_method``/``call_module`` and higher-
  order ops are refused.

Ops that take raw strides or a storage offset (``aten::_reshape_alias``, ``aten::as_strided``) make a view
without checking it against the storage: out-of-bounds arguments read and write outside the tensor. They are
allowed only in a ``.pt2`` graph, and only where the arguments are plain integers and the recorded (fake)
input shows that every element of the view lies inside its storage; in TorchScript nothing proves that before
running, so they are refused.

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
           "is_trusted", "load_torchscript", "trusting"]

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
view view_as reshape reshape_as flatten unflatten squeeze unsqueeze permute transpose t
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
sym_constrain_range_for_size _assert_async _functional_assert_async device is_grad_enabled set_grad_enabled cpu
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
_MAX_CODE_FILE_BYTES = 64 * 1024 * 1024
# TorchBind (C++) classes whose methods an uploaded graph may call: the quantized layers' packed parameters.
_TORCHBIND_OK = ("__torch__.torch.classes.quantized.", "__torch__.torch.classes.xnnpack.",
                 "__torch__.torch.classes.rnn.")
_SERIALIZED_AT = re.compile(r'File "(code/[^"]+)", line (\d+)')


def is_allowed(kind: str) -> bool:
    """Whether ``kind`` (``aten::relu_``, ``prim::If``, ``foo::bar``) is on the allowlist."""
    if kind in ALLOWED_OPS:
        return True
    namespace, _, name = kind.partition("::")
    # In-place variants of allowed ops (``relu_``), but never an in-place-only name (``set_``).
    return namespace == "aten" and name.endswith("_") and not name.endswith("__") and f"aten::{name[:-1]}" in \
        ALLOWED_OPS


def is_trusted() -> bool:
    """Whether the model being loaded is trusted (inside ``trusting(True)``): its code checks are skipped."""
    return _trusted.get()


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
    """Refuse, before loading, an unsafe archive (``formats._archive.check_archive``, with the unpack cap) or one
    whose code names ``__setstate__`` (``torch.jit.load`` runs it). Code files are found as torch's reader finds
    them: ``<root>/code/…/*.py`` compared without case. Always checked, trusted or not (the archive checks are
    caps, not a verdict on the model); only ``__setstate__`` is skipped for a trusted model.

    Raises:
        UnsupportedModelError: the archive is unsafe, or a code file names ``__setstate__``.
    """
    from ._archive import check_archive, is_zip

    if not is_zip(path):
        return  # not an archive: torch's reader refuses it, and the adapter words that
    try:
        members = check_archive(path)
    except UnsupportedModelError as e:
        if str(e).startswith("the zip archive could not be read"):  # damaged, not hostile: say what failed
            raise UnsupportedModelError(f"TorchScript file could not be loaded: {e}") from e
        raise
    if _trusted.get():
        return
    try:
        with zipfile.ZipFile(path) as z:
            for m in members:
                if len(m.parts) > 2 and m.parts[1].lower() == "code" and m.parts[-1].lower().endswith(".py"):
                    where = "/".join(m.parts[1:])
                    if m.info.file_size > _MAX_CODE_FILE_BYTES:
                        raise UnsupportedModelError(f"TorchScript code file {where} is {m.info.file_size} bytes; "
                                                    "refusing to read it")
                    with z.open(m.info) as f:
                        code = f.read(_MAX_CODE_FILE_BYTES + 1)
                    # Any mention, not only ``def __setstate__(``: the name cannot be spelled without these bytes,
                    # however the definition is split (``def \\`` + newline) or laid out.
                    if b"__setstate__" in code:
                        raise UnsupportedModelError(
                            f"TorchScript class with __setstate__ in {where} is not allowed (loading would run "
                            f"it); {_HINT}")
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise UnsupportedModelError(f"the TorchScript archive could not be read: {e}") from e


def load_torchscript(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.jit.load`` in two steps, so that the graph check sees every function torch compiled from the
    archive: ``check_torchscript_archive``, then the import into a compilation unit of our own, then
    ``check_torchscript`` of the module and that unit. Torch's own exceptions propagate (the adapter words them).

    Raises:
        UnsupportedModelError: the archive or a graph in it is refused.
    """
    import torch

    check_torchscript_archive(path)
    unit = torch._C.CompilationUnit()
    cpp = torch._C.import_ir_module(unit, str(path), torch.device(map_location), {}, False)
    module = torch.jit._recursive.wrap_cpp_module(cpp)
    check_torchscript(module, unit)
    return module


def check_torchscript(module: Any, unit: Any = None) -> None:
    """Refuse a loaded (not yet frozen) TorchScript module with any op outside ``ALLOWED_OPS``: every function of
    its compilation ``unit`` (when given: ``load_torchscript`` passes it) and every method of every submodule,
    as written and with calls inlined.

    Raises:
        UnsupportedModelError: names the op, the method and module it appears in, and its serialized code line.
    """
    if _trusted.get():
        return
    import torch

    unit_functions = list(unit.get_functions()) if unit is not None else []
    own = {f.qualified_name.rsplit(".", 1)[0] for f in unit_functions}
    for path, sub in _named_modules(module):
        owner = f"module {path!r}" if path else "the top-level module"
        functions = [(m, sub._c._get_method(m)) for m in sub._c._method_names()]
        functions += [(f"forward hook {h.name}", h) for h in sub._c._get_forward_hooks()]
        functions += [(f"forward pre-hook {h.name}", h) for h in sub._c._get_forward_pre_hooks()]
        for name, fn in functions:
            graph = fn.graph
            _walk_ts(graph.block(), f"method {name} of {owner}", allow_calls=True, own=own)
            inlined = graph.copy()
            torch._C._jit_pass_inline(inlined)
            _walk_ts(inlined.block(), f"a function called by method {name} of {owner}", allow_calls=False,
                     own=own)
    # Then everything else torch compiled: methods of classes (whatever interface-typed attribute holds them),
    # functions no module method calls.
    for fn in unit_functions:
        _walk_ts(fn.graph.block(), f"function {fn.qualified_name}", allow_calls=True, own=own)


def _named_modules(module: Any) -> Iterator[tuple[str, Any]]:
    yield "", module
    for path, sub in module.named_modules():
        if path:
            yield path, sub


def _type_name(value: Any) -> str:
    ty = value.type()
    name = getattr(ty, "qualified_name", None)
    return name() if callable(name) else str(ty)


def _walk_ts(block: Any, where: str, *, allow_calls: bool, own: set[str]) -> None:
    for node in block.nodes():
        kind = node.kind()
        if kind == "prim::CreateObject":
            # An object of the archive's own class: every method of it is a function of the unit, checked.
            if _type_name(node.output()) not in own:
                raise _refuse(f"{kind} ({_type_name(node.output())})", f"in {where}{_code_line(node)}",
                              "TorchScript")
        elif kind in ("prim::Enter", "prim::Exit"):
            # ``with obj:`` calls obj's ``__enter__``/``__exit__``: allowed on the archive's own classes (those
            # methods are functions of the unit, checked), as a method call on them is.
            ctx = _type_name(next(node.inputs())) if node.inputsSize() else ""
            if ctx not in own:
                raise _refuse(f"{kind} ({ctx})", f"in {where}{_code_line(node)}", "TorchScript")
        elif kind == "prim::CallMethod":
            receiver = _type_name(next(node.inputs())) if node.inputsSize() else ""
            if receiver.startswith("__torch__.torch.classes.") and not receiver.startswith(_TORCHBIND_OK):
                raise _refuse(f"{kind} on {receiver}", f"in {where}{_code_line(node)}", "TorchScript")
        elif not (is_allowed(kind) or (allow_calls and kind == "prim::CallFunction")):
            raise _refuse(kind, f"in {where}{_code_line(node)}", "TorchScript")
        for sub in node.blocks():
            _walk_ts(sub, where, allow_calls=allow_calls, own=own)
        for attr in node.attributeNames():
            if node.kindOf(attr) == "g":
                _walk_ts(node.g(attr).block(), where, allow_calls=allow_calls, own=own)


def _code_line(node: Any) -> str:
    try:
        found = _SERIALIZED_AT.findall(str(node.sourceRange()))
    except RuntimeError:
        return ""
    return f", {found[-1][0]} line {found[-1][1]}" if found else ""


# --- torch.export (.pt2) -------------------------------------------------------------------------------------------


_FX_PYTHON_OK = {operator.getitem}
#: Ops that view a tensor's storage through raw strides and offset (see the module docstring).
STRIDED_OPS = frozenset({"aten::_reshape_alias", "aten::as_strided"})


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
            if kind in STRIDED_OPS:
                reason = _strided_out_of_bounds(node)
                if reason:
                    raise UnsupportedModelError(f".pt2 op {kind} (node {node.name} in {where}) takes raw strides "
                                                f"and {reason}; refusing it")
                continue
            if node.op != "call_function" or not is_allowed(kind):
                raise _refuse(kind, f"node {node.name} in {where}", ".pt2")


def _strided_out_of_bounds(node: Any) -> str | None:
    """Why a strided view's arguments are not proven inside its input's storage (None: proven)."""
    args = list(node.args) + [node.kwargs[k] for k in ("size", "stride", "storage_offset") if k in node.kwargs]
    if len(args) < 3 or not hasattr(args[0], "meta"):
        return "its arguments could not be read"
    size, stride = args[1], args[2]
    offset = args[3] if len(args) > 3 else None
    val = args[0].meta.get("val")
    ints = (list(size) if isinstance(size, list | tuple) else [None]) + \
        (list(stride) if isinstance(stride, list | tuple) else [None]) + ([offset] if offset is not None else [])
    if not all(type(v) is int for v in ints) or len(size) != len(stride):
        return "its sizes, strides or offset are not plain integers"
    try:
        # The input's own extent, from its recorded sizes and strides (a fake storage's size is not evidence:
        # tracing grows it to fit the very view being checked).
        base = int(val.storage_offset())
        extent = [(int(n), int(st)) for n, st in zip(val.shape, val.stride(), strict=True)]
    except Exception:  # no recorded value, or a symbolic one
        return "its input's sizes and strides are not recorded as integers"
    start = base if offset is None else offset
    if start < 0 or any(v < 0 for v in (*size, *stride)) or any(st < 0 for _, st in extent):
        return "has a negative size, stride or offset"
    if 0 in size:
        return None
    if any(n == 0 for n, _ in extent):
        return "views an empty tensor"
    last = start + sum((n - 1) * st for n, st in zip(size, stride, strict=True))
    end = base + sum((n - 1) * st for n, st in extent)
    if start < base or last > end:
        return f"reaches elements {start}..{last} of a tensor spanning {base}..{end}"
    return None


def _fx_kind(target: Any) -> str:
    schema = getattr(target, "_schema", None)
    if schema is not None:  # an OpOverload: schema.name is ``aten::conv2d``
        return str(schema.name)
    name = getattr(target, "__name__", None) or repr(target)
    module = getattr(target, "__module__", None) or "python"
    return f"{module}::{name}"
