"""Graph parts of issue 17 ("Trust"): training-mode Dropout, overridable weights, duplicate opset
imports (class 11), a Flatten shared with an FC layer left as a Gemm (class 9), sparse initializers
(class 10)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnx_fc2conv import InvalidModelError, convert
from onnx_fc2conv.cli import main
from graphs import conv_flatten_gemm, init, model, ops, run, vi


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


def test_an_overridable_weight_still_overrides_after_conversion():
    """The caller's weight is used (the model is unchanged): zeros give the bias alone."""
    result = convert(overridable("fc.w"))
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype(np.float32)
    import onnxruntime as ort

    sess = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x, "fc.w": np.zeros((5, 36), np.float32)})
    bias = next(onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer if t.name == "fc.b")
    np.testing.assert_array_equal(y[0], bias)


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
