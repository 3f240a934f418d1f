"""Planning: which rule takes each node, or the named reason none does. Nothing is changed or built.

:func:`plan_graph` walks the graph once in topological order: FC nodes try the head rules, nodes
that read a converted map try the chain rules. The :class:`Plan` it returns is what both the apply
step and ``inspect`` read; the kernels are made only when the apply step builds each match.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx

from .graph import is_onnx_op, named_subgraphs, node_inputs, op_label, toposort
from .index import GraphIndex, body_model
from .layouts import Layout, flat
from .metadata import HeadRecord
from .options import Options
from .report import NodeReport, NodeStatus, format_dims
from .rules import RULES, MapInfo, Match, RuleContext, Skip
from .rules._dense import not_constant_skip

FC_OPS = ("Gemm", "MatMul")
# FC layers written with quantized operators, which no rule rewrites; they are still reported, so
# that every FC layer of a model is accounted for. Value: the position of the weight input.
QUANTIZED_FC_OPS = {"QGemm": 3, "QLinearMatMul": 3, "MatMulInteger": 1}
CONTRIB_QUANTIZED_FC_OPS = frozenset({"QGemm"})  # of ONNX Runtime's com.microsoft domain


@dataclass
class Decision:
    """What the rules decided for one node, before anything is changed.

    ``status`` is the node's line in the report (``None`` for the pointwise ops and axis fix-ups
    carried along a converted map, which are not reported on their own, and for the ops where a
    token or vector run ends). ``restores``: the node reads a map but needs the original tensor.
    """

    node: onnx.NodeProto
    rule: str | None
    outcome: Match | Skip
    status: NodeStatus | None
    restores: bool = False

    def node_report(self) -> NodeReport:
        name = self.node.name or self.node.output[0]
        if isinstance(self.outcome, Match):
            return NodeReport(name, op_label(self.node), "converted", rule=self.rule, detail=self.outcome.detail)
        message = self.outcome.message
        if self.status == "blocked":
            message += "; Flatten put back before it"
        return NodeReport(name, op_label(self.node), self.status or "skipped", rule=self.rule,
                          reason=self.outcome.reason, message=message)


@dataclass
class Plan:
    """The rules' decisions for a whole graph, and the heads they convert (in graph order)."""

    ctx: RuleContext
    decisions: list[Decision]
    heads: list[HeadRecord]

    def node_reports(self) -> list[NodeReport]:
        return [d.node_report() for d in self.decisions if d.status is not None]


def plan_graph(index: GraphIndex, options: Options) -> Plan:
    """Walk the graph once in topological order, trying head rules on FC nodes and chain rules on
    nodes that read a converted map. Nothing in the graph is changed."""
    # Transformer exports lose ranks at computed Reshapes and contrib ops. Inferred in every mode, so
    # that a reason does not depend on options that only decide what converts (a node of unknown
    # rank is a `not_a_feature_map` without --vector-fc, the same node a `token_matmul` with it).
    index.infer_unknown_shapes()
    ctx = RuleContext(index, maps={}, options=options, rules=RULES)
    plan = Plan(ctx, [], [])
    removed: set[int] = set()
    for node in index.graph.node:
        if id(node) in removed:
            continue
        reads_map = any(name in ctx.maps for name in node_inputs(node))
        if not reads_map and not is_onnx_op(node, *FC_OPS):
            plan.decisions.extend(_unsupported_fc_nodes(index, node))
            continue
        outcome, rule = _first_outcome(ctx, node, "chain" if reads_map else "head", options)
        if isinstance(outcome, Match):
            read_maps = [n for n in node_inputs(node) if n in ctx.maps]
            head, layout = None, outcome.layout  # a token/vector entry starts a run of its own layout
            if outcome.feature_map is not None and outcome.window is not None:
                head = len(plan.heads)
                plan.heads.append(HeadRecord(outcome.feature_map, outcome.window, node.name or node.output[0]))
            elif read_maps:
                head, layout = ctx.maps[read_maps[0]].head, ctx.maps[read_maps[0]].layout
            for name, rank in outcome.maps.items():
                ctx.maps[name] = MapInfo(rank, head, layout)
            removed.update(id(n) for n in outcome.removed)
            plan.decisions.append(Decision(outcome.layer or node, rule, outcome,
                                           "converted" if outcome.kind == "fc" else None))
        elif reads_map:
            # A head's map meeting such an op blocks the fully convolutional model; a token or vector
            # run simply ends there (reported only when the op is an FC layer left as it is).
            skip = outcome if isinstance(outcome, Skip) else Skip("fcn_blocked")
            status: NodeStatus | None
            if any(layout_of(ctx.maps[n]).name == "flat" for n in node_inputs(node) if n in ctx.maps):
                status = "blocked"
            else:
                status = "skipped" if is_onnx_op(node, *FC_OPS) and isinstance(outcome, Skip) else None
            plan.decisions.append(Decision(node, rule, skip, status, restores=True))
        elif is_fc_candidate(index, node) or outcome is not None:
            plan.decisions.append(Decision(node, rule, outcome if isinstance(outcome, Skip)
                                           else _default_skip(index, node), "skipped"))
    # A later match may remove a node planned earlier as the end of a run (a Shape of the map that
    # computed a GPT-2 layer's Reshape target): gone, it needs no layout back.
    plan.decisions = [d for d in plan.decisions if not (d.restores and id(d.node) in removed)]
    return plan


def layout_of(info: MapInfo) -> Layout:
    return info.layout or flat(info.spatial_rank)


def bodies(graph: onnx.GraphProto, scope: str) -> Iterator[tuple[str, onnx.GraphProto]]:
    """Every If/Loop/Scan body of ``graph``'s nodes, with its scope ``"node/attribute/"``."""
    for node in graph.node:
        for attribute, body in named_subgraphs(node):
            yield f"{scope}{node.name or node.output[0]}/{attribute}/", body


def body_plan(body: onnx.GraphProto, outer: GraphIndex, options: Options) -> tuple[onnx.ModelProto, GraphIndex, Plan]:
    """A body planned as a model of its own (see :func:`index.body_model`): the model, its index
    (reading outer-scope weights through ``outer``) and its plan."""
    work = body_model(body, outer)
    toposort(work.graph)
    index = GraphIndex(work, outer=outer)
    return work, index, plan_graph(index, options)


def body_plans(outer: GraphIndex, options: Options, scope: str = "") -> Iterator[tuple[str, GraphIndex, Plan]]:
    """The rules' decisions inside every If/Loop/Scan body, nested ones too, without changing
    anything: ``(scope, body index, plan)``."""
    for where, body in bodies(outer.graph, scope):
        _, index, plan = body_plan(body, outer, options)
        yield where, index, plan
        yield from body_plans(index, options, where)


def _first_outcome(ctx: RuleContext, node: onnx.NodeProto, stage: str, options: Options):
    """The first match a rule of ``stage`` makes of ``node`` and that rule's name; else the first
    rule's refusal (a later rule may still rewrite what an earlier one refused: a Gemm on a Flatten
    that does not keep the batch alone is still a vector FC layer)."""
    refusal: tuple[Match | Skip | None, str | None] = None, None
    for rule in RULES:
        if rule.stage != stage:
            continue
        outcome = rule.apply(ctx, node)  # a check: nothing is built
        if outcome is None:
            continue
        if rule.name in options.skip_rules:
            outcome = Skip("rule_disabled", f"rule {rule.name} is turned off")
        elif isinstance(outcome, Match) and outcome.kind == "fc" and not options.selects(outcome.layer or node):
            layer = outcome.layer or node
            outcome = Skip("excluded", f"{layer.name!r} is not selected by --include/--exclude")
        if isinstance(outcome, Match):
            return outcome, rule.name
        if refusal[0] is None:
            refusal = outcome, rule.name
    return refusal


def _unsupported_fc_nodes(index: GraphIndex, node: onnx.NodeProto) -> list[Decision]:
    """FC layers no rule can rewrite: quantized FC operators."""
    if is_quantized_fc(node) and is_fc_candidate(index, node):
        return [Decision(node, None, Skip("quantized_op", f"{node.op_type} is a quantized operator; "
                                          f"no rule rewrites it"), "skipped")]
    return []


def is_fc_candidate(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """Gemm always is; a MatMul is an FC layer only when its weight is a matrix computed from
    constants (an initializer, a Constant, or e.g. DequantizeLinear of one)."""
    if is_onnx_op(node, "Gemm") or is_quantized_fc(node) and node.op_type == "QGemm":
        return True
    if not (is_onnx_op(node, "MatMul") or is_quantized_fc(node)):
        return False
    weight = node.input[QUANTIZED_FC_OPS.get(node.op_type, 1)]
    dims = index.shape(weight)
    return index.is_static(weight) and dims is not None and len(dims) == 2


def is_quantized_fc(node: onnx.NodeProto) -> bool:
    """A quantized FC operator of its own domain: QGemm is ONNX Runtime's, the others are ONNX's."""
    if node.op_type in CONTRIB_QUANTIZED_FC_OPS:
        return node.domain == "com.microsoft"
    return node.op_type in QUANTIZED_FC_OPS and is_onnx_op(node)


def _default_skip(index: GraphIndex, node: onnx.NodeProto) -> Skip:
    dims = index.shape(node.input[0])
    if is_onnx_op(node, "MatMul") and dims is not None and len(dims) == 3:
        return Skip("token_matmul")
    if is_onnx_op(node, "MatMul") and dims is not None and len(dims) == 4:
        return Skip("token_matmul", f"the MatMul runs on a channels-last map {format_dims(dims)} (see --token-layout: "
                                    "a 1x1 Conv on the channels-first map)")
    if is_onnx_op(node, "MatMul") and dims is not None and len(dims) > 4:
        return Skip("token_matmul", f"the MatMul runs on a rank-{len(dims)} tensor {format_dims(dims)}; the token "
                                    "layouts take [B,T,D]")
    weight = index.producer.get(node.input[1])
    skip = not_constant_skip(index, node.input[1])
    if skip.reason != "weight_not_constant":  # overridable, or quantized in blocks
        return skip
    if weight is not None and not index.is_constant(node.input[1]):
        return Skip("weight_not_constant", index.unfolded.get(node.input[1]) or
                    f"the weight comes from {op_label(weight)} {weight.name!r}, which is not folded to a constant")
    if dims is None:  # not known to be 2D: say what is known
        return Skip("not_a_feature_map", f"neither ONNX's nor ONNX Runtime's shape inference gives a shape for the "
                                         f"layer's input {node.input[0]!r}, so it is no known feature map or tokens")
    return Skip("not_a_feature_map")
