"""Each core rule: what it rewrites (structure, exact weights, numbers) and what it skips (and why)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import conv_flatten_gemm, init, initializer, model, ops, run, vi, weights
from onnx import helper

from onnx_fc2conv import convert


def conv_nodes(m):
    return [n for n in m.graph.node if n.op_type == "Conv"]


def assert_verified(result, windows=True):
    v = result.report.verification
    assert v is not None and v.passed, v.render_text(verbose=True) if v else "not verified"
    assert v.max_abs_error < 1e-4
    if windows:
        assert any(c.check.startswith("sliding window") and c.compared >= 4 for c in v.checks)


@pytest.mark.e2e
def test_seed_example_conv_carries_exactly_the_gemm_weights(build_models):
    result = convert(build_models.seed_fc())
    m = result.model
    assert ops(m) == ["Conv", "Relu"]
    conv = conv_nodes(m)[0]
    np.testing.assert_array_equal(initializer(m, conv.input[1]), np.array([[0, 1, 1], [2, 3, 5]], np.float32).reshape(2, 3, 1, 1))
    np.testing.assert_array_equal(initializer(m, conv.input[2]), [8, 13])
    (y,) = run(m, {"x": np.array([1, 2, 3], np.float32).reshape(1, 3, 1, 1)})
    np.testing.assert_array_equal(y.reshape(-1), [13, 36])  # relu(0+2+3+8), relu(2+6+15+13)
    assert_verified(result)


@pytest.mark.e2e
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias", ["vector", "row", "scalar", "none"])
def test_flatten_gemm_handles_transb_and_every_bias_form(trans_b, bias):
    result = convert(conv_flatten_gemm(trans_b=trans_b, bias=bias))
    assert ops(result.model) == ["Conv", "Relu", "Conv"]
    head = conv_nodes(result.model)[1]
    assert initializer(result.model, head.input[1]).shape == (5, 4, 3, 3)
    assert len(head.input) == (2 if bias == "none" else 3)
    assert [n.node for n in result.report.converted] == ["fc"]
    assert_verified(result)


@pytest.mark.e2e
def test_flatten_gemm_folds_alpha_into_weight_and_beta_into_bias():
    original = conv_flatten_gemm(alpha=0.5, beta=3.0)
    result = convert(original)
    head = conv_nodes(result.model)[1]
    w = initializer(original, "fc.w")
    np.testing.assert_allclose(initializer(result.model, head.input[1]), 0.5 * w.reshape(5, 4, 3, 3))
    np.testing.assert_allclose(initializer(result.model, head.input[2]), 3.0 * initializer(original, "fc.b"))
    assert_verified(result)


@pytest.mark.e2e
@pytest.mark.parametrize("spatial", [(4,), (3, 3), (2, 3, 2)])
def test_flatten_gemm_on_rank_3_4_5_feature_maps(spatial):
    result = convert(conv_flatten_gemm(spatial=spatial))
    head = conv_nodes(result.model)[1]
    assert [a.ints for a in head.attribute if a.name == "kernel_shape"][0] == list(spatial)
    assert_verified(result)


@pytest.mark.e2e
def test_identity_and_dropout_between_flatten_and_gemm_are_looked_through():
    between = [("Identity", {}, []), ("Dropout", {}, [])]
    result = convert(conv_flatten_gemm(between=between))
    assert "Flatten" not in ops(result.model) and "Gemm" not in ops(result.model)
    assert_verified(result)


@pytest.mark.parametrize("kwargs, reason", [
    (dict(trans_a=1), "trans_a"),
    (dict(bias="per_sample"), "bias_per_sample"),
])
def test_gemm_skips_leave_the_model_unchanged_and_say_why(kwargs, reason):
    original = conv_flatten_gemm(**kwargs) if "trans_a" not in kwargs else _trans_a_model()
    result = convert(original)
    assert [(n.status, n.reason) for n in result.report.nodes] == [("skipped", reason)]
    assert ops(result.model) == ops(original)
    assert result.report.verification is None  # nothing converted, nothing to prove


def _trans_a_model():
    # Gemm(transA=1) on Flatten(x) [2, K] computes Flatten(x)^T @ W [K, F]: it mixes samples.
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w"], ["y"], name="fc", transA=1)]
    return model(nodes, [vi("x", [2, 3, 2, 2])], [vi("y", [12, 4])], [init("w", np.ones((2, 4), np.float32))])


def test_flatten_with_axis_other_than_one_is_skipped():
    m = conv_flatten_gemm()
    fl = next(n for n in m.graph.node if n.op_type == "Flatten")
    fl.attribute[0].i = 2
    # Gemm weight no longer matches [N*C, H*W]; rebuild the weight so the graph stays valid.
    fc_w = next(t for t in m.graph.initializer if t.name == "fc.w")
    fc_w.CopyFrom(init("fc.w", np.ones((5, 9), np.float32)))
    result = convert(m)
    assert [(n.status, n.reason) for n in result.report.nodes] == [("skipped", "flatten_axis")]


def _reshape_head(shape_values):
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Relu", ["x"], ["fmap"]),
             helper.make_node("Reshape", ["fmap", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["mm"], name="fc"),
             helper.make_node("Add", ["b", "mm"], ["y"])]
    inits = [init("shape", np.array(shape_values, np.int64)), init("w", weights(rng, 24, 6)), init("b", weights(rng, 6))]
    return model(nodes, [vi("x", ["N", 4, 2, 3])], [vi("y", ["N", 6])], inits)


@pytest.mark.e2e
@pytest.mark.parametrize("shape", [[0, -1], [-1, 24]])
def test_reshape_flatten_with_constant_shape_and_matmul_add_in_either_order(shape):
    result = convert(_reshape_head(shape))
    assert ops(result.model) == ["Relu", "Conv"]
    conv = conv_nodes(result.model)[0]
    assert initializer(result.model, conv.input[1]).shape == (6, 4, 2, 3)
    assert len(result.model.graph.initializer) == 2  # shape, old weight and old bias are gone
    assert_verified(result)


def test_reshape_that_is_not_a_flatten_is_skipped_with_reason():
    m = _reshape_head([0, -1])
    # [N, 4, 6] then MatMul over the last axis: a token-like MatMul, not a flatten
    m.graph.initializer[0].CopyFrom(init("shape", np.array([0, 4, 6], np.int64)))
    m.graph.initializer[1].CopyFrom(init("w", np.ones((6, 6), np.float32)))
    result = convert(m)
    assert result.report.converted == []


@pytest.mark.e2e
def test_pytorch_view_shape_subgraph_is_recognised_and_removed(build_models):
    result = convert(build_models.torch_view_head())
    assert not {"Shape", "Gather", "Unsqueeze", "Concat", "Reshape"} & set(ops(result.model))
    assert [n.rule for n in result.report.converted] == ["reshape_flatten", "fc_chain"]
    assert_verified(result)


@pytest.mark.e2e
@pytest.mark.parametrize("op, attrs, extra", [
    ("Relu", {}, []), ("LeakyRelu", {"alpha": 0.2}, []), ("Elu", {}, []), ("Selu", {}, []), ("Sigmoid", {}, []),
    ("HardSigmoid", {}, []), ("HardSwish", {}, []), ("Tanh", {}, []), ("Softplus", {}, []), ("Erf", {}, []),
    ("Dropout", {}, []), ("Identity", {}, []), ("Cast", {"to": onnx.TensorProto.FLOAT}, []),
    ("Clip", {}, ["lo", "hi"]), ("PRelu", {}, ["slope"]), ("Add", {}, ["vec"]), ("Mul", {}, ["row"]),
    ("Sub", {}, ["scalar"]), ("Div", {}, ["pos"]), ("Max", {}, ["vec"]), ("Min", {}, ["row"]),
    ("BatchNormalization", {}, ["bn.s", "bn.b", "bn.m", "bn.v"]),
])
def test_fc_chain_passes_through_pointwise_ops_and_reshapes_their_constants(op, attrs, extra):
    rng = np.random.default_rng(3)
    m = conv_flatten_gemm(after=[(op, attrs, extra), ("Gemm", {"transB": 1}, ["fc2.w"])], extra_inits=[
        init("lo", np.array(-0.5, np.float32)), init("hi", np.array(0.5, np.float32)),
        init("slope", np.linspace(0.1, 0.5, 5).astype(np.float32)), init("vec", weights(rng, 5)),
        init("row", weights(rng, 1, 5)), init("scalar", np.array(0.25, np.float32)),
        init("pos", np.linspace(1, 2, 5).astype(np.float32)), init("bn.s", weights(rng, 5)), init("bn.b", weights(rng, 5)),
        init("bn.m", weights(rng, 5)), init("bn.v", np.linspace(0.5, 1.5, 5).astype(np.float32)),
        init("fc2.w", weights(rng, 3, 5))], opset=14)  # 14: HardSwish
    result = convert(m)
    assert "Flatten" not in ops(result.model) and "Gemm" not in ops(result.model)
    assert len(result.report.converted) == 2 and result.report.fully_convolutional
    assert_verified(result)


@pytest.mark.e2e
def test_shared_weight_is_copied_not_mutated():
    m = conv_flatten_gemm(after=[("Relu", {}, [])])
    # a second head reads the same weight: both become Convs, each with its own kernel tensor
    m.graph.node.append(helper.make_node("Gemm", ["flat0", "fc.w", "fc.b"], ["y2"], name="fc_twin", transB=1))
    m.graph.output.append(vi("y2", ["N", 5]))
    onnx.checker.check_model(m, full_check=True)
    before = initializer(m, "fc.w").copy()
    result = convert(m)
    assert len(result.report.converted) == 2
    np.testing.assert_array_equal(initializer(m, "fc.w"), before)  # caller's model untouched
    assert_verified(result)


@pytest.mark.e2e
def test_map_meeting_an_unsupported_consumer_gets_a_flatten_back_and_is_reported_blocked():
    m = conv_flatten_gemm(after=[("Concat", {"axis": 1}, ["side"])], extra_inputs=[vi("side", ["N", 2])])
    result = convert(m)
    blocked = [n for n in result.report.nodes if n.status == "blocked"]
    assert [(n.node, n.reason) for n in blocked] == [("after0", "fcn_blocked")]
    assert ops(result.model).count("Flatten") == 1
    assert not result.report.fully_convolutional and result.report.symbolic_inputs == {}
    assert_verified(result, windows=False)


@pytest.mark.e2e
@pytest.mark.parametrize("opset, transposes", [(11, 2), (13, 0)])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_normalises_over_channels_only_at_every_opset(op, opset, transposes):
    result = convert(conv_flatten_gemm(after=[(op, {"axis": 1}, [])], opset=opset))
    assert result.report.transposes_added == transposes
    assert_verified(result)


@pytest.mark.e2e
def test_argmax_and_reduce_over_the_class_axis_get_axis_one():
    m = conv_flatten_gemm(after=[("ReduceMax", {"axes": [1], "keepdims": 1}, [])], opset=13)
    result = convert(m)
    reduce = next(n for n in result.model.graph.node if n.op_type == "ReduceMax")
    assert list(reduce.attribute[0].ints) == [1] or [a.ints for a in reduce.attribute if a.name == "axes"][0] == [1]
    assert_verified(result)
    m = conv_flatten_gemm(after=[("ArgMax", {"axis": -1, "keepdims": 1}, [])], opset=13)
    result = convert(m)
    assert_verified(result)


@pytest.mark.e2e
def test_reduce_with_axes_input_at_opset_18():
    m = conv_flatten_gemm(after=[("ReduceMean", {"keepdims": 1}, ["axes"])], opset=18,
                          extra_inits=[init("axes", np.array([-1], np.int64))])
    result = convert(m)
    assert_verified(result)


@pytest.mark.e2e
def test_keep_output_shape_gives_identical_io_shapes(build_models):
    original = build_models.vgg_small()
    result = convert(original, keep_output_shape=True)
    assert [o.type for o in result.model.graph.output] == [o.type for o in original.graph.output]
    assert [i.type for i in result.model.graph.input] == [i.type for i in original.graph.input]
    assert ops(result.model).count("Flatten") == 1 and "Gemm" not in ops(result.model)
    assert_verified(result, windows=False)


@pytest.mark.e2e
def test_output_names_never_change_and_head_outputs_become_maps(build_models):
    result = convert(build_models.lenet5())
    out = result.model.graph.output[0]
    assert out.name == "logits"
    dims = [d.dim_value or d.dim_param for d in out.type.tensor_type.shape.dim]
    assert dims == ["N", 10, "logits_height", "logits_width"]
    assert result.report.symbolic_inputs == {"input": ["N", 1, "height", "width"]}
    onnx.checker.check_model(result.model, full_check=True)


def test_unknown_rule_name_is_a_clear_error():
    from onnx_fc2conv import Fc2ConvError

    with pytest.raises(Fc2ConvError, match="unknown rule 'nope'"):
        convert(conv_flatten_gemm(), skip_rules=["nope"])


def test_skipped_rule_is_reported_and_leaves_the_node():
    result = convert(conv_flatten_gemm(), skip_rules=["flatten_gemm"])
    assert [(n.reason, n.rule) for n in result.report.nodes] == [("rule_disabled", "flatten_gemm")]
    assert "Gemm" in ops(result.model)
