"""matmul_add: ``MatMul(Flatten(X), W[K,F])`` with an optional constant bias Add becomes one Conv.

Before::

    X [N,C,H,W] -> Flatten(axis=1) -> MatMul(W [K,F]) -> Add(b [F])  (either operand order) -> Y [N,F]

After::

    X [N,C,H,W] -> Conv(kernel_shape=[H,W], weight W^T.reshape(F,C,H,W), bias b) -> Y [N,F,1,1]

Weight maths: MatMul stores the weight ``[K, F]`` (input features first), so the kernel is
``W^T.reshape(F, C, H, W)``. The Add is fused only when it is the MatMul's single reader and its
other operand is a constant that broadcasts per channel (``[F]``, ``[1,F]``, scalar); any other Add
stays as it is and is handled later in the chain. A MatMul whose weight is not a constant is not an
FC layer and is left alone without a report. Reshape-fed MatMuls are ``reshape_flatten``'s.
"""
from __future__ import annotations

import onnx

from ..graph import is_onnx_op
from ._dense import read_matmul_add
from ._head import head_from_feature_map, input_producer
from .base import Outcome, Rule, RuleContext
from .flatten_gemm import flatten_axis_skip


def apply(ctx: RuleContext, node: onnx.NodeProto) -> Outcome:
    if not is_onnx_op(node, "MatMul"):
        return None
    flatten = input_producer(ctx.index, node)
    if flatten is None or not is_onnx_op(flatten, "Flatten"):
        return None
    dense = read_matmul_add(ctx.index, node)
    if dense is None:
        return None
    axis_skip = flatten_axis_skip(ctx.index, flatten)
    if axis_skip is not None:
        return axis_skip
    return head_from_feature_map(ctx.index, dense, flatten.input[0])


RULE = Rule("matmul_add", "head", "Flatten -> MatMul(W) (+ Add(b)) becomes a Conv whose kernel covers the map", apply)
