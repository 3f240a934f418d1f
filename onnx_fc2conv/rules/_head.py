"""The part every head rule shares: the FC layer reads the flattening of a feature map ``x``.

Between the map and the layer, exporters put ops that act on each element alone: activation
quantization (``QuantizeLinear -> Cast -> DequantizeLinear`` in QDQ models), Cast, Relu, ... Such an
op gives the same numbers before or after a flatten (or a transpose), so the head carries a copy of
it onto the map, in front of the Conv, and the original becomes dead.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from ..graph import attr, is_onnx_op
from ..index import GraphIndex
from ..report import format_dims
from ._dense import Dense, conv_from_dense, read_gemm, read_matmul_add
from .base import Built, Match, Skip, node_copy

# Ops that compute each output element from the same input element alone (Dropout at inference).
UNARY_OPS = frozenset({
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Gelu", "Erf", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal",
    "Dropout", "Identity", "Cast",
})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def read_fc(index: GraphIndex, node: onnx.NodeProto) -> Dense | Skip | None:
    """The FC layer at ``node`` (Gemm, or MatMul with an optional bias Add); None if it is not one."""
    if is_onnx_op(node, "Gemm"):
        return read_gemm(index, node)
    if is_onnx_op(node, "MatMul"):
        return read_matmul_add(index, node)
    return None


def input_producer(index: GraphIndex, node: onnx.NodeProto) -> onnx.NodeProto | None:
    """The node that makes the layer's activation input, looking through element-wise ops."""
    return index.producer.get(elementwise_path(index, node.input[0])[0])


def elementwise_path(index: GraphIndex, name: str) -> tuple[str, list[onnx.NodeProto]]:
    """Walk up from ``name`` through element-wise ops (Identity and Dropout are dropped, the others
    kept); the tensor reached and the kept ops in data order."""
    kept: list[onnx.NodeProto] = []
    while True:
        name = index.skip_passthrough(name)
        node = index.producer.get(name)
        if node is None or node.output[0] != name or not is_elementwise(index, node):
            return name, kept[::-1]
        kept.append(node)
        name = node.input[0]


def is_elementwise(index: GraphIndex, node: onnx.NodeProto) -> bool:
    if is_onnx_op(node, "Dropout") and not index.is_passthrough(node):
        return False  # a training-mode Dropout: random, so no copy of it may stand for it
    if is_onnx_op(node, *UNARY_OPS):
        return True
    if is_onnx_op(node, *QDQ_OPS):  # per-tensor activation quantization; per-axis depends on the layout
        params = [index.constant(i) for i in node.input[1:] if i]
        return (not attr(node, "block_size", 0) and not index.is_constant(node.input[0])
                and all(p is not None and p.size == 1 for p in params))
    return False


# ONNX ops whose output is channels-first by definition.
CHANNELS_FIRST_OPS = frozenset({
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
    "BatchNormalization", "InstanceNormalization", "QLinearConv", "ConvInteger",
})


def transposes_the_map(index: GraphIndex, transpose: onnx.NodeProto, rank: int) -> bool:
    """Whether ``transpose`` takes a channels-first map out of ``[N, C, *S]`` order (e.g. NCHW -> NHWC).

    Identity does not; ``[0, r-1, 1, ..., r-2]`` is NHWC -> NCHW (Keras inputs), which puts the
    channels on axis 1, unless its input is already channels-first (the output of a Conv or pool),
    as for rank 3, where NCL -> NLC and NLC -> NCL are the same ``[0,2,1]``.
    """
    perm = list(attr(transpose, "perm") or range(rank)[::-1])
    if perm == list(range(rank)):
        return False
    if perm != [0, rank - 1, *range(1, rank - 1)]:
        return True
    source = index.producer.get(elementwise_path(index, transpose.input[0])[0])
    return source is not None and is_onnx_op(source, *CHANNELS_FIRST_OPS)


def head_from_feature_map(index: GraphIndex, dense: Dense, x: str, *, flatten_perm: tuple[int, ...] | None = None,
                          carried: Sequence[onnx.NodeProto] = ()) -> Match | Skip:
    """Write ``dense`` as a Conv whose kernel covers the whole map ``x`` ``[N, C, *S]``.

    ``carried``: element-wise ops between ``x`` and the flatten (see nhwc_flatten); those between the
    flatten and the layer are found here. ``flatten_perm``: the layer flattened ``Transpose(x, perm)``.
    """
    dims = index.shape(x)
    if dims is None:
        return Skip("feature_map_shape_unknown", f"shape inference gives no shape for the flattened tensor {x!r}; "
                                                 "pass --input-shape to fix its size")
    if not 3 <= len(dims) <= 5:
        return Skip("feature_map_rank",
                    f"the flattened tensor {x!r} has shape {format_dims(dims)}, not [N,C,*S] of rank 3-5")
    if flatten_perm is None:
        source = index.producer.get(elementwise_path(index, x)[0])
        if source is not None and is_onnx_op(source, "Transpose") and transposes_the_map(index, source, len(dims)):
            return Skip("channels_last", f"{x!r} is Transpose {source.name!r} (perm {attr(source, 'perm')}) "
                                         "of the map; its axis 1 is not the channel axis")
    window = window_from_weight(dims[1:], dense.in_features)
    if isinstance(window, Skip):
        return Skip(window.reason, f"the flattened map {x!r} has shape {format_dims(dims)}; {window.message}")
    match = conv_from_dense(index, dense, x, window[0], window[1:], len(window) - 1, flatten_perm,
                            feature_map=x, window=window)
    if isinstance(match, Skip):
        return match
    if window != tuple(dims[1:]):
        match.detail += f" (map size {'x'.join(map(str, window))} from the weight)"
    return carry_onto_map(index, match, [*carried, *elementwise_path(index, dense.input)[1]], x)


def carry_onto_map(index: GraphIndex, match: Match, nodes: list[onnx.NodeProto], x: str) -> Match:
    """``match`` (whose Conv reads ``x``) built behind copies of the element-wise ``nodes`` chained
    on ``x``: the Conv reads what the last copy writes."""
    if not nodes:
        return match

    def copies() -> tuple[Built, dict[str, str]]:
        made, current = [], x
        for node in nodes:
            copy = node_copy(node)
            copy.name = index.fresh_name(f"{node.name or node.op_type}_on_map")
            copy.input[0] = current
            del copy.output[1:]  # Dropout's mask is not needed on the map
            copy.output[0] = current = index.fresh_name(f"{node.output[0]}_map")
            made.append(copy)
        return Built(made), {x: current}

    return match.with_nodes_before(copies)


def window_from_weight(dims, in_features: int) -> tuple[int, ...] | Skip:
    """``[C, *S]`` of the flattened map: its static dims, and the ones the graph leaves symbolic
    taken from the weight where ``K = C * prod(S)`` fixes them: a single free dim is ``K`` over the
    others, and when the others already make ``K`` (``K == C``: a global-pool head) every free dim is 1.
    Two free dims with a product above 1 (e.g. a map of a free H and W) cannot be told apart."""
    free = [i for i, d in enumerate(dims) if not (isinstance(d, int) and d > 0)]
    if not free:
        return tuple(dims)
    known = int(np.prod([d for i, d in enumerate(dims) if i not in free]))
    if in_features % known:
        return Skip("weight_shape_mismatch", f"the layer takes {in_features} inputs, not a multiple of {known}")
    rest = in_features // known
    if rest != 1 and len(free) > 1:
        return Skip("feature_map_shape_unknown", f"the weight fixes the product of its free dims ({rest}) but not "
                                                 "each one; pass --input-shape to fix its size")
    return tuple(rest if i in free else d for i, d in enumerate(dims))
