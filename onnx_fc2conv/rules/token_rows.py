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

Checked, not assumed: the first Reshape's target is ``[-1, D]`` (or ``[B*T, D]`` with static B, T)
with ``D`` X's last dim: the weight's input size, or read from X's Shape; the FC output is read by the restoring
Reshape alone, whose target is ``[B, T, F]`` read from X's own dims (one of B, T may be ``-1``).
Without ``--token-layout`` the layer is reported ``token_rows``, which names the option.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import onnx

from ..graph import is_onnx_op
from ..index import BATCH, GraphIndex, shape_entries
from ..layouts import TOKEN_LAYOUTS, Layout
from ._dense import Dense, conv_from_dense
from ._head import read_fc
from .base import Match, Outcome, Rule, RuleContext, Skip


@dataclass
class TokenRows:
    """The three nodes of a Conv1D layer: ``flatten`` (tokens -> rows), the FC layer (``dense``, whose
    output is already the restoring Reshape's) and ``restore`` (rows -> tokens)."""

    flatten: onnx.NodeProto
    dense: Dense
    restore: onnx.NodeProto

    @property
    def tokens(self) -> str:
        return self.flatten.input[0]


def read_token_rows(index: GraphIndex, fc: onnx.NodeProto) -> TokenRows | Skip | None:
    """The Conv1D layer whose FC node is ``fc``; None when ``fc`` is not one (a Skip is the FC's own)."""
    flatten = index.producer.get(fc.input[0]) if is_onnx_op(fc, "Gemm", "MatMul") else None
    if flatten is None or not is_onnx_op(flatten, "Reshape"):
        return None
    dims = index.shape(flatten.input[0])
    if dims is None or len(dims) != 3 or dims[1] == 1:  # a static T of 1 makes the Reshape a flatten
        return None
    dense = read_fc(index, fc)
    if dense is None or isinstance(dense, Skip):
        return dense
    if not _is_rows_target(index, flatten, dims, dense.in_features):
        return None
    restore = index.only_consumer(dense.output)
    if restore is None or not is_onnx_op(restore, "Reshape") or not _is_tokens_target(
            index, restore, dims, dense.out_features):
        return None
    return TokenRows(flatten, replace(dense, nodes=[*dense.nodes, restore], output=restore.output[0]), restore)


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


def _with_shapes(index: GraphIndex, rows: TokenRows, removed: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``removed`` and the nodes that compute the two Reshapes' targets for them alone (``Shape(X) ->
    Gather -> ...``): on a map, a Shape of X would need X's layout restored for nothing."""
    return [*removed, *index.feeding_only(removed, [rows.flatten.input[1], rows.restore.input[1]])]


def _conv(index: GraphIndex, rows: TokenRows, layout: Layout) -> Match | Skip:
    return conv_from_dense(index, rows.dense, rows.tokens, rows.dense.in_features, (1,) * layout.spatial_rank,
                           layout.spatial_rank)


def _is_rows_target(index: GraphIndex, reshape: onnx.NodeProto, dims, in_features: int) -> bool:
    """Whether ``reshape`` turns ``[B,T,D]`` into ``[B*T, D]``: target ``[-1, D]``, or the static product.
    ``D`` is the weight's input size, or X's last dim read from its Shape (``x.size(-1)``, symbolic
    after a computed merge of heads): the layer then makes sure at run time that it is."""
    target = shape_entries(index, reshape.input[1], dims[0])
    if target is None or len(target) != 2 or target[1] != dims[2]:
        return False
    if dims[2] != in_features and not (isinstance(dims[2], str) and dims[2] != BATCH):
        return False
    static_rows = isinstance(dims[0], int) and isinstance(dims[1], int) and target[0] == dims[0] * dims[1]
    return target[0] == -1 or static_rows


def _is_tokens_target(index: GraphIndex, reshape: onnx.NodeProto, dims, out_features: int) -> bool:
    """Whether ``reshape`` turns the ``[B*T, F]`` rows back into ``[B, T, F]``: each of B and T read
    from X's dims (its Shape, or the same static size; the batch as ``BATCH``), one of them may be -1."""
    target = shape_entries(index, reshape.input[1], dims[0])
    if target is None or len(target) != 3 or target[2] != out_features:
        return False
    same = [(i == 0 and entry == BATCH) or (entry == dims[i] and entry not in (None, 0, -1))
            for i, entry in enumerate(target[:2])]
    return all(same) or (sum(same) == 1 and -1 in target[:2])


RULE = Rule("token_rows", "head",
            "Reshape([-1,D]) -> Gemm/MatMul -> Reshape([B,T,F]) on tokens (GPT-2's Conv1D) becomes a kernel-1 "
            "Conv over the tokens, both Reshapes removed (--token-layout)", apply)
