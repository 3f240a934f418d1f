"""``onnx-fc2conv inspect``: what the converter would do to each FC layer, with nothing written.

It runs the same planning as :func:`onnx_fc2conv.convert` (:func:`planner.plan_graph`) on a
private copy of the model and describes each FC-like node: its input and weight shapes, what feeds
it, and the rule that will convert it or the reason code that stops it. It is a true dry run: the
rules build no kernel, and a model with external data is read without its weight bytes (only the
small constants a rule asks for, such as a bias, are read).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from .errors import InvalidModelError
from .graph import is_onnx_op, op_label, opset_version, toposort
from .index import GraphIndex
from .inputs import check_input_options
from .metadata import read_record
from .modelcheck import check_input_model
from .modelio import PathLike, read_model
from .options import Options
from .pipeline import model_label
from .planner import QUANTIZED_FC_OPS, Decision, body_plans, plan_graph
from .report import dims_list, format_dims, is_fc_row
from .rules import Match

# What a node's input is called when it comes from one of these: the tensor they flatten is shown.
FLATTENING_OPS = ("Flatten", "Reshape")


@dataclass
class NodeInspection:
    """One FC-like node (or a node where a converted path would stop) and what will happen to it."""

    node: str
    op: str
    input_shape: list | None
    weight_shape: list | None
    fed_by: str
    status: str  # "converts", "skipped" or "blocked"
    rule: str | None = None
    reason: str | None = None
    detail: str = ""  # the Conv it becomes, or why not


@dataclass
class Inspection:
    model: str
    opset: int
    nodes: list[NodeInspection] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def converting(self) -> list[NodeInspection]:
        return [n for n in self.nodes if n.status == "converts"]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def render_text(self) -> str:
        fc_nodes = [n for n in self.nodes if is_fc_row(n.status, n.op)]
        lines = [f"{self.model} (opset {self.opset}): {len(self.converting)} of {len(fc_nodes)} FC nodes "
                 f"will convert; nothing written"]
        lines.extend(f"  note: {n}" for n in self.notes)
        if not self.nodes:
            return "\n".join(lines)
        header = ("node", "op", "input", "weight", "fed by", "verdict")
        rows = [(n.node, n.op, format_dims(n.input_shape), format_dims(n.weight_shape), n.fed_by, _verdict(n))
                for n in self.nodes]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
        for row in [header, *rows]:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
        return "\n".join(lines)


def inspect(model: PathLike | onnx.ModelProto, *, options: Options | None = None, **rule_options) -> Inspection:
    """What :func:`onnx_fc2conv.convert` would do to each FC-like node of ``model``, without
    rewriting or writing anything. The rule options come as for convert: ``options``, keywords
    (``skip_rules``, ``input_shapes``, ``include``, ``exclude``, ...), or both."""
    opts = Options.from_keywords(options, rule_options)
    work, has_external_data = read_model(model, load_external_data=False)
    data_folder = Path(model).parent if has_external_data else None
    result = Inspection(model_label(model), opset_version(work))
    try:
        check_input_model(work)
        record = read_record(work)  # convert reads an earlier conversion's record, and refuses one that was edited
    except InvalidModelError as exc:  # still worth explaining: the rows say what a fixed model would get
        result.notes.append(f"convert refuses this model: {exc}")
    else:
        if record is not None:
            result.notes.append(f"already {record.line()}")
    check_input_options(work, opts.input_shapes, None)  # a misspelt --input-shape is an error, not ignored
    toposort(work.graph)
    index = GraphIndex(work, opts.input_shapes, data_folder=data_folder)
    plan = plan_graph(index, opts)
    result.nodes = [_describe(index, d) for d in plan.decisions if d.status is not None]
    for scope, body_index, body_plan in body_plans(index, opts):
        for row in [_describe(body_index, d) for d in body_plan.decisions if d.status is not None]:
            row.node = scope + row.node
            result.nodes.append(row)
    return result


def _describe(index: GraphIndex, decision: Decision) -> NodeInspection:
    node = decision.node
    weight = node.input[QUANTIZED_FC_OPS.get(node.op_type, 1)] if len(node.input) > 1 else ""
    weight_shape = index.shape(weight) if weight else None
    if isinstance(decision.outcome, Match):
        status, reason, detail = "converts", None, decision.outcome.detail
    else:
        status, reason, detail = decision.status or "skipped", decision.outcome.reason, decision.outcome.message
    return NodeInspection(node.name or node.output[0], op_label(node), dims_list(index.shape(node.input[0])),
                          dims_list(weight_shape), _fed_by(index, node.input[0]), status, decision.rule, reason, detail)


def _fed_by(index: GraphIndex, name: str) -> str:
    """The op that makes ``name`` (through Identity/Dropout); for a flatten, also the shape it flattens."""
    source = index.skip_passthrough(name)
    if source in index.graph_inputs:
        return f"input {source}"
    producer = index.producer.get(source)
    if producer is None:  # an initializer, or a tensor made inside an If/Loop body
        return "initializer" if source in index.initializers else "?"
    text = op_label(producer)
    if is_onnx_op(producer, *FLATTENING_OPS):
        text += f" of {format_dims(index.shape(producer.input[0]))}"
    return text


def _verdict(node: NodeInspection) -> str:
    if node.status == "converts":
        return f"converts by {node.rule}: {node.detail}"
    return f"{node.status} [{node.reason}]: {node.detail}"

