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

from ..graph import attr, is_onnx_op
from ..index import GraphIndex
from ..weights import KernelRecipe, kernel_rows
from .base import Built, Match, Skip

CONV_BFLOAT16_SINCE = 22  # Conv-1 and Conv-11 take float16, float and double only


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


def not_constant_skip(index: GraphIndex, name: str, what: str = "weight", message: str = "") -> Skip:
    """Why the layer's ``what`` (weight or bias) gives no fixed kernel: it is an initializer the caller
    may replace (also a graph input; a kernel baked from it would ignore the caller's value and drop
    the model's input), or it is computed at run time (``message`` says so, else the reason's sentence)."""
    if name in index.overridable:
        return Skip("weight_overridable", f"the {what} {name!r} is also a graph input, so a caller may replace it; "
                                          "the layer stays as it is to keep that input")
    blocked = next((s for s in quantized_weight(index, name) or () if attr(s, "block_size", 0)), None)
    if blocked is not None:  # made of constants, but not folded: blocks have no per-channel kernel scale
        return Skip("quantized_weight_axis", f"{blocked.op_type} {blocked.name!r} quantizes the {what} in blocks "
                                             f"of {attr(blocked, 'block_size')}")
    return Skip("weight_not_constant", message)


def read_gemm(index: GraphIndex, node: onnx.NodeProto) -> Dense | Skip:
    if attr(node, "transA", 0):
        return Skip("trans_a")
    meta = index.constant_meta(node.input[1])
    if meta is None:
        return not_constant_skip(index, node.input[1], message=index.unfolded.get(node.input[1], ""))
    shape, dtype = meta
    if len(shape) != 2:
        return Skip("weight_not_constant", f"the weight has rank {len(shape)}, not 2")
    trans_b = bool(attr(node, "transB", 0))
    out_f, in_k = (shape if trans_b else shape[::-1])
    bias = None
    if len(node.input) > 2 and node.input[2]:
        c = index.constant(node.input[2])
        if c is None:
            return not_constant_skip(index, node.input[2], "bias", "the bias is computed at run time")
        bias = _bias_vector(c, out_f)
        if bias is None:
            return Skip("bias_per_sample", f"the bias has shape {list(c.shape)}; a conv bias needs [F]")
        bias = (float(attr(node, "beta", 1.0)) * bias).astype(dtype)
    return Dense([node], node.input[0], node.output[0], node.input[1], not trans_b, in_k, out_f,
                 alpha=float(attr(node, "alpha", 1.0)), bias=bias)


def read_matmul_add(index: GraphIndex, node: onnx.NodeProto) -> Dense | None:
    """MatMul(x, W[K, F]) with a constant W, and the Add of a constant [F] bias that follows it.

    Returns None when W is not a constant: a MatMul of two activations is not an FC layer.
    """
    meta = index.constant_meta(node.input[1])
    if meta is None or len(meta[0]) != 2:
        return None
    (in_k, out_f), dtype = meta
    nodes, output, bias = [node], node.output[0], None
    add = index.only_consumer(node.output[0])
    if add is not None and is_onnx_op(add, "Add"):
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
                    spatial_rank: int, flatten_perm: tuple[int, ...] | None = None, **match_fields) -> Match | Skip:
    """The Conv that computes ``dense`` on map ``x`` ``[N, channels, *spatial]`` with ``kernel``.

    ``flatten_perm``: the layer flattened ``Transpose(x, perm)`` rather than ``x`` (see nhwc_flatten).
    Every check is made here; the kernel is written only when the match is built."""
    if index.dtype(x) == onnx.TensorProto.BFLOAT16 and index.opset < CONV_BFLOAT16_SINCE:
        return Skip("unsupported_dtype",
                    f"Conv takes bfloat16 from opset {CONV_BFLOAT16_SINCE}; the model has opset {index.opset}")
    if channels * int(np.prod(kernel)) != dense.in_features:
        return Skip("weight_shape_mismatch",
                    f"the layer takes {dense.in_features} inputs but the map gives "
                    f"{channels}x{'x'.join(map(str, kernel))}={channels * int(np.prod(kernel))}")
    conv_shape = (dense.out_features, channels, *kernel)
    stages = quantized_weight(index, dense.weight)
    if stages is not None:
        refusal = quantized_axis_skip(index, dense, stages)
        if refusal is not None:
            return refusal

    def build() -> Built:
        if stages is not None:
            weight_name, inits, weight_nodes = quantized_kernel(
                index, dense, stages, lambda w: kernel_layout(w, dense.weight_is_k_by_f, conv_shape, flatten_perm))
            reshaped: dict[str, tuple[int, ...]] = {}
        else:
            weight_name, inits, reshaped = _conv_weight(index, dense, conv_shape, flatten_perm)
            weight_nodes = []
        inputs = [x, weight_name]
        if dense.bias is not None:
            bias_name = index.fresh_name(f"{dense.name}.bias")
            inits.append(numpy_helper.from_array(dense.bias, bias_name))
            inputs.append(bias_name)
        conv = helper.make_node("Conv", inputs, [dense.output], name=dense.name,
                                kernel_shape=list(kernel), strides=[1] * len(kernel))
        return Built([*weight_nodes, conv], inits, reshaped)

    detail = (f"{dense.describe()} -> Conv {dense.out_features}x{channels}x"
              f"{'x'.join(map(str, kernel))}")
    return Match(removed=list(dense.nodes), maps={dense.output: spatial_rank}, build=build, detail=detail,
                 **match_fields)


def kernel_layout(w: np.ndarray, weight_is_k_by_f: bool, conv_shape: tuple[int, ...],
                  flatten_perm: tuple[int, ...] | None = None) -> np.ndarray:
    """The stored weight (``[F,K]``, or ``[K,F]``) as a conv kernel ``conv_shape`` = ``[F, C, *S]``.

    With ``flatten_perm`` the rows are in the order of ``Transpose(x, perm)`` (e.g. H,W,C for
    ``perm=[0,2,3,1]``): axis ``j`` of the rows is axis ``perm[j]`` of ``x``, so the kernel is the
    rows reshaped to ``[F, *x.shape[perm[1:]]]`` and transposed back to x's axis order.
    """
    return kernel_rows(w.T if weight_is_k_by_f else w, conv_shape, flatten_perm).reshape(conv_shape)


def _conv_weight(index: GraphIndex, dense: Dense, conv_shape: tuple[int, ...],
                 flatten_perm) -> tuple[str, list[onnx.TensorProto], dict[str, tuple[int, ...]]]:
    """The float conv kernel: its name, new initializers, and initializers to reshape in place.

    With ``W`` stored ``[F, K]`` in the map's order and ``alpha = 1`` the kernel has the same bytes
    as ``W``: when only this layer reads ``W``, the rewrite just gives it the kernel's dims (no copy
    of a weight that may be hundreds of MB). Otherwise a new initializer is written: the original is
    never mutated, as other nodes may read it. When ``W`` stays in IN's external data (a conversion
    written to a file) that initializer is a placeholder, made from IN's file block by block when
    OUT is written (:mod:`onnx_fc2conv.weights`), so the weight is never read whole."""
    owned = index.owned_initializer(dense.weight)
    if owned is not None and not dense.weight_is_k_by_f and dense.alpha == 1.0 and flatten_perm is None:
        return dense.weight, [], {dense.weight: conv_shape}
    source = index.initializers.get(dense.weight)
    if (index.weights is not None and source is not None
            and index.weights.streams(source, dense.weight_is_k_by_f, dense.alpha)):
        name = index.fresh_name(f"{dense.name}.weight")  # made from IN's file when OUT is written
        recipe = KernelRecipe(source, dense.weight_is_k_by_f, conv_shape, flatten_perm, dense.alpha)
        return name, [index.weights.kernel(name, recipe)], {}
    w = kernel_layout(index.known_constant(dense.weight), dense.weight_is_k_by_f, conv_shape, flatten_perm)
    if dense.alpha != 1.0:
        w = (w * dense.alpha).astype(w.dtype)
    name = index.fresh_name(f"{dense.name}.weight")
    return name, [numpy_helper.from_array(w, name)], {}


def quantized_weight(index: GraphIndex, name: str) -> list[onnx.NodeProto] | None:
    """``[DequantizeLinear]`` when the weight is DQ of a constant integer tensor, ``[QuantizeLinear,
    DequantizeLinear]`` when it is a float constant behind a Q->DQ pair; None for a plain weight."""
    dq = index.producer.get(index.skip_passthrough(name))
    if dq is None or not is_onnx_op(dq, "DequantizeLinear") or not all(index.is_constant(i) for i in dq.input if i):
        return None
    q = index.producer.get(dq.input[0])
    return [q, dq] if q is not None and is_onnx_op(q, "QuantizeLinear") else [dq]


def quantized_axis_skip(index: GraphIndex, dense: Dense, stages: list[onnx.NodeProto]) -> Skip | None:
    """``quantized_weight_axis`` when a Q/DQ stage quantizes the weight per input feature or in
    blocks: a conv kernel keeps one scale per output channel."""
    out_axis = 1 if dense.weight_is_k_by_f else 0  # the output-feature axis of the stored weight
    for stage in stages:
        scale = index.constant_meta(stage.input[1])
        per_channel = scale is not None and int(np.prod(scale[0])) > 1
        if attr(stage, "block_size", 0) or (per_channel and attr(stage, "axis", 1) % 2 != out_axis):
            return Skip("quantized_weight_axis",
                        f"{stage.op_type} {stage.name!r} quantizes the weight per input feature or in blocks")
    return None


def quantized_kernel(index: GraphIndex, dense: Dense, stages: list[onnx.NodeProto],
                     arrange) -> tuple[str, list[onnx.TensorProto], list[onnx.NodeProto]]:
    """Rearrange the tensor the Q/DQ stages read (``arrange``), keep their scales and zero points, and
    move a per-channel ``axis`` to 0, the conv's output channels. ``alpha`` goes into the DQ scale.
    The stages passed :func:`quantized_axis_skip`."""
    source = index.fresh_name(f"{dense.name}.weight_{'float' if len(stages) == 2 else 'quantized'}")
    inits = [numpy_helper.from_array(arrange(index.known_constant(stages[0].input[0])), source)]
    nodes, current = [], source
    for stage in stages:
        scale = index.known_constant(stage.input[1])
        if stage.op_type == "DequantizeLinear" and dense.alpha != 1.0:
            scale = np.asarray(scale * dense.alpha, dtype=scale.dtype)
        scale_name = index.fresh_name(f"{dense.name}.weight_scale")
        inits.append(numpy_helper.from_array(scale, scale_name))
        inputs = [current, scale_name]
        if len(stage.input) > 2 and stage.input[2]:
            zero_name = index.fresh_name(f"{dense.name}.weight_zero_point")
            inits.append(numpy_helper.from_array(index.known_constant(stage.input[2]), zero_name))
            inputs.append(zero_name)
        current = index.fresh_name(f"{dense.name}.weight_{stage.op_type}")
        node = helper.make_node(stage.op_type, inputs, [current],
                                name=index.fresh_name(f"{dense.name}_{stage.op_type}"))
        node.attribute.extend(a for a in stage.attribute if a.name != "axis")
        if scale.size > 1:
            node.attribute.append(helper.make_attribute("axis", 0))
        nodes.append(node)
    return current, inits, nodes
