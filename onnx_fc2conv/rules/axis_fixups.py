"""axis_fixups: ops that reduce or normalise over the class axis of ``[N,K]`` get axis 1 on the map.

Before::

    Y [N,K] -> Softmax(axis=-1) / ArgMax(axis=1) / ReduceMax(axes=[1]) -> P

After (opset >= 13, and every ArgMax/ArgMin/Reduce*)::

    Y [N,K,h,w] -> Softmax(axis=1) / ArgMax(axis=1) / ReduceMax(axes=[1]) -> P [N,K|1,h,w]

After (Softmax, LogSoftmax, Hardmax before opset 13, which coerce the input to 2D at ``axis`` and so
would normalise over K*h*w)::

    Y [N,K,h,w] -> Transpose([0,2,3,1]) -> Softmax(axis=3) -> Transpose([0,3,1,2]) -> P [N,K,h,w]

No weights change. Only the class axis (1 or -1 of the original 2D tensor) is supported, with
``keepdims=1`` for ArgMax/ArgMin/Reduce* (``keepdims=0`` would drop the channel axis of the map); any
other form returns None and the pipeline puts a Flatten back in front of it. On token maps the
class axis is not axis 1 of the original tensor, so they are left to end the run.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import attr, is_onnx_op, set_attr
from .base import Built, Match, Outcome, Rule, RuleContext, node_copy

SOFTMAX_OPS = frozenset({"Softmax", "LogSoftmax", "Hardmax"})
ARG_OPS = frozenset({"ArgMax", "ArgMin"})
REDUCE_OPS = frozenset({
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
})
# Reduce ops that take ``axes`` as an input instead of an attribute, from this opset on.
AXES_INPUT_SINCE = {"ReduceSum": 13}
AXES_INPUT_DEFAULT = 18


def apply(ctx: RuleContext, node: onnx.NodeProto) -> Outcome:
    if not is_onnx_op(node) or node.input[0] not in ctx.maps:
        return None
    info = ctx.maps[node.input[0]]
    if info.layout is not None and not info.layout.keeps_channel_axis:
        return None
    spatial_rank = info.spatial_rank
    opset = ctx.index.opset
    op = node.op_type
    if op in SOFTMAX_OPS:
        axis = attr(node, "axis", 1 if opset < 13 else -1)
        if axis not in (1, -1):
            return None
        if opset >= 13:
            return _with_axis(node, spatial_rank, "axis", 1)
        return _channels_last(ctx, node, spatial_rank)
    if op in ARG_OPS:
        if attr(node, "axis", 0) not in (1, -1) or not attr(node, "keepdims", 1):
            return None
        return _with_axis(node, spatial_rank, "axis", 1)
    if op in REDUCE_OPS:
        return _reduce(ctx, node, spatial_rank)
    return None


def _with_axis(node: onnx.NodeProto, spatial_rank: int, name: str, value) -> Match:
    def build() -> Built:
        new = node_copy(node)
        set_attr(new, name, value)
        return Built([new])

    return Match(removed=[node], maps={node.output[0]: spatial_rank}, build=build, kind="fixup",
                 detail=f"{node.op_type} {name}={value}")


def _channels_last(ctx: RuleContext, node: onnx.NodeProto, spatial_rank: int) -> Match:
    rank = 2 + spatial_rank
    to_last = [0, *range(2, rank), 1]
    back = [0, rank - 1, *range(1, rank - 1)]

    def build() -> Built:
        last = ctx.index.fresh_name(f"{node.input[0]}_channels_last")
        normed = ctx.index.fresh_name(f"{node.output[0]}_channels_last")
        new = node_copy(node)
        new.input[0], new.output[0] = last, normed
        set_attr(new, "axis", rank - 1)
        return Built([
            helper.make_node("Transpose", [node.input[0]], [last], name=ctx.index.fresh_name(f"{node.name}_to_last"),
                             perm=to_last),
            new,
            helper.make_node("Transpose", [normed], [node.output[0]],
                             name=ctx.index.fresh_name(f"{node.name}_from_last"), perm=back),
        ])

    return Match(removed=[node], maps={node.output[0]: spatial_rank}, build=build, kind="fixup",
                 detail=f"{node.op_type} over channels (2 Transposes, opset {ctx.index.opset})")


def _reduce(ctx: RuleContext, node: onnx.NodeProto, spatial_rank: int) -> Outcome:
    if not attr(node, "keepdims", 1):
        return None
    axes_as_input = ctx.index.opset >= AXES_INPUT_SINCE.get(node.op_type, AXES_INPUT_DEFAULT)
    if axes_as_input:
        axes = ctx.index.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    else:
        axes = attr(node, "axes")
    if axes is None or [int(a) for a in np.asarray(axes).reshape(-1)] not in ([1], [-1]):
        return None
    if not axes_as_input:
        return _with_axis(node, spatial_rank, "axes", [1])

    def build() -> Built:
        new = node_copy(node)
        new.input[1] = ctx.index.fresh_name(f"{node.name or node.output[0]}_axes")
        return Built([new], [numpy_helper.from_array(np.array([1], dtype=np.int64), new.input[1])])

    return Match(removed=[node], maps={node.output[0]: spatial_rank}, build=build, kind="fixup",
                 detail=f"{node.op_type} axes=[1]")


RULE = Rule("axis_fixups", "chain", "Softmax/ArgMax/Reduce* over the class axis get axis 1 on the map", apply)
