"""tf2onnx's NHWC -> NCHW step of a 1-channel input is a Reshape to a fixed [-1,1,H,W]: a Reshape that
only moves a size-1 axis is made the Transpose it is, so a converted Keras CNN takes larger inputs; an
input whose size stays fixed has a note naming the op that fixes it."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import load_build_models
from graphs import init, model, ops, vi
from onnx import helper

from onnx_fc2conv import convert
from onnx_fc2conv.index import GraphIndex
from onnx_fc2conv.spatial import size_one_move

bm = load_build_models()
RESHAPE = "sequential/conv2d/Conv2D__6/Reshape"


@pytest.mark.parametrize("dims, shape, perm", [
    (["N", 28, 28, 1], [-1, 1, 28, 28], [0, 3, 1, 2]),  # tf2onnx, NHWC -> NCHW
    (["N", 1, 28, 28], [-1, 28, 28, 1], [0, 2, 3, 1]),  # and back
    (["N", 28, 28, 1], [0, 1, 28, 28], [0, 3, 1, 2]),  # 0 copies the batch
    (["N", 28, 28, 1], [-1, 28, 28, 1], [0, 1, 2, 3]),  # moves nothing
    (["N", 4, 28, 1], [-1, 1, 28, 4], None),  # swaps two axes of size > 1: not the same values
    (["N", 28, 28], [-1, 1, 28, 28], None),  # adds an axis
    (["N", 28, 28, 1], [-1, 1, 14, 56], None),  # not the same dims
])
def test_a_reshape_is_a_transpose_when_it_only_moves_size_1_axes(dims, shape, perm):
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], name="r")
    m = model([node], [vi("x", dims)], [vi("y", None, 0)], [init("shape", np.array(shape, np.int64))])
    assert size_one_move(GraphIndex(m), m.graph.node[0]) == perm


def test_a_converted_keras_cnn_takes_larger_inputs():
    result = convert(bm.keras_mnist_cnn(13), verify=False)
    report, converted = result.report, result.model
    entry = next(n for n in converted.graph.node if n.name == RESHAPE)
    assert (entry.op_type, list(entry.attribute[0].ints)) == ("Transpose", [0, 3, 1, 2])
    assert report.symbolic_inputs == {"input_1": ["N", "height", "width", 1]}
    assert report.notes == [f"Reshape {RESHAPE!r} only moves a size-1 axis: it is now the Transpose it is, which "
                            "takes any size"]
    assert ops(converted).count("Reshape") == 0 and ops(converted).count("Transpose") == 1


@pytest.mark.e2e
@pytest.mark.parametrize("opset", [11, 13, 17])
def test_a_converted_keras_cnn_is_proved_on_larger_inputs(opset):
    import onnxruntime as ort

    result = convert(bm.keras_mnist_cnn(opset))
    v = result.report.verification
    assert v.passed and v.max_abs_error < 1e-5, v.render_text(verbose=True)
    # No padding, so the cells are also proved on the original run at the input crops their windows place.
    assert [(c.check, c.compared) for c in v.checks] == [("original size", 20), ("sliding window 56x56", 11),
                                                          ("input crops 56x56", 24), ("sliding window 42x57", 11),
                                                          ("input crops 42x57", 24)]
    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    (scores,) = session.run(None, {"input_1": np.zeros((1, 64, 96, 1), np.float32)})
    assert scores.shape == (1, 10, 10, 18)  # 64x96 -> conv 62x94 -> pool 31x47 -> conv 29x45 -> pool 14x22, window 5


def test_an_input_kept_at_its_size_names_the_op_that_fixes_it():
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["img"], name="expand"),  # [N,28,28] -> [N,1,28,28]
             helper.make_node("Conv", ["img", "cw"], ["fmap"], name="conv", kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("Flatten", ["fmap"], ["flat"], name="flatten", axis=1),
             helper.make_node("Gemm", ["flat", "w"], ["y"], name="fc", transB=1)]
    inits = [init("shape", np.array([-1, 1, 28, 28], np.int64)), init("cw", rng.random((2, 1, 3, 3), np.float32)),
             init("w", rng.random((3, 2 * 13 * 13), np.float32))]
    result = convert(model(nodes, [vi("x", ["N", 28, 28])], [vi("y", ["N", 3])], inits), verify=False)
    report = result.report
    assert report.symbolic_inputs == {}
    assert report.notes == ["the input size stays fixed: Reshape 'expand', which reads input 'x', gives the same "
                            "shape at any input size"]
    assert "not fully convolutional: input sizes kept (see the notes)" in report.render_text()
