"""channels_last_mlp (``--token-layout``): the pointwise MLP a ConvNeXt block runs channels-last
becomes 1x1 Convs on the channels-first map, with no more Transposes than the model had.

Before (timm ConvNeXt ``conv_mlp=False``; Swin and MaxViT MLPs on ``[N,H,W,C]`` alike)::

    X [N,C,H,W] -> Transpose(0,2,3,1) -> LayerNorm(axis=-1) -> MatMul(W1 [C,F]) -> Add(b1) -> GELU
      -> MatMul(W2 [F,C]) -> Add(b2) -> Mul(gamma [C]) -> Transpose(0,3,1,2) -> Y [N,C,H,W]

After::

    X -> Transpose(0,2,3,1) -> LayerNorm(axis=-1) -> Transpose(0,3,1,2) -> Conv 1x1 (W1^T, b1) -> GELU
      -> Conv 1x1 (W2^T, b2) -> Mul(gamma.reshape(C,1,1)) -> Y

Weight maths: ``Y[n,h,w,f] = sum_c X[n,h,w,c] * W[c,f] + b[f]`` is, on the map ``X'[n,c,h,w] =
X[n,h,w,c]``, the 1x1 Conv ``Y'[n,f,h,w] = sum_c X'[n,c,h,w] * Wc[f,c,0,0] + b[f]`` with ``Wc = W^T``;
each position is computed alone, so the result is exact at every input size. The LayerNorm stays
where it is, on the last axis of the model's own channels-last tensor; the map starts after it (one
Transpose, where the model's closing Transpose was). The GELU (erf form or the Gelu op), the bias
Adds and the gamma ``Mul`` follow the map as in any run (``fc_chain``; ``[C]`` becomes ``[C,1,1]``),
and the run ends at the model's ``Transpose(0,3,1,2)``: the ``Transpose(0,2,3,1)`` back that the run
would put before it undoes it, so both go (``runs.LayoutBridge.cancel_inverse_transposes``) and the
residual Add reads the map.

Under ``--token-layout`` (either value), not by default: the rewrite is exact for any MatMul on a
rank-4 tensor, but it adds a Transpose pair wherever the run does not end at such a Transpose of the
model's own, so by default it is reported ``token_matmul`` with that hint.
"""
from __future__ import annotations

import onnx

from ..layouts import CHANNELS_LAST
from .base import Outcome, Rule, RuleContext
from .token_matmul import pointwise_layer


def apply(ctx: RuleContext, node: onnx.NodeProto) -> Outcome:
    if not ctx.options.token_layout:
        return None
    return pointwise_layer(ctx, node, CHANNELS_LAST)


RULE = Rule("channels_last_mlp", "head",
            "MatMul(W) (+ Add(b)) on an [N,H,W,C] map becomes a 1x1 Conv on [N,C,H,W] (--token-layout)", apply)
