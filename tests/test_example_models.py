"""Every shipped example model converts and verifies, in both modes, at opsets 11, 13 and 17."""
from __future__ import annotations

import onnx
import pytest

from onnx_fc2conv import convert

pytestmark = pytest.mark.e2e

# name -> FC nodes the converter must turn into Convs (by default, without token or vector options)
EXPECTED_CONVERTED = {
    "seed_fc": 1, "lenet5": 3, "vgg_small": 3, "gap_head": 1, "torch_view_head": 2, "matmul_add_head": 2,
    "residual_pad": 1, "residual_valid": 1, "resnet_tiny": 1, "vgg_tv": 3,
}


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize("keep_output_shape", [False, True], ids=["fcn", "keep-shape"])
@pytest.mark.parametrize("name", sorted(EXPECTED_CONVERTED))
def test_example_model_converts_and_verifies(build_models, name, opset, keep_output_shape):
    original = getattr(build_models, name)(opset)
    result = convert(original, keep_output_shape=keep_output_shape)
    report = result.report
    assert len(report.converted) == EXPECTED_CONVERTED[name]
    assert not [n for n in report.nodes if n.status != "converted"]
    assert not {"Gemm", "MatMul", "Flatten"} & {n.op_type for n in result.model.graph.node} or keep_output_shape
    v = report.verification
    assert v.passed and v.max_abs_error < 1e-4, v.render_text(verbose=True)
    if keep_output_shape:
        assert [o.type for o in result.model.graph.output] == [o.type for o in original.graph.output]
    else:
        windows = [c for c in v.checks if c.check.startswith("sliding window")]
        assert len(windows) == 2 and all(c.passed for c in windows)
        assert {c.check for c in windows} != {windows[0].check}  # two different larger sizes
    onnx.checker.check_model(result.model, full_check=True)
    # Original initializers that survive are byte-identical, except an FC weight taken over as a
    # Conv kernel: same data, the kernel's dims. Every new one is a Conv weight or bias.
    before = {t.name: t for t in original.graph.initializer}
    conv_inputs = {name for n in result.model.graph.node if n.op_type == "Conv" for name in n.input[1:]}
    for t in result.model.graph.initializer:
        if t.name not in before:
            assert t.name in conv_inputs
        elif list(t.dims) != list(before[t.name].dims):
            assert t.name in conv_inputs and t.raw_data == before[t.name].raw_data
        else:
            assert t.SerializeToString() == before[t.name].SerializeToString()


# ---- the newest opsets -------------------------------------------------------------------------------

# onnx 1.23 defines opsets up to 28 and ONNX Runtime 1.32 loads up to 28 (it refuses 29); jax2onnx
# writes 23 by default. Every example model is upgraded from 13 by onnx's version converter (with the
# IR version that opset needs) to each of them.
NEWEST_OPSETS = (22, 23, 24, 25, 26, 27, 28)
# name -> the rule options that convert all its FC nodes, and how many there are
AT_NEWEST_OPSETS = {
    **{name: ({}, count) for name, count in EXPECTED_CONVERTED.items()},
    "seed_mlp": ({"vector_fc": True}, 1),
    "bert_layer": ({"token_layout": "conv1d"}, 6),
    "lenet5_fp16": ({}, 3),
    "bert_layer_fp16": ({"token_layout": "conv2d"}, 6),
    "bert_layer_fused": ({"token_layout": "conv1d"}, 3),
    "gpt2_blocks": ({"token_layout": "conv1d"}, 8),
    "mlp_mixer": ({"token_layout": "conv2d"}, 8),
    "convnext_blocks": ({"token_layout": "conv2d", "dense_pool": True}, 5),
    "keras_mnist_cnn": ({}, 1),
}


def test_the_newest_opsets_tested_are_those_onnx_and_onnx_runtime_know(build_models):
    assert NEWEST_OPSETS[-1] == onnx.defs.onnx_opset_version() == 28
    assert set(AT_NEWEST_OPSETS) == set(build_models.BUILDERS)


@pytest.mark.parametrize("opset", NEWEST_OPSETS)
@pytest.mark.parametrize("name", sorted(AT_NEWEST_OPSETS))
def test_example_model_upgraded_to_a_newest_opset_converts_and_verifies(build_models, name, opset):
    original = onnx.version_converter.convert_version(build_models.BUILDERS[name](13), opset)
    original.ir_version = onnx.helper.find_min_ir_version_for(list(original.opset_import), ignore_unknown=True)
    onnx.checker.check_model(original, full_check=True)
    options, count = AT_NEWEST_OPSETS[name]
    result = convert(original, **options)
    assert len(result.report.converted) == count
    assert result.report.opset == opset and result.model.opset_import[0].version == opset  # the opset is kept
    v = result.report.verification
    # one check where nothing can grow: the seed MLP's vectors, the Mixer's patches (its token mixing fixes them);
    # the backbones without padding are proved on crops too
    crops = 2 if name in ("lenet5", "lenet5_fp16", "residual_valid", "keras_mnist_cnn") else 0
    assert v.passed and len(v.checks) == (1 if name in ("seed_mlp", "mlp_mixer") else 3 + crops), \
        v.render_text(verbose=True)
    onnx.checker.check_model(result.model, full_check=True)
