"""``--output-stride N``: a finer output map in one run, by the "a trous" rewrite (DeepLab; FCN 3.2).

A converted model's output cells step by the backbone's total stride S, the product of its layers'
strides. To step by N instead (N divides S), the last strided layers, working back from the head,
whose strides multiply to S/N run at stride 1, and every spatial op after them reads its input with
the gaps that stride would have made, i.e. dilated by the factor removed so far::

    before (S = 8, N = 2):  conv 3x3 -> pool /2 -> conv 3x3 pad 1 -> pool /2 -> conv 3x3 pad 1 -> pool /2 -> head k x k
    after:                  conv 3x3 -> pool /2 -> conv 3x3 pad 1 -> pool /1 -> conv 3x3 dil 2 pad 2 -> pool /1 dil 2
                            -> head k x k dil 4

Per tensor t: c(t) is its cumulative stride in the original (input pixels per cell), c'(t) =
min(c(t), N) the finer one, D(t) = c(t) / c'(t) its dilation factor. A node reading x and writing y,
with stride s, kernel dilation d and pads p, gets stride s * D(x) / D(y), dilation d * D(x) and pads
p * D(x). Then for every tensor, the finer map's phase-0 cells (``t'[..., ::D, ::D]``) are the
original's cells exactly: the dilated kernel reads the same cells, the scaled pads stand where the
original's pads stood. Where that cannot be exact, the rewrite refuses with one of STRIDE_REASONS
(a typed :class:`OutputStrideError`) before it changes the model.

The sampling of each tensor (its cumulative stride and padding margin) is
:mod:`onnx_fc2conv.geometry`'s walk (:func:`~onnx_fc2conv.geometry.map_samplings`), told which ops
the rewrite can carry (:data:`CARRIED_OPS`); the window geometry of the outputs is that walk again on
the rewritten graph (the pipeline and :func:`coarse_model` call ``ConversionRecord.measure_geometry``),
and the verifier's crops of the finer map are a :class:`~onnx_fc2conv.geometry.Geometry` too
(:func:`crop_geometry`), read with geometry's cell and box functions.
"""
from __future__ import annotations

import copy
import math

import onnx

from .errors import OutputStrideError, first_line
from .geometry import PER_POSITION_OPS, AxisGeometry, Geometry, Sampling, SamplingWalk, map_samplings
from .graph import attr, is_onnx_op, node_key, op_label, opset_version, producers, set_attr
from .metadata import ConversionRecord, StrideRecord, read_record, write_record
from .report import StrideReport

STRIDE_REASONS: dict[str, str] = {
    "stride_mode": "--output-stride needs the fully convolutional mode and a converted head whose map slides",
    "stride_not_divisor": "the output stride does not divide the backbone's total stride",
    "stride_split": "the strides to remove do not multiply to S/N (a layer's stride would have to be split)",
    "stride_op": "an op on the path has no dilated form (at this opset) or mixes positions",
    "stride_ceil_mode": "a pooling layer to refine rounds its output size up (ceil_mode=1)",
    "stride_auto_pad": "a layer to refine pads by auto_pad SAME_*, which does not scale",
    "stride_opset": "a dilated pool needs a newer opset and onnx's version_converter does not upgrade the model",
    "stride_output": "a graph output other than a head's map would change sampling",
}

STRIDED_OPS = ("Conv", "MaxPool", "AveragePool")
# The opset from which each strided op has a ``dilations`` attribute.
DILATED_FROM = {"Conv": 1, "MaxPool": 10, "AveragePool": 19}
# The ops the rewrite carries: the strided ones it changes, and geometry's per-position ones, which
# keep their form at any sampling (the walk itself stops at a Softmax or Concat over an image axis).
# The walk's other ops are left out because each would need a rewrite of its own that this one does
# not make: Pad's and LpPool's pads and kernels would have to scale, a Transpose moves the image axes
# out of [N, C, *S]; a Reduce* or LayerNormalization over the channels is left out as untested here.
CARRIED_OPS = frozenset(STRIDED_OPS) | PER_POSITION_OPS


def _carried(node: onnx.NodeProto) -> bool:
    """Whether the rewrite can carry a finer sampling through ``node`` (the geometry walk stops at
    any other op)."""
    return is_onnx_op(node, *CARRIED_OPS)


def refine_output_stride(model: onnx.ModelProto, record: ConversionRecord,
                         output_stride: tuple[int, ...]) -> StrideReport:
    """Rewrite the converted ``model`` in place so that its maps step by ``output_stride`` input
    pixels; record what changed in ``record`` (written into the model's metadata by the caller).
    Raises :class:`OutputStrideError` before changing anything where the result would not be exact."""
    heads = [h for h in record.heads if h.outputs]
    if record.mode != "fully_convolutional" or not heads or len(record.spatial_inputs) != 1:
        why = ("the mode keeps the output shape" if record.mode != "fully_convolutional" else
               "no converted head reaches a graph output" if not heads else
               "no input's spatial size reaches the converted maps (a path is blocked)"
               if not record.spatial_inputs else "the maps read more than one spatial input")
        raise OutputStrideError("stride_mode", f"--output-stride: {why}")
    graph = model.graph
    walk = map_samplings(model, record.spatial_inputs, _carried)
    backbone = _backbone_stride(walk, [h.feature_map for h in heads])
    rank = len(backbone.stride)
    finer = output_stride * rank if len(output_stride) == 1 else output_stride
    given = f"--output-stride {'x'.join(map(str, output_stride))}"
    if len(finer) != rank:
        raise OutputStrideError("stride_not_divisor", f"{given}: {len(finer)} sizes for maps of {rank} spatial "
                                f"axes (give N, or one size per axis)")
    if any(s % n for s, n in zip(backbone.stride, finer)):
        square = backbone.stride[0] if len(set(backbone.stride)) == 1 else None
        choices = "" if square is None else \
            f": {', '.join(str(d) for d in range(1, square + 1) if square % d == 0)}"
        raise OutputStrideError("stride_not_divisor", f"{given}: the backbone's total stride is "
                                f"{'x'.join(map(str, backbone.stride))}, and the output stride must divide it{choices}")
    producer = producers(graph)
    dilation = {name: _dilation(name, s.stride, finer, producer) for name, s in walk.sampling.items()}
    plan = _plan(graph, dilation, {h.node for h in heads}, {o for h in heads for o in h.outputs})
    needed = max((DILATED_FROM[node.op_type] for node, change in plan if change["more_dilated"]), default=1)
    upgraded = _upgrade_opset(model, needed, plan) if needed > opset_version(model) else None
    by_key = {node_key(n): n for n in model.graph.node}
    original: dict[str, dict[str, list[int]]] = {}
    report = StrideReport(before=list(backbone.stride), after=list(finer),
                          margin=[max(b, e) for b, e in zip(backbone.margin_begin, backbone.margin_end)])
    for planned, change in plan:
        node = by_key[node_key(planned)]
        before = {k: list(attr(node, k, default)) for k, default in _defaults(rank).items()}
        original[node_key(node)] = {k: v for k, v in before.items() if change[k] != v}
        for name in original[node_key(node)]:
            set_attr(node, name, change[name])
        if change["strides"] != before["strides"]:
            report.finer_strides.append(f"{node_key(node)} ({node.op_type} stride "
                                        f"{'x'.join(map(str, before['strides']))} -> "
                                        f"{'x'.join(map(str, change['strides']))})")
        if change["dilations"] != before["dilations"]:
            report.dilated.append(node_key(node))
    if upgraded is not None:
        report.opset_upgraded = list(upgraded)
    record.output_stride = StrideRecord(stride=list(finer), backbone_stride=list(backbone.stride),
                                        margin_begin=list(backbone.margin_begin),
                                        margin_end=list(backbone.margin_end), original=original)
    return report


def _backbone_stride(walk: SamplingWalk, feature_maps: list[str]) -> Sampling:
    """The feature maps' common sampling; refuses where the walk could not follow one, or they differ."""
    found = []
    for name in feature_maps:
        if name in walk.unknown:
            node = walk.unknown[name]
            if node is None:
                raise OutputStrideError("stride_op", f"--output-stride: the backbone's stride cannot be followed "
                                        f"to {name!r}: the spatial input has no shape")
            direct = "Global" in node.op_type and name in node.output
            hint = " (--dense-pool makes a global pool before a head slide)" if direct else ""
            raise OutputStrideError("stride_op", f"--output-stride: the backbone's stride cannot be followed "
                                    f"through {op_label(node)} {node_key(node)!r} on the way to {name!r}{hint}")
        found.append(walk.sampling[name])
    if any(s.stride != found[0].stride for s in found):
        raise OutputStrideError("stride_not_divisor", "--output-stride: the heads read maps of different strides "
                                f"({', '.join('x'.join(map(str, s.stride)) for s in found)})")
    rank = len(found[0].stride)
    return Sampling(found[0].stride, tuple(max(s.margin_begin[a] for s in found) for a in range(rank)),
                    tuple(max(s.margin_end[a] for s in found) for a in range(rank)))


def _dilation(name: str, stride: tuple[int, ...], finer: tuple[int, ...], producer) -> tuple[int, ...]:
    """D(t) = c(t) / min(c(t), N) per axis; refuses where c(t) and N do not divide one another."""
    factors = []
    for c, n in zip(stride, finer):
        if (c >= n and c % n) or (c < n and n % c):
            node = producer.get(name)
            where = f" after {op_label(node)} {node_key(node)!r}" if node is not None else ""
            raise OutputStrideError("stride_split", f"--output-stride: {name!r}{where} steps by {c} pixels, which "
                                    f"an output stride of {n} cannot reach by turning whole strides to 1")
        factors.append(c // n if c >= n else 1)
    return tuple(factors)


def _defaults(rank: int) -> dict[str, list[int]]:
    """The strides, dilations and pads a strided op has when it does not say."""
    return {"strides": [1] * rank, "dilations": [1] * rank, "pads": [0] * (2 * rank)}


def _plan(graph: onnx.GraphProto, dilation: dict[str, tuple[int, ...]], head_nodes: set[str],
          head_outputs: set[str]) -> list[tuple[onnx.NodeProto, dict]]:
    """Each strided node to change, with its new strides, dilations and pads; refuses, naming the
    node, where an op reads a dilated tensor and has no exact dilated form.

    What follows a head's full-map Conv works on each output cell alone (1x1 Convs, pointwise ops, a
    Softmax over the classes, between Transposes before opset 13): the converter's own proof holds it
    to that, so it keeps its form at any sampling and is not walked."""
    plan = []
    constant_dims = {t.name: list(t.dims) for t in graph.initializer}
    after_heads: set[str] = set()
    for node in graph.node:  # topological order, as the checker requires
        if node.name in head_nodes or after_heads.intersection(node.input):
            after_heads.update(node.output)
            if node.name not in head_nodes:
                continue
        read = [n for n in node.input if n in dilation]
        if not read:
            continue
        d_in = dilation[read[0]]
        out = node.output[0]
        d_out = dilation.get(out)
        if d_out is None:  # the walk stopped here: fine only where nothing was dilated yet
            if any(f > 1 for n in read for f in dilation[n]):
                raise OutputStrideError("stride_op", f"--output-stride: {op_label(node)} {node_key(node)!r} "
                                        "reads a finer map and has no dilated form")
            continue
        if not is_onnx_op(node, *STRIDED_OPS):
            _check_constants_broadcast(constant_dims, node, d_out)
            continue
        if d_in == d_out == (1,) * len(d_in):
            continue
        change = _change(node, d_in, d_out)
        if any(change[k] != list(attr(node, k, v)) for k, v in _defaults(len(d_in)).items()):
            plan.append((node, change))
    for output in graph.output:
        if output.name not in head_outputs and any(f > 1 for f in dilation.get(output.name, ())):
            raise OutputStrideError("stride_output", f"--output-stride: graph output {output.name!r} is a backbone "
                                    "tensor, which a finer stride would change")
    return plan


def _check_constants_broadcast(constant_dims: dict[str, list[int]], node: onnx.NodeProto,
                               d_out: tuple[int, ...]) -> None:
    """A positionwise op on a dilated map may take constants that are the same at every position
    (per-channel scales and biases); a constant with a spatial extent would be read at other places."""
    if all(f == 1 for f in d_out):
        return
    for name in node.input:
        dims = constant_dims.get(name)
        if dims is not None and len(dims) > 2 and any(d > 1 for d in dims[-len(d_out):]):
            raise OutputStrideError("stride_op", f"--output-stride: {op_label(node)} {node_key(node)!r} adds the "
                                    f"constant {name!r} of spatial shape {dims}, which a finer map would misplace")


def _change(node: onnx.NodeProto, d_in: tuple[int, ...], d_out: tuple[int, ...]) -> dict:
    """The strided ``node``'s new strides, dilations and pads, reading a map dilated by ``d_in`` and
    writing one dilated by ``d_out``; ``more_dilated``: whether its kernel needs a larger dilation."""
    rank = len(d_in)
    defaults = _defaults(rank)
    strides, dilations, pads = (list(attr(node, k, v)) for k, v in defaults.items())
    kernel = list(attr(node, "kernel_shape", [])) or [0] * rank
    label = f"{op_label(node)} {node_key(node)!r}"
    if attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
        raise OutputStrideError("stride_auto_pad", f"--output-stride: {label} pads by auto_pad "
                                f"{attr(node, 'auto_pad')!r}, which does not scale with a dilation")
    if node.op_type != "Conv" and attr(node, "ceil_mode", 0):
        raise OutputStrideError("stride_ceil_mode", f"--output-stride: {label} rounds its output size up "
                                "(ceil_mode=1), so a finer map would have other cells at its far edge")
    if node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
        raise OutputStrideError("stride_op", f"--output-stride: {label} also writes its indices, which a "
                                "dilated MaxPool would number otherwise")
    new_strides = [s * i // o for s, i, o in zip(strides, d_in, d_out)]
    if any(s * i % o for s, i, o in zip(strides, d_in, d_out)):
        raise OutputStrideError("stride_split", f"--output-stride: {label} has stride {strides}, which cannot "
                                "lose the stride the output stride removes here")
    new_dilations = [d * i if k != 1 else d for d, i, k in zip(dilations, d_in, kernel)]
    new_pads = [p * d_in[a % rank] for a, p in enumerate(pads)]
    return {"strides": new_strides, "dilations": new_dilations, "pads": new_pads,
            "more_dilated": new_dilations != dilations}


def _upgrade_opset(model: onnx.ModelProto, needed: int, plan) -> tuple[int, int]:
    """Upgrade ``model`` to opset ``needed`` with onnx's version_converter, in place; refuses where
    the converter fails or its result fails the checker."""
    before = opset_version(model)
    ops = sorted({node.op_type for node, change in plan if DILATED_FROM[node.op_type] > before and
                  change["more_dilated"]})
    try:
        upgraded = onnx.version_converter.convert_version(model, needed)
        onnx.checker.check_model(upgraded)
    except Exception as exc:  # noqa: BLE001 - any failure of the converter is a refusal
        raise OutputStrideError("stride_opset", f"--output-stride: a dilated {' and '.join(ops)} needs opset "
                                f"{needed} (the model has {before}), and onnx's version_converter fails: "
                                f"{first_line(exc)}") \
            from None
    model.CopyFrom(upgraded)
    return before, needed


def coarse_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The stride-S conversion that ``model`` (refined by :func:`refine_output_stride`) came from:
    a copy with each changed node's strides, dilations and pads as they were, and a record without
    the output stride."""
    record = read_record(model)
    assert record is not None and record.output_stride is not None
    coarse = copy.deepcopy(model)
    by_key = {node_key(n): n for n in coarse.graph.node}
    for key, attrs in record.output_stride.original.items():
        node = by_key.get(key)
        if node is None:
            raise OutputStrideError("stride_op", f"the conversion record names node {key!r}, which the model lacks")
        for name, value in attrs.items():
            set_attr(node, name, value)
    record.output_stride = None
    record.measure_geometry(coarse)  # its cells step by the backbone's stride again
    write_record(coarse, record)
    return coarse


def crop_geometry(stride: StrideRecord, name: str, axes: list[int], original: list[int]) -> Geometry:
    """The finer map's cells as the verifier's reference runs see them: cell ``i`` stands for the
    crop of the ``original`` size at ``i * N`` (its :func:`~onnx_fc2conv.geometry.crop_box`), and
    the original backbone reads that crop with the padding margin around it (its
    :func:`~onnx_fc2conv.geometry.cell_box`), the begin side rounded up to the backbone's stride so
    the crop's feature map cells fall on the same input pixels as the whole image's. Without
    padding, the box is the crop."""
    begins = [math.ceil(b / s) * s for b, s in zip(stride.margin_begin, stride.backbone_stride)]
    return Geometry(name, tuple(axes), tuple(AxisGeometry(crop + begin + end, n, -begin, max(begin, end), crop)
                                             for crop, begin, end, n in zip(original, begins, stride.margin_end,
                                                                            stride.stride)))
