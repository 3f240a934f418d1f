"""Big models: FC weights taken over as Conv kernels without a copy, external data, progress."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from graphs import conv_flatten_gemm, init, initializer
from onnx_fc2conv import convert


def test_fc_weight_read_only_by_its_gemm_becomes_the_kernel_in_place():
    original = conv_flatten_gemm(channels=4, spatial=(3, 3), features=5)
    result = convert(original)
    conv = next(n for n in result.model.graph.node if n.op_type == "Conv" and n.name == "fc")
    assert conv.input[1] == "fc.w"  # the same initializer, no second copy of the weight
    assert list(initializer(result.model, "fc.w").shape) == [5, 4, 3, 3]
    assert np.array_equal(initializer(result.model, "fc.w").ravel(), initializer(original, "fc.w").ravel())
    assert list(initializer(original, "fc.w").shape) == [5, 36]  # the caller's model is untouched
    assert result.report.verification.passed


def test_fc_weight_read_by_another_node_is_copied_not_reshaped():
    # y2 = Identity(fc.w) also reads the weight, so the kernel must be a new initializer.
    original = conv_flatten_gemm(after=[("Relu", {}, [])])
    graph = original.graph
    graph.node.append(helper.make_node("Identity", ["fc.w"], ["y2"], name="weight_out"))
    graph.output.append(helper.make_tensor_value_info("y2", onnx.TensorProto.FLOAT, [5, 36]))
    result = convert(original)
    conv = next(n for n in result.model.graph.node if n.op_type == "Conv" and n.name == "fc")
    assert conv.input[1] != "fc.w"
    assert list(initializer(result.model, "fc.w").shape) == [5, 36]
    assert result.report.verification.passed


def test_excluded_layer_keeps_its_weight_shape():
    # The rule proposes the in-place reshape; the pipeline refuses the rewrite (--exclude), so the
    # Gemm must still read a [F, K] weight.
    result = convert(conv_flatten_gemm(), exclude=("fc",))
    assert [n.op_type for n in result.model.graph.node][-1] == "Gemm"
    assert list(initializer(result.model, "fc.w").shape) == [5, 36]
    onnx.checker.check_model(result.model, full_check=True)
