"""Token and vector FC layers as kernel-1 convolutions (--token-layout, --vector-fc): the seed MLP,
a BERT encoder layer in both layouts, the Transposes each run costs, sequence lengths, constants that
follow the layout, run boundaries, include/exclude, and the CLI."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import MODELS
from graphs import init, initializer, model, ops, run, vi, weights
from onnx import helper

from onnx_fc2conv import convert
from onnx_fc2conv.cli import main
from onnx_fc2conv.errors import Fc2ConvError
from onnx_fc2conv.graph import value_dims
from onnx_fc2conv.layouts import TOKEN_LAYOUTS, VECTOR, flat

SEED_W = np.array([[0, 1, 1], [2, 3, 5]], np.float32)
FFN = ["ffn.intermediate.matmul/MatMul", "ffn.output.matmul/MatMul"]
ATTENTION = ["attention.query.matmul/MatMul", "attention.key.matmul/MatMul", "attention.value.matmul/MatMul",
             "attention.output.matmul/MatMul"]


def convs(m):
    return [n for n in m.graph.node if n.op_type == "Conv"]


def assert_verified(result, checks=None):
    """Passed, within 1e-5, with exactly ``checks`` (or at the original size and two other sequence lengths)."""
    v = result.report.verification
    assert v is not None and v.passed, v.render_text(verbose=True) if v else "not verified"
    assert v.max_abs_error < 1e-5
    names = {c.check for c in v.checks}
    if checks is not None:
        assert names == set(checks)
    else:
        assert "original size" in names and len({n for n in names if n.startswith("sequence length")}) == 2


def ffn_run(report):
    (run_,) = [r for r in report.runs if FFN[1] in r.converted]
    return run_


# ---- the seed MLP ------------------------------------------------------------------------------

@pytest.mark.e2e
def test_seed_mlp_becomes_one_conv_with_the_rows_of_w_as_kernels(build_models):
    original = build_models.seed_mlp()
    result = convert(original, vector_fc=True)
    m = result.model
    assert ops(m) == ["Unsqueeze", "Conv", "Relu", "Squeeze"]
    (conv,) = convs(m)
    kernels = initializer(m, conv.input[1])
    assert kernels.shape == (2, 3, 1, 1)
    np.testing.assert_array_equal(kernels[0].reshape(-1), [0, 1, 1])
    np.testing.assert_array_equal(kernels[1].reshape(-1), [2, 3, 5])
    np.testing.assert_array_equal(initializer(m, conv.input[2]), [8, 13])
    x = np.array([[1, 2, 3], [-1, 0, 4], [0, 0, 0], [-9, -9, -9]], np.float32)
    (y,) = run(m, {"x": x})
    np.testing.assert_array_equal(y, [[13, 36], [12, 31], [8, 13], [0, 0]])  # relu(Wx + b), by hand
    np.testing.assert_array_equal(y, run(original, {"x": x})[0])
    assert [o.type for o in m.graph.output] == [o.type for o in original.graph.output]
    (only_run,) = result.report.runs
    assert (only_run.layout, only_run.transposes_added, only_run.unsqueezes_added, only_run.squeezes_added) == (
        "vector", 0, 1, 1)
    assert result.report.verification.max_abs_error == 0


def test_vector_fc_is_off_by_default(build_models):
    result = convert(build_models.seed_mlp())
    assert not result.report.converted and ops(result.model) == ["Gemm", "Relu"]
    assert [n.reason for n in result.report.nodes] == ["not_a_feature_map"]


def mlp(first="gemm", between="BatchNormalization"):
    """x [N,6] -> Gemm(transB=0, alpha, beta) or MatMul+Add -> [between] -> Relu -> Gemm(transB=1) -> y [N,3]."""
    rng = np.random.default_rng(3)
    inits = [init("w1", weights(rng, 6, 5)), init("b1", weights(rng, 5)), init("w2", weights(rng, 3, 5)),
             init("b2", weights(rng, 3))]
    if first == "gemm":
        nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", alpha=0.5, beta=2.0)]
    else:
        nodes = [helper.make_node("MatMul", ["x", "w1"], ["hm"], name="fc1"),
                 helper.make_node("Add", ["b1", "hm"], ["h"], name="fc1_bias")]
    if between == "BatchNormalization":
        inits += [init(f"bn.{k}", v) for k, v in
                  dict(s=1 + weights(rng, 5), b=weights(rng, 5), m=weights(rng, 5), v=1 + np.abs(weights(rng, 5))).items()]
        nodes.append(helper.make_node("BatchNormalization", ["h", "bn.s", "bn.b", "bn.m", "bn.v"], ["h2"], name="bn"))
    else:
        nodes.append(helper.make_node("Identity", ["h"], ["h2"], name="id"))
    nodes += [helper.make_node("Relu", ["h2"], ["r"], name="relu"),
              helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1)]
    return model(nodes, [vi("x", ["N", 6])], [vi("y", ["N", 3])], inits)


@pytest.mark.e2e
@pytest.mark.parametrize("first", ["gemm", "matmul_add"])
def test_mlp_chain_is_one_run_with_one_unsqueeze_in_and_one_squeeze_out(first):
    original = mlp(first)
    result = convert(original, vector_fc=True)
    assert [n.rule for n in result.report.converted] == ["vector_fc", "fc_chain"]
    assert Counter(ops(result.model)) == Counter(Unsqueeze=1, Squeeze=1, Conv=2, BatchNormalization=1, Relu=1)
    (only_run,) = result.report.runs
    assert (only_run.unsqueezes_added, only_run.squeezes_added) == (1, 1) and only_run.ends == ["output y"]
    assert_verified(result, ["original size"])
    first_conv = convs(result.model)[0]
    w1 = initializer(original, "w1")
    expected = (0.5 * w1.T if first == "gemm" else w1.T).reshape(5, 6, 1, 1)
    np.testing.assert_allclose(initializer(result.model, first_conv.input[1]), expected)


# ---- the BERT encoder layer --------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("layout", ["conv1d", "conv2d"])
def test_bert_layer_converts_in_both_layouts_and_verifies_at_three_lengths(build_models, layout, opset):
    original = build_models.bert_layer(opset)
    result = convert(original, token_layout=layout, input_shapes={"hidden": (2, 7, 32)})
    report = result.report
    assert sorted(n.node for n in report.converted) == sorted(ATTENTION + FFN)
    kernel = (1,) if layout == "conv1d" else (1, 1)
    assert sorted(initializer(result.model, c.input[1]).shape for c in convs(result.model)) == sorted(
        [(32, 32, *kernel)] * 4 + [(64, 32, *kernel), (32, 64, *kernel)])
    assert [n.name for n in result.model.graph.node if n.op_type == "MatMul"] == [
        "attention.scores/MatMul", "attention.context/MatMul"]  # activations times activations stay
    assert_verified(result, ["original size", "sequence length 3", "sequence length 8"])
    ffn = ffn_run(report)
    assert ffn.converted == FFN and len(ffn.passed_through) == 5  # the erf-GELU: Div, Erf, Add, Mul, Mul
    assert ffn.transposes_added == 2 and ffn.ends == ["ffn.residual/Add"]
    # Q, K, V share the Transpose of their input; each output and the output projection pay their own.
    assert [r.transposes_added for r in report.runs] == [4, 2, 2] and report.transposes_added == 8
    # conv2d adds a size-1 axis with one Unsqueeze per entry and drops it with one Squeeze per restore.
    assert [(r.unsqueezes_added, r.squeezes_added) for r in report.runs] == (
        [(0, 0)] * 3 if layout == "conv1d" else [(1, 3), (1, 1), (1, 1)])
    assert "Reshape" not in Counter(ops(result.model)) - Counter(ops(original))
    assert Counter(ops(result.model))["Transpose"] == Counter(ops(original))["Transpose"] + 8
    onnx.checker.check_model(result.model, full_check=True)
    assert [o.type for o in result.model.graph.output] == [o.type for o in original.graph.output]


@pytest.mark.e2e
@pytest.mark.parametrize("layout", ["conv1d", "conv2d"])
def test_torch_encoder_layer_converts_and_verifies_at_two_more_sequence_lengths(layout):
    """torch's nn.TransformerEncoderLayer from the dynamo exporter, [1,T,64]: the attention input
    projection reads [T,1,64] (tokens first), the FFN [1,T,64]; the output projection is a Gemm after a
    Transpose that moves the batch axis."""
    original = onnx.load(str(MODELS / "torch_encoder_layer.onnx"))
    result = convert(original, token_layout=layout)
    report = result.report
    assert [(n.node, n.rule) for n in report.converted] == [
        ("node_MatMul_2", "token_matmul"), ("node_MatMul_86", "token_matmul"), ("node_MatMul_88", "fc_chain")]
    assert [n.reason for n in report.nodes if n.status == "skipped"] == ["channels_last"]
    assert_verified(result)
    added = (1, 1) if layout == "conv2d" else (0, 0)
    assert [(r.transposes_added, r.unsqueezes_added, r.squeezes_added) for r in report.runs] == [(2, *added)] * 2
    assert Counter(ops(result.model)) - Counter(ops(original)) == Counter(
        Conv=3, Transpose=4, Unsqueeze=2 * added[0], Squeeze=2 * added[1])
    assert [value_dims(i)[1] for i in result.model.graph.input] == [(1, "T", 64)]


@pytest.mark.e2e
@pytest.mark.parametrize("layout, map_dims", [("conv1d", ("B", 32, "T")), ("conv2d", ("B", 32, 1, "T"))])
def test_token_maps_are_channels_first_with_tokens_on_the_last_axis(build_models, layout, map_dims):
    result = convert(build_models.bert_layer(), token_layout=layout)
    shapes = {v.name: value_dims(v)[1] for v in result.model.graph.value_info}
    conv_inputs = [shapes[c.input[0]] for c in convs(result.model)]
    assert conv_inputs.count(map_dims) == 3  # Q, K, V read the hidden input's map
    # ONNX's inference names the other runs' token counts afresh (unk__N); they are still last.
    assert all(d[0] == "B" and d[2:-1] == map_dims[2:-1] and isinstance(d[-1], str) for d in conv_inputs)
    assert sorted(d[1] for d in conv_inputs) == [32] * 5 + [64]
    readers_of_hidden = [n.op_type for n in result.model.graph.node if "hidden" in n.input]
    assert readers_of_hidden == ["Transpose", "Add"]  # one entry (conv2d: then an Unsqueeze), the residual


@pytest.mark.e2e
@pytest.mark.parametrize("layout", ["conv1d", "conv2d"])
def test_converted_bert_layer_equals_the_original_at_any_sequence_length(build_models, layout):
    original = build_models.bert_layer()
    converted = convert(original, token_layout=layout, verify=False).model
    rng = np.random.default_rng(7)
    for tokens in (1, 5, 33):
        hidden = rng.standard_normal((3, tokens, 32)).astype(np.float32)
        got, want = run(converted, {"hidden": hidden})[0], run(original, {"hidden": hidden})[0]
        assert got.shape == (3, tokens, 32)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_token_layout_is_off_by_default(build_models):
    result = convert(build_models.bert_layer())
    assert not result.report.converted and not result.report.runs
    assert {n.reason for n in result.report.nodes} == {"token_matmul"}


def test_unknown_token_layout_is_a_clear_error(build_models):
    with pytest.raises(Fc2ConvError, match="unknown token layout 'conv3d'; layouts are: conv1d, conv2d"):
        convert(build_models.bert_layer(), token_layout="conv3d")


# ---- include / exclude -------------------------------------------------------------------------

@pytest.mark.e2e
def test_include_converts_only_the_ffn_as_one_run_with_two_transposes(build_models):
    result = convert(build_models.bert_layer(), token_layout="conv1d", include=["ffn.*"])
    report = result.report
    assert [n.node for n in report.converted] == FFN
    assert {n.node: n.reason for n in report.nodes if n.status == "skipped"} == dict.fromkeys(ATTENTION, "excluded")
    (only_run,) = report.runs
    assert only_run.transposes_added == 2 and report.transposes_added == 2
    assert_verified(result)


@pytest.mark.e2e
def test_exclude_keeps_that_layer_and_ends_the_run_before_it(build_models):
    result = convert(build_models.bert_layer(), token_layout="conv1d", exclude=["ffn.output*", "attention.*"])
    report = result.report
    assert [n.node for n in report.converted] == FFN[:1]
    assert {n.node: n.reason for n in report.nodes if n.status == "skipped"}[FFN[1]] == "excluded"
    assert FFN[1] in [n.name for n in result.model.graph.node if n.op_type == "MatMul"]
    (only_run,) = report.runs
    assert only_run.ends == [FFN[1]] and only_run.transposes_added == 2 and len(only_run.passed_through) == 5
    assert_verified(result)


@pytest.mark.e2e
def test_exclude_on_a_head_chain_puts_the_flatten_back_before_that_layer(build_models):
    result = convert(build_models.lenet5(), exclude=["output*"])
    assert [n.node for n in result.report.converted] == ["c5/Gemm", "f6/Gemm"]
    (blocked,) = [n for n in result.report.nodes if n.status == "blocked"]
    assert (blocked.node, blocked.reason) == ("output/Gemm", "excluded")
    assert result.report.flattens_added == 1 and result.report.verification.passed


# ---- constants, boundaries, quantized weights --------------------------------------------------

CONSTANT_CASES = [(layout, shape) for layout in TOKEN_LAYOUTS.values()
                  for shape in [(), (1,), (6,), (1, 6), (1, 1, 6), (5, 6), (1, 5, 6), (5, 1), (1, 5, 1), (1, 1, 1, 6)]]
CONSTANT_CASES += [(layout, shape) for layout in (VECTOR, flat(2)) for shape in [(), (1,), (6,), (1, 6), (1, 1, 6)]]


@pytest.mark.parametrize("layout, shape", CONSTANT_CASES, ids=lambda v: getattr(v, "name", str(v)))
def test_a_constant_broadcasts_against_the_map_as_it_did_against_the_tensor(layout, shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 5, 6) if layout.original_rank == 3 else (1, 6))  # one sample: mapped as x is
    c = rng.standard_normal(shape)
    mapped = layout.constant(c)
    if len(shape) > layout.original_rank:
        assert mapped is None  # it would have raised the rank of the result
        return
    np.testing.assert_allclose(layout.constant(x) + mapped, layout.constant(x + c))


@pytest.mark.parametrize("layout", [*TOKEN_LAYOUTS.values(), VECTOR], ids=lambda layout: layout.name)
def test_a_per_sample_constant_cannot_follow_the_map(layout):
    assert layout.constant(np.ones((2, 5, 6)[3 - layout.original_rank:])) is None


# name -> (entry ops, restore ops, map dims of x [B,T,6] or [N,6])
LAYOUT_NODES = {
    "conv1d": (["Transpose"], ["Transpose"], ["B", 6, "T"]),
    "conv2d": (["Transpose", "Unsqueeze"], ["Squeeze", "Transpose"], ["B", 6, 1, "T"]),
    "vector": (["Unsqueeze"], ["Squeeze"], ["N", 6, 1, 1]),
}


@pytest.mark.parametrize("opset", [11, 13, 21])
@pytest.mark.parametrize("layout", [*TOKEN_LAYOUTS.values(), VECTOR], ids=lambda layout: layout.name)
def test_layouts_are_written_in_plain_ops_no_reshape_and_no_rank_above_the_maps(layout, opset):
    """Downstream compilers pattern-match these nodes: a size-1 axis is an Unsqueeze/Squeeze (axes an
    attribute before opset 13, an input from 13), never a Reshape, and nothing is of a higher rank than
    the map (OpenVINO threw on conv2d's old Reshape + Transpose with a dynamic T). The graph's map is
    what ``Layout.constant`` computes for one sample."""
    from onnx.reference import ReferenceEvaluator

    from onnx_fc2conv.index import GraphIndex

    dims = ["B", "T", 6] if layout.original_rank == 3 else ["N", 6]
    base = model([helper.make_node("Identity", ["x"], ["y"])], [vi("x", dims)], [vi("y", dims)], opset=opset)
    index = GraphIndex(base)
    entry, entry_inits, mapped = layout.enter(index, "x")
    restore, restore_inits, restored = layout.restore(index, mapped)
    graph = helper.make_graph([*entry, *restore, helper.make_node("Identity", [restored], ["y"])], "layout",
                              [vi("x", dims)], [vi("y", dims), vi(mapped, None)], [*entry_inits, *restore_inits])
    m = helper.make_model(graph, opset_imports=base.opset_import, ir_version=base.ir_version)
    entry_ops, restore_ops, map_dims = LAYOUT_NODES[layout.name]
    assert ([n.op_type for n in entry], [n.op_type for n in restore]) == (entry_ops, restore_ops)
    for n in entry + restore:
        if n.op_type in ("Unsqueeze", "Squeeze"):
            axes = [a.ints for a in n.attribute if a.name == "axes"]
            assert (len(n.input), axes) == ((1, [[2] if layout.original_rank == 3 else [2, 3]]) if opset < 13 else
                                            (2, []))
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    onnx.checker.check_model(inferred, full_check=True)
    ranks = {v.name: value_dims(v)[1] for v in [*inferred.graph.value_info, *inferred.graph.output]}
    assert ranks[mapped] == tuple(map_dims) and ranks["y"] == tuple(dims)
    assert max(len(d) for d in ranks.values()) == len(map_dims)
    x = np.random.default_rng(0).standard_normal((1, 5, 6) if layout.original_rank == 3 else (1, 6)).astype(np.float32)
    y, map_value = ReferenceEvaluator(m).run(None, {"x": x})
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(map_value, layout.constant(x))


def token_model(after_first=(), extra_inits=(), tokens=5, opset=13):
    """x [N,tokens,6] -> MatMul W[6,4] -> [after_first ops] -> MatMul W2[4,3] -> y."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["t0"], name="fc1")]
    last = "t0"
    for i, (op, extra, attrs) in enumerate(after_first):
        nodes.append(helper.make_node(op, [last, *extra], [f"t{i + 1}"], name=f"{op.lower()}{i}", **attrs))
        last = f"t{i + 1}"
    nodes.append(helper.make_node("MatMul", [last, "w2"], ["y"], name="fc2"))
    inits = [init("w1", weights(rng, 6, 4)), init("w2", weights(rng, 4, 3)), *extra_inits]
    return model(nodes, [vi("x", ["N", tokens, 6])], [vi("y", None)], inits, opset=opset)


@pytest.mark.e2e
@pytest.mark.parametrize("layout", ["conv1d", "conv2d"])
def test_bias_scale_and_position_table_follow_the_tokens(layout):
    rng = np.random.default_rng(2)
    original = token_model(
        [("Add", ["bias"], {}), ("Mul", ["table"], {}), ("Sub", ["half"], {}), ("Tanh", [], {})],
        [init("bias", weights(rng, 1, 1, 4)), init("table", weights(rng, 5, 4)), init("half", np.float32(0.5))])
    result = convert(original, token_layout=layout)
    (only_run,) = result.report.runs
    assert only_run.converted == ["fc1", "fc2"] and len(only_run.passed_through) == 4
    assert only_run.transposes_added == 2
    tables = [initializer(result.model, n.input[1]).shape for n in result.model.graph.node if n.op_type == "Mul"]
    assert tables == [(4, 5) if layout == "conv1d" else (4, 1, 5)]
    v = result.report.verification
    assert v.passed and v.max_abs_error < 1e-5
    assert v.skipped == ["sequence lengths: the token axis is not a symbolic input dimension"]


@pytest.mark.e2e
@pytest.mark.parametrize("boundary, extra_inits", [
    (("BatchNormalization", ["s", "b", "m", "v"], {}),  # normalises axis 1, the token axis
     [init("s", np.full(5, 2, np.float32)), init("b", np.ones(5, np.float32)), init("m", np.zeros(5, np.float32)),
      init("v", np.ones(5, np.float32))]),
    (("Softmax", [], {"axis": -1}), []),
    (("LayerNormalization", ["s4"], {"axis": -1}), [init("s4", np.ones(4, np.float32))]),
])
def test_ops_over_the_original_axes_end_the_run(boundary, extra_inits):
    original = token_model([boundary], extra_inits, opset=17)
    result = convert(original, token_layout="conv1d")
    first, second = result.report.runs
    assert first.ends == [boundary[0].lower() + "0"] and second.converted == ["fc2"]
    assert [first.transposes_added, second.transposes_added] == [2, 2]
    assert result.report.verification.passed


@pytest.mark.e2e
def test_token_matmul_with_a_dequantized_int8_weight_converts_and_keeps_the_weight_int8():
    rng = np.random.default_rng(4)
    q = rng.integers(-127, 128, size=(6, 4)).astype(np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["wq", "scale", "zero"], ["w"], name="dq"),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")]
    original = model(nodes, [vi("x", ["N", "T", 6])], [vi("y", None)],
                     [init("wq", q), init("scale", np.float32(0.02)), init("zero", np.int8(0))])
    result = convert(original, token_layout="conv1d")
    assert [(n.node, n.rule) for n in result.report.converted] == [("fc", "token_matmul")]
    (conv,) = convs(result.model)
    dq = next(n for n in result.model.graph.node if conv.input[1] in n.output)
    assert dq.op_type == "DequantizeLinear" and initializer(result.model, dq.input[0]).dtype == np.int8
    assert_verified(result)


@pytest.mark.e2e
def test_flatten_that_mixes_batch_and_channels_is_still_a_vector_fc():
    """flatten_gemm refuses a Flatten(axis=2) head; the Gemm on its [N*C, H*W] output is a plain MLP layer."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flatten", axis=2),
             helper.make_node("Gemm", ["f", "w", "b"], ["y"], name="fc", transB=1)]
    original = model(nodes, [vi("x", ["N", 3, 2, 2])], [vi("y", None)],
                     [init("w", weights(rng, 5, 4)), init("b", weights(rng, 5))])
    assert [n.reason for n in convert(original).report.nodes] == ["flatten_axis"]
    result = convert(original, vector_fc=True)
    assert [n.rule for n in result.report.converted] == ["vector_fc"]
    assert result.report.verification.passed


# ---- command line ------------------------------------------------------------------------------

def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.e2e
def test_cli_token_layout_prints_the_runs_and_their_transposes(tmp_path):
    out = tmp_path / "bert.onnx"
    result = invoke(MODELS / "bert_layer.onnx", out, "--token-layout", "conv2d", "--include", "ffn*")
    assert result.exit_code == 0, result.output
    assert "converted 2 of 6 FC nodes" in result.output and "4 excluded" in result.output
    assert "run (conv2d)" in result.output and "added 2 Transpose, 1 Unsqueeze and 1 Squeeze" in result.output
    assert "verification passed: 3 checks" in result.output
    assert Counter(ops(onnx.load(out)))["Conv"] == 2


@pytest.mark.e2e
def test_cli_vector_fc_and_exclude(tmp_path):
    result = invoke(MODELS / "seed_mlp.onnx", tmp_path / "o.onnx", "--vector-fc")
    assert result.exit_code == 0 and "converted 1 of 1 FC nodes" in result.output
    result = invoke(MODELS / "seed_mlp.onnx", tmp_path / "o.onnx", "--vector-fc", "--exclude", "fc*")
    assert result.exit_code == 0 and "1 excluded" in result.output


def test_cli_rejects_an_unknown_token_layout_with_exit_2(tmp_path):
    result = CliRunner().invoke(main, [str(MODELS / "bert_layer.onnx"), str(tmp_path / "o.onnx"),
                                       "--token-layout", "conv3d"])
    assert result.exit_code == 2 and "'conv3d' is not one of 'conv1d', 'conv2d'" in result.output
    assert not (tmp_path / "o.onnx").exists()


def test_cli_inspect_knows_the_token_rules():
    result = invoke("inspect", MODELS / "bert_layer.onnx", "--token-layout", "conv1d", "--exclude", "attention.*")
    assert result.exit_code == 0, result.output
    assert result.output.count("converts by token_matmul") == 1 and result.output.count("converts by fc_chain") == 1
    assert result.output.count("[excluded]") == 4


def test_cli_help_lists_the_token_and_vector_options():
    result = invoke("convert", "--help")
    for option in ("--token-layout [conv1d|conv2d]", "--vector-fc", "--include GLOB", "--exclude GLOB"):
        assert option in result.output


def test_report_lists_up_to_three_runs_and_sums_up_more_unless_verbose():
    from onnx_fc2conv.report import ConversionReport, RunReport

    runs = [RunReport("conv1d", ["x"], ["fc"], [], ["out"], transposes_added=2) for _ in range(4)]
    report = ConversionReport("m", 13, "fully_convolutional", runs=runs)
    assert ("  4 runs (conv1d): 4 FC layers, added 8 Transpose, 0 Unsqueeze and 0 Squeeze (-v lists each run)"
            in report.render_text())
    assert report.render_text(verbose=True).count("run (conv1d) x -> out: 1 FC and 0 pointwise ops") == 4
    report.runs = runs[:3]
    assert report.render_text().count("run (conv1d)") == 3
