"""flatten_gemm: a Gemm that reads ``Flatten(axis=1)`` of a feature map becomes one Conv.

Before::

    X [N,C,H,W] -> Flatten(axis=1) -> [N, C*H*W] -> Gemm(W, c; alpha, beta, transB) -> Y [N,F]

After::

    X [N,C,H,W] -> Conv(kernel_shape=[H,W], weight [F,C,H,W], bias [F]) -> Y [N,F,1,1]
                   (on a larger X: [N,F,H'-H+1,W'-W+1], one output per window)

Weight maths: ``Wc = alpha * (W if transB else W^T).reshape(F, C, H, W)``, ``bc = beta * c``
broadcast to ``[F]``; ``c`` may be ``[F]``, ``[1,F]``, a scalar or absent. Identity and Dropout
between the Flatten and the Gemm are looked through. Also rank 3 (``[N,C,L]``, Conv1d) and rank 5.

Skips: ``flatten_axis`` (axis != 1 does not keep the batch alone), ``trans_a``, ``bias_per_sample``
(``c`` of shape ``[N,F]``), ``weight_not_constant``, ``feature_map_rank``,
``feature_map_shape_unknown``.
"""
from __future__ import annotations

import onnx

from ..graph import attr, is_onnx_op
from ..index import GraphIndex
from ._dense import read_gemm
from ._head import head_from_feature_map, input_producer
from .base import Outcome, Rule, RuleContext, Skip


def flatten_axis_skip(index: GraphIndex, flatten: onnx.NodeProto) -> Skip | None:
    """The ``flatten_axis`` skip when ``flatten`` does not keep the batch axis alone (axis 1, or its
    negative form), else None. Shared by every rule that reads through a Flatten."""
    axis = attr(flatten, "axis", 1)
    dims = index.shape(flatten.input[0])
    if axis == 1 or (dims is not None and axis == 1 - len(dims)):
        return None
    return Skip("flatten_axis", f"Flatten {flatten.name!r} has axis={axis}")


def apply(ctx: RuleContext, node: onnx.NodeProto) -> Outcome:
    if not is_onnx_op(node, "Gemm"):
        return None
    flatten = input_producer(ctx.index, node)
    if flatten is None or not is_onnx_op(flatten, "Flatten"):
        return None
    axis_skip = flatten_axis_skip(ctx.index, flatten)
    if axis_skip is not None:
        return axis_skip
    dense = read_gemm(ctx.index, node)
    if isinstance(dense, Skip):
        return dense
    return head_from_feature_map(ctx.index, dense, flatten.input[0])


RULE = Rule("flatten_gemm", "head", "Flatten(axis=1) -> Gemm becomes a Conv whose kernel covers the map", apply)
