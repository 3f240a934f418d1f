"""Applying a plan: build each match, splice its nodes in, put maps into and out of their layouts,
convert inside If/Loop/Scan bodies, then clean up, sort and re-infer shapes.

:func:`rewrite` is the whole rewrite of a model (plan, then apply); it returns the conversion
record that the pipeline stores in the model for the verifier.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import helper

from .graph import (
    cleanup,
    is_onnx_op,
    node_inputs,
    producers,
    rename_input,
    set_shape,
    skeleton,
    toposort,
    upstream,
    value_dims,
)
from .index import GraphIndex
from .layouts import TOKEN_LAYOUTS
from .metadata import ConversionRecord
from .modelcheck import infer_shapes
from .options import Options
from .planner import FC_OPS, Decision, Plan, bodies, body_plan, layout_of, plan_graph
from .report import ConversionReport, NodeReport, OutputChange, dims_list
from .rules import Match, RuleContext
from .rules._head import elementwise_path
from .runs import LayoutBridge
from .spatial import SPATIAL_NAMES, make_spatial_inputs_symbolic, reshapes_as_transposes, token_axes
from .weights import ExternalWeights


def rewrite(model: onnx.ModelProto, options: Options, report: ConversionReport,
            weights: ExternalWeights | None = None) -> ConversionRecord | None:
    """Plan the rules, replace the matched nodes, put a Flatten back where a map meets an op that
    needs the flat tensor, do the same inside If/Loop/Scan bodies; then finish the outputs, clean up
    and re-infer shapes. Returns the conversion record the verifier needs (None when no head or token
    layer converted); the model is left exactly as it came when nothing converts. ``weights``: the
    model was read without its large external weights (see :mod:`onnx_fc2conv.weights`)."""
    graph = model.graph
    toposort(graph)
    index = GraphIndex(model, options.input_shapes, weights=weights)
    plan = plan_graph(index, options)
    ctx, heads = plan.ctx, plan.heads
    report.nodes.extend(plan.node_reports())
    bridge = apply_plan(graph, plan, report)
    in_bodies = rewrite_bodies(index, options, report)
    if bridge is None and not in_bodies.changed:
        return None  # nothing converted: the model stays exactly as it came, byte for byte
    bridge = bridge or LayoutBridge(index)
    fixed_size = fixed_size_notes(graph, plan, in_bodies.sized_heads)
    report.notes.extend(fixed_size)
    blocked = bridge.flattens_added > 0 or bool(fixed_size)
    token_entries = [name for name, layout in bridge.entered if layout in TOKEN_LAYOUTS]
    token_input_axes = token_axes(index, token_entries) if token_entries else None
    # Token and vector maps always get their layout back at a graph output; head maps only when asked.
    map_outputs = [o.name for o in graph.output if o.name in ctx.maps and not bridge.in_run(o.name)]
    run_outputs = [o.name for o in graph.output if o.name in ctx.maps and bridge.in_run(o.name)]
    _finish_layouts(ctx, graph, run_outputs + (map_outputs if options.keep_output_shape else []), bridge, report)
    if model.ir_version < 4:  # before IR 4 every initializer must also be listed as a graph input
        listed = {i.name for i in graph.input}
        graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                           for t in graph.initializer if t.name not in listed)

    report.fully_convolutional = bool(heads) and not options.keep_output_shape and not blocked
    spatial_inputs: dict[str, list[int]] = {}
    if report.fully_convolutional:
        moved = reshapes_as_transposes(index, graph, [h.feature_map for h in heads])
        spatial_inputs, kept = make_spatial_inputs_symbolic(index, graph, heads, options.input_shapes)
        report.notes.extend([f"Reshape {name!r} only moves a size-1 axis: it is now the Transpose it is, which "
                             "takes any size" for name in moved] + kept)
    cleanup(graph)
    toposort(graph)
    before = {o.name: value_dims(o)[1] for o in graph.output}
    changed = {} if options.keep_output_shape else {o: ctx.maps[o].spatial_rank for o in map_outputs}
    reinfer_shapes(model, changed)
    report.outputs = [OutputChange(o.name, dims_list(before[o.name]), dims_list(value_dims(o)[1]))
                      for o in graph.output]
    report.symbolic_inputs = {i.name: dims_list(value_dims(i)[1]) for i in graph.input if i.name in spatial_inputs}
    if not heads and token_input_axes is None:
        return None
    for i, head in enumerate(heads):
        head.outputs = [o for o in map_outputs if ctx.maps[o].head == i]
    record = ConversionRecord(mode=options.mode, heads=heads, spatial_inputs=spatial_inputs,
                              token_axes=token_input_axes)
    if spatial_inputs:  # the index is of the original graph: its input sizes are the crops
        report.geometry = record.measure_geometry(model, {name: index.shape(name) for name in spatial_inputs})
    return record


def fixed_size_notes(graph: onnx.GraphProto, plan: Plan, body_heads: list[str]) -> list[str]:
    """One line per converted head whose flattened map something still reads after the rewrite (an
    FC layer left as it is: excluded, skipped, inside an If body; or a graph output): that tensor has
    the original size built in, so, as for a blocked node, the input size must stay fixed. Likewise
    an FC layer left as it is that reads a head's map, and each head converted inside a body
    (``body_heads``), whose map is flattened back at the body output."""
    producer = producers(graph)  # of the rewritten graph, whose nodes are copies of the planned ones
    live, live_nodes = upstream(producer, [o.name for o in graph.output])
    reader = {name: node for node in live_nodes for name in node_inputs(node)}
    heads = _sized_heads(plan)
    notes = []
    for decision in heads:
        still_read = [n for n in _flattened(plan.ctx.index, decision.node) if n in live]
        if still_read:
            node = reader.get(still_read[0])
            who = f"node {node.name or node.output[0]!r}, which is not converted" if node else "a graph output"
            notes.append(f"the input size stays fixed: {still_read[0]!r}, the flattened map of head "
                         f"{decision.node.name or decision.node.output[0]!r}, is still read by {who}")
    notes = notes or _unconverted_fc_on_a_map(plan, heads, producer, live)
    return notes + [f"the input size stays fixed: head {head!r} is inside an If/Loop/Scan body, which gives "
                    "its map back flat, so a larger input would change the body's output" for head in body_heads]


def _sized_heads(plan: Plan) -> list[Decision]:
    """The converted heads whose window has a size: a head that reduces the whole map (a global
    reduce kept by squeeze_flatten) leaves an [N,C] with no size built in."""
    return [d for d in plan.decisions if isinstance(d.outcome, Match) and d.outcome.feature_map is not None
            and d.outcome.window is not None and None not in d.outcome.window]


def _unconverted_fc_on_a_map(plan: Plan, heads: list[Decision], producer: dict[str, onnx.NodeProto],
                             live: set[str]) -> list[str]:
    """The note for the first FC layer left as it is whose input is computed from the feature map of
    one of ``heads`` (through a Flatten of its own, say): a larger map would give it more inputs than
    its weight has. Conservative: a global pool on the way would make the size harmless, and still
    fixes it here."""
    maps = {d.outcome.feature_map: d.node for d in heads if isinstance(d.outcome, Match)}
    for decision in plan.decisions:
        unconverted_fc = decision.status == "skipped" and is_onnx_op(decision.node, *FC_OPS)
        if not unconverted_fc or decision.node.output[0] not in live:
            continue
        reached, _ = upstream(producer, decision.node.input[:1])
        head = next((node for feature_map, node in maps.items() if feature_map in reached), None)
        if head is not None:
            return [f"the input size stays fixed: node {decision.node.name or decision.node.output[0]!r}, which is "
                    f"not converted, reads a tensor computed from the feature map of head "
                    f"{head.name or head.output[0]!r}"]
    return []


def _flattened(index: GraphIndex, fc: onnx.NodeProto) -> list[str]:
    """The flat tensors a head's FC layer reads: the flatten's output and what the element-wise ops
    (and Identity, Dropout) between it and the layer make, flatten first."""
    flat, _ = elementwise_path(index, fc.input[0])
    path, name = [], fc.input[0]
    while name != flat:
        path.append(name)
        name = index.producer[name].input[0]
    return [flat, *path[::-1]]


def apply_plan(graph: onnx.GraphProto, plan: Plan, report: ConversionReport) -> LayoutBridge | None:
    """Replace the matched nodes of ``graph``, put the tensors token and vector layers read into their
    layout, and give each node that needs the original tensor its layout back (a Flatten before a
    blocked node). Returns the bridge that did it, or None when the plan rewrites nothing (the graph
    is untouched)."""
    ctx = plan.ctx
    replaced: dict[int, list[onnx.NodeProto]] = {}  # id(first removed node) -> its replacement
    removed: set[int] = set()
    new_initializers: list[onnx.TensorProto] = []
    bridge = LayoutBridge(ctx.index)  # enters and restores layouts, and keeps the token/vector runs
    extra_nodes: list[onnx.NodeProto] = []  # layouts restored for ops that need the original tensor
    for decision in plan.decisions:
        outcome, label = decision.outcome, decision.node.name or decision.node.output[0]
        if isinstance(outcome, Match):
            built = outcome.build()
            new_nodes = built.nodes
            # the maps any node it replaces read (a GPT-2 layer on a map reads it through its Reshape)
            read_maps = list(dict.fromkeys(n for old in outcome.removed for n in node_inputs(old) if n in ctx.maps))
            if outcome.entry is not None and outcome.layout is not None:
                new_nodes, entry_inits, entered = bridge.enter(outcome.entry, outcome.layout, list(new_nodes))
                new_initializers.extend(entry_inits)
                read_maps = [entered]
            bridge.record(label, outcome.kind, read_maps, list(outcome.maps), outcome.removed, built.nodes)
            replaced[id(outcome.removed[0])] = new_nodes
            removed.update(id(n) for n in outcome.removed)
            new_initializers.extend(built.initializers)
            for name, dims in built.reshaped.items():
                del ctx.index.initializers[name].dims[:]
                ctx.index.initializers[name].dims.extend(dims)
            report.transposes_added += sum(n.op_type == "Transpose" for n in built.nodes)
        elif decision.restores:
            _restore_layout(ctx, decision.node, bridge, extra_nodes, new_initializers)
    if not replaced:
        return None
    nodes = []
    for node in graph.node:
        if id(node) in replaced:
            nodes.extend(replaced[id(node)])
        elif id(node) not in removed:
            nodes.append(node)
    nodes.extend(extra_nodes)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_initializers)
    return bridge


@dataclass
class BodiesRewrite:
    """What converting inside the If/Loop/Scan bodies did: whether any body changed, and the heads
    converted there whose window has a size (scoped ``node/attribute/head``). Such a head's map is
    flattened back at the body output, so it holds at the original input size only."""

    changed: bool = False
    sized_heads: list[str] = field(default_factory=list)


def rewrite_bodies(outer: GraphIndex, options: Options, report: ConversionReport, scope: str = "") -> BodiesRewrite:
    """Convert the FC layers inside the If/Loop/Scan bodies of ``outer``'s graph (and theirs).

    A body is matched as a model of its own whose index reads outer-scope weights through
    ``outer``; a map that reaches a body output gets its layout back, so the body keeps its output
    shapes and the enclosing node is unchanged."""
    done = BodiesRewrite()
    for where, body in bodies(outer.graph, scope):
        work, index, plan = body_plan(body, outer, options)
        report.nodes.extend(_scoped(plan.node_reports(), where))
        bridge = apply_plan(work.graph, plan, report)
        inner = rewrite_bodies(index, options, report, where)
        done.sized_heads += inner.sized_heads
        if bridge is not None:
            done.sized_heads += [where + head.node for head in plan.heads if None not in head.window]
        if not (inner.changed or bridge is not None):
            continue
        graph = work.graph
        if bridge is not None:
            _finish_layouts(plan.ctx, graph, [o.name for o in graph.output if o.name in plan.ctx.maps], bridge, report)
        cleanup(graph)
        toposort(graph)
        del body.node[:]
        body.node.extend(graph.node)
        del body.initializer[:]
        body.initializer.extend(graph.initializer)  # the body's own, less the unused, plus the new kernels
        del body.value_info[:]  # shapes inside the body changed; ONNX Runtime infers them again
        done.changed = True
    return done


def _restore_layout(ctx: RuleContext, node: onnx.NodeProto, bridge: LayoutBridge, extra_nodes: list,
                    new_initializers: list) -> None:
    """Make ``node`` read each map it reads in the original layout: ``Flatten(map)`` for a head's map
    (at the original size that is the [N, F] it read before), the inverse Transpose or Reshape for a
    token or vector map. Once per map, however many nodes read it."""
    for name in dict.fromkeys(node_inputs(node)):
        if name not in ctx.maps:
            continue
        nodes, inits, restored = bridge.restore(name, layout_of(ctx.maps[name]), node.name or node.output[0])
        extra_nodes.extend(nodes)
        new_initializers.extend(inits)
        rename_input(node, name, restored)


def _finish_layouts(ctx: RuleContext, graph: onnx.GraphProto, outputs: list[str], bridge: LayoutBridge,
                    report: ConversionReport) -> None:
    """The graph outputs ``outputs`` get their original layout back under their own names (the map
    is renamed); the bridge's Transposes that meet an inverse one of the model's go with it; the
    report gets the Flattens, runs and Transposes the bridge added (and removed)."""
    for name in outputs:
        nodes, inits, restored = bridge.restore(name, layout_of(ctx.maps[name]), f"output {name}")
        graph.node.extend(nodes)
        graph.initializer.extend(inits)
        _rename_tensor(graph, name, ctx.index.fresh_name(f"{name}_map"))
        _rename_tensor(graph, restored, name)
    bridge.cancel_inverse_transposes(graph)
    report.flattens_added += bridge.flattens_added
    runs = bridge.reports()
    report.runs.extend(runs)
    report.transposes_added += sum(r.transposes_added for r in runs)
    report.transposes_removed += sum(r.transposes_removed for r in runs)


def _rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        rename_input(node, old, new)
        for i, out in enumerate(node.output):
            if out == old:
                node.output[i] = new


def reinfer_shapes(model: onnx.ModelProto, map_outputs: dict[str, int]) -> None:
    """Give outputs that became maps their new shape ``[N, F, <out>_h, <out>_w]``, drop value_info
    that may be stale, and infer it again."""
    graph = model.graph
    del graph.value_info[:]
    for out in graph.output:
        if out.name in map_outputs:
            _, dims = value_dims(out)
            rank = map_outputs[out.name]
            names = SPATIAL_NAMES.get(rank, tuple(f"d{i}" for i in range(rank)))
            lead = list(dims[:2]) if dims is not None and len(dims) == 2 else [None, None]
            set_shape(out, lead + [f"{out.name}_{n}" for n in names])
    inferred = infer_shapes(skeleton(model), "ONNX Runtime infers the shapes itself")
    if inferred is None:
        return
    outputs = {o.name for o in graph.output}
    graph.value_info.extend(vi for vi in inferred.graph.value_info if vi.name not in outputs)


def _scoped(lines: list[NodeReport], scope: str) -> list[NodeReport]:
    for line in lines:
        line.node = scope + line.node
    return lines

