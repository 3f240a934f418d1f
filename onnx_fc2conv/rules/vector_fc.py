"""vector_fc: a Gemm or MatMul(+Add) on a plain ``[N,D]`` tensor (an MLP) becomes a 1x1 Conv.

Before::

    X [N,D] -> Gemm(W, c) / MatMul(W [D,F]) (+ Add(b)) -> Y [N,F] -> Relu -> Gemm ... -> Z [N,K]

After::

    X -> Unsqueeze(2,3) -> [N,D,1,1] -> Conv(1x1, weight [F,D,1,1], bias) -> Relu -> Conv 1x1 ...
      -> Squeeze(2,3) -> Z [N,K]

Weight maths: the 1x1 Conv at the single position is the FC layer, ``Wc = alpha * W.reshape(F,D,1,1)``
(``W^T`` when stored ``[D,F]``), ``bc = beta * c`` (see ``_dense``). The seed MLP
``ReLU(W x + b)`` with ``W = [[0,1,1],[2,3,5]]``, ``b = [8,13]`` becomes one Conv with kernels
``(0,1,1)``, ``(2,3,5)`` and bias ``(8,13)``, then the Relu.

One Unsqueeze in where the run starts and one Squeeze out where it ends; the layers in between (and the
pointwise ops) are ``fc_chain``'s. Off unless ``vector_fc`` is set. A 2D tensor that is the
flattening of a feature map is the head rules' (they run first and give a Conv over the map).
"""
from __future__ import annotations

from dataclasses import replace

import onnx

from ..graph import is_onnx_op
from ..layouts import VECTOR
from ._dense import conv_from_dense
from ._head import read_fc
from .base import Outcome, Rule, RuleContext, Skip


def apply(ctx: RuleContext, node: onnx.NodeProto) -> Outcome:
    if not getattr(ctx.options, "vector_fc", False) or not is_onnx_op(node, "Gemm", "MatMul"):
        return None
    dims = ctx.index.shape(node.input[0])
    if dims is None or len(dims) != VECTOR.original_rank:
        return None
    dense = read_fc(ctx.index, node)
    if dense is None or isinstance(dense, Skip):
        return dense
    match = conv_from_dense(ctx.index, dense, node.input[0], dense.in_features, (1, 1), VECTOR.spatial_rank)
    return match if isinstance(match, Skip) else replace(match, entry=node.input[0], layout=VECTOR)


RULE = Rule("vector_fc", "head", "Gemm/MatMul on a plain [N,D] tensor becomes a 1x1 Conv (--vector-fc)", apply)
