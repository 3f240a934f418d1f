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
