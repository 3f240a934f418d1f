"""Big models: FC weights taken over as Conv kernels without a copy, external data, progress."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from conftest import MODELS
from graphs import conv_flatten_gemm, init, initializer
from onnx import helper

from onnx_fc2conv import convert
from onnx_fc2conv.cli import main
from onnx_fc2conv.errors import OutputError


@pytest.fixture
def lenet_path():
    return MODELS / "lenet5.onnx"


def run_file(path, x) -> np.ndarray:
    return _run(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), x)


def run_model(model, x) -> np.ndarray:
    return _run(ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]), x)


def _run(session, x) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.e2e
def test_fc_weight_read_only_by_its_gemm_becomes_the_kernel_in_place():
    original = conv_flatten_gemm(channels=4, spatial=(3, 3), features=5)
    result = convert(original)
    conv = next(n for n in result.model.graph.node if n.op_type == "Conv" and n.name == "fc")
    assert conv.input[1] == "fc.w"  # the same initializer, no second copy of the weight
    assert list(initializer(result.model, "fc.w").shape) == [5, 4, 3, 3]
    assert np.array_equal(initializer(result.model, "fc.w").ravel(), initializer(original, "fc.w").ravel())
    assert list(initializer(original, "fc.w").shape) == [5, 36]  # the caller's model is untouched
    assert result.report.verification.passed


@pytest.mark.e2e
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


# ---- external data ------------------------------------------------------------------------------

def _save_with_external_data(model: onnx.ModelProto, path) -> None:
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + ".weights", size_threshold=0)


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.e2e
def test_input_with_external_data_gives_output_with_external_data(tmp_path):
    original = conv_flatten_gemm(channels=8, spatial=(4, 4), features=64)
    src = tmp_path / "in" / "model.onnx"
    src.parent.mkdir()
    _save_with_external_data(original, src)
    out = tmp_path / "out" / "converted.onnx"
    out.parent.mkdir()
    result = convert(src, out)
    assert result.report.verification.passed  # ORT read the original's weights from its folder
    assert sorted(p.name for p in out.parent.iterdir()) == ["converted.onnx", "converted.onnx.data"]
    written = onnx.load(str(out), load_external_data=False)
    external = {t.name for t in written.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    assert "fc.w" in external
    assert {e.key: e.value for e in next(t for t in written.graph.initializer if t.name == "fc.w").external_data
            }["location"] == "converted.onnx.data"
    assert out.stat().st_size < 4096 < (out.parent / "converted.onnx.data").stat().st_size
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6)).astype(np.float32)
    assert np.allclose(run_file(out, x).reshape(2, -1), run_file(src, x), atol=1e-5)


@pytest.mark.e2e
def test_external_data_flag_moves_inline_weights_out(tmp_path, lenet_path):
    out = tmp_path / "o.onnx"
    result = CliRunner().invoke(main, [str(lenet_path), str(out), "--external-data", "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o.onnx.data").stat().st_size > out.stat().st_size
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    assert np.allclose(run_file(out, x).reshape(1, -1), run_file(lenet_path, x), atol=1e-5)


@pytest.mark.e2e
def test_weights_past_the_protobuf_limit_go_to_external_data_and_are_verified(tmp_path, monkeypatch):
    # The limit is lowered so a small model stands for a > 2 GB one: the verifier must then hand
    # ONNX Runtime a file, and the output must get external data without being asked to.
    from onnx_fc2conv import modelio

    monkeypatch.setattr(modelio, "PROTOBUF_LIMIT", modelio.GRAPH_HEADROOM + 1000)
    out = tmp_path / "o.onnx"
    result = convert(conv_flatten_gemm(channels=8, spatial=(4, 4), features=64), out)
    assert result.report.verification.passed
    assert (tmp_path / "o.onnx.data").exists()
    assert _leftovers(tmp_path) == []


def test_failed_external_data_save_leaves_nothing(tmp_path, replace_fails):
    from onnx_fc2conv import modelio

    replace_fails(lambda src, dst: dst.endswith(".onnx"))
    with pytest.raises(OutputError, match="No space left on device"):
        modelio.save_model(conv_flatten_gemm(), tmp_path / "o.onnx", external_data=True)
    assert list(tmp_path.iterdir()) == []


# ---- progress -----------------------------------------------------------------------------------

@pytest.mark.e2e
def test_steps_of_a_large_model_are_shown_on_stderr_and_quiet_hides_them(tmp_path, lenet_path, monkeypatch):
    from onnx_fc2conv import pipeline

    monkeypatch.setattr(pipeline, "LARGE_MODEL_BYTES", 0)  # every model counts as large
    shown = CliRunner().invoke(main, [str(lenet_path), str(tmp_path / "a.onnx")])
    lines = [line for line in shown.stderr.splitlines() if line.startswith("onnx-fc2conv: ")]
    assert [line.split(": ")[1].split(" ")[0] for line in lines if line.endswith(" ...")] == [
        "loading", "rewriting", "checking", "verifying", "writing"]
    assert len([line for line in lines if line.endswith(" s")]) == 5
    assert "wrote" in shown.stdout and "onnx-fc2conv: " not in shown.stdout
    quiet = CliRunner().invoke(main, [str(lenet_path), str(tmp_path / "b.onnx"), "-q"])
    assert quiet.exit_code == 0 and quiet.output == ""


def test_a_slow_step_of_a_small_model_is_announced_once_it_runs_long(monkeypatch):
    import io
    import time

    from onnx_fc2conv import progress

    monkeypatch.setattr(progress, "SLOW_STEP_SECONDS", 0.01)
    stream = io.StringIO()
    steps = progress.Progress(True, {}, stream)
    with steps.step("verify", "verifying"):
        for _ in range(1000):  # wait for the timer's line (no duration is asserted)
            if stream.getvalue():
                break
            time.sleep(0.01)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "onnx-fc2conv: verifying ..." and lines[1].startswith("onnx-fc2conv: verifying: done in ")
    monkeypatch.setattr(progress, "SLOW_STEP_SECONDS", 1000.0)
    quick, seconds = io.StringIO(), {}
    with progress.Progress(True, seconds, quick).step("check", "checking"):
        pass
    assert quick.getvalue() == "" and set(seconds) == {"check"}  # timed, not shown


def test_large_model_announces_each_step_when_it_starts(monkeypatch):
    import io

    from onnx_fc2conv.progress import Progress

    stream, seconds = io.StringIO(), {}
    steps = Progress(True, seconds, stream)
    steps.large = True
    with steps.step("save", "writing out.onnx"):
        assert stream.getvalue() == "onnx-fc2conv: writing out.onnx ...\n"
    assert stream.getvalue().splitlines()[1].startswith("onnx-fc2conv: writing out.onnx: done in ")
    assert set(seconds) == {"save"}


# ---- --fold-batch -------------------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("opset", [11, 13, 17])
def test_fold_batch_runs_the_head_as_one_image_and_stays_exact(opset):
    original = conv_flatten_gemm(opset=opset, after=[("Relu", {}, []), ("Gemm", {"transB": 1}, ["fc2.w"])],
                                 extra_inits=[init("fc2.w", np.random.default_rng(1).standard_normal((3, 5))
                                                   .astype(np.float32))])
    result = convert(original, fold_batch=True)
    graph = result.model.graph
    assert [n.op_type for n in graph.node][-7:] == ["Transpose", "Unsqueeze", "Conv", "Relu", "Conv", "Squeeze",
                                                    "Transpose"]
    convs = [n for n in graph.node if n.op_type == "Conv" and n.name != "conv"]
    assert [list(next(a.ints for a in c.attribute if a.name == "kernel_shape")) for c in convs] == [[1, 3, 3],
                                                                                                  [1, 1, 1]]
    assert list(initializer(result.model, "fc.w").shape) == [5, 4, 1, 3, 3]
    v = result.report.verification
    assert v.passed and len([c for c in v.checks if c.check.startswith("sliding window")]) == 2
    x = np.random.default_rng(2).standard_normal((5, 2, 9, 11)).astype(np.float32)  # batch 5, larger map
    unfolded = convert(original).model
    assert np.allclose(run_model(result.model, x), run_model(unfolded, x), atol=1e-5)
    assert run_model(result.model, x).shape == (5, 3, 5, 7)
