"""Reading an FC layer (Gemm, or MatMul with an optional bias Add) and writing it as a Conv.

Shared by the head rules and by ``fc_chain``: they differ in where the layer's input comes from,
not in how the layer is read or how its Conv is built.

Weight maths. An FC layer computes ``y[n, f] = alpha * sum_k x[n, k] * W[f, k] + beta * c[f]`` with
``W`` stored ``[F, K]`` (Gemm transB=1, PyTorch's Linear) or ``[K, F]`` (transB=0, MatMul). When
``x`` is the flattening of a map ``X[n, C, *S]`` in C-order, ``k`` runs over ``(c, *s)`` in the same
order, so ``W[f, :].reshape(C, *S)`` is exactly the kernel of output channel ``f`` of a Conv whose
kernel covers the map: ``Conv(X, alpha * W.reshape(F, C, *S), beta * c)[n, f, 0, ...] = y[n, f]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import GraphIndex, attr
from .base import Rewrite, Skip


@dataclass
class Dense:
    """An FC layer ``y = alpha * x @ W^T + bias`` read from the graph, without touching its data."""

    nodes: list[onnx.NodeProto]  # the Gemm, or the MatMul and its fused Add
    input: str
    output: str
    weight: str  # constant tensor holding W
    weight_is_k_by_f: bool  # True when stored [K, F] (needs a transpose)
    in_features: int
    out_features: int
    alpha: float = 1.0
    bias: np.ndarray | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.nodes[0].name or self.nodes[0].output[0]

    def describe(self) -> str:
        return f"{self.nodes[0].op_type} {self.in_features}->{self.out_features}"


def read_gemm(index: GraphIndex, node: onnx.NodeProto) -> Dense | Skip:
    if attr(node, "transA", 0):
        return Skip("trans_a")
    meta = index.constant_meta(node.input[1])
    if meta is None:
        return Skip("weight_not_constant")
    shape, dtype = meta
    if len(shape) != 2:
        return Skip("weight_not_constant", f"the weight has rank {len(shape)}, not 2")
    trans_b = bool(attr(node, "transB", 0))
    out_f, in_k = (shape if trans_b else shape[::-1])
    bias = None
    if len(node.input) > 2 and node.input[2]:
        c = index.constant(node.input[2])
        if c is None:
            return Skip("weight_not_constant", "the bias is computed at run time")
        bias = _bias_vector(c, out_f)
        if bias is None:
            return Skip("bias_per_sample", f"the bias has shape {list(c.shape)}; a conv bias needs [F]")
        bias = (float(attr(node, "beta", 1.0)) * bias).astype(dtype)
    return Dense([node], node.input[0], node.output[0], node.input[1], not trans_b, in_k, out_f,
                 alpha=float(attr(node, "alpha", 1.0)), bias=bias)


def read_matmul_add(index: GraphIndex, node: onnx.NodeProto) -> Dense | Skip | None:
    """MatMul(x, W[K, F]) with a constant W, and the Add of a constant [F] bias that follows it.

    Returns None when W is not a constant: a MatMul of two activations is not an FC layer.
    """
    meta = index.constant_meta(node.input[1])
    if meta is None or len(meta[0]) != 2:
        return None
    (in_k, out_f), dtype = meta
    nodes, output, bias = [node], node.output[0], None
    add = index.only_consumer(node.output[0])
    if add is not None and add.op_type == "Add":
        other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        c = index.constant(other)
        vec = _bias_vector(c, out_f) if c is not None else None
        if vec is not None:
            nodes, output, bias = [node, add], add.output[0], vec.astype(dtype)
    return Dense(nodes, node.input[0], output, node.input[1], True, in_k, out_f, bias=bias)


def _bias_vector(c: np.ndarray, out_f: int) -> np.ndarray | None:
    """``c`` as a per-channel vector [F] when it broadcasts the same way to every sample."""
    if c.ndim == 2 and c.shape[0] == 1:
        c = c[0]
    if c.ndim > 1 or (c.ndim == 1 and c.shape[0] not in (1, out_f)):
        return None
    return np.broadcast_to(c, (out_f,)).copy()


def conv_from_dense(index: GraphIndex, dense: Dense, x: str, channels: int, kernel: tuple[int, ...],
                    spatial_rank: int, **rewrite_fields) -> Rewrite | Skip:
    """The Conv that computes ``dense`` on map ``x`` ``[N, channels, *spatial]`` with ``kernel``."""
    if channels * int(np.prod(kernel)) != dense.in_features:
        return Skip("weight_shape_mismatch",
                    f"the layer takes {dense.in_features} inputs but the map gives "
                    f"{channels}x{'x'.join(map(str, kernel))}={channels * int(np.prod(kernel))}")
    conv_shape = (dense.out_features, channels, *kernel)
    weight_name, new_inits, reshaped = _conv_weight(index, dense, conv_shape)
    inputs = [x, weight_name]
    if dense.bias is not None:
        bias_name = index.fresh_name(f"{dense.name}.bias")
        new_inits.append(numpy_helper.from_array(dense.bias, bias_name))
        inputs.append(bias_name)
    conv = helper.make_node("Conv", inputs, [dense.output], name=dense.name,
                            kernel_shape=list(kernel), strides=[1] * len(kernel))
    detail = (f"{dense.describe()} -> Conv {dense.out_features}x{channels}x"
              f"{'x'.join(map(str, kernel))}")
    return Rewrite(removed=list(dense.nodes), new_nodes=[conv], maps={dense.output: spatial_rank},
                   initializers=new_inits, reshaped=reshaped, detail=detail, **rewrite_fields)


def _conv_weight(index: GraphIndex, dense: Dense, conv_shape: tuple[int, ...]) -> tuple[str, list, dict]:
    """The conv kernel: its name, new initializers, and initializers to reshape in place.

    With ``W`` stored ``[F, K]`` and ``alpha = 1`` the kernel has the same bytes as ``W``: when only
    this layer reads ``W``, the rewrite just gives it the kernel's dims (no copy of a weight that may
    be hundreds of MB). Otherwise a new initializer is written: the original is never mutated, as
    other nodes may read it."""
    owned = index.owned_initializer(dense.weight)
    if owned is not None and not dense.weight_is_k_by_f and dense.alpha == 1.0:
        return dense.weight, [], {dense.weight: conv_shape}
    w = index.constant(dense.weight)
    if dense.weight_is_k_by_f:
        w = w.T
    if dense.alpha != 1.0:
        w = (w * dense.alpha).astype(w.dtype)
    name = index.fresh_name(f"{dense.name}.weight")
    return name, [numpy_helper.from_array(np.ascontiguousarray(w).reshape(conv_shape), name)], {}
