"""Skip reasons not covered elsewhere: the model is left as it was and the reason is reported."""
from __future__ import annotations

import numpy as np
import pytest
from graphs import init, model, ops, vi, weights
from onnx import helper

from onnx_fc2conv import convert


def _unchanged(original, result):
    assert ops(result.model) == ops(original)
    assert [t.SerializeToString() for t in result.model.graph.initializer] == \
        [t.SerializeToString() for t in original.graph.initializer]


def test_weight_computed_at_run_time_is_skipped():
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w"], ["y"], name="fc", transB=1)]
    original = model(nodes, [vi("x", ["N", 3, 2, 2]), vi("w", [4, 12])], [vi("y", ["N", 4])])
    result = convert(original)
    assert [(n.node, n.status, n.reason) for n in result.report.nodes] == [("fc", "skipped", "weight_not_constant")]
    _unchanged(original, result)


def test_reshape_that_moves_the_batch_is_not_a_flatten():
    # [N,4,2,3] -> [-1, 12]: two rows per sample, so the Gemm mixes the halves of each sample's map.
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Relu", ["x"], ["fmap"]),
             helper.make_node("Reshape", ["fmap", "shape"], ["rows"]),
             helper.make_node("Gemm", ["rows", "w"], ["y"], name="fc", transB=1)]
    original = model(nodes, [vi("x", ["N", 4, 2, 3])], [vi("y", None, 0)],
                     [init("shape", np.array([-1, 12], np.int64)), init("w", weights(rng, 5, 12))])
    result = convert(original)
    assert [(n.node, n.reason) for n in result.report.nodes] == [("fc", "reshape_not_flatten")]
    _unchanged(original, result)


def test_flatten_of_a_rank_6_tensor_is_skipped():
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w"], ["y"], name="fc", transB=1)]
    original = model(nodes, [vi("x", ["N", 2, 2, 2, 2, 2])], [vi("y", ["N", 3])], [init("w", weights(rng, 3, 32))])
    result = convert(original)
    assert [(n.node, n.reason) for n in result.report.nodes] == [("fc", "feature_map_rank")]
    _unchanged(original, result)


@pytest.mark.e2e
def test_adding_the_maps_of_two_heads_is_blocked_as_mixed_maps():
    # Two heads on maps of different sizes: their sum has no single window, so both are flattened back.
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("MaxPool", ["x"], ["small"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["x"], ["flat_a"], axis=1),
             helper.make_node("Flatten", ["small"], ["flat_b"], axis=1),
             helper.make_node("Gemm", ["flat_a", "wa"], ["a"], name="head_a", transB=1),
             helper.make_node("Gemm", ["flat_b", "wb"], ["b"], name="head_b", transB=1),
             helper.make_node("Add", ["a", "b"], ["y"], name="sum")]
    original = model(nodes, [vi("x", ["N", 2, 4, 4])], [vi("y", ["N", 3])],
                     [init("wa", weights(rng, 3, 32)), init("wb", weights(rng, 3, 8))])
    result = convert(original)
    report = result.report
    assert sorted(n.node for n in report.converted) == ["head_a", "head_b"]
    assert [(n.node, n.status, n.reason) for n in report.nodes if n.status == "blocked"] == [("sum", "blocked", "mixed_maps")]
    assert ops(result.model).count("Flatten") == 2 and not report.fully_convolutional
    assert report.verification.passed and report.verification.max_abs_error < 1e-5


def test_a_layer_whose_input_no_shape_inference_types_says_so():
    # a custom op's output: neither ONNX's nor ONNX Runtime's inference knows its shape
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Mystery", ["x"], ["h"], domain="example.custom"),
             helper.make_node("Gemm", ["h", "w"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "custom", [vi("x", ["N", 12])], [vi("y", ["N", 4])], [init("w", weights(rng, 4, 12))])
    original = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                       helper.make_opsetid("example.custom", 1)], ir_version=7)
    (row,) = convert(original, verify=False).report.nodes
    assert (row.status, row.reason) == ("skipped", "not_a_feature_map")
    assert row.message == ("neither ONNX's nor ONNX Runtime's shape inference gives a shape for the layer's input "
                           "'h', so it is no known feature map or tokens")
