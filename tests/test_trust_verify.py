"""The proof under odd input (issue 17): a converted model without or with a wrong conversion
record (class 4), NaN and inf in the outputs (class 8)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from graphs import conv_flatten_gemm
from onnx import helper, numpy_helper

from onnx_fc2conv import InvalidModelError, convert, verify
from onnx_fc2conv.cli import main
from onnx_fc2conv.metadata import METADATA_KEY

NO_RECORD = "the converted model carries no conversion record ('onnx_fc2conv' metadata)"


def stride_2_head(build_models):
    """LeNet-5 converted, with its head Conv given stride 2: right at the original size only."""
    original = build_models.lenet5()
    converted = convert(original, verify=False).model
    head = next(n for n in converted.graph.node if n.name == "c5/Gemm")
    for a in list(head.attribute):
        if a.name == "strides":
            head.attribute.remove(a)
    head.attribute.append(helper.make_attribute("strides", [2, 2]))
    return original, converted


def set_record(model, edit):
    prop = next(p for p in model.metadata_props if p.key == METADATA_KEY)
    data = json.loads(prop.value)
    edit(data)
    prop.value = json.dumps(data)


def record_check(result):
    (check,) = [c for c in result.checks if c.check == "conversion record"]
    assert not check.passed
    return check.note


# ---- class 4: the record is missing or does not fit ------------------------------------------------

@pytest.mark.e2e
def test_a_map_model_without_its_record_fails_and_names_the_checks_not_run(build_models):
    original, converted = stride_2_head(build_models)
    del converted.metadata_props[:]
    result = verify(original, converted)
    assert not result
    why = ("output 'logits' is a map [2, 10, 1, 1] where the original's is [2, 10], but the converted model "
           "carries no conversion record ('onnx_fc2conv' metadata), so the sliding window cannot be checked")
    assert record_check(result) == why
    assert result.skipped == [f"sliding window and sequence lengths: not run: {why}"]
    text = result.render_text()
    assert text.startswith("VERIFICATION FAILED") and f"  skipped: sliding window and sequence lengths: not run: {why}" in text


@pytest.mark.e2e
def test_a_model_without_a_record_and_without_maps_is_checked_at_its_size_and_says_so(build_models):
    original = build_models.lenet5()
    result = verify(original, original)
    assert result and [c.check for c in result.checks] == ["original size"]
    assert result.skipped == [f"sliding window and sequence lengths: not run: {NO_RECORD}"]


MAP_WITHOUT_ITS_HEAD = "output 'logits' is a map [2, 10, 1, 1] where the original's is [2, 10], but "
MISFIT = "the conversion record does not fit the models: "


@pytest.mark.e2e
@pytest.mark.parametrize("edit, problem", [
    (lambda d: d["heads"][0].update(feature_map="nope"),
     MISFIT + "its head 'c5/Gemm' reads the feature map 'nope', which the original model does not have"),
    (lambda d: d["heads"][0].update(node="gone"), MISFIT + "its head 'gone' is no node of the converted model"),
    (lambda d: d["heads"][0].update(outputs=["probs"]),
     MISFIT + "its head 'c5/Gemm' writes 'probs', which is no output of the converted model"),
    (lambda d: d.update(spatial_inputs={"image": [2, 3]}),
     MISFIT + "it names the spatial input 'image', which the original model does not have"),
    (lambda d: d.update(spatial_inputs={"input": [2, 7]}), MISFIT + "it names spatial axis 7 of input 'input', which has rank 4"),
    (lambda d: d.update(mode="keep_output_shape"), MAP_WITHOUT_ITS_HEAD + "the conversion record's mode is keep_output_shape"),
    (lambda d: d["heads"][0].update(outputs=[]), MAP_WITHOUT_ITS_HEAD + "no head of the conversion record writes it"),
], ids=["feature_map", "node", "output", "spatial_input", "spatial_axis", "mode", "no_head_writes_the_map"])
def test_a_record_that_does_not_fit_the_models_fails_and_names_the_checks_not_run(build_models, edit, problem):
    original, converted = stride_2_head(build_models)
    set_record(converted, edit)
    result = verify(original, converted)
    assert not result
    assert record_check(result) == problem
    assert result.skipped == [f"sliding window and sequence lengths: not run: {problem}"]


@pytest.mark.e2e
def test_a_right_conversion_passes_with_its_record(build_models):
    original = build_models.lenet5()
    result = verify(original, convert(original, verify=False).model)
    assert result and result.skipped == [] and "conversion record" not in {c.check for c in result.checks}


def not_json(model):
    for prop in [p for p in model.metadata_props if p.key == METADATA_KEY]:
        model.metadata_props.remove(prop)
    model.metadata_props.add(key=METADATA_KEY, value="{not json")
    return model


NOT_JSON = ("the model's 'onnx_fc2conv' metadata is not a conversion record "
            "(JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)); was it edited?")


@pytest.mark.e2e
def test_metadata_that_is_not_json_is_one_line_from_verify_and_convert(tmp_path, build_models):
    original = build_models.lenet5()
    with pytest.raises(InvalidModelError) as raised:
        verify(original, not_json(convert(original, verify=False).model))
    assert str(raised.value) == NOT_JSON
    source = tmp_path / "edited.onnx"
    onnx.save(not_json(build_models.lenet5()), source)
    out = CliRunner().invoke(main, [str(source), str(tmp_path / "out.onnx")])
    assert out.exit_code == 2 and out.output == f"onnx-fc2conv: error: {NOT_JSON}\n"
    assert not (tmp_path / "out.onnx").exists()


# ---- class 8: NaN and inf ----------------------------------------------------------------------------

def nan_weight_model():
    """conv_flatten_gemm with one NaN in row 0 of the FC weight: output column 0 is NaN in both models."""
    m = conv_flatten_gemm()
    weight = next(t for t in m.graph.initializer if t.name == "fc.w")
    w = numpy_helper.to_array(weight).copy()
    w[0, 0] = np.nan
    weight.CopyFrom(numpy_helper.from_array(w, "fc.w"))
    return m


@pytest.mark.e2e
def test_nan_in_both_models_at_the_same_place_agrees():
    result = convert(nan_weight_model())
    v = result.report.verification
    assert v and [c.passed for c in v.checks] == [True] * 5 and v.max_abs_error < 1e-5  # the backbone has no padding


@pytest.mark.e2e
def test_nan_input_gives_nan_in_both_models_and_agrees():
    original = conv_flatten_gemm()
    converted = convert(original, verify=False).model
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5)).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    result = verify(original, converted, input_data={"x": x})
    assert result and result.checks[0].compared == 10


def test_the_same_inf_agrees_and_the_opposite_inf_does_not():
    from onnx_fc2conv.report import VerificationResult
    from onnx_fc2conv.verify import _compare

    inf = np.float32(np.inf)
    tolerances = VerificationResult(passed=True, rtol=1e-4, atol=1e-5)
    same = _compare("original size", "cpu", "y", np.array([inf, -inf, 1.0]), np.array([inf, -inf, 1.0]), tolerances)
    assert same.passed and same.max_abs_error == 0
    opposite = _compare("original size", "cpu", "y", np.array([inf, 1.0]), np.array([-inf, 1.0]), tolerances)
    assert not opposite.passed and opposite.note == "1 value NaN or inf in one model only (first at [0]: inf, the original gives -inf)"


@pytest.mark.e2e
def test_nan_in_one_model_only_fails_and_says_so():
    original = conv_flatten_gemm()
    converted = convert(original, verify=False).model
    head = [n for n in converted.graph.node if n.op_type == "Conv"][1]
    weight = next(t for t in converted.graph.initializer if t.name == head.input[1])
    w = numpy_helper.to_array(weight).copy()
    w[3, 0, 0, 0] = np.nan
    weight.CopyFrom(numpy_helper.from_array(w, weight.name))
    result = verify(original, converted)
    assert not result
    first = result.checks[0]
    assert (first.check, first.passed, first.max_abs_error) == ("original size", False, float("inf"))
    assert first.note.startswith("2 values NaN or inf in one model only (first at [0, 3]: nan, the original gives ")
    assert result.summary().startswith("VERIFICATION FAILED: 5 checks, max abs error inf")
    assert "NaN or inf in one model only" in result.render_text()
