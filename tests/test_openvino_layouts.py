"""The token layouts compile in OpenVINO (CPU plugin) with a dynamic sequence length and match ONNX
Runtime: torch's nn.TransformerEncoderLayer at [1,T,64] converted with --token-layout conv2d failed
to compile in OpenVINO 2026.4 (ShuffleChannelsFusion, "Cannot get length of dynamic dimension") while
conv2d restored tokens with a Reshape. Skipped where ``openvino`` is not installed."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import MODELS

from onnx_fc2conv import convert
from onnx_fc2conv.verify import OPENVINO_CONFIG

ov = pytest.importorskip("openvino")

pytestmark = pytest.mark.e2e

SEQUENCE_LENGTHS = (7, 40)


def openvino_cpu_f32(model: onnx.ModelProto):
    """The model compiled by OpenVINO's CPU plugin in f32 (it defaults to bf16 where the CPU has it)."""
    core = ov.Core()
    return core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU", OPENVINO_CONFIG)


@pytest.mark.parametrize("layout", [None, "conv1d", "conv2d"])
def test_torch_encoder_layer_compiles_in_openvino_with_a_dynamic_length_and_matches_onnx_runtime(layout):
    original = onnx.load(str(MODELS / "torch_encoder_layer.onnx"))
    model = original if layout is None else convert(original, token_layout=layout, verify=False).model
    compiled = openvino_cpu_f32(model)
    assert compiled.input(0).get_partial_shape().to_string() == "[1,?,64]"  # T stays dynamic
    reference = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"])
    for tokens in SEQUENCE_LENGTHS:
        x = np.random.default_rng(tokens).standard_normal((1, tokens, 64)).astype(np.float32)
        (expected,) = reference.run(None, {"hidden": x})
        got = compiled({"hidden": x})[0]
        assert got.shape == (1, tokens, 64)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
