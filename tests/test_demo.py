"""The digits heatmap demo (demo/run_demo.py): classifier quality, and the converted
model's score map against the original classifier run on every 8x8 crop."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest

if importlib.util.find_spec("sklearn") is None:  # found, not imported: importing it costs a second of collection
    pytest.skip("could not import 'sklearn'", allow_module_level=True)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo"))

import digits_demo as dd  # noqa: E402

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def trained():
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    # One BLAS thread: on a busy 2-core machine the spinning threads made training 3-20x slower
    # (7 s instead of 2 s, at worst 46 s), the trained weights and accuracies are the same.
    with threadpool_limits(1):
        return dd.build(max_iter=60)  # ~2 s on 2 cores


@pytest.fixture(scope="module")
def canvas(trained):
    return dd.make_canvas(trained.x_test, trained.y_test)


def test_classifier_held_out_accuracy(trained):
    assert trained.digit_acc > 0.9, trained.digit_acc
    assert trained.bg_acc > 0.9, trained.bg_acc
    assert trained.acc > 0.9, trained.acc


def test_exported_graph_is_flatten_then_gemms(trained):
    m = trained.model
    assert [n.op_type for n in m.graph.node] == ["Flatten", "Gemm", "Relu", "Gemm", "Relu", "Gemm"]
    assert m.graph.input[0].name == "image" and dd.shape_str(m.graph.input[0]) == "[N, 1, 8, 8]"
    assert m.graph.output[0].name == "logits" and dd.shape_str(m.graph.output[0]) == "[N, 11]"
    # the ONNX graph computes what sklearn computes
    x = trained.x_test[:50]
    got = dd.predict(dd.session(m), x).argmax(1)
    np.testing.assert_array_equal(got, trained.clf.predict(x.reshape(len(x), -1)))


def test_reference_sliding_window_finds_the_digits(trained, canvas):
    img, truth = canvas
    sess = dd.session(trained.model)
    ref = dd.reference_map(sess, img)
    assert ref.shape == (1, dd.N_CLASSES, 25, 41)
    np.testing.assert_allclose(ref, dd.reference_map(sess, img, batched=False), atol=1e-5)
    correct, missed, false_pos = dd.match(dd.detect(ref), truth)
    assert len(correct) >= len(truth) - 1, (correct, missed)
    assert len(false_pos) <= 1, false_pos


def test_converted_model_equals_crop_by_crop(trained, canvas, tmp_path):
    mod = pytest.importorskip("onnx_fc2conv")
    convert = getattr(mod, "convert", None)
    if convert is None:
        pytest.skip("onnx_fc2conv.convert is not there yet")
    import onnx

    src = tmp_path / "digits_classifier.onnx"
    onnx.save(trained.model, str(src))
    result = convert(str(src))
    assert isinstance(result.report.render_text(), str)
    assert dd.describe_fcn(result.model) == []

    img, truth = canvas
    ref = dd.reference_map(dd.session(trained.model), img)
    got = dd.fcn_map(dd.session(result.model), img)
    assert got.shape == ref.shape == (1, dd.N_CLASSES, 25, 41)
    assert np.abs(got - ref).max() <= 1e-4
    geometry = result.report.geometry["logits"]
    assert [(a.size, a.stride, a.offset, a.margin) for a in geometry.axes] == [(dd.WIN, 1, 0, 0)] * 2
    placed = dd.place(dd.detect(got), lambda r, c: mod.cell_box(geometry, r, c))
    assert all((y1 - y0, x1 - x0) == (dd.WIN, dd.WIN) for _, y0, x0, y1, x1, _ in placed)
    correct, missed, false_pos = dd.match(placed, truth)
    assert len(correct) >= len(truth) - 1, (correct, missed)
