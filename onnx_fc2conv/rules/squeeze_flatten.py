"""squeeze_flatten: a head that reaches ``[N, C]`` by dropping the spatial axes of a pooled map,
with ``Squeeze`` or with a global reduce that does not keep them (Keras' GlobalAveragePooling2D
through tf2onnx, MXNet, ``x.mean((2, 3))`` in PyTorch).

Before::

    X [N,C,1,1] -> Squeeze(axes=[2,3]) -> [N,C] -> Gemm / MatMul(+Add) -> Y [N,F]
    X [N,C,H,W] -> ReduceMean|ReduceMax(axes=[2,3], keepdims=0) -> [N,C] -> Gemm / MatMul(+Add) -> Y [N,F]

After::

    X [N,C,1,1] -> Conv 1x1 -> Y [N,F,1,1]
    X [N,C,H,W] -> ReduceMean|ReduceMax(axes=[2,3], keepdims=1) -> Conv 1x1 -> Y [N,F,1,1]

Weight maths: ``[N,C]`` is the flattening of the ``[N,C,1,1]`` map (``K = C``), so the layer is a
1x1 Conv, ``Wc = alpha * W.reshape(F, C, 1, 1)``, bias ``beta * c`` (see ``_dense``). Squeeze takes
its axes from the attribute (before opset 13) or the input (from 13); the reduce from the attribute
or, for ReduceMean/ReduceMax from opset 18, the input. The reduce stays global: its head's window is
recorded as the whole map (``None`` sizes), so the sliding-window check compares the converted
model on a larger input with the original head on the whole larger map; ``--dense-pool`` turns the
reduce into a stride-1 pool over the original window instead.

Skips: those of the layer, and ``feature_map_shape_unknown`` when a Squeeze drops axes whose size is
not known to be 1. A Squeeze or reduce over any other axes is not this pattern (None).
"""
from __future__ import annotations

import onnx

from ..graph import Dim, attr, is_onnx_op, set_attr
from ._dense import conv_from_dense
from ._head import carry_onto_map, elementwise_path, head_from_feature_map, input_producer, read_fc
from .base import Built, Match, Outcome, Rule, RuleContext, Skip, node_copy

GLOBAL_REDUCES = frozenset({"ReduceMean", "ReduceMax"})


def apply(ctx: RuleContext, node: onnx.NodeProto) -> Outcome:
    if not is_onnx_op(node, "Gemm", "MatMul"):
        return None
    squeeze = input_producer(ctx.index, node)
    if squeeze is None or not is_onnx_op(squeeze, "Squeeze", *GLOBAL_REDUCES):
        return None
    x = squeeze.input[0]
    dims = ctx.index.shape(x)
    if dims is None or not 3 <= len(dims) <= 5 or not on_spatial_axes(ctx.index, squeeze, len(dims)):
        return None
    if squeeze.op_type != "Squeeze" and attr(squeeze, "keepdims", 1):
        return None  # keeps [N,C,1,1]: the Flatten/Reshape after it is the other rules' pattern
    dense = read_fc(ctx.index, node)
    if dense is None or isinstance(dense, Skip):
        return dense
    if squeeze.op_type == "Squeeze":
        if any(d != 1 for d in dims[2:]):
            return Skip("feature_map_shape_unknown", f"Squeeze {squeeze.name!r} drops axes of {x!r} {list(dims)} "
                                                     "that are not known to be 1; pass --input-shape")
        return head_from_feature_map(ctx.index, dense, x)
    return _global_reduce_head(ctx, dense, squeeze, dims)


def on_spatial_axes(index, node: onnx.NodeProto, rank: int) -> bool:
    """Whether the Squeeze / Reduce* ``node`` works on exactly axes 2.. of its rank-``rank`` input."""
    axes = reduce_axes(index, node, rank)
    return axes is not None and axes == list(range(2, rank))


def reduce_axes(index, node: onnx.NodeProto, rank: int) -> list[int] | None:
    """The sorted axes a Squeeze / Reduce* ``node`` works on (``axes`` an attribute, or an input from
    Squeeze-13 / ReduceMean-18); None where they are not given or not constant."""
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = index.constant(node.input[1])
        axes = None if value is None else [int(a) for a in value.reshape(-1)]
    return None if axes is None else sorted(a % rank for a in axes)


def _global_reduce_head(ctx: RuleContext, dense, reduce: onnx.NodeProto, dims: tuple[Dim, ...]) -> Match | Skip:
    """The 1x1 Conv after the global reduce of ``reduce.input[0]`` (shape ``dims``), kept with keepdims=1."""
    spatial_rank = len(dims) - 2
    channels = dims[1]
    if not isinstance(channels, int):
        channels = dense.in_features  # [N,C] with K == C
    pooled = reduce.output[0]  # renamed when built: the kept reduce writes the [N,C,1,...] map
    match = conv_from_dense(ctx.index, dense, pooled, channels, (1,) * spatial_rank, spatial_rank,
                            feature_map=reduce.input[0], window=(channels, *(None,) * spatial_rank))
    if isinstance(match, Skip):
        return match
    match.detail += f" after {reduce.op_type}(keepdims=1)"
    match = carry_onto_map(ctx.index, match, elementwise_path(ctx.index, dense.input)[1], pooled)

    def keepdims_reduce() -> tuple[Built, dict[str, str]]:
        kept = node_copy(reduce)
        kept.name = ctx.index.fresh_name(f"{reduce.name or reduce.op_type}_keepdims")
        kept.output[0] = ctx.index.fresh_name(f"{reduce.output[0]}_map")
        set_attr(kept, "keepdims", 1)
        return Built([kept]), {pooled: kept.output[0]}

    return match.with_nodes_before(keepdims_reduce)


RULE = Rule("squeeze_flatten", "head",
            "Squeeze of a 1x1 map, or a global ReduceMean/ReduceMax with keepdims=0, -> Gemm/MatMul becomes a 1x1 Conv",
            apply)
