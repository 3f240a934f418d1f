"""nhwc_flatten: the tf2onnx/keras2onnx head, where the flatten reads the map transposed to NHWC.

Before::

    X [N,C,H,W] -> Transpose(perm=[0,2,3,1]) -> [N,H,W,C] -> Flatten / Reshape([N,-1])
                -> MatMul(W [H*W*C, F]) (+ Add(b)) -> Y [N,F]

After::

    X [N,C,H,W] -> Conv(kernel_shape=[H,W], weight [F,C,H,W], bias b) -> Y [N,F,1,1]

Weight maths: the rows of ``W`` (``W^T`` for MatMul / transB=0) run over the transposed map, here
in H,W,C order. With ``perm``, row axis ``j`` is axis ``perm[j]`` of X, so
``Wc = W.reshape(F, *X.shape[perm[1:]]).transpose([0, *argsort(perm)[1:]])``; for ``[0,2,3,1]``:
``W.reshape(F,H,W,C).transpose(0,3,1,2)``. The Transpose is dropped and the Conv reads X, whose
axis 1 is the channels, so on a larger input it slides over H and W. Any ``perm`` that keeps the
batch first works the same way (rank 3-5), except ``[0, r-1, 1, ...]`` on a tensor that is not the
output of a Conv or pool: that one turns an NHWC input into NCHW, so its output is already the map
and ``flatten_gemm``/``reshape_flatten`` convert it. Element-wise ops between the Transpose and
the flatten (Relu, activation Q/DQ) are carried onto X.
Quantized weights keep their integer values (reordered the same way) behind their DequantizeLinear.

Skips: ``channels_last`` (the Transpose moves the batch axis), ``flatten_axis``,
``reshape_not_flatten``, and those of the layer.
"""
from __future__ import annotations

import onnx

from ..graph import attr, is_onnx_op
from ._head import elementwise_path, head_from_feature_map, input_producer, read_fc, transposes_the_map
from .base import Outcome, Rule, RuleContext, Skip
from .flatten_gemm import flatten_axis_skip
from .reshape_flatten import is_flatten_target


def apply(ctx: RuleContext, node: onnx.NodeProto) -> Outcome:
    if not is_onnx_op(node, "Gemm", "MatMul"):
        return None
    flatten = input_producer(ctx.index, node)
    if flatten is None or not is_onnx_op(flatten, "Flatten", "Reshape"):
        return None
    flat_dims = ctx.index.shape(flatten.output[0])
    if flat_dims is not None and len(flat_dims) != 2:
        return None  # e.g. merging attention heads into [B,T,D]: tokens, not a flatten
    transposed, carried = elementwise_path(ctx.index, flatten.input[0])
    transpose = ctx.index.producer.get(transposed)
    dims = ctx.index.shape(flatten.input[0])
    if transpose is None or not is_onnx_op(transpose, "Transpose") or dims is None:
        return None
    if not transposes_the_map(ctx.index, transpose, len(dims)):
        return None
    perm = attr(transpose, "perm") or list(range(len(dims)))[::-1]
    dense = read_fc(ctx.index, node)
    if dense is None or isinstance(dense, Skip):
        return dense
    if perm[0] != 0:
        return Skip("channels_last", f"Transpose {transpose.name!r} (perm {list(perm)}) moves the batch axis")
    axis_skip = flatten_axis_skip(ctx.index, flatten) if flatten.op_type == "Flatten" else None
    if axis_skip is not None:
        return axis_skip
    if flatten.op_type == "Reshape" and not is_flatten_target(ctx.index, flatten, dims):
        return Skip("reshape_not_flatten", f"Reshape {flatten.name!r} does not flatten {flatten.input[0]!r} to [N,-1]")
    return head_from_feature_map(ctx.index, dense, transpose.input[0], flatten_perm=tuple(perm), carried=carried)


RULE = Rule("nhwc_flatten", "head",
            "Transpose(perm=[0,2,3,1]) -> Flatten/Reshape -> Gemm/MatMul becomes a Conv on the untransposed map "
            "(weight rows H,W,C -> C,H,W)", apply)
