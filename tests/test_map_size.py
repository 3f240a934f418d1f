"""Where the graph leaves the flattened map's size symbolic, the FC weight fixes it when it can
(K = C*h*w with one free dim, or K == C: a global-pool head); otherwise --input-shape does."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from graphs import init, model, vi, weights
from onnx import helper

from onnx_fc2conv import convert, verify
from onnx_fc2conv.cli import main
from onnx_fc2conv.rules._head import window_from_weight


def conv_head(in_dims, *, conv=None, pool=None, features_in, seed=0):
    """x [in_dims] -> (Conv 3x3 to 2 channels) -> (AveragePool) -> Flatten -> Gemm(K=features_in -> 3) -> y."""
    rng = np.random.default_rng(seed)
    nodes, inits, last = [], [], "x"
    if conv is not None:
        nodes.append(helper.make_node("Conv", [last, "conv.w"], ["fmap"], name="conv", kernel_shape=[3, 3], pads=conv))
        inits.append(init("conv.w", weights(rng, 2, in_dims[1], 3, 3)))
        last = "fmap"
    if pool is not None:
        nodes.append(helper.make_node("AveragePool", [last], ["pooled"], name="pool", kernel_shape=[pool, pool]))
        last = "pooled"
    nodes += [helper.make_node("Flatten", [last], ["flat"], name="flatten", axis=1),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    inits += [init("fc.w", weights(rng, 3, features_in)), init("fc.b", weights(rng, 3))]
    return model(nodes, [vi("x", in_dims)], [vi("y", None, 0)], inits)


def _conv_kernel(converted):
    conv = next(n for n in converted.graph.node if n.name == "fc")
    weight = next(t for t in converted.graph.initializer if t.name == conv.input[1])
    return list(weight.dims)


@pytest.mark.parametrize("dims, k, window", [
    ((4, "h", "w"), 4, (4, 1, 1)),       # K == C: a global-pool head
    ((4, 1, "w"), 20, (4, 1, 5)),        # one free dim
    (("c", 2, 3), 30, (5, 2, 3)),        # free channels, static map
    ((4, 3, "w"), 15, "weight_shape_mismatch"),
    ((4, "h", "w"), 24, "feature_map_shape_unknown"),
])
def test_window_from_weight(dims, k, window):
    got = window_from_weight(dims, k)
    assert got == window if isinstance(window, tuple) else got.reason == window


@pytest.mark.e2e
def test_an_average_pool_head_on_a_free_size_input_takes_its_1x1_map_from_the_weight():
    # ResNet-style: AveragePool with a fixed kernel over a map of free size; at the size the model was
    # made for it leaves 1x1, and K == C says so even though shape inference cannot.
    original = conv_head(["N", 2, "h", "w"], conv=[1, 1, 1, 1], pool=8, features_in=2)
    result = convert(original, verify=False)
    assert [n.status for n in result.report.nodes] == ["converted"]
    assert "map size 2x1x1 from the weight" in result.report.nodes[0].detail
    assert _conv_kernel(result.model) == [3, 2, 1, 1]
    check = verify(original, result.model, input_shapes={"x": (None, 2, 8, 8)})
    assert check.passed and {c.check for c in check.checks} == {"original size", "sliding window 16x16",
                                                                  "sliding window 12x17"}


@pytest.mark.e2e
def test_one_free_width_is_taken_from_the_weight():
    # A text-line model: fixed height 3, free width; the Conv leaves a 1 x (w-2) map, K = 2*1*5.
    original = conv_head(["N", 4, 3, "w"], conv=[0, 0, 0, 0], features_in=10)
    result = convert(original, verify=False)
    assert _conv_kernel(result.model) == [3, 2, 1, 5]
    assert verify(original, result.model, input_shapes={"x": (None, 4, 3, 7)}).passed


@pytest.mark.e2e
def test_a_free_height_and_width_need_input_shape_and_then_convert():
    original = conv_head(["N", 4, "h", "w"], conv=[0, 0, 0, 0], features_in=12)
    skipped = convert(original).report.nodes[0]
    assert (skipped.status, skipped.reason) == ("skipped", "feature_map_shape_unknown")
    assert "the weight fixes the product of its free dims (6) but not each one; pass --input-shape" in skipped.message
    result = convert(original, input_shapes={"x": (None, 4, 4, 5)})  # a 2x3 map, verified at 4x5
    assert _conv_kernel(result.model) == [3, 2, 2, 3] and result.report.verification.passed
    assert result.report.verification.inputs[0].shape == [2, 4, 4, 5]


@pytest.mark.e2e
def test_cli_input_shape_tells_the_rewrite_the_map_size(tmp_path):
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(conv_head(["N", 4, "h", "w"], conv=[0, 0, 0, 0], features_in=12), src)
    result = CliRunner().invoke(main, [str(src), str(out), "--input-shape", "x:?x4x4x5"])
    assert result.exit_code == 0, result.output
    assert "converted 1 of 1 FC nodes" in result.output and "verification passed" in result.output
    assert [d.dim_param or d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim] == \
        ["N", 4, "height", "width"]  # '?' kept the batch symbolic; the spatial dims are free again
