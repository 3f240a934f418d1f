"""dense_pool (``--dense-pool``): a classifier with a global pool returns a class map on larger inputs.

Before::

    X [N,C,H,W] -> GlobalAveragePool -> [N,C,1,1] -> (1x1 Conv, BN, Relu, ...) -> Flatten -> Gemm -> Y [N,F]

After::

    X [N,C,H,W] -> AveragePool(kernel_shape=[H,W], strides=1) -> (1x1 Conv, BN, Relu, ...) -> Conv 1x1 -> Y [N,F,1,1]
                   (on a larger X: [N,F,H'-H+1,W'-W+1], the scores of every HxW window)

Without the option the head converts too, but the global pool averages whatever it gets, so every
input size gives one 1x1 output. ``H,W`` is the size of the pooled map at the model's input size.
At that size an ``HxW`` AveragePool with stride 1 is one average per channel, the global pool's
value, so the model is unchanged there; on a larger map each output position is the original model
applied to one ``HxW`` window of X, which the sliding-window check proves with X as the feature map.
No weights change: the head's Conv is the one the other head rules build.

Pools: GlobalAveragePool, GlobalMaxPool (-> MaxPool), ReduceMean / ReduceMax over every spatial
axis with ``keepdims=1``, an AveragePool whose kernel covers its unpadded input (Caffe2's ResNet head), and the
ReduceMean/ReduceMax with ``keepdims=0`` that ``squeeze_flatten`` keeps (-> AveragePool/MaxPool); the head
may read the pooled map through a Flatten, a Reshape or a Squeeze.
Between the pool and the flatten only position-wise ops may stand (element-wise ops, per-tensor
Q/DQ, BatchNormalization, Clip, 1x1 Conv with stride 1 and no padding, Add/Sub/Mul/Div/Pow/Max/Min/PRelu
with a constant that broadcasts per channel, and ConvNeXt's LayerNorm2d: ``Transpose(0,2,3,1) ->
LayerNormalization(axis=-1) -> Transpose(0,3,1,2)``, or its ReduceMean/Sub/Pow/Sqrt/Div form below
opset 17, which normalises each position's channels alone),
each read by nothing else.

Returns None, so the head converts as usual, when the option is off or no global pool feeds the
head. When a global pool is there but kept, the head converts with it and its detail says why: the
op between them that does not work on each position alone (or that is read elsewhere), or a pooled
map whose size is not static (a model with a free H and W; pass ``--input-shape``).
"""
from __future__ import annotations

from dataclasses import replace

import onnx
from onnx import helper

from ..graph import attr, is_onnx_op, op_label
from ..index import GraphIndex
from ._head import input_producer, is_elementwise
from .base import Built, Match, Outcome, Rule, RuleContext
from .squeeze_flatten import GLOBAL_REDUCES, on_spatial_axes, reduce_axes

GLOBAL_POOLS = {"GlobalAveragePool": "AveragePool", "GlobalMaxPool": "MaxPool",
                "ReduceMean": "AveragePool", "ReduceMax": "MaxPool", "AveragePool": "AveragePool"}
BINARY_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu"})


def apply(ctx: RuleContext, node: onnx.NodeProto) -> Outcome:
    if not getattr(ctx.options, "dense_pool", False):
        return None
    for rule in ctx.rules:
        if rule.stage == "head" and rule is not RULE and rule.name not in ctx.options.skip_rules:
            outcome = rule.apply(ctx, node)
            if outcome is not None:
                break
    else:
        return None
    if not isinstance(outcome, Match):
        return None
    if outcome.window is None or outcome.feature_map is None:
        return None  # not a head over a map
    if outcome.window[1] is None:  # squeeze_flatten kept the model's own global reduce: widen that
        pool, kept = input_producer(ctx.index, node), True
    elif all(s == 1 for s in outcome.window[1:]):
        pool, stop = _pool_before(ctx.index, outcome.feature_map)
        kept = False
        if pool is None:
            if stop is None:
                return None
            stopper, why = stop
            above = _global_pool_above(ctx.index, stopper)
            if above is None:
                return None
            outcome.detail += f"; {above.op_type} {above.name!r} kept: {why}"
            return outcome
    else:
        return None
    if pool is None:
        return None
    dims = ctx.index.shape(pool.input[0])
    if dims is None or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        outcome.detail += f"; {pool.op_type} kept: its input's size is not static (pass --input-shape)"
        return outcome
    window = list(dims[2:])
    head_build = outcome.build

    def build() -> Built:
        built = head_build()
        # The kept reduce is the first node squeeze_flatten builds; otherwise the pool is replaced.
        output = built.nodes[0].output[0] if kept else pool.output[0]
        dense = helper.make_node(GLOBAL_POOLS[pool.op_type], [pool.input[0]], [output],
                                 name=ctx.index.fresh_name(f"{pool.name or pool.op_type}_dense"),
                                 kernel_shape=window, strides=[1] * len(window))
        nodes = [dense, *built.nodes[1:]] if kept else [dense, *built.nodes]
        return Built(nodes, built.initializers, built.reshaped)

    dense_op = GLOBAL_POOLS[pool.op_type]
    return replace(outcome, build=build, removed=outcome.removed if kept else [*outcome.removed, pool],
                   feature_map=pool.input[0], window=tuple(d for d in dims[1:] if isinstance(d, int)),
                   detail=outcome.detail + f", {pool.op_type} -> {dense_op} {'x'.join(map(str, window))} stride 1")


Stop = tuple[onnx.NodeProto, str]  # the node where a walk to the pool stopped, and why, in words


def _pool_before(index: GraphIndex, name: str) -> tuple[onnx.NodeProto | None, Stop | None]:
    """The global pool that ``name`` is computed from position by position; else None and where and
    why the walk up from ``name`` stopped (None when it met no node)."""
    flatten = [r for r in index.consumers.get(name, []) if is_onnx_op(r, "Flatten", "Reshape", "Squeeze")]
    if len(flatten) != 1:
        return None, None
    reader = flatten[0]
    while True:
        node = index.producer.get(name)
        if node is None:
            return None, None
        others = [r for r in index.consumers.get(name, [])
                  if r is not reader and not _only_shapes(index, r, flatten[0])]
        if others or name in index.graph_outputs:
            elsewhere = f"node {others[0].name!r}" if others else "a graph output"
            what = "its output" if _is_global_pool(index, node) else f"the output of {op_label(node)} {node.name!r}"
            return None, (node, f"{what} is also read by {elsewhere}")
        reader = node
        if _is_global_pool(index, node):
            return node, None
        opening, inside = _channels_last_segment(index, node)
        if opening is not None:
            reader, name = opening, opening.input[0]
            continue
        stopper = inside or node
        if not _is_position_wise(index, node):
            return None, (stopper, f"{op_label(stopper)} {stopper.name!r} between it and the head does not work on "
                                   "each position alone")
        name = node.input[0]


def _global_pool_above(index: GraphIndex, start: onnx.NodeProto) -> onnx.NodeProto | None:
    """The first global pool on the first-input path up from ``start``, which a head on a 1x1 map reads."""
    node: onnx.NodeProto | None = start
    seen: set[int] = set()
    while node is not None and id(node) not in seen:
        if _is_global_pool(index, node):
            return node
        seen.add(id(node))
        node = index.producer.get(node.input[0]) if node.input else None
    return None


def _channels_last_segment(index: GraphIndex, closing: onnx.NodeProto
                           ) -> tuple[onnx.NodeProto | None, onnx.NodeProto | None]:
    """The opening Transpose when ``closing`` ends ``Transpose(0,2,..,1) -> ... -> Transpose(0,r-1,1,..)``
    and every op between works on the channels of each position alone (timm's LayerNorm2d, as
    LayerNormalization or as the ReduceMean/Sub/Pow/Sqrt/Div form), read by nothing outside; else
    None, and the op between that does not (None when ``closing`` is no such Transpose)."""
    rank = len(index.shape(closing.output[0]) or ())
    if not is_onnx_op(closing, "Transpose") or rank < 3 or attr(closing, "perm") != [0, rank - 1, *range(1, rank - 1)]:
        return None, None
    opening, segment, pending = None, {id(closing): closing}, [closing.input[0]]
    while pending:
        node = index.producer.get(pending.pop())
        if node is None:
            return None, None
        if id(node) in segment:
            continue
        if is_onnx_op(node, "Transpose") and attr(node, "perm") == [0, *range(2, rank), 1]:
            if opening is not None and opening is not node:
                return None, None
            opening = node
            continue
        if not _per_position_on_last_axis(index, node, rank):
            return None, node
        segment[id(node)] = node
        pending.extend(i for i in node.input if i and not index.is_constant(i))
    if opening is None:
        return None, None
    inner = [n for n in segment.values() if n is not closing] + [opening]
    read_inside = all(o not in index.graph_outputs and all(id(r) in segment for r in index.consumers.get(o, []))
                      for n in inner for o in n.output if o)
    return (opening, None) if read_inside else (None, None)


def _per_position_on_last_axis(index: GraphIndex, node: onnx.NodeProto, rank: int) -> bool:
    """Whether ``node``, on a channels-last tensor of rank ``rank``, works on each position's channels alone."""
    if is_onnx_op(node, "LayerNormalization"):
        return attr(node, "axis", -1) % rank == rank - 1 and not any(node.output[1:])
    if is_onnx_op(node, "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceSumSquare"):
        return attr(node, "keepdims", 1) == 1 and reduce_axes(index, node, rank) == [rank - 1]
    if is_elementwise(index, node):
        return True
    if not is_onnx_op(node, *BINARY_OPS):
        return False
    constants = [index.constant(i) for i in node.input if i and index.is_constant(i)]  # read only here
    return all(v is not None and v.ndim <= rank and all(d == 1 for d in v.shape[:-1]) for v in constants)


def _only_shapes(index: GraphIndex, node: onnx.NodeProto, flatten: onnx.NodeProto) -> bool:
    """Whether ``node`` only helps compute the target shape of the head's flatten (PyTorch's
    ``x.view(x.size(0), -1)`` reads Shape(x)), which the head makes dead."""
    if is_onnx_op(node, "Reshape") and node is not flatten or any(o in index.graph_outputs for o in node.output):
        return False
    for out in node.output:
        for reader in index.consumers.get(out, []):
            if reader is flatten and flatten.input[0] != out:
                continue
            if reader is flatten or not _only_shapes(index, reader, flatten):
                return False
    return True


def _is_global_pool(index: GraphIndex, node: onnx.NodeProto) -> bool:
    dims = index.shape(node.input[0])
    if not is_onnx_op(node, *GLOBAL_POOLS) or dims is None or len(dims) < 3:
        return False
    if node.op_type in GLOBAL_REDUCES:
        return attr(node, "keepdims", 1) == 1 and on_spatial_axes(index, node, len(dims))
    if node.op_type == "AveragePool":
        return (attr(node, "kernel_shape") == list(dims[2:]) and not any(attr(node, "pads", [])) and
                attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", b"VALID"))
    return True


def _is_position_wise(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """Whether each output position depends on the same input position alone (and the input is input 0)."""
    if is_elementwise(index, node):
        return True
    if is_onnx_op(node, "Conv"):  # the kernel's shape is enough: its values are never read here
        kernel = index.constant_meta(node.input[1])
        return (kernel is not None and all(index.is_constant(i) for i in node.input[2:] if i) and
                all(k == 1 for k in kernel[0][2:]) and
                all(s == 1 for s in attr(node, "strides", [1])) and not any(attr(node, "pads", [])) and
                attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", b"VALID"))
    values = [index.constant(i) for i in node.input[1:] if i]
    others = [v for v in values if v is not None]
    if len(others) < len(values):
        return False
    if is_onnx_op(node, "BatchNormalization", "Clip"):
        return True
    rank = len(index.shape(node.output[0]) or ())
    return is_onnx_op(node, *BINARY_OPS) and rank >= 3 and all(
        v.size == 1 or (v.ndim >= rank - 1 and all(d == 1 for d in v.shape[-(rank - 2):])) for v in others)


RULE = Rule("dense_pool", "head",
            "with --dense-pool, the global pool before a head becomes a stride-1 pool over its window", apply)
