"""The digits heatmap demo (demo/run_demo.py): classifier quality, and the converted
model's score map against the original classifier run on every 8x8 crop; and the output-stride
demo (demo/run_stride_demo.py): one strided model's maps at stride 4 and 1, by the geometry."""

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


# ---- the output-stride demo (demo/run_stride_demo.py): one strided model at stride 4 and stride 1

@pytest.fixture(scope="module")
def strided():
    pytest.importorskip("onnx_fc2conv")
    import stride_demo as sd
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # as `trained` above
        t = sd.build()
    img, truth = sd.make_canvas(t.x_test, t.y_test)
    return t, img, truth, {stride: sd.scan(t.model, img, truth, stride) for stride in (None, 1)}


def test_strided_classifier_trains_only_the_head_on_fixed_filters(strided):
    import stride_demo as sd
    from onnx import numpy_helper

    t = strided[0]
    ops = [n.op_type for n in t.model.graph.node]
    assert ops == ["Conv", "Relu", "MaxPool"] * 2 + ["Flatten", "Gemm", "Relu", "Gemm"]
    # the exported filters are the seeded fixed ones, untouched by training
    weights = {i.name: numpy_helper.to_array(i) for i in t.model.graph.initializer}
    for i, fixed in enumerate(sd.backbone_weights()):
        np.testing.assert_array_equal(weights[f"conv{i // 2}.{'weight' if i % 2 == 0 else 'bias'}"], fixed)
    assert t.digit_acc > 0.9 and t.bg_acc > 0.9, (t.digit_acc, t.bg_acc)


def test_strided_map_shapes_follow_from_the_geometry(strided):
    _, img, _, scans = strided
    height, width = img.shape[2:]
    for stride, scan in ((4, scans[None]), (1, scans[1])):
        assert [(a.size, a.stride, a.offset, a.margin, a.crop) for a in scan.geometry.axes] == [(16, stride, 0, 0, 16)] * 2
        # no padding, no dropped rows: one cell per window inside the canvas
        expected = ((height - 16) // stride + 1, (width - 16) // stride + 1)
        assert scan.logit_map.shape == (1, dd.N_CLASSES, *expected) == (1, dd.N_CLASSES, *scan.cells_inside)
    assert scans[None].logit_map.shape[2:] == (9, 17) and scans[1].logit_map.shape[2:] == (33, 65)


def test_finer_map_phase0_cells_equal_the_coarse_map(strided):
    coarse, fine = strided[3][None], strided[3][1]
    assert np.abs(fine.logit_map[..., ::4, ::4] - coarse.logit_map).max() <= 1e-5
    # and the cells between differ: the finer map is new information, not a copy
    assert np.abs(fine.logit_map[..., 2::4, 2::4][..., :8, :16] - coarse.logit_map[..., :8, :16]).max() > 1.0


def test_every_strided_cell_equals_the_original_on_its_crop(strided):
    for scan in strided[3].values():
        assert scan.crop_max_diff <= 1e-4, scan.crop_max_diff


def test_strided_detection_boxes_come_from_cell_box(strided):
    import stride_demo as sd

    import onnx_fc2conv

    for scan in strided[3].values():
        cells = dd.detect(scan.logit_map, nms_radius=max(1, 8 // scan.stride))
        assert [d[1:5] for d in scan.detections] == [onnx_fc2conv.cell_box(scan.geometry, r, c) for _, r, c, _ in cells]
        assert all((y1 - y0, x1 - x0) == (sd.WIN, sd.WIN) and y0 % scan.stride == x0 % scan.stride == 0
                   for _, y0, x0, y1, x1, _ in scan.detections)


def test_finer_map_finds_more_digits_and_places_them_closer(strided):
    import stride_demo as sd

    truth, coarse, fine = strided[2], strided[3][None], strided[3][1]
    assert len(fine.correct) >= len(truth) - 1 and len(fine.false_pos) <= 1, (fine.correct, fine.false_pos)
    assert len(coarse.correct) < len(fine.correct), (coarse.correct, fine.correct)
    assert np.mean(sd.position_errors(fine.correct)) < np.mean(sd.position_errors(coarse.correct))
