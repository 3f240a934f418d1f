"""What a user trial of the output-stride, geometry and provider features found in the API: values of
the wrong type reached numpy or the arithmetic (a TypeError, or a cell -1 given a box), a string
provider was read letter by letter (and failed the proof with an unbounded error), and ``0`` was
quoted as ``(0,)``. Each is now a one-line UsageError (a ValueError too), raised before any work."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import MODELS

import onnx_fc2conv
from onnx_fc2conv import Options, UsageError, convert, verify
from onnx_fc2conv.verify import runtimes

LENET = MODELS / "lenet5.onnx"


@pytest.mark.parametrize("value, quoted", [("0", "'0'"), ("-3", "'-3'"), (0, "0"), ((2, 0), "(2, 0)")])
def test_a_bad_output_stride_is_quoted_as_given(value, quoted):
    with pytest.raises(UsageError) as error:
        Options(output_stride=value)
    assert str(error.value) == f"--output-stride {quoted}: expected a positive size N or NxM, e.g. 4 or 4x2"


def test_a_provider_string_is_one_runtime_and_cpu_always_comes_first():
    assert runtimes("openvino") == ("cpu", "openvino")
    assert runtimes(["cuda", "cpu", "cuda"]) == ("cpu", "cuda")


@pytest.mark.parametrize("providers", ["tpu", ("cpu", "tpu"), 5, None, ("OpenVINO",)])
def test_an_unknown_provider_is_refused_before_anything_is_written(tmp_path, providers):
    out = tmp_path / "out.onnx"
    with pytest.raises(UsageError, match="give names among cpu, cuda, openvino"):
        convert(LENET, out, providers=providers)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UsageError, match="give names among cpu, cuda, openvino"):
        verify(LENET, LENET, providers=providers)


@pytest.mark.parametrize("keywords, message", [
    (dict(rtol="1"), "rtol '1' is not a tolerance"),
    (dict(atol=True), "atol True is not a tolerance"),
    (dict(seed="a"), "seed 'a' is not a seed: give an integer >= 0"),
    (dict(seed=-1), "seed -1 is not a seed"),
    (dict(seed=1.5), "seed 1.5 is not a seed"),
])
def test_a_tolerance_or_seed_of_the_wrong_type_is_a_usage_error(tmp_path, keywords, message):
    with pytest.raises(UsageError, match=message):
        convert(LENET, tmp_path / "out.onnx", **keywords)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("keywords, message", [
    (dict(skip_rules=5), "option skip_rules takes names or globs (strings), not 5"),
    (dict(include=None), "option include takes names or globs (strings), not None"),
    (dict(exclude=[b"fc"]), "option exclude takes names or globs (strings), not [b'fc']"),
    (dict(input_shapes={"input": "1x1x32x32"}), "option input_shapes: 'input' takes a tuple of dims"),
    (dict(input_shapes={"input": (1, 1, -5, 32)}), "option input_shapes: 'input' takes a tuple of dims"),
])
def test_a_rule_option_of_the_wrong_type_is_a_usage_error(keywords, message):
    with pytest.raises(UsageError) as error:
        convert(LENET, verify=False, **keywords)
    assert str(error.value).startswith(message)


def test_rule_options_of_the_right_types_still_convert():
    report = convert(LENET, verify=False, include=["*Gemm"], skip_rules={"vector_fc"},
                     input_shapes={"input": [None, 1, 32, 32]}).report
    assert len(report.converted) == 3


@pytest.fixture(scope="module")
def lenet_geometry():
    return convert(LENET, verify=False).report.geometry["logits"]


@pytest.mark.parametrize("call, message", [
    (lambda g: onnx_fc2conv.cell_box(g, -1, 0), "cell (-1, 0): give integers >= 0"),
    (lambda g: onnx_fc2conv.crop_box(g, 0, -2), "cell (0, -2): give integers >= 0"),
    (lambda g: onnx_fc2conv.cell_box(g, 1.5, 2), "cell (1.5, 2): give integers >= 0"),
    (lambda g: onnx_fc2conv.cell_box(g, "1", 2), "cell ('1', 2): give integers >= 0"),
    (lambda g: onnx_fc2conv.cell_box(g, 1), "the map has 2 spatial axes, not 1"),
    (lambda g: onnx_fc2conv.cell_box(None, 1, 2), "expected a Geometry (read_geometry(model)[output]), not NoneType"),
    (lambda g: onnx_fc2conv.cells_within(g, (0, 0, 64.5, 96)), "box (0, 0, 64.5, 96): give integers"),
    (lambda g: onnx_fc2conv.cells_within(g, "0,0,64,96"), "box '0,0,64,96': give a tuple of integers"),
    (lambda g: onnx_fc2conv.cells_containing(g, (40, 50)),
     "box (40, 50) and map shape None do not fit a map of 2 spatial axes"),
    (lambda g: onnx_fc2conv.cells_containing(g, (40, 50, 41, 51), map_shape=(-1, 5)),
     "map_shape (-1, 5): give integers >= 0"),
    (lambda g: onnx_fc2conv.cells_containing(g, (20, 20, 10, 10)), "box (20, 20, 10, 10) is empty"),
    (lambda g: onnx_fc2conv.read_geometry(str(LENET)),
     "read_geometry takes an onnx.ModelProto (onnx.load(path)), not str"),
])
def test_geometry_functions_refuse_bad_arguments_in_one_line(lenet_geometry, call, message):
    with pytest.raises(UsageError) as error:
        call(lenet_geometry)
    assert str(error.value) == message
    assert isinstance(error.value, ValueError)


def test_geometry_functions_take_numpy_ints_and_answer_python_ints(lenet_geometry):
    box = onnx_fc2conv.cell_box(lenet_geometry, np.int64(2), np.int32(3))
    assert box == (8, 12, 40, 44) and all(type(v) is int for v in box)
    assert onnx_fc2conv.cells_containing(lenet_geometry, np.array([40, 50, 41, 51]), map_shape=(9, 17)) == (
        range(3, 9), range(5, 13))
    assert onnx_fc2conv.read_geometry(onnx.load(LENET)) == {}


@pytest.mark.parametrize("value, message", [
    ("99999999999999999999", "--output-stride '99999999999999999999': larger than any backbone's stride"),
    ("2x" + "9" * 6000, "--output-stride '2x999999999999999999'...: larger than any backbone's stride"),
])
def test_a_huge_output_stride_says_it_is_too_large_not_that_it_is_not_positive(value, message):
    with pytest.raises(UsageError) as error:
        Options(output_stride=value)
    assert str(error.value) == message


def test_leading_zeros_do_not_make_an_output_stride_too_large():
    assert Options(output_stride="0000000000002x4").output_stride == (2, 4)


@pytest.mark.parametrize("flag", ["inplace", "verify", "external_data", "fold_batch", "show_progress"])
def test_a_convert_flag_that_is_not_a_bool_is_refused_before_anything_is_written(tmp_path, flag):
    """``inplace="False"`` is truthy: it would have replaced IN."""
    source = tmp_path / "m.onnx"
    source.write_bytes(LENET.read_bytes())
    with pytest.raises(UsageError, match=f"option {flag} takes True or False, not 'False'"):
        convert(source, source, **{flag: "False"})
    assert source.read_bytes() == LENET.read_bytes() and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("value, message", [
    (3, "--output-stride 3: the backbone's total stride is 8x8, and the output stride must divide it: 1, 2, 4, 8"),
    ((2, 2, 2), "--output-stride 2x2x2: 3 sizes for maps of 2 spatial axes (give N, or one size per axis)"),
])
def test_an_output_stride_that_cannot_fit_names_the_choices(value, message):
    """It said 'one size per spatial axis, 2 here' after '--output-stride 2', which read as the value."""
    with pytest.raises(onnx_fc2conv.OutputStrideError) as error:
        convert(MODELS / "vgg_small.onnx", verify=False, output_stride=value)
    assert str(error.value) == f"{message} [stride_not_divisor]" and error.value.code == "stride_not_divisor"


def test_checks_on_several_runtimes_line_up_their_outputs():
    from onnx_fc2conv.report import CheckResult, VerificationResult
    checks = [CheckResult("original size", p, "logits", True, 1e-7, 1e-6, 0.0, 20) for p in ("cpu", "openvino")]
    text = VerificationResult(passed=True, rtol=1e-4, atol=1e-5, checks=checks).render_text(verbose=True)
    lines = text.splitlines()[1:]
    assert [line.index("logits") for line in lines] == [41, 41], text
    alone = VerificationResult(passed=True, rtol=1e-4, atol=1e-5, checks=checks[:1]).render_text(verbose=True)
    assert alone.splitlines()[1].index("logits") == 38  # cpu alone: as before


def test_a_check_label_longer_than_the_column_widens_it_for_every_line():
    from onnx_fc2conv.report import CheckResult, VerificationResult
    labels = ["original size", "stride 2x2 phase 0 128x128", "stride 2x2 crops 128x128"]  # 26 chars: past 24
    checks = [CheckResult(label, "cpu", "logits", True, 1e-7, 1e-6, 0.0, 20) for label in labels]
    checks.append(CheckResult("sliding window 64x64", "cpu", "logits", True))  # nothing compared: no status
    lines = VerificationResult(passed=True, rtol=1e-4, atol=1e-5, checks=checks).render_text(verbose=True).splitlines()
    assert [line.index("cpu") for line in lines[1:]] == [34, 34, 34, 29]
    assert [line.index("logits") for line in lines[1:]] == [40, 40, 40, 35]


def test_a_provider_with_no_verify_is_refused_since_nothing_would_run_on_it(tmp_path):
    """It was ignored: the model was written as if proved on OpenVINO."""
    with pytest.raises(UsageError) as error:
        convert(LENET, tmp_path / "out.onnx", verify=False, providers=("openvino",))
    assert str(error.value) == "--provider openvino runs in the proof, which --no-verify skips: drop one of them"
    assert list(tmp_path.iterdir()) == []
    assert len(convert(LENET, verify=False, providers=("cpu",)).report.converted) == 3


def _channels_last_norm(axes):
    """x [N,2,H,W] -> Transpose to NHWC -> x - ReduceMean(axes) -> Transpose back -> MaxPool 2/2."""
    from onnx import helper
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("ReduceMean", ["t"], ["mean"], name="mean", axes=axes, keepdims=1),
             helper.make_node("Sub", ["t", "mean"], ["centred"], name="centre"),
             helper.make_node("Transpose", ["centred"], ["back"], name="to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("MaxPool", ["back"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, "H", "W"])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_reduce_over_the_channels_keeps_the_geometry_and_one_over_an_image_axis_pools():
    """A decomposed LayerNorm's ReduceMean over the channels was said to pool over the whole map."""
    geometry = onnx_fc2conv.tensor_geometry(_channels_last_norm([-1]), "y")
    assert geometry.line() == "2x2 px of input 'x', stride 2x2, offset 0,0"
    pooled = onnx_fc2conv.tensor_geometry(_channels_last_norm([1, 2]), "y")
    assert pooled.unknown == "ReduceMean 'mean' pools over the whole map, so each cell sees the whole input"


def test_a_convnext_with_dense_pool_has_a_geometry_through_its_layer_norms():
    report = convert(MODELS / "convnext_blocks.onnx", verify=False, token_layout="conv1d", dense_pool=True).report
    assert report.geometry["logits"].line() == \
        "80x80 px of input 'input', stride 4x4, offset -24,-24, margin 24x24 (the backbone pads)"
    kept = convert(MODELS / "convnext_blocks.onnx", verify=False, token_layout="conv1d").report.geometry["logits"]
    assert kept.unknown.startswith("GlobalAveragePool 'head.global_pool/GlobalAveragePool' pools over the whole map")


def test_an_output_stride_on_an_already_converted_model_says_to_give_the_original():
    converted = convert(MODELS / "vgg_small.onnx", verify=False).model
    with pytest.raises(onnx_fc2conv.OutputStrideError) as error:
        convert(converted, verify=False, output_stride=2)
    assert str(error.value) == ("--output-stride: no FC head of this model was converted (it is already converted: "
                                "give --output-stride with the original model) [stride_mode]")


@pytest.mark.parametrize("args, keywords, message", [
    ((str(LENET), "logits"), {}, "tensor_geometry takes an onnx.ModelProto and a tensor name, not str and str"),
    ((None, 5), {}, "tensor_geometry takes an onnx.ModelProto and a tensor name, not NoneType and int"),
    (("model", "logits"), dict(spatial_inputs=[2, 3]), "tensor_geometry: spatial_inputs takes a dict by input name, "
                                                        "not [2, 3]"),
])
def test_tensor_geometry_refuses_arguments_of_the_wrong_type(args, keywords, message):
    model = convert(LENET, verify=False).model
    args = tuple(model if a == "model" else a for a in args)
    with pytest.raises(UsageError) as error:
        onnx_fc2conv.tensor_geometry(*args, **keywords)
    assert str(error.value) == message


@pytest.mark.parametrize("args, command", [
    (["models/lenet5.onnx", "out.onnx", "--output-stride"], "convert"),
    (["convert", "models/lenet5.onnx", "out.onnx", "--atol"], "convert"),
    (["inspect", "models/lenet5.onnx", "--input-shape"], "inspect"),
])
def test_an_option_missing_its_value_points_to_its_commands_help(tmp_path, monkeypatch, args, command):
    """Click raises this one without the subcommand's context: it pointed to 'onnx-fc2conv --help'."""
    from click.testing import CliRunner

    from onnx_fc2conv.cli import main
    monkeypatch.chdir(tmp_path)
    args = [str(MODELS / "lenet5.onnx") if a == "models/lenet5.onnx" else a for a in args]
    result = CliRunner().invoke(main, args)
    option = args[-1]
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1] == (
        f"onnx-fc2conv: error: Option '{option}' requires an argument (see onnx-fc2conv {command} --help)")
    assert list(tmp_path.iterdir()) == []


def test_a_layer_normalization_over_the_channels_keeps_the_geometry_and_one_over_the_map_does_not():
    """timm's ConvNeXt as TorchScript writes it at opset 17 (LayerNormalization on NHWC): the walk
    stopped at it. Its window (104x104 at stride 8) is tight: measured by hand, a pixel just inside
    either edge moves the cell, one just outside does not."""
    report = convert(MODELS / "timm_convnext_ts17.onnx", verify=False, token_layout="conv2d", dense_pool=True).report
    assert report.geometry["logits"].line() == \
        "104x104 px of input 'input', stride 8x8, offset -36,-36, margin 36x36 (the backbone pads)"
    from onnx import helper
    scale = onnx.numpy_helper.from_array(np.ones((2, 4, 4), np.float32), "scale")
    graph = helper.make_graph([helper.make_node("LayerNormalization", ["x", "scale"], ["y"], name="ln", axis=1)], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, 4, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert onnx_fc2conv.tensor_geometry(model, "y").unknown == "LayerNormalization 'ln' normalizes over an image axis"
