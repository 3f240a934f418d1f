"""reshape_flatten: a Reshape used as a flatten, in front of a Gemm or MatMul(+Add), becomes one Conv.

Before (constant shape ``[N,-1]``, ``[-1,C*H*W]``, ``[0,-1]``)::

    X [N,C,H,W] -> Reshape(shape) -> [N, C*H*W] -> Gemm / MatMul(+Add) -> Y [N,F]

Before (PyTorch's ``x.view(x.size(0), -1)``; Paddle's Shape -> Slice -> Concat is the same)::

    X -> Shape -> Gather(0) -> Unsqueeze -> Concat([-1]) --shape--> Reshape(X)

After::

    X [N,C,H,W] -> Conv(kernel_shape=[H,W], weight [F,C,H,W], bias [F]) -> Y [N,F,1,1]

The weight maths is flatten_gemm's (the Reshape flattens in the same C-order). The shape subgraph
is evaluated symbolically: the target must be ``[batch, K]`` with each entry given as ``0`` (copy),
``-1``, the batch dimension of X read through Shape, or the literal size. The dead shape subgraph
is removed by the clean-up step.

Skips: ``reshape_not_flatten`` (any other target, e.g. ``[N, C, H*W]``), plus the skips of the layer
it feeds.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..graph import attr, is_onnx_op
from ..index import BATCH, GraphIndex, shape_entries
from ._head import head_from_feature_map, input_producer, read_fc
from .base import Outcome, Rule, RuleContext, Skip


def apply(ctx: RuleContext, node: onnx.NodeProto) -> Outcome:
    if not is_onnx_op(node, "Gemm", "MatMul"):
        return None
    reshape = input_producer(ctx.index, node)
    if reshape is None or not is_onnx_op(reshape, "Reshape"):
        return None
    out_dims = ctx.index.shape(reshape.output[0])
    if out_dims is not None and len(out_dims) != 2:
        return None  # not a flatten at all (e.g. merging attention heads); tokens are not our pattern
    dense = read_fc(ctx.index, node)
    if dense is None or isinstance(dense, Skip):
        return dense
    x = reshape.input[0]
    dims = ctx.index.shape(x)
    if dims is None:
        return Skip("feature_map_rank", f"shape inference gives no rank for {x!r}, the tensor the Reshape reads")
    if len(dims) < 3:
        return Skip("not_a_feature_map")
    if not is_flatten_target(ctx.index, reshape, dims):
        return Skip("reshape_not_flatten", f"Reshape {reshape.name!r} does not flatten {x!r} to [N,-1]")
    return head_from_feature_map(ctx.index, dense, x)


def is_flatten_target(index: GraphIndex, reshape: onnx.NodeProto, dims) -> bool:
    """Whether ``reshape`` turns ``[N, C, *S]`` (``dims``) into ``[N, C*prod(S)]``."""
    target = shape_entries(index, reshape.input[1], dims[0])
    if target is None or len(target) != 2:
        return False
    first, second = target
    inner = dims[1:]
    k = int(np.prod(inner)) if all(isinstance(d, int) for d in inner) else None
    allow_zero = attr(reshape, "allowzero", 0)
    batch_ok = first == BATCH or (first == 0 and not allow_zero) or (
        isinstance(dims[0], int) and first == dims[0])
    if batch_ok:
        return second == -1 or (k is not None and second == k)
    # [-1, K]: the batch is whatever is left once the rows have K entries.
    return first == -1 and k is not None and second == k


RULE = Rule("reshape_flatten", "head",
            "Reshape to [N,-1] (constant or computed from Shape) -> Gemm/MatMul becomes a Conv", apply)
