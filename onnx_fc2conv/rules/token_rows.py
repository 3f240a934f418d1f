"""token_rows: an FC layer on the rows of ``[B,T,D]`` tokens (Hugging Face's ``Conv1D``, GPT-2's
c_attn, c_proj, c_fc) becomes a kernel-1 Conv over the tokens, and both of its Reshapes go.

Before (``size_out = x.size()[:-1] + (nf,); torch.addmm(bias, x.view(-1, x.size(-1)), weight).view(size_out)``;
the shapes constant, or computed by ``Shape -> Gather -> Unsqueeze -> Concat`` or ``Shape -> Slice``)::

    X [B,T,D] -> Reshape([-1,D]) -> [B*T,D] -> Gemm(W [D,F], b) / MatMul(W)(+Add(b)) -> Reshape([B,T,F]) -> Y [B,T,F]

After, ``--token-layout conv1d`` (``conv2d`` likewise, see token_matmul)::

    X -> Transpose(0,2,1) -> [B,D,T] -> Conv(kernel 1, weight W^T.reshape(F,D,1), bias b) -> Y [B,F,T]

Weight maths: row ``r = b*T + t`` of the Reshape is token ``X[b,t,:]`` (C order), so the Gemm computes
``Y[b,t,f] = sum_d X[b,t,d] * W[d,f] + b[f]`` and the restoring Reshape puts row ``r`` back at
``[b,t]``: token_matmul's layer, whose kernel is ``Wc = W^T`` (``W`` itself when stored ``[F,D]``,
``transB=1``; ``alpha``, ``beta`` as in ``_dense``). The Reshapes only renumber the tokens, so on the
map neither is needed: the layer reads X's map and writes Y's. Inside a run (GPT-2's c_fc -> gelu_new
-> c_proj) ``fc_chain`` finds the same pattern from the Reshape that reads the map (:func:`on_map`).

The dynamo exporter's attention c_proj reads the heads ``X [B,T,H,Dh]`` into rows at once
(``Reshape([-1, H*Dh])``): there the first Reshape becomes ``Reshape(X, [0,0,H*Dh])``, the merge of
heads, and the layer converts behind it (one Reshape in place of two).

Checked, not assumed: the first Reshape's target is ``[-1, K]`` (or ``[B*T, K]`` with static B, T),
each row one token: ``K`` is X's trailing dims (static, or X's symbolic last dim read from its Shape:
the layer checks at run time that it is its input size), or the layer's input size with the restore
reading both B and T from X (then B*T rows hold all of X); the FC output is read by the restoring
Reshape alone, whose target is ``[B, T, F]`` read from X's own dims (one of B, T may be ``-1``).
Without ``--token-layout`` the layer is reported ``token_rows``, which names the option.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import is_onnx_op
from ..index import BATCH, GraphIndex, shape_entries
from ..layouts import TOKEN_LAYOUTS, Layout
from ._dense import Dense, conv_from_dense
from ._head import read_fc
from .base import Built, Match, Outcome, Rule, RuleContext, Skip


@dataclass
class TokenRows:
    """The three nodes of a Conv1D layer: ``flatten`` (tokens -> rows), the FC layer (``dense``, whose
    output is already the restoring Reshape's) and ``restore`` (rows -> tokens). ``merges_heads``:
    the flatten reads ``[B,T,H,Dh]`` attention heads (the dynamo exporter fuses the merge of heads
    into c_proj's view), so the layer's tokens are ``Reshape(X, [0,0,H*Dh])``, written in its place."""

    flatten: onnx.NodeProto
    dense: Dense
    restore: onnx.NodeProto
    merges_heads: bool = False

    @property
    def tokens(self) -> str:
        """The ``[B,T,D]`` tokens: X, or the merged heads under the flatten's own output name."""
        return self.flatten.output[0] if self.merges_heads else self.flatten.input[0]


def read_token_rows(index: GraphIndex, fc: onnx.NodeProto) -> TokenRows | Skip | None:
    """The Conv1D layer whose FC node is ``fc``; None when ``fc`` is not one (a Skip is the FC's own)."""
    flatten = index.producer.get(fc.input[0]) if is_onnx_op(fc, "Gemm", "MatMul") else None
    if flatten is None or not is_onnx_op(flatten, "Reshape"):
        return None
    dims = index.shape(flatten.input[0])
    if dims is None or len(dims) not in (3, 4) or dims[1] == 1:  # a static T of 1 makes the Reshape a flatten
        return None
    merges_heads = len(dims) == 4
    if merges_heads and index.only_consumer(flatten.output[0]) is not fc:
        return None  # its output name will hold the merged heads
    dense = read_fc(index, fc)
    if dense is None or isinstance(dense, Skip):
        return dense
    width = _rows_width(index, flatten, dims)
    restore = index.only_consumer(dense.output)
    if width is None or restore is None or not is_onnx_op(restore, "Reshape"):
        return None
    restored = _restores_tokens(index, restore, dims, dense.out_features)
    if restored is None or not _rows_are_tokens(dims, width, dense.in_features, restored):
        return None
    return TokenRows(flatten, replace(dense, nodes=[*dense.nodes, restore], output=restore.output[0]), restore,
                     merges_heads)


def apply(ctx: RuleContext, node: onnx.NodeProto) -> Outcome:
    rows = read_token_rows(ctx.index, node)
    if rows is None or isinstance(rows, Skip):
        return rows
    if rows.tokens in ctx.maps:  # a map whose rows other layers read too: on_map left it, the run ended there
        return None
    layout = TOKEN_LAYOUTS.get(ctx.options.token_layout or "")
    if layout is None:
        return Skip("token_rows")
    match = _conv(ctx.index, rows, layout)
    if isinstance(match, Skip):
        return match
    own_flatten = [rows.flatten] if ctx.index.only_consumer(rows.flatten.output[0]) is node else []
    if rows.merges_heads:
        match = _behind_merged_heads(ctx.index, rows, match)
    return replace(match, entry=rows.tokens, layout=layout, removed=_with_shapes(ctx.index, rows, [
        *match.removed, *own_flatten]))


def on_map(ctx: RuleContext, reshape: onnx.NodeProto, layout: Layout) -> Outcome:
    """``reshape`` reads a token map: when it is the first Reshape of a Conv1D layer (read by that
    layer alone), the layer converts on the map, both Reshapes removed; else None (the run ends)."""
    fc = ctx.index.only_consumer(reshape.output[0])
    rows = read_token_rows(ctx.index, fc) if fc is not None else None
    if not isinstance(rows, TokenRows) or rows.flatten is not reshape:
        return rows if isinstance(rows, Skip) else None
    match = _conv(ctx.index, rows, layout)
    if isinstance(match, Skip):
        return match
    return replace(match, removed=_with_shapes(ctx.index, rows, [*match.removed, reshape]), layer=fc)


def _behind_merged_heads(index: GraphIndex, rows: TokenRows, match: Match) -> Match:
    """``match`` built behind ``Reshape(X [B,T,H,Dh], [0,0,H*Dh])``, which writes the flatten's output
    name: one Reshape in place of the layer's two."""
    def merge_heads() -> tuple[Built, dict[str, str]]:
        shape = index.fresh_name(f"{rows.flatten.output[0]}_tokens_shape")
        merge = helper.make_node("Reshape", [rows.flatten.input[0], shape], [rows.tokens],
                                 name=index.fresh_name(f"{rows.flatten.name or rows.tokens}_merge_heads"))
        width = np.array([0, 0, rows.dense.in_features], np.int64)
        return Built([merge], [numpy_helper.from_array(width, shape)]), {}

    return match.with_nodes_before(merge_heads)


def _with_shapes(index: GraphIndex, rows: TokenRows, removed: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``removed`` and the nodes that compute the two Reshapes' targets for them alone (``Shape(X) ->
    Gather -> ...``): on a map, a Shape of X would need X's layout restored for nothing."""
    return [*removed, *index.feeding_only(removed, [rows.flatten.input[1], rows.restore.input[1]])]


def _conv(index: GraphIndex, rows: TokenRows, layout: Layout) -> Match | Skip:
    return conv_from_dense(index, rows.dense, rows.tokens, rows.dense.in_features, (1,) * layout.spatial_rank,
                           layout.spatial_rank)


def _rows_width(index: GraphIndex, reshape: onnx.NodeProto, dims):
    """``K`` when ``reshape`` turns X ``[B,T,...]`` into ``[B*T, K]`` rows: target ``[-1, K]``, or the
    static ``B*T`` (None otherwise)."""
    target = shape_entries(index, reshape.input[1], dims[0])
    if target is None or len(target) != 2 or target[1] in (None, 0, -1, BATCH):
        return None
    static_rows = isinstance(dims[0], int) and isinstance(dims[1], int) and target[0] == dims[0] * dims[1]
    return target[1] if target[0] == -1 or static_rows else None


def _restores_tokens(index: GraphIndex, reshape: onnx.NodeProto, dims, out_features: int) -> str | None:
    """How ``reshape`` turns the ``[B*T, F]`` rows back into ``[B, T, F]``: ``"both"`` when B and T
    are read from X's dims (its Shape, or the same static size; the batch as ``BATCH``), ``"one"``
    when one of them is -1; None when the target is anything else."""
    target = shape_entries(index, reshape.input[1], dims[0])
    if target is None or len(target) != 3 or target[2] != out_features:
        return None
    same = [(i == 0 and entry == BATCH) or (entry == dims[i] and entry not in (None, 0, -1))
            for i, entry in enumerate(target[:2])]
    return "both" if all(same) else "one" if sum(same) == 1 and -1 in target[:2] else None


def _rows_are_tokens(dims, width, in_features: int, restored: str) -> bool:
    """Whether each of the ``[B*T, width]`` rows is one token of X ``[B,T,...]``: X's trailing dims
    make ``width`` (static, or the symbolic last dim read from X's Shape: the layer then checks at
    run time that it is its input size), or the rows are the layer's width and the restore reads
    both B and T from X, so that ``B*T`` rows hold all of X: its trailing dims make ``width`` too."""
    trailing = dims[2] if len(dims) == 3 else (
        dims[2] * dims[3] if isinstance(dims[2], int) and isinstance(dims[3], int) else None)
    if trailing == width and (width == in_features or (len(dims) == 3 and isinstance(width, str))):
        return True
    return width == in_features and restored == "both"


RULE = Rule("token_rows", "head",
            "Reshape([-1,D]) -> Gemm/MatMul -> Reshape([B,T,F]) on tokens (GPT-2's Conv1D) becomes a kernel-1 "
            "Conv over the tokens, both Reshapes removed (--token-layout)", apply)
