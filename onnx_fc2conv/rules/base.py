"""What a rule is, and what it returns: a :class:`Match` (built only when applied) or a :class:`Skip`
with a reason code.

A rule never raises for a model it does not support; it returns ``None`` when the node is not its
pattern at all, and a ``Skip`` when the pattern is there but cannot be rewritten exactly.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import onnx

from ..graph import rename_input
from ..index import GraphIndex
from ..layouts import Layout

# Reason codes: stable identifiers for scripts, with the sentence users read.
REASONS: dict[str, str] = {
    "weight_not_constant": "the weight is computed at run time, so there is no fixed kernel to write",
    "weight_overridable": ("the weight or bias is also a graph input (a default the caller may replace); "
                           "converting would drop that input"),
    "trans_a": "Gemm has transA=1: it reads the activations transposed, which a convolution cannot",
    "bias_per_sample": "the bias has one row per sample ([N,F]); a convolution bias is one value per channel",
    "flatten_axis": "the Flatten does not keep the batch axis alone (axis != 1)",
    "feature_map_rank": "the flattened tensor is not a rank 3-5 feature map [N,C,*S]",
    "feature_map_shape_unknown": ("the flattened map's size is symbolic and the weight does not fix it; "
                                  "pass --input-shape"),
    "reshape_not_flatten": "the Reshape does not flatten [N,C,*S] into [N,C*prod(S)]",
    "not_a_feature_map": "the layer reads a 2D tensor that is not a flattened feature map (see --vector-fc)",
    "token_matmul": "the MatMul runs on a [B,T,D] token tensor (see --token-layout)",
    "token_rows": ("the layer runs on [B,T,D] tokens reshaped to [B*T,D] rows and back (GPT-2's Conv1D) "
                   "(see --token-layout)"),
    "weight_shape_mismatch": "the weight's input size does not equal C*prod(S) of the flattened map",
    "rule_disabled": "the rule that matches this node is turned off (--skip-rule)",
    "fcn_blocked": "a converted map reaches an op that needs the flat tensor; a Flatten is put back on that edge",
    "mixed_maps": "the op combines maps of different heads or sizes",
    "unsupported_dtype": "the weight's element type has no Conv kernel at this opset",
    "excluded": "the node is excluded by --include/--exclude",
    "quantized_op": "a quantized FC operator (QGemm, QLinearMatMul, MatMulInteger); no rule rewrites it",
    "quantized_weight_axis": ("the weight is quantized per input feature or in blocks; "
                              "a conv kernel keeps one scale per output channel"),
    "channels_last": "the flattened tensor is a transposed map (e.g. NHWC) whose axis order the rule cannot undo",
}

Stage = Literal["head", "chain"]


@dataclass
class Skip:
    """The rule's pattern is there, but it cannot be rewritten exactly, for ``reason``."""

    reason: str
    message: str = ""

    def __post_init__(self):
        assert self.reason in REASONS, f"unknown reason code {self.reason!r}"
        if not self.message:
            self.message = REASONS[self.reason]


@dataclass
class Built:
    """The graph edit a :class:`Match` makes when the apply step asks for it: ``nodes`` to put where
    the first replaced node stood, new ``initializers``, and initializers to give new dims in place
    (``reshaped``: a weight whose bytes already are the kernel)."""

    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    reshaped: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass
class Match:
    """A rule's pattern found and checked: what it replaces and what it will make, built on demand.

    ``removed`` are the nodes it replaces; ``maps`` names the tensors that hold a feature map after
    the rewrite, with their spatial rank. A head match also names the tensor it reads
    (``feature_map``) and its window ``[C, *S]``, which the verifier needs for the sliding-window
    proof. A token or vector match names the tensor its new nodes read in ``layout`` (``entry``): the
    apply step puts it into that layout once, however many layers read it. ``layer``: the FC layer
    converted, when the rule found it from another node (the Reshape in front of a GPT-2 layer on a
    map); the report and ``--include``/``--exclude`` name it.

    Nothing is made until ``build()``: planning, ``inspect`` and disabled rules never write a kernel
    or take a name, and only the apply step calls it, once.
    """

    removed: list[onnx.NodeProto]
    maps: dict[str, int]
    build: Callable[[], Built]
    detail: str = ""
    feature_map: str | None = None
    window: tuple[int | None, ...] | None = None
    kind: Literal["fc", "pointwise", "fixup"] = "fc"
    entry: str | None = None
    layout: Layout | None = None
    layer: onnx.NodeProto | None = None

    def with_nodes_before(self, make: Callable[[], tuple[Built, dict[str, str]]]) -> Match:
        """This match built behind the nodes (and initializers) ``make()`` builds, which are made
        first (so their names come first too); ``make`` also says which tensors this match's own nodes
        read instead (old -> new)."""
        inner = self.build

        def build() -> Built:
            before, renamed = make()
            built = inner()
            for node in built.nodes:
                for old, new in renamed.items():
                    rename_input(node, old, new)
            return Built([*before.nodes, *built.nodes], [*built.initializers, *before.initializers],
                         {**built.reshaped, **before.reshaped})

        return replace(self, build=build)


def node_copy(node: onnx.NodeProto) -> onnx.NodeProto:
    new = onnx.NodeProto()
    new.CopyFrom(node)
    return new


Outcome = Match | Skip | None


@dataclass(frozen=True)
class Rule:
    """One named rewrite. ``stage`` says when it is tried: on FC nodes not yet fed by a converted
    map ("head"), or on nodes that read a converted map ("chain")."""

    name: str
    stage: Stage
    summary: str
    apply: Callable[[RuleContext, onnx.NodeProto], Outcome]


@dataclass
class RuleContext:
    """What a rule may look at: the graph index, the tensors already converted to maps, the options,
    and the registry (``dense_pool`` runs the other head rules first)."""

    index: GraphIndex
    maps: dict[str, MapInfo]
    options: Any = None
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class MapInfo:
    """A tensor that holds a map where the original held another layout: a head's feature map
    ``[N, F, *spatial]`` for ``[N, F]`` (``layout`` None or flat), or a token or vector map."""

    spatial_rank: int
    head: int | None
    layout: Layout | None = None
