"""Graph parts of issue 17 ("Trust"): training-mode Dropout, overridable weights, duplicate opset
imports (class 11), a Flatten shared with an FC layer left as a Gemm (class 9), sparse initializers
(class 10)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from graphs import conv_flatten_gemm, init, model, ops, run, vi
from onnx import TensorProto, helper

from onnx_fc2conv import InvalidModelError, convert
from onnx_fc2conv.cli import main

# ---- class 11: a training-mode Dropout is no pass-through ---------------------------------------

def dropout_model(training):
    """x -> Conv -> Relu -> Flatten -> Dropout(ratio 0.5, training_mode) -> Gemm -> y.

    ``training``: True/False (a constant), or "input" (a graph input decides at run time)."""
    extra_inputs = [vi("training", [], TensorProto.BOOL)] if training == "input" else []
    extra_inits = [init("ratio", np.array(0.5, np.float32))]
    if training != "input":
        extra_inits.append(init("training", np.array(training)))
    return conv_flatten_gemm(between=[("Dropout", {}, ["ratio", "training"])], extra_inits=extra_inits,
                             extra_inputs=extra_inputs)


@pytest.mark.parametrize("training", [True, "input"])
def test_a_training_mode_dropout_is_not_dropped(training):
    result = convert(dropout_model(training), verify=False)
    assert ops(result.model) == ["Conv", "Relu", "Flatten", "Dropout", "Gemm"]
    assert [(n.node, n.status, n.reason) for n in result.report.nodes] == [("fc", "skipped", "not_a_feature_map")]


@pytest.mark.parametrize("is_test, kept", [(0, True), (1, False)])
def test_before_opset_7_a_dropout_is_a_pass_through_only_with_is_test(is_test, kept):
    result = convert(conv_flatten_gemm(opset=6, between=[("Dropout", {"is_test": is_test}, [])]), verify=False)
    assert ops(result.model) == (["Conv", "Relu", "Flatten", "Dropout", "Gemm"] if kept else ["Conv", "Relu", "Conv"])


@pytest.mark.e2e
def test_an_inference_mode_dropout_is_still_looked_through():
    result = convert(dropout_model(False))
    assert ops(result.model) == ["Conv", "Relu", "Conv"]
    assert [n.node for n in result.report.converted] == ["fc"]


# ---- class 11: an overridable weight keeps its graph input ----------------------------------------

def overridable(name):
    """conv_flatten_gemm whose initializer ``name`` is also a graph input (IR 7: a default the
    caller may replace)."""
    m = conv_flatten_gemm()
    tensor = next(t for t in m.graph.initializer if t.name == name)
    m.graph.input.append(helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims)))
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.mark.parametrize("name, what", [("fc.w", "weight"), ("fc.b", "bias")])
def test_an_overridable_weight_is_not_converted_and_the_inputs_stay(name, what):
    original = overridable(name)
    result = convert(original)
    assert [i.name for i in result.model.graph.input] == ["x", name]
    assert result.model.SerializeToString() == original.SerializeToString()
    (node,) = result.report.nodes
    assert (node.node, node.status, node.reason) == ("fc", "skipped", "weight_overridable")
    assert node.message == (f"the {what} {name!r} is also a graph input, so a caller may replace it; "
                            "the layer stays as it is to keep that input")


@pytest.mark.e2e
def test_an_overridable_weight_still_overrides_after_conversion():
    """The caller's weight is used (the model is unchanged): zeros give the bias alone."""
    result = convert(overridable("fc.w"))
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype(np.float32)
    import onnxruntime as ort

    sess = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x, "fc.w": np.zeros((5, 36), np.float32)})
    bias = next(onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer if t.name == "fc.b")
    np.testing.assert_array_equal(y[0], bias)


@pytest.mark.e2e
def test_before_ir_4_every_initializer_is_listed_and_still_converts():
    m = conv_flatten_gemm(opset=7)
    m.ir_version = 3
    m.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in m.graph.initializer)
    onnx.checker.check_model(m)
    result = convert(m)
    assert [n.node for n in result.report.converted] == ["fc"]


# ---- class 11: an operator set imported twice ------------------------------------------------------

def twice_imported():
    m = conv_flatten_gemm()
    del m.opset_import[:]
    m.opset_import.extend([helper.make_opsetid("ai.onnx", 9), helper.make_opsetid("", 13)])
    onnx.checker.check_model(m, full_check=True)  # the checker lets it pass
    return m


def test_an_operator_set_imported_twice_is_refused_in_one_line(tmp_path):
    with pytest.raises(InvalidModelError) as raised:
        convert(twice_imported())
    message = ("the model imports the ONNX operator set twice (versions 9 and 13); keep one, "
               "which one applies is ambiguous")
    assert str(raised.value).endswith(message)
    source = tmp_path / "twice.onnx"
    onnx.save(twice_imported(), source)
    out = CliRunner().invoke(main, [str(source), str(tmp_path / "out.onnx")])
    assert out.exit_code == 2 and out.output.count("\n") == 1 and message in out.output
    assert not (tmp_path / "out.onnx").exists()


# ---- class 9: a Flatten shared with an FC layer that stays a Gemm ----------------------------------

def shared_flatten(second):
    """x -> Conv -> Relu -> Flatten -> flat; Gemm 'fc' (flat) -> y, and a second reader of flat -> y2:
    ``second`` is "gemm" (a Gemm 'fc2', to be excluded), "runtime_weight" (a Gemm whose weight is a
    graph input: skipped) or "if" (an If whose branches run Gemms on flat, read from the outer scope)."""
    rng = np.random.default_rng(3)
    base = conv_flatten_gemm()
    nodes = list(base.graph.node)
    inits = list(base.graph.initializer) + [init("fc2.w", rng.standard_normal((3, 36)).astype(np.float32))]
    inputs = list(base.graph.input)
    if second == "gemm":
        nodes.append(helper.make_node("Gemm", ["flat0", "fc2.w"], ["y2"], name="fc2", transB=1))
    elif second == "second_flatten":  # a Flatten of its own, of the same map, before the Gemm left as it is
        feature_map = next(n.input[0] for n in nodes if "flat0" in n.output)
        nodes.append(helper.make_node("Flatten", [feature_map], ["flat_b"], name="flatten_b"))
        nodes.append(helper.make_node("Gemm", ["flat_b", "fc2.w"], ["y2"], name="fc2", transB=1))
    elif second == "runtime_weight":
        inputs.append(vi("w_in", [3, 36]))
        nodes.append(helper.make_node("Gemm", ["flat0", "w_in"], ["y2"], name="fc2", transB=1))
    else:
        branch = lambda tag: helper.make_graph(  # noqa: E731
            [helper.make_node("Gemm", ["flat0", "fc2.w"], [f"y_{tag}"], name=f"fc_{tag}", transB=1, alpha=1.0 if tag == "then" else 2.0)],
            tag, [], [vi(f"y_{tag}", ["N", 3])])
        inputs.append(vi("cond", [], TensorProto.BOOL))
        nodes.append(helper.make_node("If", ["cond"], ["y2"], name="branch", then_branch=branch("then"),
                                      else_branch=branch("else")))
    return model(nodes, inputs, [vi("y", None, 0), vi("y2", None, 0)], inits)


SHARED = {"gemm": dict(exclude=["fc2"]), "runtime_weight": {}, "if": {}, "second_flatten": dict(exclude=["fc2"])}


@pytest.mark.e2e
@pytest.mark.parametrize("second", sorted(SHARED))
def test_a_flatten_shared_with_a_layer_left_as_gemm_keeps_the_input_size(second):
    original = shared_flatten(second)
    result = convert(original, **SHARED[second])
    report = result.report
    assert [n.node for n in report.converted] == ["fc"]
    assert not report.fully_convolutional and report.symbolic_inputs == {}
    reader = "fc2" if second != "if" else "branch"
    if second == "second_flatten":
        assert report.notes == ["the input size stays fixed: node 'fc2', which is not converted, reads a tensor "
                                "computed from the feature map of head 'fc'"]
    else:
        assert report.notes == [f"the input size stays fixed: 'flat0', the flattened map of head 'fc', is still "
                                f"read by node {reader!r}, which is not converted"]
    assert "not fully convolutional: input sizes kept" in report.render_text()
    v = report.verification
    assert v and [c.check for c in v.checks] == ["original size", "original size"]
    assert [i.type for i in result.model.graph.input] == [i.type for i in original.graph.input]


@pytest.mark.e2e
def test_a_shared_flatten_written_without_the_proof_still_runs():
    result = convert(shared_flatten("gemm"), exclude=["fc2"], verify=False)
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5)).astype(np.float32)
    want, got = run(shared_flatten("gemm"), {"x": x}), run(result.model, {"x": x})
    np.testing.assert_allclose(got[0].reshape(want[0].shape), want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[1], want[1])
    dims = [d.dim_value for d in result.model.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [2, 5, 5]  # the model says which size it takes


# ---- class 10: sparse initializers ------------------------------------------------------------------

def sparse(name):
    """conv_flatten_gemm with initializer ``name`` stored as a sparse_initializer (small values zeroed;
    linear indices), and the dense array it stands for."""
    m = conv_flatten_gemm()
    tensor = next(t for t in m.graph.initializer if t.name == name)
    dense = onnx.numpy_helper.to_array(tensor).copy()
    dense[np.abs(dense) < 0.2] = 0
    at = np.flatnonzero(dense)
    m.graph.initializer.remove(tensor)
    m.graph.sparse_initializer.append(helper.make_sparse_tensor(
        onnx.numpy_helper.from_array(dense.reshape(-1)[at], name), onnx.numpy_helper.from_array(at, f"{name}.indices"),
        list(dense.shape)))
    onnx.checker.check_model(m)  # valid; full_check's inference types it sparse_tensor, which Gemm refuses
    return m, dense


@pytest.mark.e2e
def test_a_sparse_fc_weight_converts_to_a_dense_kernel():
    original, dense = sparse("fc.w")
    result = convert(original)
    assert [n.node for n in result.report.converted] == ["fc"]
    assert ops(result.model) == ["Conv", "Relu", "Conv"] and len(result.model.graph.sparse_initializer) == 0
    head = [n for n in result.model.graph.node if n.op_type == "Conv"][1]
    np.testing.assert_array_equal(
        onnx.numpy_helper.to_array(next(t for t in result.model.graph.initializer if t.name == head.input[1])),
        dense.reshape(5, 4, 3, 3))
    v = result.report.verification
    assert v and len(v.checks) == 5 and all(c.passed for c in v.checks)  # with input crops: no padding


@pytest.mark.e2e
def test_a_sparse_backbone_weight_stays_sparse_and_the_head_converts():
    original, _ = sparse("conv.w")
    result = convert(original)
    assert [n.node for n in result.report.converted] == ["fc"]
    assert [t.values.name for t in result.model.graph.sparse_initializer] == ["conv.w"]
    v = result.report.verification
    assert v and len(v.checks) == 5 and all(c.passed for c in v.checks)  # with input crops: no padding


def head_inside_if_on_the_outer_map():
    """conv_flatten_gemm, plus an If whose branches flatten the outer feature map themselves and run
    a Gemm on it (a head inside a body): the body output is a flat [N,3] only at the original size."""
    rng = np.random.default_rng(4)
    base = conv_flatten_gemm()
    nodes = list(base.graph.node)
    feature_map = next(n.input[0] for n in nodes if "flat0" in n.output)

    def branch(tag):
        return helper.make_graph([helper.make_node("Flatten", [feature_map], [f"f_{tag}"], name=f"flatten_{tag}"),
                                  helper.make_node("Gemm", [f"f_{tag}", "w_if"], [f"y_{tag}"], name=f"fc_{tag}",
                                                   transB=1)], tag, [], [vi(f"y_{tag}", ["N", 3])])

    nodes.append(helper.make_node("If", ["cond"], ["y2"], name="branch", then_branch=branch("then"),
                                  else_branch=branch("else")))
    inits = list(base.graph.initializer) + [init("w_if", rng.standard_normal((3, 36)).astype(np.float32))]
    inputs = [*base.graph.input, vi("cond", [], TensorProto.BOOL)]
    return model(nodes, inputs, [vi("y", None, 0), vi("y2", None, 0)], inits)


@pytest.mark.e2e
def test_a_head_inside_an_if_body_keeps_the_input_size():
    original = head_inside_if_on_the_outer_map()
    report = convert(original).report
    assert sorted(n.node for n in report.converted) == ["branch/else_branch/fc_else", "branch/then_branch/fc_then", "fc"]
    assert not report.fully_convolutional and report.symbolic_inputs == {}
    assert report.notes == [f"the input size stays fixed: head {name!r} is inside an If/Loop/Scan body, which gives "
                            "its map back flat, so a larger input would change the body's output"
                            for name in ("branch/else_branch/fc_else", "branch/then_branch/fc_then")]
    assert "not fully convolutional: input sizes kept (see the notes)" in report.render_text()
    assert [c.check for c in report.verification.checks] == ["original size", "original size"]
