"""Output safety: OUT is written atomically or not at all, IN is never touched, OUT == IN only with
--inplace; and the output is a function of the input: byte-identical across runs, and converting a
converted model converts nothing."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import graphs
import onnx
import pytest
from click.testing import CliRunner
from conftest import MODELS, ROOT

from onnx_fc2conv import OutputError, convert
from onnx_fc2conv.cli import main


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def lenet(tmp_path):
    path = tmp_path / "lenet5.onnx"
    shutil.copy(MODELS / "lenet5.onnx", path)
    return path


def test_out_equal_to_in_is_refused_and_in_keeps_its_bytes(lenet):
    before = sha256(lenet)
    result = CliRunner().invoke(main, [str(lenet), str(lenet)])
    assert result.exit_code == 2
    assert result.output.strip() == (f"onnx-fc2conv: error: {lenet}: OUT is the input model; "
                                     "pass --inplace (inplace=True) to overwrite it")
    assert sha256(lenet) == before


def test_out_equal_to_in_by_another_spelling_is_refused(lenet, monkeypatch):
    monkeypatch.chdir(lenet.parent)
    with pytest.raises(OutputError, match="OUT is the input model"):
        convert(lenet, f"./{lenet.name}")
    os.symlink(lenet, lenet.parent / "alias.onnx")
    with pytest.raises(OutputError, match="OUT is the input model"):
        convert(lenet, lenet.parent / "alias.onnx")


@pytest.mark.e2e
def test_inplace_replaces_in_with_the_converted_model(lenet):
    result = CliRunner().invoke(main, [str(lenet), str(lenet), "--inplace", "-q"])
    assert result.exit_code == 0, result.output
    converted = onnx.load(lenet)
    assert "Gemm" not in {n.op_type for n in converted.graph.node}
    assert sorted(p.name for p in lenet.parent.iterdir()) == ["lenet5.onnx"]  # no temp file left


def test_missing_output_folder_is_a_clear_error_before_any_work(lenet, monkeypatch):
    import onnx_fc2conv.pipeline as pipeline

    monkeypatch.setattr(pipeline, "read_streamed", lambda *a: pytest.fail("loaded before checking OUT"))
    out = lenet.parent / "no" / "such" / "out.onnx"
    result = CliRunner().invoke(main, [str(lenet), str(out)])
    assert result.exit_code == 2
    assert result.output.strip() == f"onnx-fc2conv: error: {out}: the folder {out.parent} does not exist"


def test_out_that_is_a_directory_is_refused(lenet):
    result = CliRunner().invoke(main, [str(lenet), str(lenet.parent)])
    assert result.exit_code == 2 and "is a directory; give the path of the .onnx file" in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_output_folder_is_a_clear_error(lenet, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = CliRunner().invoke(main, [str(lenet), str(locked / "out.onnx")])
    finally:
        locked.chmod(0o700)
    assert result.exit_code == 2
    assert result.output.strip().endswith(f"cannot write in {locked} (Permission denied)")
    assert list(locked.iterdir()) == []


@pytest.mark.e2e
@pytest.mark.parametrize("failing", ["chmod", "replace"])
def test_a_failure_while_writing_leaves_neither_out_nor_a_temp_file(lenet, monkeypatch, failing):
    # Both steps run after the temp file is written in OUT's folder.
    out = lenet.parent / "out.onnx"
    out.write_bytes(b"previous OUT")
    monkeypatch.setattr(os, failing, _disk_full)
    before = sha256(lenet)
    with pytest.raises(OutputError, match="No space left on device"):
        convert(lenet, out)
    assert out.read_bytes() == b"previous OUT"  # the old OUT is whole: the new one never half-replaced it
    assert sorted(p.name for p in lenet.parent.iterdir()) == ["lenet5.onnx", "out.onnx"]
    assert sha256(lenet) == before


def _disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


@pytest.mark.e2e
def test_out_gets_ordinary_file_permissions(lenet):
    out = lenet.parent / "out.onnx"
    convert(lenet, out)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.e2e) for n in (
    "lenet5", "vgg_small", "torch_view_head", "matmul_add_head", "gap_head")] + ["seed_mlp"])  # nothing to prove
def test_converting_a_converted_model_converts_nothing_and_says_so(tmp_path, name):
    first, second = tmp_path / "once.onnx", tmp_path / "twice.onnx"
    convert(MODELS / f"{name}.onnx", first)
    result = CliRunner().invoke(main, [str(first), str(second)])
    assert result.exit_code == 0, result.output
    assert "nothing convertible, the model is unchanged" in result.output
    if name != "seed_mlp":
        assert "note: already converted by onnx-fc2conv 0.1.0; nothing left to convert" in result.output
    assert sha256(second) == sha256(first)


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["vgg_small", "if_branches"])
def test_the_same_input_gives_byte_identical_output_across_processes(tmp_path, name):
    # Different hash seeds change set and dict-of-set orders between processes: the output must not.
    source = MODELS / f"{name}.onnx"
    if name == "if_branches":  # FC layers in both branches of an If: fresh names in three scopes
        from test_subgraphs import if_model

        source = tmp_path / "if.onnx"
        onnx.save(if_model(), source)
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / f"out{seed}.onnx"
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-m", "onnx_fc2conv", str(source), str(out), "-q"],
                       check=True, env=env, cwd=ROOT)
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] and outputs[0] != source.read_bytes()


def test_a_model_with_nothing_to_convert_is_written_byte_for_byte(tmp_path):
    out = tmp_path / "out.onnx"
    result = convert(MODELS / "seed_mlp.onnx", out)
    assert result.report.converted == [] and len(result.report.nodes) > 0
    assert out.read_bytes() == (MODELS / "seed_mlp.onnx").read_bytes()


@pytest.mark.e2e
@pytest.mark.parametrize("out_name", ["out.onnx", "out.onnx.data"])
def test_out_that_would_replace_the_inputs_external_data_is_refused(tmp_path, out_name):
    # IN keeps its Gemm weight in "out.onnx.data": OUT out.onnx would write its weights there, and
    # OUT out.onnx.data is that file itself.
    from test_bad_inputs import _with_external_weight

    source = _with_external_weight(tmp_path, "out.onnx.data")
    weight = next(t for t in graphs.conv_flatten_gemm().graph.initializer if t.name == "fc.w")
    (tmp_path / "out.onnx.data").write_bytes(weight.raw_data)
    before = {p.name: sha256(p) for p in tmp_path.iterdir()}
    with pytest.raises(OutputError, match="which holds the input model's weights; choose another OUT"):
        convert(source, tmp_path / out_name)
    assert {p.name: sha256(p) for p in tmp_path.iterdir()} == before
    assert convert(source, tmp_path / "elsewhere.onnx").report.converted  # the same IN converts to another OUT


def test_inplace_with_a_failed_verification_leaves_in_as_it_was(lenet, monkeypatch):
    from onnx_fc2conv import pipeline
    from onnx_fc2conv.report import VerificationResult

    monkeypatch.setattr(pipeline, "run_verification", lambda *a, **k: VerificationResult(passed=False, rtol=0, atol=0))
    before = sha256(lenet)
    result = CliRunner().invoke(main, [str(lenet), str(lenet), "--inplace"])
    assert result.exit_code == 1 and "not written" in result.output
    assert sha256(lenet) == before
    assert sorted(p.name for p in lenet.parent.iterdir()) == ["lenet5.onnx"]


def test_report_json_in_a_missing_folder_fails_before_out_is_written(lenet):
    out, report = lenet.parent / "out.onnx", lenet.parent / "no" / "report.json"
    result = CliRunner().invoke(main, [str(lenet), str(out), "--report-json", str(report)])
    assert result.exit_code == 2
    assert result.output.strip() == f"onnx-fc2conv: error: {report}: the folder {report.parent} does not exist"
    assert not out.exists()


@pytest.mark.e2e
def test_shape_inference_leaves_no_files_in_the_callers_folder(real_models):
    # ONNX Runtime's symbolic shape inference writes sym_shape_infer_temp.onnx into the current folder
    # when it cannot type every tensor; the Caffe2 AlexNet (IR 3, ConstantOfShape weights) is such a model.
    # real_models converts it with an empty scratch folder as the current folder and lists what is left.
    name, options = "onnx_light_alexnet_caffe2_op9.onnx", dict(token_layout="conv1d", vector_fc=True)
    result = real_models.convert(name, **options)
    assert len(result.report.converted) == 3
    assert real_models.files_left(name, **options) == []


@pytest.mark.e2e
def test_a_failed_rename_of_out_keeps_the_previous_out_and_its_data_file(lenet, replace_fails):
    # OUT.data is renamed into place before OUT; if OUT's own rename then fails, the previous OUT
    # must still find the data file it refers to.
    out = lenet.parent / "out.onnx"
    convert(lenet, out, external_data=True)
    old_out, old_data = out.read_bytes(), (lenet.parent / "out.onnx.data").read_bytes()
    replace_fails(lambda src, dst: dst == str(out))
    with pytest.raises(OutputError, match="No space left on device"):
        convert(lenet, out, external_data=True, keep_output_shape=True)
    assert out.read_bytes() == old_out
    assert (lenet.parent / "out.onnx.data").read_bytes() == old_data
    assert sorted(p.name for p in lenet.parent.iterdir()) == ["lenet5.onnx", "out.onnx", "out.onnx.data"]
