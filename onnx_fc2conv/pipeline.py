"""The conversion, top to bottom: load -> find FC chains -> apply rules -> clean up -> check -> save.

:func:`convert` is the whole story; each step below it is one function.
"""
from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import helper

from . import __version__
from .errors import Fc2ConvError, InvalidModelError, VerificationFailed, first_line
from .graph import (GraphIndex, attr, body_model, infer_value_types, named_subgraphs, node_inputs, opset_version,
                    rename_input, set_shape, skeleton, value_dims)
from .inputs import check_input_options
from .layouts import TOKEN_LAYOUTS, Layout, flat
from .modelio import PathLike, needs_external_data, payload_bytes, read_model, save_model
from .progress import LARGE_MODEL_BYTES, Progress, megabytes
from .report import ConversionReport, NodeReport, NodeStatus, OutputChange
from .safety import check_graph, check_output_path, check_tolerances, external_data_path
from .rules import RULE_NAMES, RULES, MapInfo, Rewrite, RuleContext, Skip
from .runs import LayoutBridge

FC_OPS = ("Gemm", "MatMul")
# FC layers written with quantized operators, which no rule rewrites; they are still reported, so
# that every FC layer of a model is accounted for. Value: the position of the weight input.
QUANTIZED_FC_OPS = {"QGemm": 3, "QLinearMatMul": 3, "MatMulInteger": 1}
METADATA_KEY = "onnx_fc2conv"
SPATIAL_NAMES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}


@dataclass
class Options:
    keep_output_shape: bool = False
    dense_pool: bool = False
    skip_rules: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    input_shapes: dict[str, tuple] = field(default_factory=dict)
    token_layout: str | None = None  # "conv1d" / "conv2d": token MatMuls become kernel-1 Convs
    vector_fc: bool = False  # Gemm/MatMul on plain [N,D] tensors become 1x1 Convs


@dataclass
class ConversionResult:
    model: onnx.ModelProto
    report: ConversionReport

    def __bool__(self) -> bool:
        return self.report.verification is None or bool(self.report.verification)


@dataclass
class Head:
    """A converted head: the feature map it reads, its window, and the Conv that replaced it."""

    feature_map: str
    window: tuple[int, ...]
    node: str


def make_options(*, keep_output_shape: bool = False, dense_pool: bool = False, skip_rules=(), include=(),
                 exclude=(), input_shapes: dict | None = None, token_layout: str | None = None,
                 vector_fc: bool = False) -> Options:
    """The rule options shared by :func:`convert` and ``inspect``, checked."""
    unknown = sorted(set(skip_rules) - set(RULE_NAMES))
    if unknown:
        raise Fc2ConvError(f"unknown rule {unknown[0]!r}; rules are: {', '.join(RULE_NAMES)}")
    if token_layout is not None and token_layout not in TOKEN_LAYOUTS:
        raise Fc2ConvError(f"unknown token layout {token_layout!r}; layouts are: {', '.join(TOKEN_LAYOUTS)}")
    return Options(keep_output_shape=keep_output_shape, dense_pool=dense_pool, skip_rules=tuple(skip_rules),
                   include=tuple(include), exclude=tuple(exclude), input_shapes=dict(input_shapes or {}),
                   token_layout=token_layout, vector_fc=vector_fc)


def convert(model: PathLike | onnx.ModelProto, output_path: PathLike | None = None, *,
            keep_output_shape: bool = False, dense_pool: bool = False, skip_rules=(), include=(), exclude=(),
            input_shapes: dict | None = None, token_layout: str | None = None, vector_fc: bool = False,
            verify: bool = True, providers=("cpu",), rtol: float | None = None, atol: float | None = None,
            input_data=None, seed: int = 0, inplace: bool = False, external_data: bool = False,
            fold_batch: bool = False, show_progress: bool = False) -> ConversionResult:
    """Rewrite the FC layers of ``model`` into convolutions, prove it, and optionally save it.

    ``model`` is a path or a ``ModelProto`` (never modified). With ``verify`` (the default) the
    result is checked with ONNX Runtime and :class:`VerificationFailed` is raised on a mismatch, in
    which case nothing is written to ``output_path``; :class:`CouldNotVerify` when the original model
    itself does not run on the verifier's inputs. ``output_path`` may be the input file only with
    ``inplace``; it is replaced atomically, after verification. Weights go to ``<OUT>.data`` beside
    it with ``external_data``, when the input kept them in external data, or when they pass 2 GB.
    ``fold_batch`` folds the batch into a spatial axis for the converted convs, so that ONNX Runtime
    runs them as one GEMM at any batch (see :mod:`onnx_fc2conv.fold`). ``show_progress`` prints the
    steps that take a while on stderr.

    ``input_shapes`` maps input names to dims (``None`` keeps a dim symbolic): they pin sizes for the
    verifier and tell the rewrite the feature-map size the graph leaves symbolic. ``input_data`` (a
    dict of arrays, or an ``.npz`` path) feeds the original-size check; its arrays pin shapes too.
    ``dense_pool``: a global pool before a head becomes a stride-1 pool over its window, so a pooled
    classifier returns a class map. ``token_layout`` ("conv1d" or "conv2d") turns MatMuls on
    ``[B,T,D]`` tokens into kernel-1 Convs, ``vector_fc`` FC layers on plain ``[N,D]`` tensors into
    1x1 Convs; ``include``/``exclude`` are node-name globs that pick FC layers.
    """
    options = make_options(keep_output_shape=keep_output_shape, dense_pool=dense_pool, skip_rules=skip_rules,
                           include=include, exclude=exclude, input_shapes=input_shapes, token_layout=token_layout,
                           vector_fc=vector_fc)
    check_tolerances(rtol, atol)
    if output_path is not None:
        check_output_path(model, Path(output_path), inplace)
    seconds: dict[str, float] = {}
    progress = Progress(show_progress, seconds)
    label = model_label(model)
    progress.large = not isinstance(model, onnx.ModelProto) and Path(model).is_file() and \
        Path(model).stat().st_size >= LARGE_MODEL_BYTES
    with progress.step("load", f"loading {label}"):
        work, had_external_data = read_model(model)
        input_passes_full_check = check_input_model(work, label)
        input_data = check_input_options(work, options.input_shapes, input_data)
        options.input_shapes = {**{name: value.shape for name, value in input_data.items()},
                                **options.input_shapes}
    size = payload_bytes(work)
    progress.large = size >= LARGE_MODEL_BYTES

    with progress.step("rewrite", f"rewriting {label} ({megabytes(size)} of weights)"):
        report = ConversionReport(model=label, opset=opset_version(work),
                                  mode="keep_output_shape" if keep_output_shape else "fully_convolutional")
        rewrite_graph(work, options, report)
        if fold_batch and report.converted:
            _fold_batch(work, report)
        previous = read_metadata(work)
        if previous and not report.converted:
            report.notes.append(f"already converted by onnx-fc2conv {previous['version']}; nothing left to convert")

    with progress.step("check", "checking the rewritten model"):
        check_output_model(work, strict=input_passes_full_check)

    result = ConversionResult(work, report)
    if verify and report.converted:
        from .verify import verify as run_verification

        with progress.step("verify", "verifying with ONNX Runtime"):
            report.verification = run_verification(model, work, providers=providers, rtol=rtol, atol=atol,
                                                   input_shapes=options.input_shapes, input_data=input_data,
                                                   seed=seed)
        if not report.verification:
            report.seconds = seconds
            raise VerificationFailed(report.verification.summary(), result)
    if output_path is not None:
        external = external_data or had_external_data or needs_external_data(work)
        where = f" (weights in {external_data_path(Path(output_path)).name})" if external else ""
        with progress.step("save", f"writing {output_path}{where}"):
            save_model(work, output_path, external_data=external)
    report.seconds = seconds
    return result


def _fold_batch(model: onnx.ModelProto, report: ConversionReport) -> None:
    from .fold import fold_batch

    runs = fold_batch(model, [head["node"] for head in (read_metadata(model) or {}).get("heads", [])])
    if runs:
        _reinfer_shapes(model, {})
        report.transposes_added += 2 * len(runs)
        report.notes.append(f"--fold-batch: the batch is folded into a spatial axis around "
                            f"{'; '.join(' -> '.join(run) for run in runs)}")


# ---- find FC chains and apply the rules --------------------------------------------------------

@dataclass
class Match:
    """What the rules decided for one node, before anything is changed.

    ``status`` is the node's line in the report (``None`` for the pointwise ops and axis fix-ups
    carried along a converted map, which are not reported on their own, and for the ops where a
    token or vector run ends). ``restores``: the node reads a map but needs the original tensor.
    """

    node: onnx.NodeProto
    rule: str | None
    outcome: Rewrite | Skip
    status: NodeStatus | None
    restores: bool = False

    def node_report(self) -> NodeReport:
        name = self.node.name or self.node.output[0]
        if isinstance(self.outcome, Rewrite):
            return NodeReport(name, self.node.op_type, "converted", rule=self.rule, detail=self.outcome.detail)
        message = self.outcome.message
        if self.status == "blocked":
            message += "; Flatten put back before it"
        return NodeReport(name, self.node.op_type, self.status, rule=self.rule, reason=self.outcome.reason,
                          message=message)


@dataclass
class Plan:
    """The rules' decisions for a whole graph: the dry run that both the rewrite and ``inspect`` use."""

    ctx: RuleContext
    matches: list[Match]
    heads: list[Head]

    def node_reports(self) -> list[NodeReport]:
        return [m.node_report() for m in self.matches if m.status is not None]


def match_nodes(index: GraphIndex, options: Options) -> Plan:
    """Walk the graph once in topological order, trying head rules on FC nodes and chain rules on
    nodes that read a converted map. Nothing in the graph is changed."""
    if options.token_layout or options.vector_fc:
        index.infer_unknown_shapes()  # transformer exports lose ranks at computed Reshapes and contrib ops
    ctx = RuleContext(index, maps={}, options=options)
    plan = Plan(ctx, [], [])
    removed: set[int] = set()
    for node in index.graph.node:
        if id(node) in removed:
            continue
        reads_map = any(name in ctx.maps for name in node_inputs(node))
        if not reads_map and node.op_type not in FC_OPS:
            plan.matches.extend(_unsupported_fc_nodes(index, node))
            continue
        outcome, rule = _first_outcome(ctx, node, "chain" if reads_map else "head", options)
        if isinstance(outcome, Rewrite):
            read_maps = [n for n in node_inputs(node) if n in ctx.maps]
            head, layout = None, outcome.layout  # a token/vector entry starts a run of its own layout
            if outcome.feature_map is not None:
                head = len(plan.heads)
                plan.heads.append(Head(outcome.feature_map, outcome.window, node.name or node.output[0]))
            elif read_maps:
                head, layout = ctx.maps[read_maps[0]].head, ctx.maps[read_maps[0]].layout
            for name, rank in outcome.maps.items():
                ctx.maps[name] = MapInfo(rank, head, layout)
            removed.update(id(n) for n in outcome.removed)
            plan.matches.append(Match(node, rule, outcome, "converted" if outcome.kind == "fc" else None))
        elif reads_map:
            # A head's map meeting such an op blocks the fully convolutional model; a token or vector
            # run simply ends there (reported only when the op is an FC layer left as it is).
            skip = outcome if isinstance(outcome, Skip) else Skip("fcn_blocked")
            if any(_layout_of(ctx.maps[n]).name == "flat" for n in node_inputs(node) if n in ctx.maps):
                status = "blocked"
            else:
                status = "skipped" if node.op_type in FC_OPS and isinstance(outcome, Skip) else None
            plan.matches.append(Match(node, rule, skip, status, restores=True))
        elif _is_fc_candidate(index, node) or outcome is not None:
            plan.matches.append(Match(node, rule, outcome if isinstance(outcome, Skip) else _default_skip(index, node),
                                      "skipped"))
    return plan


def rewrite_graph(model: onnx.ModelProto, options: Options, report: ConversionReport) -> None:
    """Match the rules, replace the matched nodes, put a Flatten back where a map meets an op
    that needs the flat tensor, do the same inside If/Loop/Scan bodies; then finish the outputs,
    clean up and re-infer shapes."""
    graph = model.graph
    toposort(graph)
    index = GraphIndex(model, options.input_shapes)
    plan = match_nodes(index, options)
    ctx, heads = plan.ctx, plan.heads
    report.nodes.extend(plan.node_reports())
    bridge = apply_plan(graph, plan, report)
    bodies_changed = rewrite_bodies(index, options, report)
    if bridge is None and not bodies_changed:
        return  # nothing converted: the model stays exactly as it came, byte for byte
    bridge = bridge or LayoutBridge(index)
    blocked = bridge.flattens_added > 0
    token_entries = [name for name, layout in bridge.entered if layout in TOKEN_LAYOUTS]
    token_axes = _token_axes(index, token_entries) if token_entries else None
    # Token and vector maps always get their layout back at a graph output; head maps only when asked.
    map_outputs = [o.name for o in graph.output if o.name in ctx.maps and not bridge.in_run(o.name)]
    run_outputs = [o.name for o in graph.output if o.name in ctx.maps and bridge.in_run(o.name)]
    _finish_layouts(ctx, graph, run_outputs + (map_outputs if options.keep_output_shape else []), bridge, report)
    if model.ir_version < 4:  # before IR 4 every initializer must also be listed as a graph input
        listed = {i.name for i in graph.input}
        graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                           for t in graph.initializer if t.name not in listed)

    report.fully_convolutional = bool(heads) and not options.keep_output_shape and not blocked
    spatial_inputs = (_make_spatial_inputs_symbolic(index, graph, heads, options.input_shapes)
                      if report.fully_convolutional else {})
    cleanup(graph)
    toposort(graph)
    before = {o.name: value_dims(o)[1] for o in graph.output}
    changed = {} if options.keep_output_shape else {o: ctx.maps[o].spatial_rank for o in map_outputs}
    _reinfer_shapes(model, changed)
    report.outputs = [OutputChange(o.name, _dims_list(before[o.name]), _dims_list(value_dims(o)[1]))
                      for o in graph.output]
    report.symbolic_inputs = {i.name: _dims_list(value_dims(i)[1]) for i in graph.input if i.name in spatial_inputs}
    if heads or token_axes is not None:
        _write_metadata(model, options, heads, ctx.maps, map_outputs, spatial_inputs, token_axes)


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
    for match in plan.matches:
        outcome, label = match.outcome, match.node.name or match.node.output[0]
        if isinstance(outcome, Rewrite):
            new_nodes = outcome.new_nodes
            read_maps = [n for n in node_inputs(match.node) if n in ctx.maps]
            if outcome.entry is not None:
                new_nodes, entry_inits, entered = bridge.enter(outcome.entry, outcome.layout, list(new_nodes))
                new_initializers.extend(entry_inits)
                read_maps = [entered]
            bridge.record(label, outcome.kind, read_maps, list(outcome.maps))
            replaced[id(outcome.removed[0])] = new_nodes
            removed.update(id(n) for n in outcome.removed)
            new_initializers.extend(outcome.initializers)
            for name, dims in outcome.reshaped.items():
                del ctx.index.initializers[name].dims[:]
                ctx.index.initializers[name].dims.extend(dims)
            report.transposes_added += sum(n.op_type == "Transpose" for n in outcome.new_nodes)
        elif match.restores:
            _restore_layout(ctx, match.node, bridge, extra_nodes, new_initializers)
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


def rewrite_bodies(outer: GraphIndex, options: Options, report: ConversionReport, scope: str = "") -> bool:
    """Convert the FC layers inside the If/Loop/Scan bodies of ``outer``'s graph (and theirs).

    A body is matched as a model of its own whose index reads outer-scope weights through
    ``outer``; a map that reaches a body output gets its layout back, so the body keeps its output
    shapes and the enclosing node is unchanged. Returns whether any body changed."""
    changed = False
    for where, body in _bodies(outer.graph, scope):
        work, index, plan = _body_plan(body, outer, options)
        report.nodes.extend(_scoped(plan.node_reports(), where))
        bridge = apply_plan(work.graph, plan, report)
        if not (rewrite_bodies(index, options, report, where) or bridge is not None):
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
        changed = True
    return changed


def body_plans(outer: GraphIndex, options: Options, scope: str = "") -> Iterator[tuple[str, GraphIndex, Plan]]:
    """The rules' decisions inside every If/Loop/Scan body, nested ones too, without changing
    anything: ``(scope, body index, plan)`` where scope is ``"node/attribute/"``."""
    for where, body in _bodies(outer.graph, scope):
        _, index, plan = _body_plan(body, outer, options)
        yield where, index, plan
        yield from body_plans(index, options, where)


def _bodies(graph: onnx.GraphProto, scope: str) -> Iterator[tuple[str, onnx.GraphProto]]:
    for node in graph.node:
        for attribute, body in named_subgraphs(node):
            yield f"{scope}{node.name or node.output[0]}/{attribute}/", body


def _body_plan(body: onnx.GraphProto, outer: GraphIndex, options: Options):
    work = body_model(body, outer)
    toposort(work.graph)
    index = GraphIndex(work, outer=outer)
    return work, index, match_nodes(index, options)


def _scoped(lines: list[NodeReport], scope: str) -> list[NodeReport]:
    for line in lines:
        line.node = scope + line.node
    return lines


def _first_outcome(ctx: RuleContext, node: onnx.NodeProto, stage: str, options: Options):
    """The first rewrite a rule of ``stage`` makes of ``node`` and that rule's name; else the first
    rule's refusal (a later rule may still rewrite what an earlier one refused: a Gemm on a Flatten
    that does not keep the batch alone is still a vector FC layer)."""
    refusal = None, None
    for rule in RULES:
        if rule.stage != stage:
            continue
        outcome = rule.apply(ctx, node)
        if outcome is None:
            continue
        if rule.name in options.skip_rules:
            outcome = Skip("rule_disabled", f"rule {rule.name} is turned off")
        elif isinstance(outcome, Rewrite) and outcome.kind == "fc" and not _selected(node, options):
            outcome = Skip("excluded", f"{node.name!r} is not selected by --include/--exclude")
        if isinstance(outcome, Rewrite):
            return outcome, rule.name
        if refusal[0] is None:
            refusal = outcome, rule.name
    return refusal


def _selected(node: onnx.NodeProto, options: Options) -> bool:
    name = node.name or node.output[0]
    if options.include and not any(fnmatch.fnmatchcase(name, p) for p in options.include):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in options.exclude)


def _unsupported_fc_nodes(index: GraphIndex, node: onnx.NodeProto) -> list[Match]:
    """FC layers no rule can rewrite: quantized FC operators."""
    if node.op_type in QUANTIZED_FC_OPS and _is_fc_candidate(index, node):
        return [Match(node, None, Skip("quantized_op", f"{node.op_type} is a quantized operator; "
                                       f"no rule rewrites it"), "skipped")]
    return []


def _is_fc_candidate(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """Gemm always is; a MatMul is an FC layer only when its weight is a matrix computed from
    constants (an initializer, a Constant, or e.g. DequantizeLinear of one)."""
    if node.op_type in ("Gemm", "QGemm"):
        return True
    weight = node.input[QUANTIZED_FC_OPS.get(node.op_type, 1)]
    dims = index.shape(weight)
    return index.is_static(weight) and dims is not None and len(dims) == 2


def _default_skip(index: GraphIndex, node: onnx.NodeProto) -> Skip:
    dims = index.shape(node.input[0])
    if node.op_type == "MatMul" and dims is not None and len(dims) >= 3:
        return Skip("token_matmul")
    weight = index.producer.get(node.input[1])
    if weight is not None and not index.is_constant(node.input[1]):
        return Skip("weight_not_constant", f"the weight comes from {weight.op_type} {weight.name!r}, "
                                           f"which is not folded to a constant")
    return Skip("not_a_feature_map")


def _restore_layout(ctx: RuleContext, node: onnx.NodeProto, bridge: LayoutBridge, extra_nodes: list,
                    new_initializers: list) -> None:
    """Make ``node`` read each map it reads in the original layout: ``Flatten(map)`` for a head's map
    (at the original size that is the [N, F] it read before), the inverse Transpose or Reshape for a
    token or vector map. Once per map, however many nodes read it."""
    for name in dict.fromkeys(node_inputs(node)):
        if name not in ctx.maps:
            continue
        nodes, inits, restored = bridge.restore(name, _layout_of(ctx.maps[name]), node.name or node.output[0])
        extra_nodes.extend(nodes)
        new_initializers.extend(inits)
        rename_input(node, name, restored)


def _finish_layouts(ctx: RuleContext, graph: onnx.GraphProto, outputs: list[str], bridge: LayoutBridge,
                    report: ConversionReport) -> None:
    """The graph outputs ``outputs`` get their original layout back under their own names (the map
    is renamed); the report gets the Flattens, runs and Transposes the bridge added."""
    for name in outputs:
        nodes, inits, restored = bridge.restore(name, _layout_of(ctx.maps[name]), f"output {name}")
        graph.node.extend(nodes)
        graph.initializer.extend(inits)
        _rename_tensor(graph, name, ctx.index.fresh_name(f"{name}_map"))
        _rename_tensor(graph, restored, name)
    report.flattens_added += bridge.flattens_added
    runs = bridge.reports()
    report.runs.extend(runs)
    report.transposes_added += sum(r.transposes_added for r in runs)


def _rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        rename_input(node, old, new)
        for i, out in enumerate(node.output):
            if out == old:
                node.output[i] = new


def _layout_of(info: MapInfo) -> Layout:
    return info.layout or flat(info.spatial_rank)


def _token_axes(index: GraphIndex, entries: list[str]) -> dict[str, list[int]]:
    """The graph-input axes that carry the token axis of the tensors put into a token layout, so the
    verifier can vary the sequence length: the symbolic input axes whose size is the token axis's (its
    name, or its value under --input-shape). Where shape inference renamed it (``unk__3``), the one
    symbolic non-batch size the inputs have, if they have only one."""
    tokens = {dims[1] for dims in map(index.shape, entries) if dims is not None and len(dims) == 3} - {None}
    declared = {name: value_dims(inp)[1] or () for name, inp in index.graph_inputs.items()}
    symbolic = {d for dims in declared.values() for d in dims[1:] if isinstance(d, str)}
    if not tokens & symbolic and not any(isinstance(t, int) for t in tokens) and len(symbolic) == 1:
        tokens = symbolic
    axes = {}
    for name, dims in declared.items():
        current = index.shape(name) or dims
        found = [a for a in range(1, min(len(dims), len(current))) if isinstance(dims[a], str) and current[a] in tokens]
        if found:
            axes[name] = found
    return axes


def _make_spatial_inputs_symbolic(index: GraphIndex, graph: onnx.GraphProto, heads: list[Head],
                                  pinned: dict) -> dict[str, list[int]]:
    """Give the spatial dims of every graph input that sizes a converted head's map a symbolic size."""
    backbone = _upstream(index, [h.feature_map for h in heads])
    candidates: dict[str, tuple] = {}
    for inp in graph.input:
        _, dims = value_dims(inp)
        if inp.name not in backbone or inp.name not in index.graph_inputs or dims is None or len(dims) < 3:
            continue
        axes = _spatial_axes(index, inp.name, len(dims))
        if _sizes_the_backbone(index, inp.name, dims, axes, backbone, pinned):
            candidates[inp.name] = (inp, dims, axes)
    spatial: dict[str, list[int]] = {}
    for name, (inp, dims, axes) in candidates.items():
        names = SPATIAL_NAMES.get(len(axes), tuple(f"dim{a}" for a in axes))
        prefix = f"{name}_" if len(candidates) > 1 else ""
        new_dims = list(dims)
        for axis, dim_name in zip(axes, names):
            new_dims[axis] = prefix + dim_name
        set_shape(inp, new_dims)
        spatial[name] = axes
    return spatial


def _sizes_the_backbone(index: GraphIndex, name: str, dims, axes: list[int], backbone: set[str],
                        pinned: dict) -> bool:
    """Whether a larger input ``name`` gives the backbone larger tensors: with its ``axes`` free, shape
    inference changes the shape of some tensor between the inputs and the maps. A broadcast operand
    fed as an input (a per-channel gain ``[C,1,1]``) changes none, so it keeps its shape and the
    larger-size checks reuse its value. An input whose spatial size is already free is assumed to."""
    own = [p if p is not None else d for p, d in zip(pinned.get(name) or dims, dims)]
    if not all(isinstance(own[a], int) for a in axes):
        return True
    probe = [f"{name}_probe{a}" if a in axes else d for a, d in enumerate(own)]
    types = infer_value_types(index.model, {**pinned, name: probe})
    inner = backbone - set(index.graph_inputs) - set(index.initializers)
    return not inner or any(types.get(t, (0, None))[1] != index.shape(t) for t in inner)


def _spatial_axes(index: GraphIndex, name: str, rank: int) -> list[int]:
    """The input axes that become the feature map's spatial axes: 2.. for NCHW, or where a
    Transpose straight after the input (Keras/tf2onnx NHWC models) takes them from."""
    for reader in index.consumers.get(name, []):
        perm = attr(reader, "perm") if reader.op_type == "Transpose" else None
        if perm and len(perm) == rank and perm[0] == 0:
            return sorted(perm[2:])
    return list(range(2, rank))


def _upstream(index: GraphIndex, tensors: list[str]) -> set[str]:
    """``tensors`` and every tensor they are computed from."""
    seen, stack = set(), list(tensors)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = index.producer.get(name)
        if node is not None:
            stack.extend(node_inputs(node))
    return seen


def _write_metadata(model, options, heads, maps, map_outputs, spatial_inputs, token_axes=None) -> None:
    """Record what the verifier needs for the sliding-window proof (and, with token runs, the input
    axes to vary the sequence length on) inside the model itself."""
    meta = {
        "version": __version__,
        "mode": "keep_output_shape" if options.keep_output_shape else "fully_convolutional",
        "heads": [{"feature_map": h.feature_map, "window": list(h.window), "node": h.node,
                   "outputs": [o for o in map_outputs if maps[o].head == i]} for i, h in enumerate(heads)],
        "spatial_inputs": spatial_inputs,
    }
    if token_axes is not None:
        meta["token_axes"] = token_axes
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta, sort_keys=True))


def read_metadata(model: onnx.ModelProto) -> dict | None:
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    return None


# ---- clean up ----------------------------------------------------------------------------------

def cleanup(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nobody reads, then initializers nobody reads (e.g. the old weights
    and PyTorch's shape subgraph). Nodes are side-effect free in ONNX, so this is safe."""
    outputs = {o.name for o in graph.output}
    while True:
        read = set(outputs)
        for node in graph.node:
            read.update(node_inputs(node))
        dead = [n for n in graph.node if not any(o in read for o in n.output if o)]
        if not dead:
            break
        dead_ids = {id(n) for n in dead}
        kept = [n for n in graph.node if id(n) not in dead_ids]
        del graph.node[:]
        graph.node.extend(kept)
    unused = {t.name for t in graph.initializer if t.name not in read}
    # Deleted in place, back to front: rebuilding the list would copy every kept weight.
    for i in reversed([i for i, t in enumerate(graph.initializer) if t.name in unused]):
        del graph.initializer[i]
    for i in reversed([i for i, v in enumerate(graph.input) if v.name in unused]):
        del graph.input[i]


def toposort(graph: onnx.GraphProto) -> None:
    """Order nodes so each comes after its producers, keeping the existing order where it is valid."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        progress, rest = False, []
        for node in pending:
            if all(n in available for n in node_inputs(node)):
                ordered.append(node)
                available.update(node.output)
                progress = True
            else:
                rest.append(node)
        if not progress:
            raise InvalidModelError(f"the graph has a cycle or reads an undefined tensor at node {rest[0].name!r}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


# ---- shapes and checks -------------------------------------------------------------------------

def _reinfer_shapes(model: onnx.ModelProto, map_outputs: dict[str, int]) -> None:
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
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - best effort: ONNX Runtime infers shapes itself
        return
    outputs = {o.name for o in graph.output}
    graph.value_info.extend(vi for vi in inferred.graph.value_info if vi.name not in outputs)


def check_input_model(model: onnx.ModelProto, label: str = "the input") -> bool:
    """Raise if the input is not a valid model; return whether it also passes ``full_check``
    (some exporters write models that only the strict shape check rejects)."""
    try:
        check_graph(model)
    except InvalidModelError as exc:
        raise InvalidModelError(f"{label}: {exc}") from None
    sk = _checkable(model)
    try:
        onnx.checker.check_model(sk, full_check=True)
        return True
    except Exception:  # noqa: BLE001 - shape-inference errors come in several types
        pass  # the structural check alone tells an invalid model from a strict-shape complaint
    try:
        onnx.checker.check_model(sk)
    except onnx.checker.ValidationError as exc:
        raise InvalidModelError(f"{label} is not a valid ONNX model: {first_line(exc)}") from None
    return False


def check_output_model(model: onnx.ModelProto, strict: bool) -> None:
    """``onnx.checker`` with ``full_check`` (strict shape inference) when the input passed it too."""
    try:
        onnx.checker.check_model(_checkable(model), full_check=strict)
    except onnx.checker.ValidationError as exc:
        raise Fc2ConvError(f"internal error: the rewritten model fails onnx.checker: "
                           f"{first_line(exc)}") from None


def _checkable(model: onnx.ModelProto) -> onnx.ModelProto:
    """The skeleton the checker sees. A graph output declared with a type but no shape (Polygraphy's
    test models) fails even the basic check; ONNX Runtime runs such models, so it gets its inferred
    shape here, and the model itself is left as it is."""
    sk = skeleton(model)
    missing = [o for o in sk.graph.output if o.type.HasField("tensor_type") and not o.type.tensor_type.HasField("shape")]
    if missing:
        inferred = {vi.name: vi for vi in infer_outputs(sk)}
        for out in missing:
            if out.name in inferred and inferred[out.name].type.tensor_type.HasField("shape"):
                out.type.tensor_type.shape.CopyFrom(inferred[out.name].type.tensor_type.shape)
    return sk


def infer_outputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    try:
        return list(onnx.shape_inference.infer_shapes(model, strict_mode=False).graph.output)
    except Exception:  # noqa: BLE001 - best effort, as in _reinfer_shapes
        return []


def model_label(model) -> str:
    return str(model) if not isinstance(model, onnx.ModelProto) else (model.graph.name or "model")


def _dims_list(dims) -> list | None:
    return None if dims is None else list(dims)
