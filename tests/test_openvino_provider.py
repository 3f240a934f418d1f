"""--provider openvino: the converted model is also compiled by OpenVINO's CPU plugin at f32 and takes
part in every check against the ONNX Runtime reference, plus "openvino vs cpu"; where openvino is not
installed, one clean "skipped" line while the CPU proof still runs and decides."""
from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner
from conftest import MODELS
from onnx import helper, numpy_helper

from onnx_fc2conv import VerificationFailed, convert, verify
from onnx_fc2conv.cli import main

pytestmark = pytest.mark.e2e

NOT_INSTALLED = "openvino not installed (pip install 'onnx-fc2conv[openvino]')"
PRECISION_NOTE = "OpenVINO ran on its CPU plugin at f32"


@pytest.fixture
def openvino_installed():
    pytest.importorskip("openvino")


@pytest.fixture
def openvino_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError


def _by_check(verification, provider):
    return {c.check: c for c in verification.checks if c.provider == provider}


def test_provider_openvino_takes_part_in_every_check_of_a_fully_convolutional_model(openvino_installed):
    verification = convert(MODELS / "lenet5.onnx", providers=("openvino",)).report.verification
    openvino, cpu = _by_check(verification, "openvino"), _by_check(verification, "cpu")
    assert verification.passed and verification.skipped == []
    assert set(openvino) == {*cpu, "openvino vs cpu"} == {"original size", "sliding window 64x64",
                                                           "sliding window 48x65", "openvino vs cpu",
                                                           "input crops 64x64", "input crops 48x65"}
    for check in openvino.values():
        assert check.passed and check.compared > 0 and 0 < check.max_abs_error < 1e-5, check.line()
    assert sum(c.compared for c in openvino.values() if c.check.startswith("sliding window")) == \
        sum(c.compared for c in cpu.values() if c.check.startswith("sliding window")) > 0
    assert [n for n in verification.notes if n.startswith(PRECISION_NOTE)]


def test_provider_openvino_runs_the_token_layouts_at_every_sequence_length(openvino_installed):
    verification = convert(MODELS / "bert_layer.onnx", token_layout="conv1d", providers=("openvino",)).report.verification
    openvino = _by_check(verification, "openvino")
    assert verification.passed
    assert set(openvino) == {"original size", "openvino vs cpu", "sequence length 16", "sequence length 33"}
    assert all(c.passed and c.compared > 0 and c.max_abs_error < 1e-4 for c in openvino.values())


def test_provider_openvino_from_the_cli_shows_its_checks_and_the_precision(openvino_installed, tmp_path):
    result = CliRunner().invoke(main, [str(MODELS / "seed_fc.onnx"), str(tmp_path / "o.onnx"),
                                       "--provider", "openvino", "-v"])
    assert result.exit_code == 0, result.output
    assert "verification passed: 7 checks, max abs error 0" in result.output  # 3 checks on each runtime, and one between them
    assert "ok   openvino vs cpu          openvino y:" in result.output
    assert f"note: {PRECISION_NOTE} (INFERENCE_PRECISION_HINT)" in result.output


def test_without_openvino_the_report_says_skipped_and_the_cpu_proof_decides(openvino_absent):
    verification = convert(MODELS / "lenet5.onnx", providers=("openvino",)).report.verification
    assert verification.skipped == [NOT_INSTALLED]
    assert {c.provider for c in verification.checks} == {"cpu"}
    assert verification.passed and len(verification.checks) == 5 and all(c.compared > 0 for c in verification.checks)
    assert not [n for n in verification.notes if "OpenVINO" in n]


def test_without_openvino_the_cli_prints_the_skipped_line_and_writes_the_model(openvino_absent, tmp_path):
    out = tmp_path / "o.onnx"
    result = CliRunner().invoke(main, [str(MODELS / "lenet5.onnx"), str(out), "--provider", "openvino"])
    assert result.exit_code == 0, result.output
    assert f"skipped: {NOT_INSTALLED}" in result.output and out.is_file()


def test_a_wrong_weight_is_caught_by_the_openvino_checks_too(openvino_installed, build_models):
    original = build_models.lenet5()
    converted = convert(original, verify=False).model
    head = next(n for n in converted.graph.node if n.op_type == "Conv" and n.name == "c5/Gemm")
    weight = next(t for t in converted.graph.initializer if t.name == head.input[1])
    w = numpy_helper.to_array(weight).copy()
    w[7, 3, 2, 1] += 0.05
    weight.CopyFrom(numpy_helper.from_array(w, weight.name))
    result = verify(original, converted, providers=("openvino",))
    assert not result
    openvino = _by_check(result, "openvino")
    assert not openvino["original size"].passed and openvino["original size"].max_abs_error > 1e-4
    assert openvino["openvino vs cpu"].passed  # both runtimes run the same wrong model: only the reference sees it


def test_a_model_openvino_cannot_compile_is_a_failed_check_with_its_one_line_error(openvino_installed, build_models):
    # ONNX Runtime runs Det, OpenVINO 2026.4 has no conversion rule for it: the proof fails on OpenVINO only.
    original = build_models.lenet5()
    original.graph.input.append(helper.make_tensor_value_info("m", 1, [3, 3]))
    original.graph.output.append(helper.make_tensor_value_info("det", 1, []))
    original.graph.node.append(helper.make_node("Det", ["m"], ["det"], name="det"))
    converted = convert(original, verify=False).model
    result = verify(original, converted, providers=("openvino",))
    assert not result
    (failed,) = [c for c in result.checks if not c.passed]
    assert (failed.check, failed.provider, failed.output) == ("original size", "openvino", "*")
    assert failed.note.startswith("the converted model does not load: FrontEnd API failed with OpConversionFailure:")
    assert "No conversion rule found for operations: Det" in failed.note and "\n" not in failed.note
    assert "Exception from" not in failed.note and "failed at src/" not in failed.note
    assert all(c.passed for c in result.checks if c.provider == "cpu")


def test_a_converted_model_with_external_data_is_read_by_openvino_from_its_path(openvino_installed, tmp_path):
    from onnx_fc2conv.modelio import save_model

    out = tmp_path / "lenet5_fcn.onnx"
    save_model(convert(MODELS / "lenet5.onnx", verify=False).model, out, external_data=True)
    assert (tmp_path / "lenet5_fcn.onnx.data").is_file()
    result = verify(MODELS / "lenet5.onnx", out, providers=("openvino",))
    assert result.passed and {c.check for c in result.checks if c.provider == "openvino" and c.compared > 0} == {
        "original size", "openvino vs cpu", "sliding window 64x64", "sliding window 48x65", "input crops 64x64",
        "input crops 48x65"}


def test_an_output_behind_an_identity_is_found_by_its_own_name(openvino_installed, build_models):
    # OpenVINO folds the Identity and gives the output port both names; its get_any_name() is the first
    # in sorted order, "head_out", not "logits": the checks ask for the model's own output name.
    original = build_models.lenet5()
    assert original.graph.node[-1].output[0] == original.graph.output[0].name == "logits"
    original.graph.node[-1].output[0] = "head_out"
    original.graph.node.append(helper.make_node("Identity", ["head_out"], ["logits"], name="out"))
    result = verify(original, convert(original, verify=False).model, providers=("openvino",))
    assert result.passed, result.render_text(verbose=True)
    assert {c.output for c in result.checks if c.provider == "openvino"} == {original.graph.output[0].name}


def test_a_finer_map_of_an_external_data_model_is_proved_by_openvino_at_both_strides(openvino_installed, tmp_path):
    """The stride-S conversion the proof rebuilds from the finer model lives in memory, its weights in
    the finer model's data file: OpenVINO must read them from that folder, not the current one."""
    import onnx

    source = tmp_path / "vgg_small.onnx"
    onnx.save(onnx.load(MODELS / "vgg_small.onnx"), source, save_as_external_data=True, location="vgg_small.data",
              size_threshold=0)
    try:
        result = convert(source, tmp_path / "fine.onnx", output_stride=2, providers=("openvino",))
    except VerificationFailed as failed:
        pytest.fail(failed.result.report.verification.render_text(verbose=True))
    verification = result.report.verification
    assert (tmp_path / "fine.onnx.data").is_file()
    openvino = _by_check(verification, "openvino")
    assert {"original size", "openvino vs cpu", "sliding window 64x64"} <= set(openvino)
    assert all(c.passed and c.compared > 0 for c in openvino.values())
