"""GPT-2's Conv1D layers (token_rows) and Transposes that cancel (MLP-Mixer's token mixing), on the
example models gpt2_blocks and mlp_mixer: what converts, the Reshapes and Transposes each conversion
adds and removes (the report's counts and the written graph's agree), and the proof."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from conftest import MODELS
from graphs import init, model, vi, weights
from onnx import helper

from onnx_fc2conv import convert, inspect
from onnx_fc2conv.rules import REASONS

LAYERS = [f"h.{i}.{name}.addmm/Gemm" for i in (0, 1) for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
ATTENTION_RESHAPES = {f"h.{i}.attn.{name}.view/Reshape" for i in (0, 1) for name in ("query", "key", "value", "merge")}


def counts(m) -> Counter:
    return Counter(n.op_type for n in m.graph.node)


def inverse_transpose_pairs(m) -> list[tuple[str, str]]:
    """Adjacent Transposes (the first read by the second alone) whose perms compose to the identity."""
    producer = {o: n for n in m.graph.node for o in n.output}
    readers = Counter(i for n in m.graph.node for i in set(n.input))
    pairs = []
    for second in (n for n in m.graph.node if n.op_type == "Transpose"):
        first = producer.get(second.input[0])
        if first is None or first.op_type != "Transpose" or readers[second.input[0]] != 1:
            continue
        p1, p2 = list(first.attribute[0].ints), list(second.attribute[0].ints)
        if [p1[p2[i]] for i in range(len(p1))] == list(range(len(p1))):
            pairs.append((first.name, second.name))
    return pairs


# ---- GPT-2 ---------------------------------------------------------------------------------------

def test_gpt2_layer_without_the_flag_is_token_rows_and_names_token_layout(build_models):
    rows = inspect(build_models.gpt2_blocks()).nodes
    assert [(n.node, n.status, n.reason) for n in rows] == [(name, "skipped", "token_rows") for name in LAYERS]
    assert "--token-layout" in REASONS["token_rows"] and {n.detail for n in rows} == {REASONS["token_rows"]}


@pytest.mark.parametrize("layout", ["conv1d", "conv2d"])
def test_gpt2_layers_join_the_token_runs_with_no_reshape_inside_a_run(build_models, layout):
    original = build_models.gpt2_blocks()
    result = convert(original, token_layout=layout, verify=False)
    report, m = result.report, result.model
    assert [(n.node, n.status) for n in report.nodes] == [(name, "converted") for name in LAYERS]
    assert [n.rule for n in report.nodes] == ["token_rows", "token_rows", "token_rows", "fc_chain"] * 2
    # per block: c_attn alone (Split ends it), the attention c_proj alone, c_fc -> gelu_new -> c_proj
    assert [(len(r.converted), len(r.passed_through)) for r in report.runs] == [(1, 0), (1, 0), (2, 8)] * 2
    assert [(r.transposes_added, r.transposes_removed) for r in report.runs] == [(2, 0)] * 6
    assert [r.reshapes_removed for r in report.runs] == [2, 2, 4] * 2  # both Reshapes of every layer
    before, after = counts(original), counts(m)
    assert (before["Reshape"], before["Transpose"], before["Gemm"]) == (24, 8, 8)
    assert after["Reshape"] == before["Reshape"] - 16
    unit_axes = 6 if layout == "conv2d" else 0  # conv2d: one Unsqueeze in, one Squeeze out a run
    assert [(r.unsqueezes_added, r.squeezes_added) for r in report.runs] == [(unit_axes // 6,) * 2] * 6
    # block 0 traced its sizes: 3 Unsqueezes of shape entries a layer went with its Reshapes
    assert (after["Unsqueeze"] - before["Unsqueeze"], after["Squeeze"]) == (unit_axes - 12, unit_axes)
    assert after["Transpose"] == before["Transpose"] + 12 and after["Conv"] == 8 and not after["Gemm"]
    added = {n.name for n in m.graph.node} - {n.name for n in original.graph.node}
    kept = {n.name for n in m.graph.node if n.op_type == "Reshape" and n.name not in added}
    assert kept == ATTENTION_RESHAPES  # the layers' Reshapes are gone; attention's own stay
    # the shape subgraphs that computed the layers' Reshape targets went with them
    assert before["Shape"] - after["Shape"] == 16 and not any(n.op_type == "Gemm" for n in m.graph.node)


@pytest.mark.e2e
@pytest.mark.parametrize("opset", [13, 15, 17])
@pytest.mark.parametrize("layout", ["conv1d", "conv2d"])
def test_converted_gpt2_blocks_equal_the_original_at_three_sequence_lengths(build_models, layout, opset):
    result = convert(build_models.gpt2_blocks(opset), token_layout=layout)
    assert len(result.report.converted) == 8
    v = result.report.verification
    assert v.passed, v.render_text(verbose=True)
    assert {c.check for c in v.checks} == {"original size", "sequence length 16", "sequence length 33"}
    assert v.max_abs_error < 1e-5


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_hugging_face_gpt2_exports_are_token_rows_without_the_flag(exporter):
    # dynamo's sizes are Shape(hidden, start, end), and its attention c_proj reads the heads
    # [B,T,4,8] behind a Transpose (no NHWC map: the rule comes before nhwc_flatten's reading of it)
    rows = inspect(MODELS / f"hf_gpt2_{exporter}.onnx").nodes
    assert [(n.status, n.reason) for n in rows] == [("skipped", "token_rows")] * 8


@pytest.mark.e2e
@pytest.mark.parametrize("layout", ["conv1d", "conv2d"])
@pytest.mark.parametrize("exporter, reshapes_removed", [("torchscript", 16), ("dynamo", 14)])
def test_hugging_face_gpt2_exports_convert_and_equal_the_original_at_three_lengths(layout, exporter, reshapes_removed):
    original = onnx.load(str(MODELS / f"hf_gpt2_{exporter}.onnx"))
    result = convert(original, token_layout=layout)
    report = result.report
    assert len(report.converted) == 8 and all(n.status == "converted" for n in report.nodes)
    # dynamo fuses the attention's merge of heads into c_proj's view ([B,T,4,8] -> [-1,32]): one
    # Reshape(0,0,32) stays in place of those two, in each block
    assert sum(r.reshapes_removed for r in report.runs) == reshapes_removed
    assert counts(result.model)["Reshape"] == counts(original)["Reshape"] - reshapes_removed
    assert counts(result.model)["Transpose"] == counts(original)["Transpose"] + 12 and not counts(result.model)["Gemm"]
    v = report.verification
    assert v.passed and v.max_abs_error < 1e-5, v.render_text(verbose=True)
    assert {c.check for c in v.checks} == {"original size", "sequence length 16", "sequence length 33"}


def test_a_conv1d_layer_whose_rows_are_also_read_elsewhere_stays_a_gemm():
    """Another reader of the [B*T,D] rows keeps them: removing the Reshape would change what it reads."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Reshape", ["x", "rows_shape"], ["rows"]),
             helper.make_node("Gemm", ["rows", "w", "b"], ["y2d"]),
             helper.make_node("Reshape", ["y2d", "out_shape"], ["y"]),
             helper.make_node("ReduceSum", ["rows"], ["total"], keepdims=0)]
    m = model(nodes, [vi("x", [2, 5, 4])], [vi("y", [2, 5, 3]), vi("total", [])],
              [init("rows_shape", np.array([-1, 4])), init("out_shape", np.array([2, 5, 3])),
               init("w", weights(rng, 4, 3)), init("b", np.zeros(3, np.float32))])
    result = convert(m, token_layout="conv1d", verify=False)
    assert [n.op_type for n in result.model.graph.node].count("Reshape") == 1  # the rows Reshape stays
    assert [n.rule for n in result.report.converted] == ["token_rows"]


@pytest.mark.e2e
def test_rows_written_as_matmul_and_bias_add_convert_too():
    """Reshape -> MatMul(W [D,F]) -> Add(b) -> Reshape back: the same layer, one Conv with the bias."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Reshape", ["x", "rows_shape"], ["rows"]),
             helper.make_node("MatMul", ["rows", "w"], ["mm"], name="fc"),
             helper.make_node("Add", ["mm", "b"], ["y2d"]),
             helper.make_node("Reshape", ["y2d", "out_shape"], ["y"])]
    m = model(nodes, [vi("x", ["B", 5, 4])], [vi("y", [None, 5, 3])],
              [init("rows_shape", np.array([-1, 4])), init("out_shape", np.array([-1, 5, 3])),
               init("w", weights(rng, 4, 3)), init("b", rng.standard_normal(3).astype(np.float32))])
    result = convert(m, token_layout="conv1d")
    assert [n.rule for n in result.report.converted] == ["token_rows"]
    assert counts(result.model) == Counter({"Transpose": 2, "Conv": 1})
    v = result.report.verification
    assert v.passed and v.max_abs_error < 1e-5, v.render_text(verbose=True)


@pytest.mark.e2e
def test_two_layers_on_the_rows_of_one_token_map_read_its_restored_tokens():
    """A run's map reshaped into rows that two Gemms read: neither joins the run (the Reshape stays,
    reading the map's layout restored), and the model is still exact."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Reshape", ["r", "rows_shape"], ["rows"]),
             helper.make_node("Gemm", ["rows", "w1", "b"], ["y1"]),
             helper.make_node("Gemm", ["rows", "w2", "b"], ["y2"]),
             helper.make_node("Reshape", ["y1", "out_shape"], ["z1"]),
             helper.make_node("Reshape", ["y2", "out_shape"], ["z2"])]
    m = model(nodes, [vi("x", [2, 5, 4])], [vi("z1", [2, 5, 3]), vi("z2", [2, 5, 3])],
              [init("w0", weights(rng, 4, 6)), init("rows_shape", np.array([-1, 6])),
               init("out_shape", np.array([2, 5, 3])), init("w1", weights(rng, 6, 3)), init("w2", weights(rng, 6, 3)),
               init("b", np.zeros(3, np.float32))])
    result = convert(m, token_layout="conv1d")
    assert [n.node for n in result.report.converted] == ["h"]  # the MatMul, named by its output
    assert counts(result.model)["Gemm"] == 2 and counts(result.model)["Reshape"] == 3
    assert result.report.verification.passed and result.report.verification.max_abs_error < 1e-5


@pytest.mark.parametrize("out_shape, converts", [
    ([2, 5, 3], True), ([-1, 5, 3], True), ([2, -1, 3], True),
    ([5, 2, 3], False),  # B and T swapped: not where the rows came from
    ([1, 10, 3], False), ([10, 3, 1], False),
])
def test_the_restoring_reshape_must_give_each_row_back_its_token(out_shape, converts):
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Reshape", ["x", "rows_shape"], ["rows"]),
             helper.make_node("Gemm", ["rows", "w", "b"], ["y2d"]),
             helper.make_node("Reshape", ["y2d", "out_shape"], ["y"])]
    dims = list(np.empty((10, 3)).reshape(out_shape).shape)
    m = model(nodes, [vi("x", [2, 5, 4])], [vi("y", dims)],
              [init("rows_shape", np.array([-1, 4])), init("out_shape", np.array(out_shape)),
               init("w", weights(rng, 4, 3)), init("b", np.zeros(3, np.float32))])
    (row,) = inspect(m, token_layout="conv1d").nodes
    assert (row.status == "converts") is converts, row


@pytest.mark.parametrize("restore_b, converts", [("shape", True), ("minus_one", False)])
def test_rows_of_a_symbolic_width_are_tokens_only_when_the_restore_reads_b_and_t(restore_b, converts):
    """x [B,T,D] with D symbolic, rows Reshape(x, [-1, 4]): the rows are tokens only if D is 4. A
    restore to [B, T, 3] read from x's Shape proves it (B*T rows hold all of x); [-1, T, 3] does not."""
    rng = np.random.default_rng(5)
    b_entry = "b" if restore_b == "shape" else "minus_one"
    nodes = [helper.make_node("Reshape", ["x", "rows_shape"], ["rows"]),
             helper.make_node("Gemm", ["rows", "w", "bias"], ["y2d"]),
             helper.make_node("Shape", ["x"], ["x_shape"]),
             helper.make_node("Gather", ["x_shape", "zero"], ["b"], axis=0),
             helper.make_node("Gather", ["x_shape", "one"], ["t"], axis=0),
             helper.make_node("Concat", [b_entry, "t", "f"], ["out_shape"], axis=0),
             helper.make_node("Reshape", ["y2d", "out_shape"], ["y"])]
    m = model(nodes, [vi("x", ["B", "T", "D"])], [vi("y", [None, None, 3])],
              [init("rows_shape", np.array([-1, 4])), init("zero", np.array([0])), init("one", np.array([1])),
               init("f", np.array([3])), init("minus_one", np.array([-1])), init("w", weights(rng, 4, 3)),
               init("bias", np.zeros(3, np.float32))])
    (row,) = inspect(m, token_layout="conv1d").nodes
    assert (row.status == "converts") is converts, row


# ---- MLP-Mixer -----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["conv1d", "conv2d"])
def test_mixer_token_mixing_keeps_no_inverse_transpose_pair(build_models, layout):
    original = build_models.mlp_mixer()
    result = convert(original, token_layout=layout, verify=False)
    report, m = result.report, result.model
    assert len(report.converted) == 8
    assert inverse_transpose_pairs(m) == []  # before this, 4 pairs: each model Transpose met the run's
    token_runs = [r for r in report.runs if ".mlp_tokens." in r.converted[0]]
    assert [(r.transposes_added, r.transposes_removed) for r in token_runs] == [(0, 2)] * 2
    assert report.transposes_removed == counts(original)["Transpose"] == 4
    assert report.transposes_added == 4  # the channel-mixing runs' entries and exits, 2 blocks
    assert counts(m)["Transpose"] == counts(original)["Transpose"] - 4 + 4
    assert "removed 4 Transpose nodes of the model's own" in report.render_text()
    assert '"transposes_removed": 4' in report.to_json()


@pytest.mark.e2e
@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("layout", ["conv1d", "conv2d"])
def test_converted_mixer_without_its_transposes_equals_the_original(build_models, layout, opset):
    result = convert(build_models.mlp_mixer(opset), token_layout=layout)
    v = result.report.verification
    assert v.passed and v.max_abs_error < 1e-5, v.render_text(verbose=True)
    assert [c.check for c in v.checks] == ["original size"]
    # the token-mixing weights fix the patch count, so there is no other length to try
    assert v.skipped == ["sequence lengths: the token axis is not a symbolic input dimension"]


def token_mlp(extra_reader: bool = False, output_between: bool = False):
    """x [N,6,4] -> Transpose(0,2,1) -> MatMul(W [6,6]) -> y, with the Transpose's output also read by a
    ReduceSum, or also a graph output."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1], name="model_transpose"),
             helper.make_node("MatMul", ["t", "w"], ["y"], name="fc")]
    outputs = [vi("y", ["N", 4, 6])]
    if extra_reader:
        nodes.append(helper.make_node("ReduceSum", ["t"], ["s"], keepdims=0))
        outputs.append(vi("s", []))
    if output_between:
        outputs.append(vi("t", ["N", 4, 6]))
    return model(nodes, [vi("x", ["N", 6, 4])], outputs, [init("w", weights(rng, 6, 6))])


@pytest.mark.parametrize("extra_reader, output_between, cancelled", [
    (False, False, True), (True, False, False), (False, True, False)])
def test_a_model_transpose_cancels_only_when_the_run_reads_it_alone(extra_reader, output_between, cancelled):
    result = convert(token_mlp(extra_reader, output_between), token_layout="conv1d", verify=False)
    names = [n.name for n in result.model.graph.node if n.op_type == "Transpose"]
    assert ("model_transpose" not in names) is cancelled
    (run,) = result.report.runs
    assert (run.transposes_removed, run.transposes_added) == ((1, 1) if cancelled else (0, 2))


def test_a_transpose_that_does_not_undo_the_runs_stays():
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2], name="model_transpose"),  # swaps B and T
             helper.make_node("MatMul", ["t", "w"], ["y"])]
    m = model(nodes, [vi("x", [4, 3, 6])], [vi("y", [3, 4, 5])], [init("w", weights(rng, 6, 5))])
    result = convert(m, token_layout="conv1d", verify=False)
    assert [n.op_type for n in result.model.graph.node].count("Transpose") == 3
    assert result.report.transposes_removed == 0
