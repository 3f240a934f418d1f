"""Which graph-input dims become symbolic, and why: the spatial dims that size a converted head's
map (so the model takes a larger image), and the input axes that carry a token axis (so the verifier
can vary the sequence length).
"""
from __future__ import annotations

import onnx

from .graph import Dim, attr, is_onnx_op, set_shape, upstream, value_dims
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


def make_spatial_inputs_symbolic(index: GraphIndex, graph: onnx.GraphProto, heads: list[HeadRecord],
                                  pinned: dict) -> dict[str, list[int]]:
    """Give the spatial dims of every graph input that sizes a converted head's map a symbolic size."""
    backbone, _ = upstream(index.producer, [h.feature_map for h in heads])
    candidates: dict[str, tuple] = {}
    for inp in graph.input:
        _, dims = value_dims(inp)
        if inp.name not in backbone or inp.name not in index.graph_inputs or dims is None or len(dims) < 3:
            continue
        axes = _spatial_axes(index, inp.name, len(dims))
        if _sizes_the_backbone(index, inp.name, dims, axes, backbone, pinned):
            candidates[inp.name] = (inp, dims, axes)
    spatial: dict[str, list[int]] = {}
    for name, (inp, dims, axes) in candidates.items():
        names = SPATIAL_NAMES.get(len(axes), tuple(f"dim{a}" for a in axes))
        prefix = f"{name}_" if len(candidates) > 1 else ""
        new_dims = list(dims)
        for axis, dim_name in zip(axes, names):
            new_dims[axis] = prefix + dim_name
        set_shape(inp, new_dims)
        spatial[name] = axes
    return spatial


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


def _spatial_axes(index: GraphIndex, name: str, rank: int) -> list[int]:
    """The input axes that become the feature map's spatial axes: 2.. for NCHW, or where a
    Transpose straight after the input (Keras/tf2onnx NHWC models) takes them from."""
    for reader in index.consumers.get(name, []):
        perm = attr(reader, "perm") if is_onnx_op(reader, "Transpose") else None
        if perm and len(perm) == rank and perm[0] == 0:
            return sorted(perm[2:])
    return list(range(2, rank))
