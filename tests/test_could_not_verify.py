"""When the original model does not run on the verifier's inputs there is no proof: the tool says
"could not verify", exits 1 and writes nothing; the right --input-shape / --input-data fixes it."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import ROOT
from graphs import init, model, vi, weights
from onnx import helper

from onnx_fc2conv import CouldNotVerify, Fc2ConvError, convert, verify
from onnx_fc2conv.cli import main

MESSAGE = "could not verify: the original model fails on synthesised inputs: "
HINT = "; pass --input-data or --input-shape"


def signal_to_image_model() -> onnx.ModelProto:
    """x [N, L] -> Reshape([0,3,4,4]) -> Conv 3x3 -> Flatten -> Gemm -> y [N,5]: runs only when L = 48."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Reshape", ["x", "image_shape"], ["image"], name="to_image"),
             helper.make_node("Conv", ["image", "conv.w"], ["fmap"], name="conv", kernel_shape=[3, 3]),
             helper.make_node("Flatten", ["fmap"], ["flat"], name="flatten", axis=1),
             helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    inits = [init("image_shape", np.array([0, 3, 4, 4], np.int64)), init("conv.w", weights(rng, 2, 3, 3, 3)),
             init("fc.w", weights(rng, 5, 8)), init("fc.b", weights(rng, 5))]
    return model(nodes, [vi("x", ["N", "L"])], [vi("y", None, 0)], inits)


@pytest.mark.e2e
def test_verify_raises_could_not_verify_with_the_runtime_message():
    m = signal_to_image_model()
    with pytest.raises(CouldNotVerify) as caught:
        verify(m, m)
    text = str(caught.value)
    assert text.startswith(MESSAGE) and text.endswith(HINT)
    assert "\n" not in text and "Reshape" in text  # the runtime's first line names the failing node


@pytest.mark.e2e
def test_convert_raises_the_same_typed_error():
    with pytest.raises(CouldNotVerify, match=MESSAGE) as caught:
        convert(signal_to_image_model())
    assert isinstance(caught.value, Fc2ConvError) and caught.value.exit_code == 1


@pytest.mark.e2e
def test_onnxruntime_refusing_the_original_model_is_could_not_verify():
    m = signal_to_image_model()
    m.graph.node[1].op_type = "NoSuchOp"
    with pytest.raises(CouldNotVerify, match="could not verify: onnxruntime cannot load the original model: "):
        verify(m, m)


@pytest.mark.e2e
def test_cli_exits_1_with_the_message_and_writes_nothing(tmp_path):
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(signal_to_image_model(), src)
    result = CliRunner().invoke(main, [str(src), str(out)])
    assert result.exit_code == 1
    assert result.output.startswith(f"onnx-fc2conv: error: {MESSAGE}")
    assert f"{HINT}; {out} not written" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


def test_cli_no_verify_writes_the_model_anyway(tmp_path):
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(signal_to_image_model(), src)
    result = CliRunner().invoke(main, [str(src), str(out), "--no-verify"])
    assert result.exit_code == 0 and out.exists()


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["input-shape", "input-data"])
def test_the_named_flag_makes_it_verify_and_the_report_lists_the_inputs(tmp_path, how):
    src, out, data = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "x.npz"
    onnx.save(signal_to_image_model(), src)
    np.savez(data, x=np.linspace(-1, 1, 3 * 48).reshape(3, 48))  # float64: cast to the input's float32
    flags = ["--input-shape", "x:?x48"] if how == "input-shape" else ["--input-data", str(data)]
    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, [str(src), str(out), *flags, "-v", "--report-json", str(report)])
    assert result.exit_code == 0, result.output
    assert "verification passed" in result.output and out.exists()
    line = "input x: float32[2,48]" if how == "input-shape" else "input x: float32[3,48] in [-1, 1] (file)"
    assert line in result.output
    [used] = json.loads(report.read_text())["verification"]["inputs"]
    assert used["shape"] == ([2, 48] if how == "input-shape" else [3, 48])
    assert used["source"] == ("random normal, seed 0" if how == "input-shape" else "file")
    assert used["min"] < 0 < used["max"]


def test_input_data_that_names_no_input_is_a_usage_error(tmp_path):
    src, data = tmp_path / "in.onnx", tmp_path / "d.npz"
    onnx.save(signal_to_image_model(), src)
    np.savez(data, y=np.zeros((2, 48), np.float32))
    result = CliRunner().invoke(main, [str(src), str(tmp_path / "o.onnx"), "--input-data", str(data)])
    assert result.exit_code == 2
    assert "--input-data names 'y', which is not an input of the model (inputs: x)" in result.output


@pytest.mark.e2e
def test_larger_size_checks_reuse_the_non_spatial_inputs_from_the_file(monkeypatch):
    # x [N,2,6,6] * gain (a per-channel input from the file) -> Conv -> Flatten -> Gemm.
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Mul", ["x", "gain"], ["scaled"], name="scale"),
             helper.make_node("Conv", ["scaled", "conv.w"], ["fmap"], name="conv", kernel_shape=[3, 3]),
             helper.make_node("Flatten", ["fmap"], ["flat"], name="flatten", axis=1),
             helper.make_node("Gemm", ["flat", "fc.w"], ["y"], name="fc", transB=1)]
    m = model(nodes, [vi("x", ["N", 2, 6, 6]), vi("gain", [2, 1, 1])], [vi("y", None, 0)],
              [init("conv.w", weights(rng, 3, 2, 3, 3)), init("fc.w", weights(rng, 4, 48))])
    gain = np.array([0.5, -2.0], np.float32).reshape(2, 1, 1)
    verifier = importlib.import_module("onnx_fc2conv.verify")  # the module, not the function of that name
    fed = []
    real_run = verifier._run
    monkeypatch.setattr(verifier, "_run", lambda session, feeds: fed.append(feeds) or real_run(session, feeds))
    converted = convert(m, input_data={"gain": gain})
    assert list(converted.report.symbolic_inputs) == ["x"]  # gain is broadcast, not an image: it keeps [2,1,1]
    assert [d.dim_value for d in converted.model.graph.input[1].type.tensor_type.shape.dim] == [2, 1, 1]
    result = converted.report.verification
    assert result.passed and sum(c.check.startswith("sliding window") for c in result.checks) == 2
    sizes = {f["x"].shape for f in fed if "x" in f}
    assert sizes == {(2, 2, 6, 6), (2, 2, 12, 12), (2, 2, 9, 13)}  # the original size and both larger ones
    assert all(f["gain"] is gain or np.array_equal(f["gain"], gain) for f in fed if "gain" in f)


@pytest.mark.e2e
def test_the_runtime_does_not_print_its_own_copy_of_the_error(tmp_path):
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(signal_to_image_model(), src)
    done = subprocess.run([sys.executable, "-m", "onnx_fc2conv", str(src), str(out)], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(f"onnx-fc2conv: error: {MESSAGE}") and done.stderr.count("\n") == 1
