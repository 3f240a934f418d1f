"""fc_chain: once a head is a Conv, every later FC layer on its output is a 1x1 Conv, and the
pointwise ops between them work on the map unchanged.

Before::

    Y [N,F] -> Relu -> Gemm(W2 [F2,F], c2) -> Sigmoid -> Mul(s [F2]) -> Z [N,F2]

After::

    Y [N,F,h,w] -> Relu -> Conv(1x1, W2.reshape(F2,F,1,1), c2) -> Sigmoid -> Mul(s.reshape(F2,1,1)) -> Z [N,F2,h,w]

Weight maths: a 1x1 Conv applies the FC layer at every position, ``Wc = alpha * W.reshape(F2, F, 1, 1)``
(``W^T`` for MatMul / transB=0), bias ``beta * c``. A constant operand of a binary op that
broadcast on the last axis of ``[N,F]`` (``[F]``, ``[1,F]``, PRelu slopes) is reshaped to
``[F,1,1]`` / ``[1,F,1,1]`` so it still meets the channel axis; scalars stay as they are. The
reshaped constant is a new initializer, so a weight read elsewhere is never changed.

Token and vector maps (``token_matmul``, ``token_rows``, ``vector_fc``) go the same way with kernel-1
Convs, a GPT-2 layer on a token map too (its Reshapes go, see ``token_rows.on_map``); their
constants take the layout's own steps (``layouts.Layout.constant``: ``[D]`` -> ``[D,1]`` for conv1d
tokens, a ``[T,D]`` table -> ``[1,D,T]``). BatchNormalization normalises axis 1, which is the token
axis of ``[B,T,D]``, so on tokens it ends the run. A channels-last map (``channels_last_mlp``) ends at
the model's own ``Transpose(0,3,1,2)``: it and the Transpose back the run adds there undo each other,
and both go (``runs.LayoutBridge.cancel_inverse_transposes``).

Pointwise ops passed through: Relu, LeakyRelu, PRelu, Elu, Selu, Celu, Sigmoid, HardSigmoid,
HardSwish, Tanh, Softplus, Softsign, Gelu, Erf, Abs, Neg, Exp, Log, Sqrt, Reciprocal, Clip, Dropout,
Identity, Cast, com.microsoft Gelu/FastGelu/QuickGelu on tokens (FastGelu's bias becomes an Add),
BatchNormalization (its channel axis is 1 in both layouts),
Add/Sub/Mul/Div/Pow/Max/Min whose other operands are constants (or maps of the same head), and
QuantizeLinear/DequantizeLinear with constant scale and zero point (QDQ models): per tensor as they
are, per channel with ``axis`` 1 (the feature axis of ``[N,F]``, and the last axis of ``[B,T,D]``
tokens, is the channel axis of the map).

Returns None for anything else: the pipeline then puts a Flatten back on that edge (``fcn_blocked``).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import attr, is_onnx_op, node_inputs, set_attr
from ..layouts import TOKEN_LAYOUTS, Layout, flat
from . import token_rows
from ._dense import conv_from_dense
from ._head import QDQ_OPS, UNARY_OPS, read_fc
from .base import Built, Match, Outcome, Rule, RuleContext, Skip, node_copy

# Ops whose extra inputs are per-call constants that need no reshape (Clip bounds, BN statistics).
CONSTANT_ARG_OPS = frozenset({"Clip", "BatchNormalization"})
BROADCAST_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu"})
# ONNX Runtime's fused GELUs (its transformers optimizer writes them): elementwise, except for
# FastGelu's optional bias, added first on the last axis.
CONTRIB_GELUS = frozenset({"Gelu", "FastGelu", "QuickGelu"})


def apply(ctx: RuleContext, node: onnx.NodeProto) -> Outcome:
    if node.domain == "com.microsoft" and node.op_type in CONTRIB_GELUS:
        return _contrib_gelu(ctx, node)
    if not is_onnx_op(node):
        return None
    readers = [i for i in node_inputs(node) if i in ctx.maps]
    infos = {ctx.maps[i] for i in readers}
    if len(infos) != 1:
        return Skip("mixed_maps")
    info = infos.pop()
    spatial_rank = info.spatial_rank
    layout = info.layout or flat(spatial_rank)
    op = node.op_type
    if op in ("Gemm", "MatMul"):
        return _dense_as_1x1(ctx, node, spatial_rank)
    if op == "Reshape" and layout.name in TOKEN_LAYOUTS and node.input[0] in ctx.maps:
        return token_rows.on_map(ctx, node, layout)
    if node.input[0] not in ctx.maps and op not in BROADCAST_OPS:
        return None
    if op in UNARY_OPS:
        return _same_node(node, spatial_rank)
    if op in CONSTANT_ARG_OPS:
        if not all(ctx.index.is_constant(i) for i in node.input[1:] if i):
            return None
        if op == "BatchNormalization" and not layout.keeps_channel_axis:
            return None
        return _same_node(node, spatial_rank, outputs=node.output[:1])
    if op in BROADCAST_OPS:
        return _broadcast_op(ctx, node, layout)
    if op in QDQ_OPS:
        return _quantize_on_map(ctx, node, layout)
    return None


def _quantize_on_map(ctx: RuleContext, node: onnx.NodeProto, layout: Layout) -> Outcome:
    values = [ctx.index.constant(i) for i in node.input[1:] if i]
    params = [p for p in values if p is not None]
    if len(params) < len(values) or attr(node, "block_size", 0):
        return None
    if not any(p.size > 1 for p in params):
        return _same_node(node, layout.spatial_rank)
    if attr(node, "axis", 1) % layout.original_rank != layout.original_rank - 1:  # not per feature
        return None

    def build() -> Built:
        new = node_copy(node)
        set_attr(new, "axis", 1)
        return Built([new])

    return Match(removed=[node], maps={o: layout.spatial_rank for o in node.output if o}, build=build,
                 kind="pointwise")


def _dense_as_1x1(ctx: RuleContext, node: onnx.NodeProto, spatial_rank: int) -> Outcome:
    if node.input[0] not in ctx.maps or any(i in ctx.maps for i in node.input[1:]):
        return None
    dense = read_fc(ctx.index, node)
    if dense is None or isinstance(dense, Skip):
        return dense
    return conv_from_dense(ctx.index, dense, node.input[0], dense.in_features, (1,) * spatial_rank, spatial_rank)


def _same_node(node: onnx.NodeProto, spatial_rank: int, outputs=None) -> Match:
    outputs = node.output if outputs is None else outputs
    return Match(removed=[node], maps={o: spatial_rank for o in outputs if o},
                 build=lambda: Built([node_copy(node)]), kind="pointwise")


def _contrib_gelu(ctx: RuleContext, node: onnx.NodeProto) -> Outcome:
    """``FastGelu(x, b) = FastGelu(x + b)``: on a map the bias becomes an Add of ``b`` in the map's layout."""
    info = ctx.maps.get(node.input[0])
    if info is None or info.layout is None or info.layout.name not in TOKEN_LAYOUTS:
        return None  # ORT's transformer fusions: only token runs carry them; elsewhere they are left alone
    if any(i in ctx.maps for i in node.input[1:]):
        return None
    if len(node_inputs(node)) == 1:
        return _same_node(node, info.spatial_rank)
    bias = ctx.index.constant(node.input[1]) if node.op_type == "FastGelu" else None
    mapped = (info.layout or flat(info.spatial_rank)).constant(bias) if bias is not None else None
    if mapped is None:
        return None

    def build() -> Built:
        bias_name = ctx.index.fresh_name(f"{node.input[1]}_per_channel")
        biased = ctx.index.fresh_name(f"{node.output[0]}_biased")
        add = helper.make_node("Add", [node.input[0], bias_name], [biased],
                               name=ctx.index.fresh_name(f"{node.name}_bias"))
        gelu = node_copy(node)
        del gelu.input[1:]
        gelu.input[0] = biased
        return Built([add, gelu], [numpy_helper.from_array(mapped, bias_name)])

    return Match(removed=[node], maps={node.output[0]: info.spatial_rank}, build=build, kind="pointwise")


def _broadcast_op(ctx: RuleContext, node: onnx.NodeProto, layout: Layout) -> Outcome:
    """The op on the map, each constant operand in the map's layout (checked now, written when built)."""
    per_channel: dict[int, np.ndarray] = {}  # operand position -> its value in the map's layout
    for pos, name in enumerate(node.input):
        if name in ctx.maps:
            continue
        value = ctx.index.constant(name)
        if value is None:
            return None
        channel_value = layout.constant(value)
        if channel_value is None:
            return Skip("bias_per_sample", f"the constant {name!r} of shape {list(value.shape)} is per sample")
        if channel_value.shape != value.shape:
            per_channel[pos] = channel_value

    def build() -> Built:
        new, inits = node_copy(node), []
        for pos, value in per_channel.items():
            new.input[pos] = ctx.index.fresh_name(f"{node.input[pos]}_per_channel")
            inits.append(numpy_helper.from_array(value, new.input[pos]))
        return Built([new], inits)

    return Match(removed=[node], maps={node.output[0]: layout.spatial_rank}, build=build, kind="pointwise")


RULE = Rule("fc_chain", "chain",
            "later Gemm/MatMul(+Add) become 1x1 Convs; pointwise ops and constant operands follow the map", apply)
