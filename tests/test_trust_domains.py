"""Ops of other domains are not ONNX ops (issue 17, class 1).

Each model uses a model-local function ``custom::<Op>`` with the name of an ONNX op a rule reads; its
body clips the first input to [-10, 10] and then runs the ONNX op. At x = 30 the clip matters, so a
rule that took the function for the ONNX op (and deleted or replaced it) changes the output there.
The converted model must give the original's outputs on such inputs, and keep the custom node.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import init, vi, weights
from onnx import helper

from onnx_fc2conv import convert

CUSTOM = "custom"
RNG = np.random.default_rng(0)


def clipping_function(op: str, n_inputs: int, n_outputs: int = 1, attributes=()) -> onnx.FunctionProto:
    """``custom::op``: Clip(input 0, -10, 10), then ONNX's ``op`` on it and the other inputs; the
    call's ``attributes`` are passed on to the ONNX op."""
    inputs = [f"in{i}" for i in range(n_inputs)]
    outputs = [f"out{i}" for i in range(n_outputs)]
    op_node = helper.make_node(op, ["clipped", *inputs[1:]], outputs)
    for name, kind in attributes:
        ref = onnx.AttributeProto(name=name, ref_attr_name=name, type=kind)
        op_node.attribute.append(ref)
    nodes = [helper.make_node("Constant", [], ["lo"], value_float=-10.0),
             helper.make_node("Constant", [], ["hi"], value_float=10.0),
             helper.make_node("Clip", [inputs[0], "lo", "hi"], ["clipped"]),
             op_node]
    return helper.make_function(CUSTOM, op, inputs, outputs, nodes, [helper.make_opsetid("", 13)],
                                attributes=[name for name, _ in attributes])


def custom_model(nodes, x_dims, inits, functions, outputs=("y",)) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "custom_ops", [vi("x", x_dims)], [vi(o, ["N", 5]) for o in outputs],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(CUSTOM, 1)],
                          functions=functions, producer_name="tests")
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def gemm_inits(k, f=5):
    return [init("fc.w", weights(RNG, f, k)), init("fc.b", weights(RNG, f))]


def custom_flatten():
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], name="cflatten", domain=CUSTOM, axis=1),
             helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    return custom_model(nodes, ["N", 4, 3, 3], gemm_inits(36),
                        [clipping_function("Flatten", 1, attributes=[("axis", onnx.AttributeProto.INT)])])


def custom_reshape():
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"], name="creshape", domain=CUSTOM),
             helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    return custom_model(nodes, ["N", 4, 3, 3], [init("shape", np.array([0, -1], np.int64)), *gemm_inits(36)],
                        [clipping_function("Reshape", 2)])


def custom_squeeze():
    nodes = [helper.make_node("Squeeze", ["x", "axes"], ["flat"], name="csqueeze", domain=CUSTOM),
             helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    return custom_model(nodes, ["N", 4, 1, 1], [init("axes", np.array([2, 3], np.int64)), *gemm_inits(4)],
                        [clipping_function("Squeeze", 2)])


def custom_reduce_mean():
    nodes = [helper.make_node("ReduceMean", ["x"], ["flat"], name="creduce", domain=CUSTOM, axes=[2, 3], keepdims=0),
             helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    attrs = [("axes", onnx.AttributeProto.INTS), ("keepdims", onnx.AttributeProto.INT)]
    return custom_model(nodes, ["N", 4, 3, 3], gemm_inits(4), [clipping_function("ReduceMean", 1, attributes=attrs)])


def custom_transpose():
    nodes = [helper.make_node("Transpose", ["x"], ["hw_swapped"], name="ctranspose", domain=CUSTOM, perm=[0, 1, 3, 2]),
             helper.make_node("Flatten", ["hw_swapped"], ["flat"], name="flatten", axis=1),
             helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    return custom_model(nodes, ["N", 4, 3, 3], gemm_inits(36),
                        [clipping_function("Transpose", 1, attributes=[("perm", onnx.AttributeProto.INTS)])])


def custom_pool():
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["pooled"], name="cpool", domain=CUSTOM),
             helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
             helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    return custom_model(nodes, ["N", 4, 3, 3], gemm_inits(4), [clipping_function("GlobalAveragePool", 1)])


def custom_between(op):
    """Flatten -> custom::op (Identity or Dropout) -> Gemm."""
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], name="flatten", axis=1),
             helper.make_node(op, ["flat"], ["between"], name="cbetween", domain=CUSTOM),
             helper.make_node("Gemm", ["between", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    return custom_model(nodes, ["N", 4, 3, 3], gemm_inits(36), [clipping_function(op, 1)])


def custom_fc(op):
    """Flatten -> custom::Gemm / custom::MatMul: not an FC layer at all."""
    inputs = ["flat", "fc.w", "fc.b"] if op == "Gemm" else ["flat", "fc.wt"]
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], name="flatten", axis=1),
             helper.make_node(op, inputs, ["y"], name="cfc", domain=CUSTOM, **({"transB": 1} if op == "Gemm" else {}))]
    inits = gemm_inits(36) if op == "Gemm" else [init("fc.wt", weights(RNG, 36, 5))]
    attrs = [("transB", onnx.AttributeProto.INT)] if op == "Gemm" else []
    return custom_model(nodes, ["N", 4, 3, 3], inits, [clipping_function(op, len(inputs), attributes=attrs)])


def custom_bias_add():
    """Flatten -> MatMul -> custom::Add(b): the Add is not the layer's bias."""
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], name="flatten", axis=1),
             helper.make_node("MatMul", ["flat", "fc.wt"], ["mm"], name="fc"),
             helper.make_node("Add", ["mm", "fc.b"], ["y"], name="cadd", domain=CUSTOM)]
    return custom_model(nodes, ["N", 4, 3, 3], [init("fc.wt", weights(RNG, 36, 5)), init("fc.b", weights(RNG, 5))],
                        [clipping_function("Add", 2)])


def run(m, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


# (model, options, the FC nodes converted, the custom node that must stay)
CASES = {
    "Flatten": (custom_flatten, {}, [], "cflatten"),
    "Reshape": (custom_reshape, {}, [], "creshape"),
    "Squeeze": (custom_squeeze, {}, [], "csqueeze"),
    "ReduceMean": (custom_reduce_mean, {}, [], "creduce"),
    # custom::Transpose (H and W swapped, then nhwc_flatten would fold the perm into the weight) makes
    # just a tensor [N,4,3,3]: flatten_gemm converts the Flatten of it, after the custom op.
    "Transpose": (custom_transpose, {}, ["fc"], "ctranspose"),
    # custom::GlobalAveragePool's output is a [N,4,1,1] map: the head converts, the pool stays as it is.
    "GlobalAveragePool": (custom_pool, {"dense_pool": True}, ["fc"], "cpool"),
    "Identity": (lambda: custom_between("Identity"), {}, [], "cbetween"),
    "Dropout": (lambda: custom_between("Dropout"), {}, [], "cbetween"),
    "Gemm": (lambda: custom_fc("Gemm"), {}, [], "cfc"),
    "MatMul": (lambda: custom_fc("MatMul"), {}, [], "cfc"),
    # The MatMul converts; custom::Add stays after it, on the map.
    "Add": (custom_bias_add, {}, ["fc"], "cadd"),
}


@pytest.mark.e2e
@pytest.mark.parametrize("op", sorted(CASES))
def test_a_custom_domain_op_is_not_taken_for_the_onnx_op(op):
    make, options, converted, kept = CASES[op]
    original = make()
    result = convert(original, **options)
    assert [n.node for n in result.report.converted] == converted
    custom = [n for n in result.model.graph.node if n.domain == CUSTOM]
    assert [n.name for n in custom] == [kept] and custom[0].op_type == op
    x = np.full([2, *[d.dim_value for d in original.graph.input[0].type.tensor_type.shape.dim[1:]]], 30, np.float32)
    x[1] = RNG.standard_normal(x.shape[1:])
    (want,), (got,) = run(original, x), run(result.model, x)
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-5)


def test_a_custom_gemm_is_not_counted_as_an_fc_node():
    result = convert(custom_fc("Gemm"))
    assert result.report.nodes == []
