"""The part every head rule shares: the FC layer reads the flattening of a feature map ``x``."""
from __future__ import annotations

import numpy as np
import onnx

from ..graph import GraphIndex
from ._dense import Dense, conv_from_dense, read_gemm, read_matmul_add
from .base import Rewrite, Skip


def read_fc(index: GraphIndex, node: onnx.NodeProto) -> Dense | Skip | None:
    """The FC layer at ``node`` (Gemm, or MatMul with an optional bias Add); None if it is not one."""
    if node.op_type == "Gemm":
        return read_gemm(index, node)
    if node.op_type == "MatMul":
        return read_matmul_add(index, node)
    return None


def input_producer(index: GraphIndex, node: onnx.NodeProto) -> onnx.NodeProto | None:
    """The node that makes the layer's activation input, looking through Identity and Dropout."""
    return index.producer.get(index.skip_passthrough(node.input[0]))


def head_from_feature_map(index: GraphIndex, dense: Dense, x: str) -> Rewrite | Skip:
    """Write ``dense`` as a Conv whose kernel covers the whole map ``x`` ``[N, C, *S]``."""
    dims = index.shape(x)
    if dims is None:
        return Skip("feature_map_shape_unknown", f"shape inference gives no shape for the flattened tensor {x!r}; "
                                                 "pass --input-shape to fix its size")
    if not 3 <= len(dims) <= 5:
        return Skip("feature_map_rank", f"the flattened tensor {x!r} has shape {_fmt(dims)}, not [N,C,*S] of rank 3-5")
    window = window_from_weight(dims[1:], dense.in_features)
    if isinstance(window, Skip):
        return Skip(window.reason, f"the flattened map {x!r} has shape {_fmt(dims)}; {window.message}")
    rewrite = conv_from_dense(index, dense, x, window[0], window[1:], len(window) - 1, feature_map=x, window=window)
    if isinstance(rewrite, Rewrite) and window != tuple(dims[1:]):
        rewrite.detail += f" (map size {'x'.join(map(str, window))} from the weight)"
    return rewrite


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


def _fmt(dims) -> str:
    if dims is None:
        return "unknown"
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"
