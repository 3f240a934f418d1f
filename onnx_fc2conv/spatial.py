"""Which graph-input dims become symbolic, and why: the spatial dims that size a converted head's
map (so the model takes a larger image), and the input axes that carry a token axis (so the verifier
can vary the sequence length).

A Reshape that only moves size-1 axes (tf2onnx's NHWC -> NCHW step of a 1-channel input is
``Reshape(x, [-1,1,H,W])``) has the values of a Transpose but a size built in; on the way to a head's
map it is made that Transpose first (:func:`reshapes_as_transposes`), so the input can grow. When no
input size can grow, a note names the op that keeps it fixed.
"""
from __future__ import annotations

from collections.abc import Iterable

import onnx
from onnx import helper

from .graph import Dim, attr, consumers, is_onnx_op, producers, set_shape, upstream, value_dims
from .index import GraphIndex
from .metadata import HeadRecord
from .modelcheck import infer_value_types

SPATIAL_NAMES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}


def token_axes(index: GraphIndex, entries: list[str]) -> dict[str, list[int]]:
    """The graph-input axes that carry the token axis of the tensors put into a token layout, so the
    verifier can vary the sequence length: the symbolic input axes whose size is the token axis's (its
    name, or its value under --input-shape). Where shape inference renamed it (``unk__3``), the one
    symbolic non-batch size the inputs have, if they have only one; so too where another entry's axis 1
    is static (torch's attention input projection reads ``[T,1,D]``, tokens first, at batch 1)."""
    tokens: set[Dim] = {dims[1] for dims in map(index.shape, entries) if dims is not None and len(dims) == 3} - {None}
    declared = {name: value_dims(inp)[1] or () for name, inp in index.graph_inputs.items()}
    symbolic: set[Dim] = {d for dims in declared.values() for d in dims[1:] if isinstance(d, str)}
    renamed = not tokens or any(isinstance(t, str) for t in tokens)
    if not tokens & symbolic and renamed and len(symbolic) == 1:
        tokens = symbolic
    axes = {}
    for name, dims in declared.items():
        current = index.shape(name) or dims
        found = [a for a in range(1, min(len(dims), len(current))) if isinstance(dims[a], str) and current[a] in tokens]
        if found:
            axes[name] = found
    return axes


def reshapes_as_transposes(index: GraphIndex, graph: onnx.GraphProto, tensors: Iterable[str]) -> list[str]:
    """Make each Reshape of ``graph`` that computes ``tensors`` and only moves size-1 axes the Transpose
    it is (in place: the same values at the size ``index`` knows, and no size built in); their names."""
    _, nodes = upstream(producers(graph), tensors)
    rewritten = []
    for node in nodes:
        perm = size_one_move(index, node) if is_onnx_op(node, "Reshape") else None
        if perm is None:
            continue
        node.op_type = "Transpose"
        del node.input[1:]
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("perm", perm))
        rewritten.append(node.name or node.output[0])
    return rewritten


def size_one_move(index: GraphIndex, reshape: onnx.NodeProto) -> list[int] | None:
    """The perm of the Transpose that ``reshape`` is, when its constant target shape keeps the input's
    other axes in order and only moves axes of size 1 (``-1`` and ``0`` stand for one input axis each);
    None otherwise. Moving a size-1 axis changes no element's place in C order, so the values are equal."""
    dims = index.shape(reshape.input[0])
    shape = index.constant(reshape.input[1]) if len(reshape.input) > 1 else None
    if dims is None or shape is None or shape.ndim != 1 or len(shape) != len(dims) or attr(reshape, "allowzero", 0):
        return None
    target: list[Dim | int] = [dims[i] if s == 0 else int(s) for i, s in enumerate(shape)]
    moved_in = [i for i, d in enumerate(dims) if d != 1]
    moved_out = [j for j, s in enumerate(target) if s != 1]
    if target.count(-1) > 1 or len(moved_in) != len(moved_out) or any(
            target[j] not in (-1, dims[i]) for i, j in zip(moved_in, moved_out)):
        return None
    perm = [0] * len(dims)
    ones_in = [i for i in range(len(dims)) if i not in moved_in]
    ones_out = [j for j in range(len(dims)) if j not in moved_out]
    for i, j in [*zip(moved_in, moved_out), *zip(ones_in, ones_out)]:
        perm[j] = i
    return perm


def make_spatial_inputs_symbolic(index: GraphIndex, graph: onnx.GraphProto, heads: list[HeadRecord],
                                  pinned: dict) -> tuple[dict[str, list[int]], list[str]]:
    """Give the spatial dims of every graph input that sizes a converted head's map a symbolic size;
    when none does, a note that names the op each such input meets first (a Reshape to a fixed shape)."""
    backbone, _ = upstream(index.producer, [h.feature_map for h in heads])
    readers = consumers(graph)  # of the rewritten graph
    candidates: dict[str, tuple] = {}
    kept: list[str] = []
    for inp in graph.input:
        _, dims = value_dims(inp)
        if inp.name not in backbone or inp.name not in index.graph_inputs or dims is None or len(dims) < 3:
            continue
        axes = _spatial_axes(readers.get(inp.name, []), len(dims))
        if _sizes_the_backbone(index, inp.name, dims, axes, backbone, pinned):
            candidates[inp.name] = (inp, dims, axes)
        elif readers.get(inp.name):
            first = readers[inp.name][0]
            kept.append(f"the input size stays fixed: {first.op_type} {first.name or first.output[0]!r}, which reads "
                        f"input {inp.name!r}, gives the same shape at any input size")
    spatial: dict[str, list[int]] = {}
    for name, (inp, dims, axes) in candidates.items():
        names = SPATIAL_NAMES.get(len(axes), tuple(f"dim{a}" for a in axes))
        prefix = f"{name}_" if len(candidates) > 1 else ""
        new_dims = list(dims)
        for axis, dim_name in zip(axes, names):
            new_dims[axis] = prefix + dim_name
        set_shape(inp, new_dims)
        spatial[name] = axes
    return spatial, [] if spatial else kept


def _sizes_the_backbone(index: GraphIndex, name: str, dims, axes: list[int], backbone: set[str],
                        pinned: dict) -> bool:
    """Whether a larger input ``name`` gives the backbone larger tensors: with its ``axes`` free, shape
    inference changes the shape of some tensor between the inputs and the maps. A broadcast operand
    fed as an input (a per-channel gain ``[C,1,1]``) changes none, so it keeps its shape and the
    larger-size checks reuse its value. An input whose spatial size is already free is assumed to."""
    own = [p if p is not None else d for p, d in zip(pinned.get(name) or dims, dims)]
    if not all(isinstance(own[a], int) for a in axes):
        return True
    probe = [f"{name}_probe{a}" if a in axes else d for a, d in enumerate(own)]
    types = infer_value_types(index.model, {**pinned, name: probe})
    inner = backbone - set(index.graph_inputs) - set(index.initializers)
    return not inner or any(types.get(t, (0, None))[1] != index.shape(t) for t in inner)


def _spatial_axes(readers: list[onnx.NodeProto], rank: int) -> list[int]:
    """The input axes that become the feature map's spatial axes: 2.. for NCHW, or where a
    Transpose straight after the input (Keras/tf2onnx NHWC models) takes them from."""
    for reader in readers:
        perm = attr(reader, "perm") if is_onnx_op(reader, "Transpose") else None
        if perm and len(perm) == rank and perm[0] == 0:
            return sorted(perm[2:])
    return list(range(2, rank))
