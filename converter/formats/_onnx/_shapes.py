"""Shapes of an ONNX model's values for given input shapes: ONNX shape inference on a copy whose big weights
are shape-only stubs, the conv output-size formula for what inference leaves unknown, and ``ShapeCache``.

``find_convs`` and ``stats`` ask for the same table, and ``stats`` asks again after the rewrite: ``ShapeCache``
(one per ``OnnxModel``, owned by the adapter) keeps the tables per input shapes. A table that lacks some value
of the graph is out of date (``DecomposeConvsPass`` adds values and keeps the shapes of every other one): the
cache then derives the new shapes from it (``extend_table``) instead of running inference again. The model
itself carries no cache state or edit counter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import onnx
import onnx_ir as ir

from ..._errors import InvalidOptionsError
from ._nodes import Dims, auto_pad, int_attr, ints

__all__ = ["ShapeCache", "extend_table", "out_spatial", "shape_table", "spatial", "static", "value_dims"]

# Float tensors larger than this are replaced by shape-only stubs before shape inference, which serialises
# the model (a protobuf is limited to 2 GiB, and copying weights is pointless for shapes).
_STUB_BYTES = 1024
_STUB_LOCATION = "__sepconv_shape_stub__"

Table = dict[str, Dims | None]


def _dims_of(shape: ir.Shape | None) -> Dims | None:
    if shape is None:
        return None
    return tuple(d if isinstance(d, int) else None for d in shape.dims)


def _check_input_shapes(model: ir.Model, input_shapes: Mapping[str, tuple[int, ...]]) -> None:
    inputs = {v.name: v for v in model.graph.inputs if not v.is_initializer()}
    for name, dims in input_shapes.items():
        if name not in inputs:
            known = ", ".join(repr(n) for n in inputs) or "none"
            raise InvalidOptionsError(f"input shape given for {name!r}, which is not an input of the model "
                                      f"(inputs: {known})")
        declared = _dims_of(inputs[name].shape)
        if declared is None:
            continue
        # Fixed dims may be overridden on purpose (the pipeline counts MACs per sample, with batch 1).
        if len(declared) != len(dims):
            raise InvalidOptionsError(f"input {name!r} has {len(declared)} dimensions, but the shape given has "
                                      f"{len(dims)}: {tuple(dims)}")


def _stub(t: ir.TensorProtocol, name: str | None) -> ir.ExternalTensor:
    return ir.ExternalTensor(_STUB_LOCATION, 0, t.nbytes, t.dtype, shape=ir.Shape(t.shape.numpy()), name=name or "")


def _stub_large_tensors(model: ir.Model) -> None:
    """Replace big float tensors of a (cloned) model by shape-only references, so serialising it is cheap."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            t = value.const_value
            if t is not None and t.dtype.is_floating_point() and t.nbytes > _STUB_BYTES:
                value.const_value = _stub(t, value.name)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        attr = node.attributes.get("value")
        if node.op_type == "Constant" and isinstance(attr, ir.Attr) and attr.type == ir.AttributeType.TENSOR:
            t = attr.value
            if t.dtype.is_floating_point() and t.nbytes > _STUB_BYTES:
                node.attributes["value"] = ir.AttrTensor("value", _stub(t, t.name))


def _collect_shapes(graph: onnx.GraphProto, table: Table) -> None:
    for init in graph.initializer:
        table[init.name] = tuple(int(d) for d in init.dims)
    for vi in (*graph.input, *graph.value_info, *graph.output):
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is None or not tt.HasField("shape"):
            table.setdefault(vi.name, None)
            continue
        table[vi.name] = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in tt.shape.dim)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _collect_shapes(attr.g, table)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _collect_shapes(g, table)


def shape_table(model: ir.Model, input_shapes: Mapping[str, tuple[int, ...]]) -> Table:
    """Dims of every value (by name, all graphs) after ONNX shape inference with the given input shapes.

    Inference runs on a clone whose big weights are shape-only stubs; it is not strict, so an operator it does
    not know leaves the values downstream of it unknown instead of failing. If it fails outright, the shapes
    the model declares are used.
    """
    _check_input_shapes(model, input_shapes)
    try:
        clone = model.clone()
    except Exception:  # e.g. a graph that is not in topological order: use what the model declares
        return _declared_shapes(model)
    _stub_large_tensors(clone)
    for value in clone.graph.inputs:
        if value.name is not None and value.name in input_shapes:
            value.shape = ir.Shape(list(input_shapes[value.name]))
    proto = ir.serde.serialize_model(clone)
    with contextlib.suppress(Exception):  # best effort: on failure the declared shapes are used
        proto = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    table: Table = {}
    _collect_shapes(proto.graph, table)
    return table


def _declared_shapes(model: ir.Model) -> Table:
    table: Table = {}
    for graph in model.graphs():
        for value in (*graph.inputs, *graph.initializers.values()):
            table[value.name or ""] = _dims_of(value.shape)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for value in node.outputs:
            table[value.name or ""] = _dims_of(value.shape)
    return table


def static(dims: Dims | None) -> tuple[int, ...] | None:
    if dims is None:
        return None
    known = tuple(int(d) for d in dims if d is not None)
    return known if len(known) == len(dims) else None


def value_dims(value: ir.Value | None, table: Mapping[str, Dims | None]) -> tuple[int, ...] | None:
    if value is None:
        return None
    dims = static(table.get(value.name or ""))
    if dims is None and value.const_value is not None:
        dims = tuple(value.const_value.shape.numpy())
    if dims is None:
        dims = static(_dims_of(value.shape))
    return dims


def spatial(dims: tuple[int, ...] | None) -> tuple[int, ...] | None:
    return dims[2:] if dims is not None and len(dims) >= 3 else None


def out_spatial(node: ir.Node, in_sp: tuple[int, ...], kernel: tuple[int, ...]) -> tuple[int, ...] | None:
    """Output spatial size of a Conv/ConvTranspose from its attributes, or None if it is not positive."""
    d = len(kernel)
    if len(in_sp) != d:
        return None
    strides = ints(node, "strides", [1] * d)
    dilations = ints(node, "dilations", [1] * d)
    pads = ints(node, "pads", [0] * (2 * d))
    pad_mode = auto_pad(node)
    out = []
    for i in range(d):
        n, s, ek = in_sp[i], strides[i], (kernel[i] - 1) * dilations[i] + 1
        if node.op_type == "ConvTranspose":
            shape = ints(node, "output_shape", [])
            if len(shape) >= d:
                out.append(shape[-d + i])
            elif pad_mode in ("SAME_UPPER", "SAME_LOWER"):
                out.append(n * s)
            else:
                pb, pe = (0, 0) if pad_mode == "VALID" else (pads[i], pads[i + d])
                out.append(s * (n - 1) + ints(node, "output_padding", [0] * d)[i] + ek - pb - pe)
        elif pad_mode in ("SAME_UPPER", "SAME_LOWER"):
            out.append(-(-n // s))
        elif pad_mode == "VALID":
            out.append((n - ek) // s + 1)
        else:
            out.append((n + pads[i] + pads[i + d] - ek) // s + 1)
    return tuple(out) if all(o > 0 for o in out) else None



def extend_table(model: ir.Model, table: Mapping[str, Dims | None]) -> Table | None:
    """The shape table after one ``DecomposeConvsPass``, from the table before it, without running shape
    inference again: the pass keeps every other value (the replaced conv's output too, by name) and adds only
    Conv, Concat and Sum nodes, whose output shapes follow from their inputs. None if any new shape cannot be
    derived (the caller then runs inference)."""
    out = dict(table)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        y = node.outputs[0] if node.outputs else None
        if y is None or static(out.get(y.name or "")) is not None:
            continue
        if node.op_type == "Conv":
            x, w = value_dims(node.inputs[0], out), value_dims(node.inputs[1], out)
            sp = out_spatial(node, x[2:], tuple(w[2:])) if x is not None and w is not None else None
            dims = (x[0], w[0], *sp) if x is not None and w is not None and sp is not None else None
        elif node.op_type == "Concat":
            found = [value_dims(v, out) for v in node.inputs]
            parts = [p for p in found if p is not None and len(p) >= 2]
            dims = None
            if parts and len(parts) == len(found) and int_attr(node, "axis", 0) == 1:
                dims = (parts[0][0], sum(p[1] for p in parts), *parts[0][2:])
        elif node.op_type == "Sum":
            dims = value_dims(node.inputs[0], out)
        else:
            continue  # not a node this pass adds: its shape stays as inference left it
        if dims is None:
            return None
        out[y.name or ""] = dims
    return out


def _covers(model: ir.Model, table: Mapping[str, Dims | None]) -> bool:
    return all(v.name in table for node in ir.traversal.RecursiveGraphIterator(model.graph) for v in node.outputs)


class ShapeCache:
    """Shape tables of one model by input shapes, brought up to date after a rewrite (see the module
    docstring)."""

    def __init__(self) -> None:
        self._tables: dict[tuple, Table] = {}

    def table(self, model: ir.Model, input_shapes: Mapping[str, tuple[int, ...]]) -> Table:
        """``shape_table(model, input_shapes)``, inferred once per input shapes and extended after rewrites."""
        key = tuple(sorted((k, tuple(v)) for k, v in input_shapes.items()))
        table = self._tables.get(key)
        if table is not None and not _covers(model, table):
            table = extend_table(model, table)
        if table is None:
            table = shape_table(model, input_shapes)
        self._tables[key] = table
        return table
