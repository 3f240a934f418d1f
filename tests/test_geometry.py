"""Window geometry: which input box each cell of a converted map sees (onnx_fc2conv/geometry.py).

The numbers are worked by hand from the receptive-field arithmetic (size' = size + (k-1)*d*j,
offset' = offset - p*j, stride' = j*s), then proved against the models: the original model run on
the crop the geometry places equals the cell (no padding), and a padded backbone's cells that see
no padding are the same on a shifted image.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import ROOT
from graphs import init, model, vi, weights
from onnx import helper

import onnx_fc2conv
from onnx_fc2conv import AxisGeometry, Geometry, cell_box, cells_containing, cells_within, crop_box, tensor_geometry
from onnx_fc2conv.errors import InvalidModelError
from onnx_fc2conv.geometry import Sampling, map_samplings
from onnx_fc2conv.metadata import METADATA_KEY, ConversionRecord, HeadRecord, read_record, record_mismatch

MODELS = ROOT / "models"


def _axes(geometry: Geometry) -> list[tuple]:
    return [(a.size, a.stride, a.offset, a.margin, a.crop) for a in geometry.axes]


# ---- the example models, by hand -----------------------------------------------------------------

@pytest.mark.parametrize("name, options, output, expected", [
    # conv 5 -> r5 j1; pool 2/2 -> r6 j2; conv 5 -> r14; pool 2/2 -> r16 j4; head 5x5 -> r32 (= the input)
    ("lenet5", {}, "logits", (32, 4, 0, 0, 32)),
    # 3 x (conv 3 pad 1, pool 2/2): r 3,4 / 8,10 / 18,22 at j 1,2,4,8; offset -1-2-4; head 4x4 -> 22+3*8
    ("vgg_small", {}, "probs", (46, 8, -7, 7, 32)),
    # conv 3 pad 1 -> r3 offset -1; pool 4/4 -> r6 j4; head 4x4 -> 6+3*4
    ("torch_view_head", {}, "out", (18, 4, -1, 1, 16)),
    # conv 3 pad 1 -> r3 offset -1; head 6x6 at stride 1 -> 3+5
    ("matmul_add_head", {}, "scores", (8, 1, -1, 1, 6)),
    # 2 x conv 3 pad 1 -> r5 offset -2; pool 2/2 -> r6 j2; --dense-pool: AveragePool 16x16 stride 1 -> 6+15*2
    ("gap_head", {"dense_pool": True}, "logits", (36, 2, -2, 2, 32)),
])
def test_example_model_geometry_is_the_hand_computed_one(name, options, output, expected):
    report = onnx_fc2conv.convert(MODELS / f"{name}.onnx", verify=False, **options).report
    geometry = report.geometry[output]
    assert geometry.input == "input" and geometry.input_axes == (2, 3)
    assert _axes(geometry) == [expected, expected]


@pytest.mark.parametrize("name, options", [("lenet5", {}), ("vgg_small", {}), ("torch_view_head", {}),
                                           ("matmul_add_head", {}), ("gap_head", {"dense_pool": True})])
def test_the_geometry_agrees_with_the_window_the_sliding_window_proof_uses(name, options):
    """The verifier slides each head's window ``[C, *S]`` (from the conversion record) over the
    original's feature map; walking the original graph to that map and widening it by the window
    gives the same geometry as the walk of the converted graph, through the head's Conv."""
    original = onnx.load(MODELS / f"{name}.onnx")
    result = onnx_fc2conv.convert(original, verify=False, **options)
    (head,) = read_record(result.model).heads
    feature_map = tensor_geometry(original, head.feature_map)
    widened = [(a.size + (w - 1) * a.stride, a.stride, a.offset, a.margin, a.crop)
               for a, w in zip(feature_map.axes, head.window[1:])]
    assert _axes(head.geometry[head.outputs[0]]) == widened


def test_a_global_pool_head_has_unknown_geometry_naming_the_pool():
    geometry = onnx_fc2conv.convert(MODELS / "gap_head.onnx", verify=False).report.geometry["logits"]
    assert not geometry.known and geometry.axes == ()
    assert geometry.unknown.startswith("GlobalAveragePool 'gap/GlobalAveragePool' pools over the whole map")


def test_the_report_prints_the_geometry_of_each_output_map():
    text = onnx_fc2conv.convert(MODELS / "vgg_small.onnx", verify=False).report.render_text()
    assert "  windows of probs: 46x46 px of input 'input', stride 8x8, offset -7,-7, margin 7x7 (the backbone pads)" \
        in text.splitlines()


def test_keep_output_shape_gives_no_geometry():
    result = onnx_fc2conv.convert(MODELS / "lenet5.onnx", verify=False, keep_output_shape=True)
    assert result.report.geometry == {} and onnx_fc2conv.read_geometry(result.model) == {}


# ---- the walk on small graphs ----------------------------------------------------------------

def _backbone(*layers, size=(12, 12), channels=2, opset=13, input_dims=None):
    """x [N,channels,*size] -> layers -> y. A layer is (op, attrs) or (op, attrs, kernel) for a Conv
    whose weight has that kernel; "branch" layers are lists of layers added to the trunk's input."""
    rng = np.random.default_rng(0)
    nodes, inits, count = [], [], [0]

    def chain(x, items):
        for item in items:
            count[0] += 1
            name = f"n{count[0]}"
            if isinstance(item, list):  # a residual branch: Add(x, branch(x))
                branch = chain(x, item)
                nodes.append(helper.make_node("Add", [x, branch], [name], name=name))
            else:
                op, attrs, *kernel = item
                inputs = [x]
                if kernel:
                    inits.append(init(f"{name}.w", weights(rng, channels, channels, *kernel[0])))
                    inputs.append(f"{name}.w")
                nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
            x = name
        return x

    chain("x", layers)
    nodes[-1].output[0] = "y"
    return model(nodes, [vi("x", input_dims or ["N", channels, *size])], [vi("y", None, 0)], inits, opset=opset)


@pytest.mark.parametrize("layers, expected", [
    ([("Conv", {"dilations": [2, 2]}, (3, 3))], (5, 1, 0, 0)),                     # r = 1 + 2*2
    ([("Conv", {"pads": [2, 1, 0, 3]}, (3, 3))], [(3, 1, -2, 2), (3, 1, -1, 3)]),   # margin: the larger side
    ([("Conv", {"auto_pad": "SAME_UPPER"}, (4, 4))], (4, 1, -1, 2)),               # total 3: 1 before, 2 after
    ([("Conv", {"auto_pad": "SAME_LOWER"}, (4, 4))], (4, 1, -2, 2)),
    ([("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2]}), ("Conv", {}, (3, 3))], (7, 2, 0, 0)),
    ([("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1})], (2, 2, 0, 1)),  # may hang over
    ([("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]}), ("Relu", {})],
     (3, 2, -1, 1)),
    # a residual block: the union of the 3x3 pad-1 branch's window [-1, 2) and the shortcut's [0, 1)
    ([("Conv", {"strides": [2, 2]}, (3, 3)), [("Conv", {"pads": [1, 1, 1, 1]}, (3, 3))]], (7, 2, -2, 2)),
])
def test_the_walk_follows_convs_pools_and_branches(layers, expected):
    geometry = tensor_geometry(_backbone(*layers), "y")
    want = expected if isinstance(expected, list) else [expected, expected]
    assert [(a.size, a.stride, a.offset, a.margin) for a in geometry.axes] == want
    assert [a.crop for a in geometry.axes] == [12, 12]


def test_the_walk_follows_a_constant_pad_op():
    pads = init("pads", np.array([0, 0, 2, 1, 0, 0, 0, 3], np.int64))
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"),
             helper.make_node("MaxPool", ["p"], ["y"], name="pool", kernel_shape=[3, 3])]
    m = model(nodes, [vi("x", ["N", 2, 8, 8])], [vi("y", None, 0)], [pads])
    assert [(a.size, a.offset, a.margin) for a in tensor_geometry(m, "y").axes] == [(3, -2, 2), (3, -1, 3)]


def test_an_nhwc_input_maps_its_axes_1_and_2():
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("MaxPool", ["t"], ["y"], name="pool", kernel_shape=[2, 3], strides=[2, 3])]
    m = model(nodes, [vi("x", ["N", 10, 12, 2])], [vi("y", None, 0)])
    geometry = tensor_geometry(m, "y", spatial_inputs={"x": [1, 2]})
    assert geometry.input_axes == (1, 2) and _axes(geometry) == [(2, 2, 0, 0, 10), (3, 3, 0, 0, 12)]


@pytest.mark.parametrize("layer, reason", [
    (("Conv", {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, (3, 3)),
     "Conv 'n1' pads SAME_UPPER with strides [2, 2]: its padding depends on the input size"),
    (("GlobalAveragePool", {}), "GlobalAveragePool 'n1' pools over the whole map, so each cell sees the whole input"),
    (("InstanceNormalization", {}), None),
])
def test_a_same_padded_stride_and_a_global_pool_make_the_geometry_unknown_with_the_op_named(layer, reason):
    if layer[0] == "InstanceNormalization":
        scale = init("s", np.ones(2, np.float32))
        m = model([helper.make_node("InstanceNormalization", ["x", "s", "s"], ["y"], name="norm")],
                  [vi("x", ["N", 2, 4, 4])], [vi("y", None, 0)], [scale])
        reason = "InstanceNormalization 'norm' pools over the whole map, so each cell sees the whole input"
    else:
        m = _backbone(layer)
    geometry = tensor_geometry(m, "y")
    assert not geometry.known and geometry.unknown == reason and geometry.line() == f"unknown: {reason}"


def test_a_resize_a_reshape_and_mismatched_strides_make_the_geometry_unknown():
    scales = init("scales", np.array([1, 1, 2, 2], np.float32))
    resize = model([helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", mode="nearest")],
                   [vi("x", ["N", 2, 4, 4])], [vi("y", None, 0)], [scales])
    assert tensor_geometry(resize, "y").unknown == "Resize 'up': the walk cannot follow this op"

    shape = init("shape", np.array([0, 2, 8, 2], np.int64))
    reshape = model([helper.make_node("Reshape", ["x", "shape"], ["y"], name="view")],
                    [vi("x", ["N", 2, 4, 4])], [vi("y", None, 0)], [shape])
    assert tensor_geometry(reshape, "y").unknown == "Reshape 'view': the walk cannot follow this op"

    # two branches that meet at a channel Concat: one steps by 2 input pixels, the other by 3
    strided = model([helper.make_node("MaxPool", ["x"], ["a"], name="a", kernel_shape=[2, 2], strides=[2, 2]),
                     helper.make_node("Conv", ["x", "w"], ["d"], name="d", kernel_shape=[2, 2], strides=[3, 3],
                                      pads=[1, 1, 1, 1]),
                     helper.make_node("Concat", ["a", "d"], ["y"], name="join", axis=1)],
                    [vi("x", ["N", 2, 6, 6])], [vi("y", None, 0)], [init("w", np.ones((2, 2, 2, 2), np.float32))])
    assert tensor_geometry(strided, "y").unknown == (
        "Concat 'join' combines maps whose axis 2 steps differently (input 'x' axis 2 at stride 2 and input 'x' "
        "axis 2 at stride 3)")

    spatial_concat = model([helper.make_node("Concat", ["x", "x"], ["y"], name="tile", axis=3)],
                           [vi("x", ["N", 2, 4, 4])], [vi("y", None, 0)])
    assert tensor_geometry(spatial_concat, "y").unknown == "Concat 'tile' joins maps along a spatial axis (axis 3)"


@pytest.mark.parametrize("opset, nhwc, axis, known", [
    (13, False, 1, True), (13, False, 3, False),
    (11, False, 1, False),  # before opset 13 Softmax runs over every axis from `axis` on: C, H and W
    (11, True, 3, True),  # ... so the converter runs it on NHWC, over the last axis, and transposes back
])
def test_softmax_keeps_the_geometry_where_it_runs_over_no_image_axis(opset, nhwc, axis, known):
    nodes = [helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=axis)]
    if nhwc:
        nodes = [helper.make_node("Transpose", ["x"], ["t"], name="nhwc", perm=[0, 2, 3, 1]),
                 helper.make_node("Softmax", ["t"], ["s"], name="sm", axis=axis),
                 helper.make_node("Transpose", ["s"], ["y"], name="nchw", perm=[0, 3, 1, 2])]
    geometry = tensor_geometry(model(nodes, [vi("x", ["N", 2, 4, 4])], [vi("y", None, 0)], opset=opset), "y")
    assert geometry.unknown == (None if known else "Softmax 'sm' runs over an image axis")
    assert _axes(geometry) == ([(1, 1, 0, 0, 4)] * 2 if known else [])


def test_a_shape_read_from_the_map_carries_no_pixels():
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("ConstantOfShape", ["s"], ["zeros"], name="zeros"),
             helper.make_node("Add", ["x", "zeros"], ["y"], name="add")]
    m = model(nodes, [vi("x", ["N", 2, 4, 4])], [vi("y", None, 0)])
    assert _axes(tensor_geometry(m, "y")) == [(1, 1, 0, 0, 4)] * 2


# ---- cells and boxes -------------------------------------------------------------------------

LENET = Geometry("input", (2, 3), (AxisGeometry(32, 4, 0, 0, 32), AxisGeometry(32, 4, 0, 0, 32)))
VGG = Geometry("input", (2, 3), (AxisGeometry(46, 8, -7, 7, 32), AxisGeometry(46, 8, -7, 7, 32)))


def test_cell_box_and_crop_box_place_a_cell_in_input_pixels():
    assert cell_box(LENET, 2, 3) == (8, 12, 40, 44)
    assert crop_box(LENET, 2, 3) == (8, 12, 40, 44)
    assert cell_box(VGG, 0, 1) == (-7, 1, 39, 47)
    assert crop_box(VGG, 0, 1) == (0, 8, 32, 40)


def test_cells_containing_a_pixel_and_cells_within_the_image():
    assert cells_containing(LENET, (40, 50, 41, 51)) == (range(3, 11), range(5, 13))
    assert cells_containing(LENET, (40, 50, 41, 51), map_shape=(9, 17)) == (range(3, 9), range(5, 13))
    assert cells_containing(LENET, (0, 0, 40, 40)) == (range(0, 0), range(0, 0))  # no 32x32 window holds 40 rows
    # a 64x96 image: the padded VGG's cells that see no padding: -7 + 8i >= 0 and -7 + 8i + 46 <= 64 (or 96)
    assert cells_within(VGG, (0, 0, 64, 96)) == (range(1, 4), range(1, 8))
    assert cells_within(LENET, (0, 0, 64, 96)) == (range(0, 9), range(0, 17))


def test_a_cell_window_contains_only_that_cell_window():
    for i in range(6):
        for j in range(6):
            assert cells_containing(VGG, cell_box(VGG, i, j)) == (range(i, i + 1), range(j, j + 1))


def test_cell_functions_refuse_an_unknown_geometry_and_the_wrong_number_of_axes():
    with pytest.raises(ValueError, match="unknown: Resize"):
        cell_box(Geometry(unknown="Resize 'up'"), 0, 0)
    with pytest.raises(ValueError, match="2 spatial axes, not 1"):
        cell_box(LENET, 0)
    with pytest.raises(ValueError, match="is empty"):
        cells_containing(LENET, (5, 5, 5, 6))


# ---- JSON and metadata -----------------------------------------------------------------------

def test_the_json_report_and_the_metadata_carry_the_geometry():
    result = onnx_fc2conv.convert(MODELS / "vgg_small.onnx", verify=False)
    data = json.loads(result.report.to_json())
    assert data["geometry"] == {"probs": {"input": "input", "input_axes": [2, 3], "unknown": None, "axes": [
        {"size": 46, "stride": 8, "offset": -7, "margin": 7, "crop": 32}] * 2}}
    assert onnx_fc2conv.read_geometry(result.model) == {"probs": VGG}
    saved = onnx.load_from_string(result.model.SerializeToString())
    assert onnx_fc2conv.read_geometry(saved) == result.report.geometry


def test_a_record_round_trips_its_geometry_and_an_older_record_reads_as_having_none():
    unknown = Geometry(unknown="Resize 'up': the walk cannot follow this op")
    record = ConversionRecord("fully_convolutional", [HeadRecord("f", (16, 5, 5), "c5", ["a", "b"],
                                                                 {"a": LENET, "b": unknown})], {"input": [2, 3]})
    assert ConversionRecord.from_json(record.to_json()) == record
    older = json.loads(record.to_json())
    del older["heads"][0]["geometry"]
    assert ConversionRecord.from_json(json.dumps(older)).heads[0].geometry == {}


@pytest.mark.parametrize("edit, message", [
    (lambda g: g["axes"][0].update(stride=0), "0 is not an integer >= 1"),
    (lambda g: g["axes"][0].update(size="32"), "'32' is not an integer"),
    (lambda g: g.update(unknown="Resize"), "either axes or the reason"),
    (lambda g: g.update(axes=[]), "either axes or the reason"),
])
def test_a_record_with_a_broken_geometry_is_refused_in_one_line(edit, message):
    record = ConversionRecord("fully_convolutional", [HeadRecord("f", (16, 5, 5), "c5", ["a"], {"a": LENET})])
    data = json.loads(record.to_json())
    edit(data["heads"][0]["geometry"]["a"])
    with pytest.raises(InvalidModelError, match=message):
        ConversionRecord.from_json(json.dumps(data))


def test_a_record_giving_the_geometry_of_another_output_does_not_fit():
    result = onnx_fc2conv.convert(MODELS / "lenet5.onnx", verify=False)
    original = onnx.load(MODELS / "lenet5.onnx")
    record = read_record(result.model)
    record.heads[0].geometry["other"] = LENET
    assert record_mismatch(record, original, result.model) == (
        "its head 'c5/Gemm' gives the geometry of 'other', which is no output of the converted model")


# ---- proved against the models ---------------------------------------------------------------

def _session(m: onnx.ModelProto):
    import onnxruntime as ort

    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.e2e
def test_every_lenet5_cell_equals_the_original_on_the_crop_the_geometry_places():
    original = onnx.load(MODELS / "lenet5.onnx")
    result = onnx_fc2conv.convert(original, verify=False)
    geometry = result.report.geometry["logits"]
    image = np.random.default_rng(1).standard_normal((1, 1, 64, 80)).astype(np.float32)
    (cells,) = _session(result.model).run(None, {"input": image})
    rows, cols = cells_within(geometry, (0, 0, 64, 80), map_shape=cells.shape[2:])
    assert (len(rows), len(cols)) == cells.shape[2:] == (9, 13)
    boxes = [crop_box(geometry, i, j) for i in rows for j in cols]
    crops = np.concatenate([image[:, :, y0:y1, x0:x1] for y0, x0, y1, x1 in boxes])
    (want,) = _session(original).run(None, {"input": crops})
    got = cells[0].transpose(1, 2, 0).reshape(-1, 10)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # one stride off, and the crops no longer match: the geometry's numbers are what makes it pass
    shifted = np.concatenate([image[:, :, y0 + 1:y1 + 1, x0:x1] for y0, x0, y1, x1 in boxes[:9]])
    (off,) = _session(original).run(None, {"input": shifted})
    assert np.abs(off - got[:9]).max() > 1e-2


@pytest.mark.e2e
def test_padded_vgg_cells_that_see_no_padding_are_the_same_on_a_crop_of_the_image():
    """A padded backbone's cell differs from the original on its crop, but a cell whose window lies
    inside the image (its crop at least ``margin`` inside) sees no padding: the converted model run
    on a crop of the image gives it again, and the cells beyond that margin do not."""
    result = onnx_fc2conv.convert(MODELS / "vgg_small.onnx", verify=False)
    geometry = result.report.geometry["probs"]
    session = _session(result.model)
    image = np.random.default_rng(2).standard_normal((1, 3, 72, 88)).astype(np.float32)
    (full,) = session.run(None, {"input": image})
    top, left = 2 * geometry.axes[0].stride, geometry.axes[1].stride  # a crop that starts 2 and 1 cells in
    crop = image[:, :, top:, left:]
    (part,) = session.run(None, {"input": crop})
    rows, cols = cells_within(geometry, (0, 0, *crop.shape[2:]), map_shape=part.shape[2:])
    assert (rows, cols) == (range(1, 3), range(1, 6))  # of 4x7 cells; offset -7: cell 0 reaches into the padding
    assert part.shape[2:] == (4, 7)
    inside = part[:, :, rows.start:rows.stop, cols.start:cols.stop]
    np.testing.assert_allclose(inside, full[:, :, rows.start + 2:rows.stop + 2, cols.start + 1:cols.stop + 1],
                               rtol=1e-4, atol=1e-6)
    border = np.abs(part[:, :, 0, :] - full[:, :, 2, 1:1 + part.shape[3]]).max()
    assert border > 1e-4  # row 0 of the crop's map sees the crop's padding where the image has pixels


@pytest.mark.e2e
def test_the_proof_runs_input_crops_where_the_backbone_does_not_pad_and_fails_on_a_wrong_geometry():
    result = onnx_fc2conv.convert(MODELS / "lenet5.onnx")
    crops = [c for c in result.report.verification.checks if c.check.startswith("input crops")]
    assert [c.check for c in crops] == ["input crops 64x64", "input crops 48x65"]
    assert all(c.passed and c.compared >= 9 for c in crops)
    padded = onnx_fc2conv.convert(MODELS / "vgg_small.onnx").report.verification
    assert not [c for c in padded.checks if c.check.startswith("input crops")]

    record = read_record(result.model)
    record.heads[0].geometry["logits"] = Geometry("input", (2, 3), (AxisGeometry(32, 4, 0, 0, 32),
                                                                    AxisGeometry(32, 3, 0, 0, 32)))
    tampered = onnx.ModelProto()
    tampered.CopyFrom(result.model)
    for prop in tampered.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = record.to_json()
    check = onnx_fc2conv.verify(MODELS / "lenet5.onnx", tampered)
    failed = [c for c in check.checks if not c.passed]
    assert not check and {c.check for c in failed} == {"input crops 64x64", "input crops 48x65"}


@pytest.mark.e2e
def test_a_pool_that_drops_the_last_row_gives_a_window_smaller_than_the_crop_and_more_cells_than_crops():
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("MaxPool", ["x"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
             helper.make_node("Gemm", ["flat", "w", "b"], ["y"], name="fc", transB=1)]
    original = model(nodes, [vi("x", ["N", 2, 9, 9])], [vi("y", None, 0)],
                     [init("w", weights(rng, 3, 32)), init("b", weights(rng, 3))])
    result = onnx_fc2conv.convert(original)
    geometry = result.report.geometry["y"]
    assert _axes(geometry) == [(8, 2, 0, 0, 9)] * 2  # pool 2/2 on 9 rows reads 8; head 4x4: 2 + 3*2
    assert "smaller than the 9x9 crop" in geometry.line()
    crops = [c for c in result.report.verification.checks if c.check.startswith("input crops")]
    assert len(crops) == 2 and all(c.passed for c in crops)
    (cells,) = _session(result.model).run(None, {"x": np.zeros((1, 2, 18, 18), np.float32)})
    assert cells.shape[2:] == (6, 6)  # 6 windows of 8 rows at stride 2 fit in 18, but only 5 crops of 9
    assert cells_within(geometry, (0, 0, 18, 18)) == (range(0, 6), range(0, 6))


@pytest.mark.e2e
def test_an_nhwc_model_gets_the_geometry_of_its_axes_1_and_2_and_the_proof_checks_its_crops():
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["c"], name="conv", kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Transpose", ["r"], ["n"], name="to_nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("Flatten", ["n"], ["f"], name="flatten", axis=1),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    original = model(nodes, [vi("x", ["N", 9, 11, 2])], [vi("y", None, 0)],
                     [init("w", weights(rng, 4, 2, 3, 3)), init("fw", weights(rng, 5, 4 * 4 * 5)), init("fb", weights(rng, 5))])
    result = onnx_fc2conv.convert(original)
    assert [n.rule for n in result.report.converted] == ["nhwc_flatten"]
    geometry = result.report.geometry["y"]  # conv 3/2 on 9x11 gives 4x5; the head 4x5 covers 3+3*2 by 3+4*2
    assert geometry.input_axes == (1, 2) and _axes(geometry) == [(9, 2, 0, 0, 9), (11, 2, 0, 0, 11)]
    crops = [c for c in result.report.verification.checks if c.check.startswith("input crops")]
    assert len(crops) == 2 and all(c.passed and c.compared >= 9 for c in crops)


def test_measuring_again_after_a_later_rewrite_keeps_the_crops_and_sees_the_new_kernels():
    """A pass that rewrites the converted graph (a dilated head, say) measures again; the crops,
    which the rewritten graph's symbolic input no longer says, come from the record."""
    result = onnx_fc2conv.convert(MODELS / "lenet5.onnx", verify=False)
    record = read_record(result.model)
    assert record.measure_geometry(result.model) == {"logits": LENET}
    head = next(n for n in result.model.graph.node if n.name == record.heads[0].node)
    head.attribute.append(helper.make_attribute("dilations", [2, 2]))  # the 5x5 head now spans 9 cells
    geometry = record.measure_geometry(result.model)["logits"]
    assert _axes(geometry) == [(48, 4, 0, 0, 32)] * 2 and record.heads[0].geometry["logits"] == geometry


@pytest.mark.e2e
def test_a_pixel_changes_exactly_the_cells_whose_windows_contain_it_through_padding_and_a_residual_branch():
    """The receptive field measured: a strided padded conv, a residual block whose branch reaches 2
    pixels further than its shortcut (the window is their union), an average pool and the head. With
    Tanh and average pooling every weight path is live, so changing one pixel changes exactly the
    cells whose windows contain it, near the borders too."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="stem", kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Tanh", ["c1"], ["t1"], name="tanh"),
             helper.make_node("Conv", ["t1", "w2"], ["c2"], name="branch", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["t1", "c2"], ["r"], name="residual"),
             helper.make_node("AveragePool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
             helper.make_node("Gemm", ["f", "fw"], ["y"], name="fc", transB=1)]
    original = model(nodes, [vi("x", ["N", 1, 12, 12])], [vi("y", None, 0)],
                     [init("w1", weights(rng, 3, 1, 3, 3)), init("w2", weights(rng, 3, 3, 3, 3)),
                      init("fw", weights(rng, 4, 3 * 3 * 3))])
    result = onnx_fc2conv.convert(original)
    geometry = result.report.geometry["y"]
    # stem: 3 at stride 2, offset -1; branch: 3 + 2*2 = 7 at offset -3, the union with the shortcut's
    # [-1, 2) is [-3, 4); pool 2/2: 7 + 2 = 9 at stride 4; head 3x3: 9 + 2*4 = 17
    assert _axes(geometry) == [(17, 4, -3, 3, 12)] * 2
    session = _session(result.model)
    image = rng.standard_normal((1, 1, 28, 30)).astype(np.float32)
    (base,) = session.run(None, {"x": image})
    for pixel in [(0, 0), (5, 7), (13, 14), (27, 29), (20, 3)]:
        poked = image.copy()
        poked[(0, 0, *pixel)] += 3.0
        (moved,) = session.run(None, {"x": poked})
        changed = np.abs(moved - base).max(axis=(0, 1)) > 1e-6
        rows, cols = cells_containing(geometry, (*pixel, pixel[0] + 1, pixel[1] + 1), map_shape=base.shape[2:])
        predicted = np.zeros_like(changed)
        predicted[rows.start:rows.stop, cols.start:cols.stop] = True
        assert (changed == predicted).all(), (pixel, np.argwhere(changed).tolist(), rows, cols)


def test_an_output_stride_steps_the_same_windows_by_the_finer_stride_and_the_coarse_model_by_the_backbones():
    from onnx_fc2conv.stride import coarse_model

    result = onnx_fc2conv.convert(MODELS / "vgg_small.onnx", verify=False, output_stride=2)
    finer = (46, 2, -7, 7, 32)  # the receptive field and its padding stay; the cells step by 2, not 8
    assert _axes(result.report.geometry["probs"]) == [finer] * 2
    assert _axes(onnx_fc2conv.read_geometry(result.model)["probs"]) == [finer] * 2
    assert _axes(onnx_fc2conv.read_geometry(coarse_model(result.model))["probs"]) == [(46, 8, -7, 7, 32)] * 2


# ---- every map's sampling (what --output-stride plans from) ----------------------------------------

def test_map_samplings_gives_each_map_its_stride_and_the_padding_before_and_after_it():
    m = _backbone(("Conv", {"pads": [2, 1, 0, 3]}, (3, 3)), ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
                  ("Conv", {"pads": [1, 1, 1, 1], "strides": [2, 2]}, (3, 3)))
    walk = map_samplings(m, {"x": [2, 3]})
    assert walk.sampling["x"] == Sampling((1, 1), (0, 0), (0, 0))
    assert walk.sampling["n1"] == Sampling((1, 1), (2, 1), (0, 3))
    assert walk.sampling["n2"] == Sampling((2, 2), (2, 1), (0, 3))
    assert walk.sampling["y"] == Sampling((4, 4), (4, 3), (2, 5))  # pad 1 at stride 2 on each side
    geometry = tensor_geometry(m, "y")  # the same walk: the padding before is minus the offset
    assert [-a.offset for a in geometry.axes] == [4, 3]
    assert [a.margin for a in geometry.axes] == [max(b, e) for b, e in zip((4, 3), (2, 5))]
    assert walk.unknown == {}


def test_map_samplings_stops_at_an_op_the_caller_cannot_follow_and_names_that_node_downstream():
    m = _backbone(("Conv", {}, (3, 3)), ("Tanh", {}), ("Relu", {}))
    walk = map_samplings(m, {"x": [2, 3]}, follows=lambda node: node.op_type != "Tanh")
    assert walk.sampling["n1"] == Sampling((1, 1), (0, 0), (0, 0))
    assert {name: node.name for name, node in walk.unknown.items()} == {"n2": "n2", "y": "n2"}
    assert "y" in map_samplings(m, {"x": [2, 3]}).sampling  # the walk itself follows Tanh


def test_a_conv_whose_kernel_is_computed_from_the_image_has_unknown_geometry():
    nodes = [helper.make_node("Conv", ["x", "x"], ["y"], name="conv")]  # a 4x4 kernel: the image itself
    m = model(nodes, [vi("x", [2, 2, 4, 4])], [vi("y", None, 0)])
    assert tensor_geometry(m, "y").unknown == "Conv 'conv': its kernel or bias is computed from the image"
    assert map_samplings(m, {"x": [2, 3]}).unknown["y"].name == "conv"


def test_measure_geometry_walks_the_graph_once_for_every_output_and_agrees_with_tensor_geometry(monkeypatch):
    from onnx_fc2conv import geometry as walk_module

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["f"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["f"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["flat"], name="flatten", axis=1),
             helper.make_node("Gemm", ["flat", "a.w"], ["a"], name="head_a", transB=1),
             helper.make_node("Gemm", ["flat", "b.w"], ["b"], name="head_b", transB=1)]
    inits = [init("w", weights(rng, 2, 2, 3, 3)), init("a.w", weights(rng, 3, 32)), init("b.w", weights(rng, 4, 32))]
    converted = onnx_fc2conv.convert(model(nodes, [vi("x", ["N", 2, 8, 8])], [vi("a", ["N", 3]), vi("b", ["N", 4])],
                                           inits), verify=False).model
    record = read_record(converted)
    walks = []
    real_walk = walk_module._walk
    monkeypatch.setattr(walk_module, "_walk", lambda *args, **kwargs: walks.append(1) or real_walk(*args, **kwargs))
    found = record.measure_geometry(converted)
    assert len(walks) == 1 and sorted(found) == ["a", "b"]
    monkeypatch.undo()
    for output in ("a", "b"):
        assert found[output] == tensor_geometry(converted, output, record.spatial_inputs, {"x": [None, 2, 8, 8]})
        assert _axes(found[output]) == [(10, 2, -1, 1, 8)] * 2  # conv 3 pad 1: r3; pool 2/2: r4 j2; head 4x4: 4+3*2
