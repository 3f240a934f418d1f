"""token_matmul: a MatMul with a constant weight on ``[B,T,D]`` tokens becomes a kernel-1 Conv over the tokens.

Before::

    X [B,T,D] -> MatMul(W [D,F]) -> Add(b [F])  (optional, either operand order) -> Y [B,T,F]

After, ``--token-layout conv1d``::

    X -> Transpose(0,2,1) -> [B,D,T] -> Conv(kernel 1, weight W^T.reshape(F,D,1), bias b) -> Y [B,F,T]

After, ``--token-layout conv2d`` (tokens on the last axis, Apple's ANE layout)::

    X -> Transpose(0,2,1) -> Unsqueeze(2) -> [B,D,1,T] -> Conv(1x1, W^T.reshape(F,D,1,1), b) -> Y [B,F,1,T]

Weight maths: ``Y[b,t,f] = sum_d X[b,t,d] * W[d,f] + b[f]`` and a kernel-1 Conv computes
``Y'[b,f,t] = sum_d X'[b,d,t] * Wc[f,d] + b[f]`` with ``X'[b,d,t] = X[b,t,d]``, so ``Wc = W^T``; the
token axis only indexes positions, each computed alone, which is why any sequence length works.

The pipeline puts ``X`` into the layout once (Q, K and V projections share one Transpose), carries the
map through pointwise ops (``fc_chain``: erf-GELU, bias Adds, later token MatMuls) and restores the
original layout where the run ends (a residual Add, LayerNorm, an attention Reshape, a graph output).
Off unless ``token_layout`` is set; then a MatMul on tokens is reported ``token_matmul`` as before.
"""
from __future__ import annotations

from dataclasses import replace

import onnx

from ..graph import is_onnx_op
from ..layouts import TOKEN_LAYOUTS, Layout
from ._dense import conv_from_dense, read_matmul_add
from .base import Outcome, Rule, RuleContext, Skip


def apply(ctx: RuleContext, node: onnx.NodeProto) -> Outcome:
    layout = TOKEN_LAYOUTS.get(ctx.options.token_layout or "")
    return None if layout is None else pointwise_layer(ctx, node, layout)


def pointwise_layer(ctx: RuleContext, node: onnx.NodeProto, layout: Layout) -> Outcome:
    """``node`` as a kernel-1 Conv on the map of its input in ``layout``, when it is a MatMul with a
    constant weight on a tensor of the layout's rank; the match names the tensor to put into it."""
    if not is_onnx_op(node, "MatMul"):
        return None
    dims = ctx.index.shape(node.input[0])
    if dims is None or len(dims) != layout.original_rank:
        return None
    dense = read_matmul_add(ctx.index, node)
    if dense is None:
        return None
    match = conv_from_dense(ctx.index, dense, node.input[0], dense.in_features,
                            (1,) * layout.spatial_rank, layout.spatial_rank)
    return match if isinstance(match, Skip) else replace(match, entry=node.input[0], layout=layout)


RULE = Rule("token_matmul", "head",
            "MatMul(W) (+ Add(b)) on [B,T,D] tokens becomes a kernel-1 Conv over the tokens (--token-layout)", apply)
