"""--output-stride: the a trous rewrite of a converted backbone, its refusals, and its proof.

The plan-tier tests check the rewritten attributes and the reason codes of the refusals; the e2e
tests prove every example model with a backbone at several output strides, and show that breaking
one dilation or one stride of a rewritten model fails the proof."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import MODELS, SHARED_MODELS
from graphs import init, model, vi, weights
from onnx import helper

from onnx_fc2conv import Options, OutputStrideError, UsageError, convert, verify
from onnx_fc2conv.graph import attr
from onnx_fc2conv.metadata import read_record
from onnx_fc2conv.stride import STRIDE_REASONS


def _backbone(layers, *, size=16, channels=4, opset=13, also_output=None) -> onnx.ModelProto:
    """x [N,2,size,size] -> each (op, attrs) of ``layers`` -> Flatten -> Gemm 5 -> y: a backbone to refine."""
    rng = np.random.default_rng(0)
    nodes, inits, last, c_in = [], [], "x", 2
    for i, (op, attrs) in enumerate(layers):
        inputs = [last]
        if op == "Conv":
            k = attrs["kernel_shape"]
            inits += [init(f"w{i}", weights(rng, channels, c_in, *k)), init(f"b{i}", weights(rng, channels))]
            inputs += [f"w{i}", f"b{i}"]
            c_in = channels
        elif op == "Resize":
            inits.append(init(f"scales{i}", np.array([1, 1, 2, 2], np.float32)))
            inputs += ["", f"scales{i}"]
        nodes.append(helper.make_node(op, inputs, [f"t{i}"], name=f"layer{i}", **attrs))
        last = f"t{i}"
    probe = model(nodes, [vi("x", ["N", 2, size, size])], [vi(last, None)], inits, opset=opset)
    dims = [d.dim_value for d in probe.graph.output[0].type.tensor_type.shape.dim]
    k = int(np.prod(dims[1:]))
    nodes += [helper.make_node("Flatten", [last], ["flat"], name="flatten", axis=1),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    inits += [init("fc.w", weights(rng, 5, k)), init("fc.b", weights(rng, 5))]
    outputs = [vi("y", ["N", 5])] + ([vi(also_output, None)] if also_output else [])
    return model(nodes, [vi("x", ["N", 2, size, size])], outputs, inits, opset=opset)


def conv(k=3, stride=1, pad=0, **attrs):
    return ("Conv", dict(kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, **attrs))


def pool(op="MaxPool", k=2, stride=2, pad=0, **attrs):
    return (op, dict(kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, **attrs))


def _nodes(m):
    return {n.name: n for n in m.graph.node}


# ---- the rewrite --------------------------------------------------------------------------------

def test_vgg_small_at_stride_2_runs_its_last_two_pools_at_stride_1_and_dilates_what_follows(build_models):
    result = convert(build_models.vgg_small(13), verify=False, output_stride=2)
    nodes = _nodes(result.model)
    assert attr(nodes["features.pool1/MaxPool"], "strides") == [2, 2]
    assert attr(nodes["features.pool2/MaxPool"], "strides") == [1, 1]
    assert attr(nodes["features.pool3/MaxPool"], "strides") == [1, 1]
    assert attr(nodes["features.conv3/Conv"], "dilations") == [2, 2]
    assert attr(nodes["features.conv3/Conv"], "pads") == [2, 2, 2, 2]
    assert attr(nodes["features.pool3/MaxPool"], "dilations") == [2, 2]
    head = nodes["classifier.fc1/Gemm"]
    assert head.op_type == "Conv" and attr(head, "dilations") == [4, 4]
    stride = read_record(result.model).output_stride
    assert (stride.stride, stride.backbone_stride) == ([2, 2], [8, 8])
    assert (stride.margin_begin, stride.margin_end) == ([7, 7], [7, 7])  # pad 1 at strides 1, 2 and 4
    report = result.report.output_stride
    assert (report.before, report.after, report.margin) == ([8, 8], [2, 2], [7, 7])
    assert "output stride 8x8 -> 2x2: 2 strided layers finer" in result.report.render_text()


def test_every_branch_of_a_residual_block_loses_its_stride_alike(build_models):
    nodes = _nodes(convert(build_models.residual_pad(13), verify=False, output_stride=2).model)
    assert attr(nodes["block.conv1/Conv"], "strides") == [1, 1]
    assert attr(nodes["block.shortcut/Conv"], "strides") == [1, 1]  # the 1x1/2 shortcut too
    assert attr(nodes["block.conv2/Conv"], "dilations") == [2, 2]
    assert attr(nodes["block.shortcut/Conv"], "dilations") == [1, 1]  # a 1x1 kernel has nothing to dilate
    assert attr(nodes["stem.pool/MaxPool"], "strides") == [2, 2]


def test_a_stride_per_axis_changes_each_axis_on_its_own(build_models):
    nodes = _nodes(convert(build_models.vgg_small(13), verify=False, output_stride="8x2").model)
    assert attr(nodes["features.pool2/MaxPool"], "strides") == [2, 1]
    assert attr(nodes["features.conv3/Conv"], "dilations") == [1, 2]
    assert attr(nodes["features.conv3/Conv"], "pads") == [1, 2, 1, 2]


def test_a_dilated_average_pool_upgrades_the_opset_with_onnxs_converter(build_models):
    result = convert(build_models.resnet_tiny(13), verify=False, output_stride=8, dense_pool=True)
    assert result.report.output_stride.opset_upgraded == [13, 19]
    assert [o.version for o in result.model.opset_import if o.domain in ("", "ai.onnx")] == [19]
    pool = next(n for n in result.model.graph.node if n.op_type == "AveragePool")
    assert attr(pool, "dilations") == [2, 2]
    onnx.checker.check_model(result.model, full_check=True)


@pytest.mark.parametrize(("value", "parsed"), [(2, (2,)), ("2", (2,)), ("4x2", (4, 2)), ((4, 2), (4, 2))])
def test_output_stride_takes_n_or_one_size_per_axis(value, parsed):
    assert Options(output_stride=value).output_stride == parsed


@pytest.mark.parametrize("value", [0, -2, "0", "x", "2x", "²", True, 2.0, (2, 0)])
def test_a_malformed_output_stride_is_a_usage_error(value):
    with pytest.raises(UsageError, match="--output-stride"):
        Options(output_stride=value)


def test_output_stride_with_keep_output_shape_is_a_usage_error():
    with pytest.raises(UsageError, match="fully convolutional"):
        Options(output_stride=2, keep_output_shape=True)


# ---- refusals -----------------------------------------------------------------------------------

REFUSALS = {
    "stride_not_divisor": (lambda: _backbone([conv(), pool(), conv(), pool()]), 3),
    "stride_split": (lambda: _backbone([conv(), pool(k=3, stride=3), conv(), pool()], size=20), 2),
    "stride_op": (lambda: _backbone([conv(), pool(), ("Resize", dict(mode="nearest")), conv(), pool()]), 2),
    "stride_ceil_mode": (lambda: _backbone([conv(), pool(), conv(), pool(ceil_mode=1)], size=17), 2),
    "stride_auto_pad": (lambda: _backbone([conv(), pool(), pool(), ("Conv", dict(kernel_shape=[3, 3],
                                                                                  auto_pad="SAME_UPPER"))]), 2),
    "stride_output": (lambda: _backbone([conv(), pool(), conv(), pool(), conv(k=1)], also_output="t3"), 2),
    "stride_mode": (lambda: model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", ["N", 4])], [vi("y", ["N", 4])]),
                    2),
}


@pytest.mark.parametrize("code", sorted(REFUSALS))
def test_a_rewrite_that_cannot_be_exact_is_refused_with_its_code_and_writes_nothing(code, tmp_path):
    build, stride = REFUSALS[code]
    out = tmp_path / "out.onnx"
    with pytest.raises(OutputStrideError) as caught:
        convert(build(), out, verify=False, output_stride=stride)
    assert caught.value.code == code and f"[{code}]" in str(caught.value)
    assert not out.exists()


def test_every_refusal_code_is_tested_and_the_op_is_named():
    assert sorted(REFUSALS) == sorted(set(STRIDE_REASONS) - {"stride_opset"})
    with pytest.raises(OutputStrideError, match="Resize 'layer2'"):
        convert(REFUSALS["stride_op"][0](), verify=False, output_stride=2)
    with pytest.raises(OutputStrideError, match="GlobalAveragePool .*--dense-pool"):
        convert(_backbone([conv(), pool(), ("GlobalAveragePool", {})]), verify=False, output_stride=1)


def test_an_opset_the_converter_cannot_upgrade_is_refused(build_models, monkeypatch):
    def fails(model, target):
        raise RuntimeError("no adapter for op X")

    monkeypatch.setattr(onnx.version_converter, "convert_version", fails)
    with pytest.raises(OutputStrideError, match=r"AveragePool needs opset 19 .* no adapter for op X \[stride_opset\]"):
        convert(build_models.resnet_tiny(13), verify=False, output_stride=8, dense_pool=True)


def test_only_strides_after_the_output_stride_change(build_models):
    """A stride that is not removed keeps every attribute it had, dilations included."""
    result = convert(build_models.vgg_small(13), verify=False, output_stride=4)
    changed = read_record(result.model).output_stride.original
    assert sorted(changed) == ["classifier.fc1/Gemm", "features.pool3/MaxPool"]


# ---- the proof ----------------------------------------------------------------------------------

PROVED = [("vgg_small", 1, {}), ("vgg_small", 2, {}), ("vgg_small", 2, {"opset": 11}), ("residual_pad", 1, {}), ("residual_pad", 2, {}),
          ("residual_valid", 1, {}), ("residual_valid", 2, {}), ("resnet_tiny", 4, {"dense_pool": True}),
          ("vgg_tv", 2, {}), ("vgg_tv", 4, {})]


@pytest.mark.e2e
@pytest.mark.parametrize(("name", "stride", "options"), PROVED, ids=[f"{n}-{s}-{o.get('opset', 13)}" for n, s, o in PROVED])
def test_the_finer_map_equals_the_stride_s_map_at_phase_0_and_the_original_on_crops(build_models, name, stride,
                                                                                    options):
    options = dict(options)
    result = convert(getattr(build_models, name)(options.pop("opset", 13)), output_stride=stride, **options)
    v = result.report.verification
    assert v.passed, v.render_text(verbose=True)
    phase = [c for c in v.checks if " phase 0 " in c.check]
    crops = [c for c in v.checks if c.check.startswith("stride ") and " crops " in c.check]
    assert len(phase) == 3 and len(crops) == 2  # the original size and two larger ones; crops at the two
    assert len({c.check.rsplit(" ", 1)[1] for c in crops}) == 2
    assert all(c.compared >= 20 for c in crops)  # cells compared per size
    assert max(c.max_abs_error for c in phase + crops) < 2e-5
    assert any(c.check == "original size" for c in v.checks)  # the stride-S conversion is proved too


def _break(converted: onnx.ModelProto, node: str, name: str, value) -> onnx.ModelProto:
    broken = onnx.ModelProto()
    broken.CopyFrom(converted)
    target = next(n for n in broken.graph.node if n.name == node)
    for a in target.attribute:
        if a.name == name:
            a.CopyFrom(helper.make_attribute(name, value))
    return broken


@pytest.mark.e2e
@pytest.mark.parametrize(("node", "name", "value"), [
    ("features.conv3/Conv", "dilations", [1, 1]),   # one dilation undone
    ("features.pool3/MaxPool", "strides", [2, 2]),  # one stride put back
    ("classifier.fc1/Gemm", "dilations", [2, 2]),   # the head's full-map kernel half dilated
])
def test_breaking_one_dilation_or_one_stride_fails_the_proof(build_models, node, name, value):
    original = build_models.vgg_small(13)
    converted = convert(original, verify=False, output_stride=2).model
    assert verify(original, converted).passed
    result = verify(original, _break(converted, node, name, value))
    assert not result.passed
    failed = {c.check.split(" ")[2] for c in result.checks if not c.passed}
    assert failed == {"phase", "crops"}  # the stride-S conversion it was made from still passes
    assert all(c.passed for c in result.checks if not c.check.startswith("stride"))


@pytest.mark.e2e
def test_with_padding_the_plain_crop_differs_and_the_margin_is_what_makes_cells_equal(build_models):
    """Without the margin (the original run on the bare crop) a padded backbone's cells differ: the
    crop's own border padding reaches them. That is why the proof keeps the margin around the crop."""
    import onnxruntime as ort

    original = build_models.residual_pad(13)
    fine = convert(original, output_stride=2).model
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 3, 64, 64)).astype(np.float32)
    out = ort.InferenceSession(fine.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    session = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"])
    cell = (8, 8)  # crop at (16, 16): 32x32 inside the 64x64 image, with 16 px around it
    bare = session.run(None, {"input": x[:, :, 16:48, 16:48]})[0]
    assert np.abs(out[:, :, cell[0], cell[1]] - bare).max() > 1e-3


@pytest.mark.e2e
def test_the_cli_says_the_stride_before_and_after_and_refuses_with_a_code(tmp_path):
    out = tmp_path / "fine.onnx"
    done = subprocess.run([sys.executable, "-m", "onnx_fc2conv", str(MODELS / "vgg_small.onnx"), str(out),
                           "--output-stride", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "output stride 8x8 -> 2x2" in done.stdout and "verification passed" in done.stdout and out.is_file()
    refused = subprocess.run([sys.executable, "-m", "onnx_fc2conv", str(MODELS / "vgg_small.onnx"),
                              str(tmp_path / "no.onnx"), "--output-stride", "3"], capture_output=True, text=True)
    assert refused.returncode == 2 and "[stride_not_divisor]" in refused.stderr
    assert not (tmp_path / "no.onnx").exists()


def test_fold_batch_with_output_stride_is_a_usage_error(build_models):
    with pytest.raises(UsageError, match="--fold-batch and --output-stride"):
        convert(build_models.vgg_small(13), verify=False, output_stride=2, fold_batch=True)


def test_the_json_report_and_the_record_carry_the_stride_before_and_after(build_models):
    import json

    result = convert(build_models.residual_valid(13), verify=False, output_stride=2)
    data = json.loads(result.report.to_json())["output_stride"]
    assert (data["before"], data["after"], data["margin"]) == ([4, 4], [2, 2], [0, 0])
    assert sorted(data["finer_strides"]) == ["block.conv1/Conv (Conv stride 2x2 -> 1x1)",
                                            "block.shortcut/Conv (Conv stride 2x2 -> 1x1)"]
    record = read_record(result.model)
    assert record.output_stride.original["block.conv1/Conv"] == {"strides": [2, 2]}


@pytest.mark.e2e
def test_a_record_naming_a_node_the_model_lacks_fails_the_proof(build_models):
    from onnx_fc2conv.metadata import write_record

    original = build_models.vgg_small(13)
    converted = convert(original, verify=False, output_stride=2).model
    record = read_record(converted)
    record.output_stride.original["no such node"] = record.output_stride.original.pop("features.pool3/MaxPool")
    write_record(converted, record)
    result = verify(original, converted)
    assert not result.passed
    assert any("no such node" in c.note for c in result.checks if not c.passed)


@pytest.mark.e2e
def test_a_dilated_max_pool_below_opset_10_upgrades_the_model_and_proves():
    original = _backbone([conv(), pool(), conv(pad=1), pool()], opset=9)
    result = convert(original, output_stride=1)
    assert result.report.output_stride.opset_upgraded == [9, 10]
    pool2 = next(n for n in result.model.graph.node if n.name == "layer3")
    assert (attr(pool2, "strides"), attr(pool2, "dilations")) == ([1, 1], [2, 2])
    assert result.report.verification.passed, result.report.verification.render_text(verbose=True)


def test_a_resize_to_a_size_read_by_shape_is_refused_by_the_resize_not_the_shape():
    path = SHARED_MODELS / "occ_image_classifier32_pytorch_op11.onnx"  # Shape -> Slice -> Concat -> Resize
    if not path.is_file():
        pytest.skip("../shared/models is absent")
    with pytest.raises(OutputStrideError, match=r"through Resize 'Resize_8' .*\[stride_op\]"):
        convert(path, verify=False, output_stride=1)


@pytest.mark.e2e
@pytest.mark.parametrize(("name", "stride"), [("winml_cifar_classifier_pytorch_op10.onnx", 1),
                                              ("tribuo_cnn_mnist_pytorch_op9.onnx", 2)])
def test_real_models_prove_at_a_finer_stride(name, stride):
    path = SHARED_MODELS / name
    if not path.is_file():
        pytest.skip("../shared/models is absent")
    v = convert(path, output_stride=stride).report.verification
    finer_crops = sum(c.compared for c in v.checks if c.check.startswith("stride ") and " crops " in c.check)
    assert v.passed and finer_crops == 48, v.render_text(True)


# ---- the margins are the geometry's ---------------------------------------------------------------

@pytest.mark.parametrize(("layers", "margin_begin", "margin_end"), [
    # SAME_UPPER 3x3 at stride 1 pads 1 on each side; pad 1 at stride 2 adds 2 (not the bound (k-1)*d = 2 a side)
    ([("Conv", dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER")), pool(), conv(pad=1), pool()], [3, 3], [3, 3]),
    # SAME_LOWER 4x4: 2 before, 1 after
    ([("Conv", dict(kernel_shape=[4, 4], auto_pad="SAME_LOWER")), pool(), conv(pad=1), pool()], [4, 4], [3, 3]),
    # a ceil_mode pool at stride 1 may hang 1 row over the end: read as padding after
    ([conv(), pool(ceil_mode=1), conv(pad=1), pool()], [2, 2], [3, 3]),
], ids=["same_upper", "same_lower", "ceil_mode"])
def test_the_recorded_margins_are_the_padding_the_geometry_walk_finds(layers, margin_begin, margin_end):
    result = convert(_backbone(layers, size=17 if "ceil_mode" in str(layers) else 16), verify=False, output_stride=2)
    stride = read_record(result.model).output_stride
    assert (stride.margin_begin, stride.margin_end) == (margin_begin, margin_end)
    (geometry,) = result.report.geometry.values()
    assert [-a.offset for a in geometry.axes] == margin_begin


def test_a_same_padded_stride_before_the_refined_layers_is_refused_naming_it():
    """Its padding depends on the input size, so no margin holds at every size."""
    with pytest.raises(OutputStrideError, match=r"through Conv 'layer0' .*\[stride_op\]"):
        convert(_backbone([("Conv", dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")), conv(pad=1),
                           pool()]), verify=False, output_stride=2)


@pytest.mark.e2e
def test_a_ceil_mode_pool_before_the_refined_layers_proves_with_its_overhang_in_the_margin():
    result = convert(_backbone([conv(), pool(ceil_mode=1), conv(pad=1), pool()], size=17), output_stride=2)
    v = result.report.verification
    assert v.passed, v.render_text(verbose=True)
    crops = [c for c in v.checks if c.check.startswith("stride ") and " crops " in c.check]
    assert len(crops) == 2 and all(c.compared == 24 for c in crops)


# ---- the ops the rewrite carries are geometry's per-position ones -------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("op", [("Floor", {}), ("Sign", {}), ("Hardmax", dict(axis=1))], ids=lambda op: op[0])
def test_a_per_position_op_the_geometry_walk_follows_is_carried_through_the_rewrite_and_proves(op):
    """Floor, Sign and a Hardmax over the channels read each position alone, so a dilated map's
    phase-0 cells pass through them unchanged (stride once kept a narrower copy of these ops)."""
    result = convert(_backbone([conv(), pool(), op, conv(pad=1), pool()]), output_stride=2)
    assert result.report.output_stride.after == [2, 2]
    v = result.report.verification
    assert v.passed, v.render_text(verbose=True)


@pytest.mark.parametrize(("op", "opset"), [(("Softmax", dict(axis=2)), 13), (("Softmax", dict(axis=1)), 11),
                                           (("Concat", dict(axis=3)), 13)], ids=["spatial-axis", "before-13", "concat"])
def test_a_softmax_or_concat_over_an_image_axis_stops_the_rewrite_where_the_geometry_walk_stops(op, opset):
    with pytest.raises(OutputStrideError, match=rf"{op[0]} 'layer2' .*\[stride_op\]"):
        convert(_backbone([conv(), pool(), op, conv(pad=1), pool()], opset=opset), verify=False, output_stride=1)
