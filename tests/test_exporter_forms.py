"""How exporters spell "flatten then fully connected", one form per test: the NHWC head of
tf2onnx/keras2onnx, quantized (QDQ) weights and activations, every weight source, flatten variants,
dtypes, opsets 7-21, ops from other domains, and --dense-pool. Each test checks the structure or the
exact weights of the result and that the verifier proved it (with the sliding-window check where
the model becomes fully convolutional)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import init, initializer, model, ops, vi, weights
from onnx import TensorProto, helper

from onnx_fc2conv import convert, inspect

C, H, W, F = 4, 3, 2, 5  # the feature map [N,C,H,W] (H != W, so a swapped axis cannot pass) and the features
K = C * H * W


def backbone(elem=TensorProto.FLOAT, np_dtype=np.float32, seed=0):
    """x [N,2,H+2,W+2] -> Conv 3x3 valid -> Relu -> fmap [N,C,H,W]."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["conv"], name="conv", kernel_shape=[3, 3]),
             helper.make_node("Relu", ["conv"], ["fmap"], name="relu")]
    inits = [init("conv.w", weights(rng, C, 2, 3, 3, dtype=np_dtype)), init("conv.b", weights(rng, C, dtype=np_dtype))]
    return nodes, inits, [vi("x", ["N", 2, H + 2, W + 2], elem)]


def head_model(head_nodes, head_inits, opset=13, **kwargs):
    nodes, inits, inputs = backbone(**kwargs)
    return model([*nodes, *head_nodes], inputs, [vi("y", None, 0)], [*inits, *head_inits], opset=opset)


def node(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, [outputs] if isinstance(outputs, str) else outputs, name=f"{op}_{outputs}", **attrs)


def kernel_of(result, name="y"):
    """The weight of the Conv writing ``name`` (through a DequantizeLinear if it is quantized)."""
    m = result.model
    conv = next(n for n in m.graph.node if n.op_type == "Conv" and n.output[0] == name)
    producer = {o: n for n in m.graph.node for o in n.output}
    weight = conv.input[1]
    return (initializer(m, weight) if weight not in producer else producer[weight]), conv


def assert_proved(result, windows=True):
    v = result.report.verification
    assert v is not None and v.passed, v.render_text(verbose=True) if v else "not verified"
    if windows:
        assert sum(c.compared for c in v.checks if c.check.startswith("sliding window")) >= 8
    return v


def statuses(result):
    return [(n.node, n.status, n.rule, n.reason) for n in result.report.nodes]


# ---- nhwc_flatten ------------------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("flatten", ["Flatten", "Reshape"])
def test_nhwc_flatten_reorders_rows_from_hwc_to_chw_and_drops_the_transpose(flatten):
    rng = np.random.default_rng(1)
    w_hwc = weights(rng, K, F)  # MatMul weight [K, F], rows in H,W,C order
    flat = (node("Flatten", ["nhwc"], "flat", axis=1) if flatten == "Flatten"
            else node("Reshape", ["nhwc", "shape"], "flat"))
    head = [node("Transpose", ["fmap"], "nhwc", perm=[0, 2, 3, 1]), flat,
            node("MatMul", ["flat", "w"], "mm"), node("Add", ["mm", "b"], "y")]
    result = convert(head_model(head, [init("w", w_hwc), init("b", weights(rng, F)),
                                       init("shape", np.array([0, -1], np.int64))]))
    assert ops(result.model) == ["Conv", "Relu", "Conv"]
    kernel, conv = kernel_of(result)
    np.testing.assert_array_equal(kernel, w_hwc.T.reshape(F, H, W, C).transpose(0, 3, 1, 2))
    assert conv.input[0] == "fmap"
    assert statuses(result) == [("MatMul_mm", "converted", "nhwc_flatten", None)]
    assert_proved(result)


@pytest.mark.e2e
def test_nhwc_flatten_on_rank_3_maps_and_carries_a_relu_between_transpose_and_flatten():
    # Keras Conv1D: the conv output [N,C=3,L=6] is transposed to [N,L,C] ([0,2,1], the same perm as
    # NLC -> NCL, so the rule tells them apart by the Conv that made the map).
    rng = np.random.default_rng(2)
    w = weights(rng, F, 6 * 3)  # Gemm transB=1 over [N, L=6, C=3] rows
    head = [node("Conv", ["x", "c.w"], "ncl", kernel_shape=[3]), node("Transpose", ["ncl"], "nlc", perm=[0, 2, 1]),
            node("Relu", ["nlc"], "act"), node("Flatten", ["act"], "flat", axis=1), node("Gemm", ["flat", "w"], "y", transB=1)]
    result = convert(model(head, [vi("x", ["N", 2, 8])], [vi("y", None, 0)], [init("c.w", weights(rng, 3, 2, 3)), init("w", w)]))
    assert ops(result.model) == ["Conv", "Relu", "Conv"]
    kernel, conv = kernel_of(result)
    np.testing.assert_array_equal(kernel, w.reshape(F, 6, 3).transpose(0, 2, 1))
    assert_proved(result)


def test_with_nhwc_flatten_off_no_other_rule_reads_the_transposed_map_as_nchw():
    head = [node("Transpose", ["fmap"], "nhwc", perm=[0, 2, 3, 1]), node("Flatten", ["nhwc"], "flat", axis=1),
            node("Gemm", ["flat", "w"], "y", transB=1)]
    original = head_model(head, [init("w", np.ones((F, K), np.float32))])
    result = convert(original, skip_rules=["nhwc_flatten"])
    assert statuses(result) == [("Gemm_y", "skipped", "nhwc_flatten", "rule_disabled")]
    assert ops(result.model) == ops(original)


@pytest.mark.e2e
def test_channels_first_transpose_of_an_nhwc_input_is_an_ordinary_nchw_map():
    # Keras input [N,H,W,2] -> Transpose to NCHW -> Conv: the flatten reads a real NCHW map.
    rng = np.random.default_rng(3)
    nodes = [node("Transpose", ["x"], "nchw", perm=[0, 3, 1, 2]),
             node("Conv", ["nchw", "conv.w"], "fmap", kernel_shape=[3, 3]),
             node("Flatten", ["fmap"], "flat", axis=1), node("Gemm", ["flat", "w"], "y", transB=1)]
    result = convert(model(nodes, [vi("x", ["N", H + 2, W + 2, 2])], [vi("y", None, 0)],
                           [init("conv.w", weights(rng, C, 2, 3, 3)), init("w", weights(rng, F, K))]))
    assert [n.rule for n in result.report.converted] == ["flatten_gemm"]
    assert result.report.symbolic_inputs == {"x": ["N", "height", "width", 2]}
    assert_proved(result)


# ---- quantized weights and activations ---------------------------------------------------------

def _int8(rng, *shape):
    return rng.integers(-127, 128, size=shape).astype(np.int8)


@pytest.mark.e2e
@pytest.mark.parametrize("layer", ["gemm_per_channel", "matmul_per_channel", "gemm_per_tensor"])
def test_quantized_weight_stays_integer_behind_its_dequantize_with_the_axis_on_output_channels(layer):
    rng = np.random.default_rng(4)
    per_tensor = layer == "gemm_per_tensor"
    if layer == "matmul_per_channel":
        wq, axis = _int8(rng, K, F), 1
        fc = node("MatMul", ["flat", "w"], "y")
    else:
        wq, axis = _int8(rng, F, K), 0
        fc = node("Gemm", ["flat", "w", "b"], "y", transB=1, alpha=0.5)
    scale = np.array(0.01, np.float32) if per_tensor else np.linspace(0.01, 0.02, F).astype(np.float32)
    dq_attrs = {} if per_tensor else {"axis": axis}
    head = [node("Flatten", ["fmap"], "flat", axis=1),
            node("DequantizeLinear", ["wq", "ws", "wz"], "w", **dq_attrs), fc]
    zero = np.zeros(scale.shape, np.int8)
    result = convert(head_model(head, [init("wq", wq), init("ws", scale), init("wz", zero), init("b", weights(rng, F))]))
    dq, conv = kernel_of(result)
    assert dq.op_type == "DequantizeLinear" and conv.input[0] == "fmap"
    kernel = initializer(result.model, dq.input[0])
    assert kernel.dtype == np.int8
    np.testing.assert_array_equal(kernel, (wq.T if axis == 1 else wq).reshape(F, C, H, W))
    assert [a.i for a in dq.attribute if a.name == "axis"] == ([] if per_tensor else [0])
    expected_scale = scale if layer == "matmul_per_channel" else 0.5 * scale  # alpha goes into the scale
    np.testing.assert_allclose(initializer(result.model, dq.input[1]), expected_scale, rtol=1e-7)
    assert_proved(result)


@pytest.mark.e2e
def test_float_weight_behind_a_quantize_dequantize_pair_keeps_the_pair():
    rng = np.random.default_rng(5)
    w = weights(rng, K, F)
    head = [node("Flatten", ["fmap"], "flat", axis=1),
            node("QuantizeLinear", ["wf", "ws", "wz"], "wq", axis=1), node("DequantizeLinear", ["wq", "ws", "wz"], "w", axis=1),
            node("MatMul", ["flat", "w"], "y")]
    scale = np.full(F, 0.01, np.float32)
    result = convert(head_model(head, [init("wf", w), init("ws", scale), init("wz", np.zeros(F, np.int8))]))
    dq, _ = kernel_of(result)
    producer = {o: n for n in result.model.graph.node for o in n.output}
    q = producer[dq.input[0]]
    assert q.op_type == "QuantizeLinear" and [a.i for a in q.attribute if a.name == "axis"] == [0]
    np.testing.assert_array_equal(initializer(result.model, q.input[0]), w.T.reshape(F, C, H, W))
    assert_proved(result)


def test_weight_quantized_per_input_feature_is_skipped_with_reason():
    rng = np.random.default_rng(6)
    head = [node("Flatten", ["fmap"], "flat", axis=1),
            node("DequantizeLinear", ["wq", "ws"], "w", axis=1),  # [F,K] with one scale per input feature
            node("Gemm", ["flat", "w"], "y", transB=1)]
    result = convert(head_model(head, [init("wq", _int8(rng, F, K)), init("ws", np.full(K, 0.01, np.float32))]))
    assert statuses(result) == [("Gemm_y", "skipped", "flatten_gemm", "quantized_weight_axis")]


@pytest.mark.e2e
def test_activation_quantize_cast_dequantize_between_flatten_and_gemm_moves_onto_the_map():
    # PyTorch QAT export: Flatten -> Q -> Cast -> DQ -> Gemm(DQ weight) -> Q -> Cast -> DQ (per channel) -> y
    rng = np.random.default_rng(7)
    head = [node("Flatten", ["fmap"], "flat", axis=1),
            node("QuantizeLinear", ["flat", "as", "az"], "aq"), node("Cast", ["aq"], "aqc", to=TensorProto.UINT8),
            node("DequantizeLinear", ["aqc", "as", "az"], "adq"),
            node("DequantizeLinear", ["wq", "ws"], "w", axis=0), node("Gemm", ["adq", "w", "b"], "fc", transB=1),
            node("QuantizeLinear", ["fc", "os", "oz"], "oq", axis=1), node("DequantizeLinear", ["oq", "os", "oz"], "y", axis=1)]
    inits = [init("as", np.array(0.02, np.float32)), init("az", np.array(0, np.uint8)), init("wq", _int8(rng, F, K)),
             init("ws", np.full(F, 0.01, np.float32)), init("b", weights(rng, F)),
             init("os", np.linspace(0.01, 0.03, F).astype(np.float32)), init("oz", np.full(F, 128, np.uint8))]
    result = convert(head_model(head, inits, opset=13))
    assert "Flatten" not in ops(result.model) and "Gemm" not in ops(result.model)
    assert ops(result.model).count("QuantizeLinear") == 2 and ops(result.model).count("DequantizeLinear") == 3
    out_dq = next(n for n in result.model.graph.node if n.output[0] == "y")
    assert [a.i for a in out_dq.attribute if a.name == "axis"] == [1]
    v = assert_proved(result)
    assert v.atol == pytest.approx(0.03 * 1.001)  # one step of the output's largest scale (ORT's fused kernels)


# ---- weight sources ----------------------------------------------------------------------------

def _weight_source(kind, w_fk):
    """Nodes and initializers that make tensor 'w' [F,K] (or the layer's form of it) from ``kind``."""
    if kind == "constant_node":
        return [helper.make_node("Constant", [], ["w"], value=init("w_value", w_fk))], []
    if kind == "reshape_of_4d":  # CNTK: a [F,C,H,W] initializer reshaped to [F,K]
        return [node("Reshape", ["w4", "wshape"], "w")], [init("w4", w_fk.reshape(F, C, H, W)),
                                                           init("wshape", np.array([F, K], np.int64))]
    if kind == "transpose_of_kf":
        return [node("Transpose", ["wkf"], "w", perm=[1, 0])], [init("wkf", w_fk.T.copy())]
    if kind == "squeeze_of_1fk":
        return [node("Squeeze", ["w3", "axes"], "w")], [init("w3", w_fk[None]), init("axes", np.array([0], np.int64))]
    raise AssertionError(kind)


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["constant_node", "reshape_of_4d", "transpose_of_kf", "squeeze_of_1fk"])
def test_weight_from_any_constant_source_is_folded_into_the_kernel(kind):
    w = weights(np.random.default_rng(8), F, K)
    nodes, inits = _weight_source(kind, w)
    head = [node("Flatten", ["fmap"], "flat", axis=1), *nodes, node("Gemm", ["flat", "w"], "y", transB=1)]
    result = convert(head_model(head, inits))
    kernel, _ = kernel_of(result)
    np.testing.assert_array_equal(kernel, w.reshape(F, C, H, W))
    assert ops(result.model) == ["Conv", "Relu", "Conv"]
    assert_proved(result)


@pytest.mark.e2e
def test_constant_of_shape_weight_caffe2_style():
    head = [node("Flatten", ["fmap"], "flat", axis=1),
            helper.make_node("ConstantOfShape", ["wshape"], ["w"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.25])),
            node("Gemm", ["flat", "w"], "y", transB=1)]
    result = convert(head_model(head, [init("wshape", np.array([F, K], np.int64))]))
    kernel, _ = kernel_of(result)
    np.testing.assert_array_equal(kernel, np.full((F, C, H, W), 0.25, np.float32))
    assert_proved(result)


@pytest.mark.e2e
@pytest.mark.parametrize("bias", ["none", "add_bias_first", "add_after_relu"])
def test_matmul_with_no_bias_a_reversed_add_or_a_bias_in_a_later_node(bias):
    rng = np.random.default_rng(9)
    w, b = weights(rng, K, F), weights(rng, F)
    head = [node("Flatten", ["fmap"], "flat", axis=1), node("MatMul", ["flat", "w"], "mm" if bias != "none" else "y")]
    if bias == "add_bias_first":
        head.append(node("Add", ["b", "mm"], "y"))
    elif bias == "add_after_relu":
        head += [node("Relu", ["mm"], "act"), node("Add", ["act", "b"], "y")]
    result = convert(head_model(head, [init("w", w), init("b", b)]))
    conv = next(n for n in result.model.graph.node if n.op_type == "Conv" and n.input[0] == "fmap")
    np.testing.assert_array_equal(initializer(result.model, conv.input[1]), w.T.reshape(F, C, H, W))
    assert len(conv.input) == (3 if bias == "add_bias_first" else 2)
    if bias == "add_after_relu":  # the later Add stays, its [F] bias reshaped to meet the channel axis
        add = next(n for n in result.model.graph.node if n.op_type == "Add")
        assert initializer(result.model, add.input[1]).shape == (F, 1, 1)
    assert_proved(result)


# ---- flatten variants --------------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("axis", [1, -3])
def test_flatten_axis_that_keeps_the_batch_alone(axis):
    head = [node("Flatten", ["fmap"], "flat", axis=axis), node("Gemm", ["flat", "w"], "y", transB=1)]
    result = convert(head_model(head, [init("w", weights(np.random.default_rng(10), F, K))]))
    assert [n.rule for n in result.report.converted] == ["flatten_gemm"]
    assert_proved(result)


@pytest.mark.e2e
def test_reshape_target_built_through_squeeze_and_unsqueeze():
    # [N, -1] where N = Squeeze(Gather(Shape(fmap), [0])) re-Unsqueezed: entries pass through both
    head = [node("Shape", ["fmap"], "shp"), node("Gather", ["shp", "zero"], "n1", axis=0),
            node("Squeeze", ["n1", "axes"], "n0"), node("Unsqueeze", ["n0", "axes"], "n"),
            node("Concat", ["n", "minus1"], "target", axis=0), node("Reshape", ["fmap", "target"], "flat"),
            node("Gemm", ["flat", "w"], "y", transB=1)]
    inits = [init("zero", np.array([0], np.int64)), init("axes", np.array([0], np.int64)),
             init("minus1", np.array([-1], np.int64)), init("w", weights(np.random.default_rng(11), F, K))]
    result = convert(head_model(head, inits))
    assert ops(result.model) == ["Conv", "Relu", "Conv"]
    assert_proved(result)


@pytest.mark.e2e
def test_resize_to_a_fixed_size_gives_the_head_a_static_map():
    # PyTorch interpolate(size=(H, W)): Resize(sizes=Concat(Shape(x)[:2], [H, W])) -> Reshape([-1, K])
    head = [node("Shape", ["fmap"], "shp"), node("Slice", ["shp", "s0", "s2", "s0"], "nc"),
            node("Concat", ["nc", "hw"], "sizes", axis=0), node("Resize", ["fmap", "", "", "sizes"], "resized", mode="linear"),
            node("Reshape", ["resized", "target"], "flat"), node("Gemm", ["flat", "w"], "y", transB=1)]
    inits = [init("s0", np.array([0], np.int64)), init("s2", np.array([2], np.int64)),
             init("hw", np.array([H, W], np.int64)), init("target", np.array([-1, K], np.int64)),
             init("w", weights(np.random.default_rng(12), F, K))]
    nodes, binits, _ = backbone()
    m = model([*nodes, *head], [vi("x", ["N", 2, 9, 7])], [vi("y", None, 0)], [*binits, *inits])
    result = convert(m)
    assert [n.rule for n in result.report.converted] == ["reshape_flatten"]
    kernel, _ = kernel_of(result)
    assert kernel.shape == (F, C, H, W)
    assert_proved(result, windows=False)


# ---- dtypes ------------------------------------------------------------------------------------

def _typed_head(elem, np_dtype, opset):
    rng = np.random.default_rng(13)
    head = [node("Flatten", ["fmap"], "flat", axis=1), node("Gemm", ["flat", "w", "b"], "y", transB=1)]
    if elem == TensorProto.BFLOAT16:
        w, b = weights(rng, F, K), weights(rng, F)
        inits = [helper.make_tensor("w", elem, w.shape, w.ravel().tolist()), helper.make_tensor("b", elem, b.shape, b.tolist())]
        nodes = [node("Flatten", ["x"], "flat", axis=1), head[1]]
        return model(nodes, [vi("x", ["N", C, H, W], elem)], [vi("y", None, 0)], inits, opset=opset)
    return head_model(head, [init("w", weights(rng, F, K, dtype=np_dtype)), init("b", weights(rng, F, dtype=np_dtype))],
                      opset=opset, elem=elem, np_dtype=np_dtype)


@pytest.mark.e2e
@pytest.mark.parametrize("name, elem, np_dtype, rtol", [
    ("fp16", TensorProto.FLOAT16, np.float16, 1e-2),
    ("fp32", TensorProto.FLOAT, np.float32, 1e-4),
    ("fp64", TensorProto.DOUBLE, np.float64, 1e-7),  # ONNX Runtime has no double Conv: the reference runtime checks it
])
def test_every_float_dtype_converts_with_its_tolerance(name, elem, np_dtype, rtol):
    result = convert(_typed_head(elem, np_dtype, 13))
    kernel, _ = kernel_of(result)
    assert kernel.dtype == np_dtype
    v = assert_proved(result)
    assert v.rtol == rtol


def test_bfloat16_converts_from_opset_22_and_is_skipped_before_with_reason():
    before = convert(_typed_head(TensorProto.BFLOAT16, None, 21))
    assert [(n.status, n.reason) for n in before.report.nodes] == [("skipped", "unsupported_dtype")]
    after = convert(_typed_head(TensorProto.BFLOAT16, None, 22))
    assert [n.status for n in after.report.nodes] == ["converted"]
    v = assert_proved(after)
    assert (v.rtol, v.atol) == (1e-2, 2e-2)


# ---- opsets ------------------------------------------------------------------------------------

def _old_gemm_head(opset):
    """Flatten -> Gemm with the spelling of ``opset``: before 7 ``broadcast=1``; C required before 11."""
    rng = np.random.default_rng(14)
    attrs = {"transB": 1}
    head = [node("Flatten", ["fmap"], "flat", axis=1), node("Gemm", ["flat", "w", "b"], "fc", **attrs),
            node("Softmax", ["fc"], "y", axis=1)]
    return head_model(head, [init("w", weights(rng, F, K)), init("b", weights(rng, F))], opset=opset)


@pytest.mark.e2e
@pytest.mark.parametrize("opset", [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21])
def test_every_opset_from_7_to_21_converts_and_keeps_its_opset(opset):
    result = convert(_old_gemm_head(opset))
    assert [o.version for o in result.model.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    assert result.report.transposes_added == (2 if opset < 13 else 0)  # Softmax coerces to 2D before 13
    assert_proved(result)


@pytest.mark.e2e
@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_axes_as_attribute_before_13_and_as_input_from_13(opset):
    w = weights(np.random.default_rng(15), F, K)
    squeeze = (node("Squeeze", ["w3"], "w", axes=[0]) if opset < 13 else node("Squeeze", ["w3", "axes"], "w"))
    head = [node("Flatten", ["fmap"], "flat", axis=1), squeeze, node("Gemm", ["flat", "w"], "y", transB=1)]
    result = convert(head_model(head, [init("w3", w[None]), init("axes", np.array([0], np.int64))], opset=opset))
    np.testing.assert_array_equal(kernel_of(result)[0], w.reshape(F, C, H, W))
    assert_proved(result)


# ---- other domains -----------------------------------------------------------------------------

@pytest.mark.e2e
def test_ops_from_other_domains_are_left_alone_and_the_fc_layers_around_them_convert():
    # fmap -> Flatten -> Gemm -> com.microsoft Gelu -> y: the Gemm converts, the Gelu (which ONNX
    # Runtime knows but the converter does not) gets its flat input back and stays as it was.
    rng = np.random.default_rng(16)
    nodes, inits, inputs = backbone()
    head = [node("Flatten", ["fmap"], "flat", axis=1), node("Gemm", ["flat", "w"], "fc", transB=1),
            helper.make_node("Gelu", ["fc"], ["y"], domain="com.microsoft", name="ms_gelu")]
    g = helper.make_graph([*nodes, *head], "g", inputs, [vi("y", ["N", F])], [*inits, init("w", weights(rng, F, K))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 7
    result = convert(m)
    gelu = next(n for n in result.model.graph.node if n.domain == "com.microsoft")
    assert gelu.op_type == "Gelu" and gelu.input[0] != "fc"  # reads Flatten(map)
    assert statuses(result) == [("Gemm_fc", "converted", "flatten_gemm", None), ("ms_gelu", "blocked", None, "fcn_blocked")]
    assert_proved(result, windows=False)


# ---- --dense-pool ------------------------------------------------------------------------------

def _pooled_classifier(pool):
    """fmap [N,C,H,W] -> pool -> 1x1 Conv -> Relu -> view(N,-1) -> Gemm -> Softmax."""
    rng = np.random.default_rng(17)
    pools = {"GlobalAveragePool": [node("GlobalAveragePool", ["fmap"], "pooled")],
             "GlobalMaxPool": [node("GlobalMaxPool", ["fmap"], "pooled")],
             "ReduceMean": [node("ReduceMean", ["fmap"], "pooled", axes=[2, 3], keepdims=1)],
             "ReduceMax": [node("ReduceMax", ["fmap"], "pooled", axes=[2, 3], keepdims=1)]}[pool]
    head = [*pools, node("Conv", ["pooled", "c1.w"], "c1", kernel_shape=[1, 1]), node("Relu", ["c1"], "act"),
            node("Shape", ["act"], "shp"), node("Gather", ["shp", "zero"], "n", axis=0),
            node("Unsqueeze", ["n", "zero"], "n1"), node("Concat", ["n1", "minus1"], "target", axis=0),
            node("Reshape", ["act", "target"], "flat"), node("Gemm", ["flat", "w", "b"], "fc", transB=1),
            node("Softmax", ["fc"], "y", axis=1)]
    inits = [init("c1.w", weights(rng, 6, C, 1, 1)), init("zero", np.array(0, np.int64)),
             init("minus1", np.array([-1], np.int64)), init("w", weights(rng, F, 6)), init("b", weights(rng, F))]
    return head_model(head, inits, opset=13)


@pytest.mark.e2e
@pytest.mark.parametrize("pool, dense", [("GlobalAveragePool", "AveragePool"), ("GlobalMaxPool", "MaxPool"),
                                         ("ReduceMean", "AveragePool"), ("ReduceMax", "MaxPool")])
def test_dense_pool_turns_a_pooled_classifier_into_a_class_map(pool, dense):
    original = _pooled_classifier(pool)
    plain = convert(original)
    assert pool in ops(plain.model)  # without the option the global pool stays: 1x1 at every size
    result = convert(original, dense_pool=True)
    widened = next(n for n in result.model.graph.node if n.op_type == dense)
    assert [list(a.ints) for a in widened.attribute if a.name in ("kernel_shape", "strides")] == [[H, W], [1, 1]]
    assert pool not in ops(result.model) and "Shape" not in ops(result.model)
    assert [n.rule for n in result.report.converted] == ["dense_pool"]
    v = assert_proved(result)
    assert v.max_abs_error < 1e-5


@pytest.mark.e2e
def test_dense_pool_leaves_a_head_whose_pool_output_is_read_elsewhere():
    m = _pooled_classifier("GlobalAveragePool")
    m.graph.output.append(vi("pooled", ["N", C, 1, 1]))
    result = convert(m, dense_pool=True)
    assert [(n.rule, n.detail) for n in result.report.converted] == [
        ("dense_pool", "Gemm 6->5 -> Conv 5x6x1x1; GlobalAveragePool 'GlobalAveragePool_pooled' kept: its output is "
                       "also read by a graph output")]
    assert "GlobalAveragePool" in ops(result.model)
    assert_proved(result, windows=False)


def _pool_then(between, between_inits=(), opset=17):
    """fmap [N,C,H,W] -> GlobalAveragePool -> ``between`` (from "pooled" to "mid") -> Flatten -> Gemm."""
    rng = np.random.default_rng(19)
    head = [node("GlobalAveragePool", ["fmap"], "pooled"), *between, node("Flatten", ["mid"], "flat", axis=1),
            node("Gemm", ["flat", "w", "b"], "y", transB=1)]
    return head_model(head, [*between_inits, init("w", weights(rng, F, C)), init("b", weights(rng, F))], opset=opset)


def _layer_norm_2d(opset):
    """timm's LayerNorm2d on "pooled": Transpose(0,2,3,1) -> LayerNorm (native, or its opset-13 form) -> back."""
    rng = np.random.default_rng(20)
    inits = [init("ln.g", 1 + weights(rng, C)), init("ln.b", weights(rng, C)), init("ln.eps", np.array(1e-6, np.float32)),
             init("ln.two", np.array(2, np.float32))]
    if opset >= 17:
        norm = [node("LayerNormalization", ["nhwc", "ln.g", "ln.b"], "normed", axis=-1, epsilon=1e-6)]
    else:
        norm = [node("ReduceMean", ["nhwc"], "mean", axes=[-1]), node("Sub", ["nhwc", "mean"], "centred"),
                node("Pow", ["centred", "ln.two"], "sq"), node("ReduceMean", ["sq"], "var", axes=[-1]),
                node("Add", ["var", "ln.eps"], "var_eps"), node("Sqrt", ["var_eps"], "std"),
                node("Div", ["centred", "std"], "unit"), node("Mul", ["unit", "ln.g"], "scaled"),
                node("Add", ["scaled", "ln.b"], "normed")]
    return [node("Transpose", ["pooled"], "nhwc", perm=[0, 2, 3, 1]), *norm,
            node("Transpose", ["normed"], "mid", perm=[0, 3, 1, 2])], inits


def _batch_norm():
    rng = np.random.default_rng(21)
    stats = [init("bn.scale", 1 + weights(rng, C)), init("bn.bias", weights(rng, C)), init("bn.mean", weights(rng, C)),
             init("bn.var", 0.5 + np.abs(weights(rng, C)))]
    ops_ = [node("BatchNormalization", ["pooled", "bn.scale", "bn.bias", "bn.mean", "bn.var"], "bn"),
            node("Mul", ["bn", "gain"], "gained"), node("Clip", ["gained", "lo", "hi"], "mid")]
    return ops_, [*stats, init("gain", weights(rng, C, 1, 1)), init("lo", np.array(-1, np.float32)),
                  init("hi", np.array(1, np.float32))]


@pytest.mark.e2e
@pytest.mark.parametrize("between, opset", [("layer_norm_2d", 17), ("layer_norm_2d", 13), ("batch_norm", 13)])
def test_dense_pool_goes_through_ops_that_work_on_each_position_alone(between, opset):
    nodes, inits = _layer_norm_2d(opset) if between == "layer_norm_2d" else _batch_norm()
    result = convert(_pool_then(nodes, inits, opset), dense_pool=True)
    assert [(n.rule, n.detail) for n in result.report.converted] == [
        ("dense_pool", f"Gemm {C}->{F} -> Conv {F}x{C}x1x1, GlobalAveragePool -> AveragePool {H}x{W} stride 1")]
    assert "GlobalAveragePool" not in ops(result.model)
    v = assert_proved(result)
    assert v.max_abs_error < 1e-5


@pytest.mark.parametrize("between, stopper", [
    ([node("Conv", ["pooled", "c.w"], "mid", kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
     "Conv 'Conv_mid' between it and the head does not work on each position alone"),
    ([node("Transpose", ["pooled"], "nhwc", perm=[0, 2, 3, 1]), node("Softmax", ["nhwc"], "soft", axis=2),
      node("Transpose", ["soft"], "mid", perm=[0, 3, 1, 2])],
     "Softmax 'Softmax_soft' between it and the head does not work on each position alone"),
])
def test_dense_pool_names_the_op_that_keeps_the_global_pool(between, stopper):
    m = _pool_then(between, [init("c.w", np.ones((C, C, 3, 3), np.float32))])
    [row] = inspect(m, dense_pool=True).nodes
    assert (row.rule, row.detail) == ("dense_pool", f"Gemm {C}->{F} -> Conv {F}x{C}x1x1; GlobalAveragePool "
                                                    f"'GlobalAveragePool_pooled' kept: {stopper}")


# ---- squeeze_flatten: Squeeze and keepdims=0 reduce heads -------------------------------------

def _reduced_head(op, opset=13, keepdims=0):
    """fmap [N,C,H,W] -> GlobalAveragePool + Squeeze, or ReduceMean/ReduceMax(keepdims=0) -> MatMul + Add."""
    rng = np.random.default_rng(18)
    if op == "Squeeze":
        squeeze = (node("Squeeze", ["pooled", "axes"], "vec") if opset >= 13 else node("Squeeze", ["pooled"], "vec", axes=[2, 3]))
        reduce = [node("GlobalAveragePool", ["fmap"], "pooled"), squeeze]
    elif opset >= 18:
        reduce = [node(op, ["fmap", "axes"], "vec", keepdims=keepdims)]
    else:
        reduce = [node(op, ["fmap"], "vec", axes=[2, 3], keepdims=keepdims)]
    head = [*reduce, node("MatMul", ["vec", "w"], "mm"), node("Add", ["mm", "b"], "y")]
    inits = [init("axes", np.array([2, 3], np.int64)), init("w", weights(rng, C, F)), init("b", weights(rng, F))]
    return head_model(head, inits, opset=opset)


@pytest.mark.e2e
@pytest.mark.parametrize("op, opset", [("Squeeze", 11), ("Squeeze", 13), ("ReduceMean", 13), ("ReduceMean", 18),
                                       ("ReduceMax", 13)])
def test_squeezed_and_keepdims_0_pooled_heads_become_1x1_convs(op, opset):
    original = _reduced_head(op, opset)
    result = convert(original)
    assert [(n.rule, n.detail.split(" -> ")[1].split(" ")[1]) for n in result.report.converted] == [
        ("squeeze_flatten", f"{F}x{C}x1x1")]
    kernel, conv = kernel_of(result)
    np.testing.assert_array_equal(kernel, initializer(original, "w").T.reshape(F, C, 1, 1))
    if op != "Squeeze":  # the reduce is kept, global, with keepdims=1
        reduce = next(n for n in result.model.graph.node if n.op_type == op)
        assert [a.i for a in reduce.attribute if a.name == "keepdims"] == [1]
    v = assert_proved(result, windows=False)
    assert v.max_abs_error < 1e-5
    # on each larger input the head still reduces the whole (larger) map: one position, proved
    assert [c.compared for c in v.checks if c.check.startswith("sliding window")] == [1, 1]


def test_squeeze_of_axes_not_known_to_be_1_is_skipped_with_reason():
    head = [node("Squeeze", ["fmap", "axes"], "vec"), node("MatMul", ["vec", "w"], "y")]
    nodes, inits, _ = backbone()
    m = model([*nodes, *head], [vi("x", ["N", 2, "h", 3])], [vi("y", None, 0)],
              [*inits, init("axes", np.array([2, 3], np.int64)), init("w", np.ones((C, F), np.float32))])
    result = convert(m)
    assert statuses(result) == [("MatMul_y", "skipped", "squeeze_flatten", "feature_map_shape_unknown")]


@pytest.mark.e2e
@pytest.mark.parametrize("op, dense", [("ReduceMean", "AveragePool"), ("ReduceMax", "MaxPool"), ("Squeeze", "AveragePool")])
def test_dense_pool_widens_a_keepdims_0_reduce_head(op, dense):
    result = convert(_reduced_head(op), dense_pool=True)
    widened = next(n for n in result.model.graph.node if n.op_type == dense)
    assert [list(a.ints) for a in widened.attribute if a.name == "kernel_shape"] == [[H, W]]
    assert op not in ops(result.model) and [n.rule for n in result.report.converted] == ["dense_pool"]
    v = assert_proved(result)
    assert v.max_abs_error < 1e-5


def test_transpose_that_moves_the_batch_is_skipped_as_channels_last():
    head = [node("Transpose", ["fmap"], "moved", perm=[1, 0, 2, 3]), node("Flatten", ["moved"], "flat", axis=1),
            node("Gemm", ["flat", "w"], "y", transB=1)]
    result = convert(head_model(head, [init("w", np.ones((F, 2 * H * W), np.float32))]))
    assert statuses(result) == [("Gemm_y", "skipped", "nhwc_flatten", "channels_last")]


@pytest.mark.e2e
def test_cli_dense_pool_flag_writes_a_class_map_model(tmp_path):
    from click.testing import CliRunner

    from onnx_fc2conv.cli import main

    src, out = tmp_path / "pooled.onnx", tmp_path / "map.onnx"
    onnx.save(_pooled_classifier("GlobalAveragePool"), str(src))
    result = CliRunner().invoke(main, [str(src), str(out), "--dense-pool", "-v"])
    assert result.exit_code == 0, result.output
    assert "by dense_pool" in result.output and "GlobalAveragePool -> AveragePool 3x2 stride 1" in result.output
    assert "AveragePool" in ops(onnx.load(str(out)))


def test_inspect_dense_pool_shows_the_widened_pool(tmp_path):
    from click.testing import CliRunner

    from onnx_fc2conv.cli import main

    src = tmp_path / "pooled.onnx"
    onnx.save(_pooled_classifier("GlobalAveragePool"), str(src))
    plain = CliRunner().invoke(main, ["inspect", str(src)])
    dense = CliRunner().invoke(main, ["inspect", str(src), "--dense-pool"])
    assert plain.exit_code == dense.exit_code == 0
    assert "converts by reshape_flatten" in plain.output and "AveragePool" not in plain.output
    assert "converts by dense_pool: Gemm 6->5 -> Conv 5x6x1x1, GlobalAveragePool -> AveragePool 3x2 stride 1" in dense.output
