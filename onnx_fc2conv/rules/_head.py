"""The part every head rule shares: the FC layer reads the flattening of a feature map ``x``."""
from __future__ import annotations

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
    if dims is None or not 3 <= len(dims) <= 5:
        return Skip("feature_map_rank", f"the flattened tensor {x!r} has shape {_fmt(dims)}, not [N,C,*S] of rank 3-5")
    channels, *spatial = dims[1:]
    if not all(isinstance(d, int) and d > 0 for d in (channels, *spatial)):
        return Skip("feature_map_shape_unknown",
                    f"the flattened map {x!r} has shape {_fmt(dims)}; pass --input-shape to fix its size")
    return conv_from_dense(index, dense, x, channels, tuple(spatial), len(spatial),
                           feature_map=x, window=(channels, *spatial))


def _fmt(dims) -> str:
    if dims is None:
        return "unknown"
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"
