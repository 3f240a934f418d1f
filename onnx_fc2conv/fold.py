"""``--fold-batch``: one GEMM for a converted head at any batch size.

ONNX Runtime's CPU Conv runs one GEMM per image. A converted head at the original size has a 1x1
output, so at batch 32 it becomes 32 matrix-vector products, each reading the whole weight: several
times slower than the one Gemm it replaced. Folding moves the batch into a spatial axis for a run
of converted convs, so the runtime sees one image and does one GEMM per layer:

Before::

    X [N,C,H,W] -> Conv(F1xCxkhxkw) -> Relu -> Conv(F2xF1x1x1) -> Y [N,F2,h,w]

After::

    X -> Transpose(1,0,2,3) -> Unsqueeze(0) -> [1,C,N,H,W]
      -> Conv(F1xCx1xkhxkw) -> Relu -> Conv(F2xF1x1x1x1) -> [1,F2,N,h,w]
      -> Squeeze(0) -> Transpose(1,0,2,3) -> Y [N,F2,h,w]

A kernel of depth 1 never mixes two positions of the new axis, so each image is computed on its own
exactly as before (for the 1x1 convs this is the ``[N,C,h,w] -> [1,C,N*h*w,1]`` layout: one GEMM
over every image and position). The kernels keep their bytes and gain a leading 1 in their dims.

A run starts at a converted head Conv and goes on through 1x1 Convs and pointwise unary ops while
each tensor has exactly one reader; it needs a 1-D or 2-D map (ORT's Conv stops at 3 spatial axes).
"""
from __future__ import annotations

import onnx
from onnx import helper

from .graph import attr, is_onnx_op, set_attr
from .index import GraphIndex
from .layouts import unit_axes_node
from .rules.fc_chain import UNARY_OPS

# Pointwise ops whose meaning does not depend on the layout (Clip's bounds are scalars).
FOLDABLE_POINTWISE = UNARY_OPS | {"Clip"}


def fold_batch(model: onnx.ModelProto, head_nodes: list[str]) -> list[list[str]]:
    """Fold every run that starts at one of ``head_nodes`` (Conv names); returns the runs' nodes."""
    index = GraphIndex(model)
    by_name = {n.name: n for n in model.graph.node}
    runs = []
    for head in head_nodes:
        node = by_name.get(head)
        if node is None or not _is_foldable_conv(index, node) or len(attr(node, "kernel_shape", [])) not in (1, 2):
            continue
        run = [node]
        while True:
            nxt = index.only_consumer(run[-1].output[0])
            if nxt is None or not (is_onnx_op(nxt, *FOLDABLE_POINTWISE) or _is_pointwise_conv(index, nxt)):
                break
            if any(index.consumers.get(o) or o in index.graph_outputs for o in nxt.output[1:] if o):
                break  # e.g. a Dropout mask someone reads: it would come out in the folded layout
            run.append(nxt)
        _fold_run(index, run)
        runs.append([n.name or n.output[0] for n in run])
    return runs


def _is_foldable_conv(index: GraphIndex, node: onnx.NodeProto) -> bool:
    return (is_onnx_op(node, "Conv") and len(node.input) > 1 and node.input[1] in index.initializers
            and attr(node, "group", 1) == 1 and attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))


def _is_pointwise_conv(index: GraphIndex, node: onnx.NodeProto) -> bool:
    kernel = attr(node, "kernel_shape", [])
    return (_is_foldable_conv(index, node) and kernel and all(k == 1 for k in kernel)
            and all(s == 1 for s in attr(node, "strides", [1])) and not any(attr(node, "pads", [0])))


def _fold_run(index: GraphIndex, run: list[onnx.NodeProto]) -> None:
    graph = index.graph
    rank = len(attr(run[0], "kernel_shape")) + 2
    perm = [1, 0, *range(2, rank)]
    x, y = run[0].input[0], run[-1].output[0]
    x_t, x_folded, y_folded, y_t = (index.fresh_name(f"{base}_batch_folded") for base in (x + "_t", x, y, y + "_t"))
    unsqueeze, unsqueeze_axes = unit_axes_node(index, "Unsqueeze", x_t, x_folded, [0],
                                               index.fresh_name(f"{run[0].name}_fold_unsqueeze"))
    squeeze, squeeze_axes = unit_axes_node(index, "Squeeze", y_folded, y_t, [0],
                                           index.fresh_name(f"{run[-1].name}_unfold_squeeze"))
    graph.initializer.extend(unsqueeze_axes + squeeze_axes)
    before = [helper.make_node("Transpose", [x], [x_t], name=index.fresh_name(f"{run[0].name}_fold_transpose"),
                               perm=perm), unsqueeze]
    after = [squeeze, helper.make_node("Transpose", [y_t], [y],
                                       name=index.fresh_name(f"{run[-1].name}_unfold_transpose"), perm=perm)]
    run[0].input[0] = x_folded
    run[-1].output[0] = y_folded
    for node in run:
        if node.op_type == "Conv":
            _add_unit_axis(index, node)
    nodes = list(graph.node)
    end = nodes.index(run[-1]) + 1
    nodes[end:end] = after
    start = nodes.index(run[0])
    nodes[start:start] = before
    del graph.node[:]
    graph.node.extend(nodes)


def _add_unit_axis(index: GraphIndex, conv: onnx.NodeProto) -> None:
    """Give the Conv a leading spatial axis of size 1: its kernel, strides, dilations and pads."""
    kernel = list(attr(conv, "kernel_shape"))
    set_attr(conv, "kernel_shape", [1, *kernel])
    for key in ("strides", "dilations"):
        set_attr(conv, key, [1, *attr(conv, key, [1] * len(kernel))])
    pads = list(attr(conv, "pads", [0] * 2 * len(kernel)))
    set_attr(conv, "pads", [0, *pads[:len(kernel)], 0, *pads[len(kernel):]])
    weight = index.owned_initializer(conv.input[1])
    if weight is None:  # read elsewhere too: the other readers keep the kernel as it was
        weight = index.graph.initializer.add()
        weight.CopyFrom(index.initializers[conv.input[1]])
        weight.name = conv.input[1] = index.fresh_name(f"{conv.input[1]}_folded")
    dims = list(weight.dims)
    del weight.dims[:]
    weight.dims.extend([dims[0], dims[1], 1, *dims[2:]])

