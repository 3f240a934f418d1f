"""Issue 17 ("Trust"), the I/O and command-line classes: IN is never destroyed (2), a previous good
OUT and its data file stay a matching pair (3), odd input is one line and exit 2 (5), sizes are
checked before memory is spent (6), tolerances that would make the proof empty are refused (7),
and the external-data, progress and file-name details of class 11."""
from __future__ import annotations

import hashlib
import math
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import graphs
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import MODELS, ROOT
from onnx import helper, numpy_helper

from onnx_fc2conv import InvalidModelError, OutputError, UsageError, convert, modelio, verify
from onnx_fc2conv.cli import main
from onnx_fc2conv.inputs import load_input_data, make_inputs
from onnx_fc2conv.progress import Progress


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}


def invoke(*args) -> CliRunner.Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, message: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    assert result.output == f"onnx-fc2conv: error: {message}\n"


@pytest.fixture
def lenet(tmp_path) -> Path:
    path = tmp_path / "lenet5.onnx"
    shutil.copy(MODELS / "lenet5.onnx", path)
    return path


def with_external_weight(folder: Path, location: str, entries=None, payload: bytes | None = None,
                         name: str = "model.onnx") -> Path:
    """The FC head of tests/graphs.py whose Gemm weight is in ``location`` (written here), with the
    external-data ``entries`` given (default: location, offset 0, length)."""
    model = graphs.conv_flatten_gemm()
    weight = next(t for t in model.graph.initializer if t.name == "fc.w")
    raw = weight.raw_data
    (folder / location).write_bytes(raw if payload is None else payload)
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    for key, value in entries or [("location", location), ("offset", "0"), ("length", str(len(raw)))]:
        weight.external_data.add(key=key, value=value)
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


# ---- 2. IN is never destroyed ---------------------------------------------------------------------

def test_out_that_is_an_external_data_file_of_in_named_onnx_is_refused(tmp_path):
    source = with_external_weight(tmp_path, "weights.onnx")
    before = snapshot(tmp_path)
    out = tmp_path / "weights.onnx"
    one_line_error(invoke(source, out), f"{out}: writing it would replace {out}, which holds the input model's "
                                        "weights; choose another OUT")
    assert snapshot(tmp_path) == before


def test_out_whose_data_file_is_in_is_refused(tmp_path, lenet):
    source = tmp_path / "out.onnx.data"
    lenet.rename(source)
    before = snapshot(tmp_path)
    out = tmp_path / "out.onnx"
    one_line_error(invoke(source, out, "--external-data"),
                   f"{out}: its weights would be written to {source}, which is the input model; choose another OUT")
    assert snapshot(tmp_path) == before
    with pytest.raises(OutputError, match="which is the input model"):
        convert(source, out, external_data=True)


@pytest.mark.parametrize("target, what", [
    ("lenet5.onnx", "the input model"),
    ("out.onnx", "OUT"),
    ("out.onnx.data", "OUT's data file"),
    ("in.npz", "the --input-data file"),
])
def test_report_json_on_a_file_the_run_reads_or_writes_is_refused(tmp_path, lenet, target, what):
    np.savez(tmp_path / "in.npz", input=np.zeros((1, 1, 32, 32), np.float32))
    (tmp_path / "out.onnx").write_bytes(b"a previous OUT")
    (tmp_path / "out.onnx.data").write_bytes(b"its weights")
    before = snapshot(tmp_path)
    report = tmp_path / target
    result = invoke(lenet, tmp_path / "out.onnx", "--input-data", tmp_path / "in.npz", "--report-json", report)
    one_line_error(result, f"--report-json {report}: is {what}; choose another path")
    assert snapshot(tmp_path) == before


def test_report_json_on_an_external_data_file_of_in_is_refused(tmp_path):
    source = with_external_weight(tmp_path, "w.bin")
    before = snapshot(tmp_path)
    report = tmp_path / "w.bin"
    one_line_error(invoke(source, tmp_path / "out.onnx", "--report-json", report),
                   f"--report-json {report}: is a data file of the input model; choose another path")
    assert snapshot(tmp_path) == before


@pytest.mark.e2e
def test_report_json_is_written_atomically(tmp_path, lenet, replace_fails):
    report = tmp_path / "r.json"
    report.write_text("the previous report\n")
    replace_fails(lambda src, dst: dst == str(report))
    result = invoke(lenet, tmp_path / "out.onnx", "-q", "--report-json", report)
    one_line_error(result, f"{report}: cannot write the report (No space left on device)")
    assert report.read_text() == "the previous report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet5.onnx", "out.onnx", "r.json"]


# ---- 3. a previous good OUT stays a matching pair -----------------------------------------------

def weight_model(value: float) -> onnx.ModelProto:
    """y = x + w with a 4 KB weight (so it goes to external data) filled with ``value``."""
    w = numpy_helper.from_array(np.full(1024, value, np.float32), "w")
    node = helper.make_node("Add", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [graphs.vi("x", [1024])], [graphs.vi("y", [1024])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def saved_weight(out: Path) -> float:
    """The weight value of the pair OUT + OUT.data; fails if they do not match."""
    values = numpy_helper.to_array(onnx.load(str(out)).graph.initializer[0])
    assert values.shape == (1024,) and np.all(values == values[0])
    return float(values[0])


def test_a_failed_move_of_the_old_data_file_keeps_the_previous_pair(tmp_path, replace_fails):
    out, data = tmp_path / "out.onnx", tmp_path / "out.onnx.data"
    modelio.save_model(weight_model(1.0), out, external_data=True)
    before = snapshot(tmp_path)
    replace_fails(lambda src, dst: src == str(data), 16, "Device or resource busy")
    with pytest.raises(OutputError, match=r"cannot write \(Device or resource busy\)"):
        modelio.save_model(weight_model(2.0), out, external_data=True)
    assert snapshot(tmp_path) == before
    assert saved_weight(out) == 1.0


def test_concurrent_saves_to_one_out_leave_one_matching_pair(tmp_path):
    out = tmp_path / "out.onnx"
    models = [weight_model(1.0), weight_model(2.0)]
    for _ in range(200):
        barrier, errors = threading.Barrier(2), []

        def save(model, barrier=barrier, errors=errors):  # this round's, bound now
            barrier.wait()
            try:
                modelio.save_model(model, out, external_data=True)
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=save, args=(m,)) for m in models]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert saved_weight(out) in (1.0, 2.0)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data"]


# ---- 5. one line, exit 2, nothing written --------------------------------------------------------

@pytest.mark.parametrize("key, value", [("offset", "-5"), ("offset", "1.5"), ("length", "-1"), ("length", "abc")])
def test_external_data_with_a_bad_offset_or_length_is_one_line(tmp_path, key, value):
    entries = {"location": "w.bin", "offset": "0", "length": "720", key: value}
    source = with_external_weight(tmp_path, "w.bin", entries.items())
    before = snapshot(tmp_path)
    one_line_error(invoke(source, tmp_path / "out.onnx"),
                   f"{source}: the external data of tensor 'fc.w' has {key} {value!r}; it must be a "
                   "non-negative integer")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("dims, message", [
    ("1x1x²x32", "'²' is not a positive size or '?'"),
    ("1x1x32x99999999999999999999", "99999999999999999999 is larger than an int64"),
])
def test_input_shape_with_odd_digits_is_one_line(tmp_path, dims, message):
    result = invoke(MODELS / "lenet5.onnx", tmp_path / "o.onnx", "--input-shape", f"input:{dims}")
    one_line_error(result, f"--input-shape 'input:{dims}': {message}")
    assert list(tmp_path.iterdir()) == []


def test_input_data_given_a_npy_file_is_one_line(tmp_path):
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((1, 1, 32, 32), np.float32))
    result = invoke(MODELS / "lenet5.onnx", tmp_path / "o.onnx", "--input-data", npy)
    one_line_error(result, f"--input-data {npy}: a .npy file holds one array without an input name; "
                           "save the arrays with numpy.savez(FILE, NAME=array)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


def test_out_data_that_is_a_directory_is_refused_before_any_work(tmp_path, lenet):
    (tmp_path / "out.onnx.data").mkdir()
    result = invoke(lenet, tmp_path / "out.onnx", "--external-data")
    one_line_error(result, f"{tmp_path / 'out.onnx.data'}: is a directory; OUT's weights would be written there")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet5.onnx", "out.onnx.data"]
    with pytest.raises(OutputError, match="is a directory"):  # modelio refuses it on its own too
        modelio.save_model(weight_model(1.0), tmp_path / "out.onnx", external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet5.onnx", "out.onnx.data"]


@pytest.mark.e2e
@pytest.mark.parametrize("where", ["onnx_fc2conv.pipeline.read_streamed", "onnx_fc2conv.verify.make_inputs",
                                   "onnx_fc2conv.modelio._with_external_data", "onnx_fc2conv.inspection.inspect"])
def test_ctrl_c_at_any_point_is_interrupted_and_exit_130(tmp_path, lenet, monkeypatch, where):
    module, name = where.rsplit(".", 1)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    import importlib
    monkeypatch.setattr(importlib.import_module(module), name, interrupt)
    if name == "inspect":
        monkeypatch.setattr("onnx_fc2conv.cli.inspect", interrupt)
        result = invoke("inspect", lenet)
    else:
        result = invoke(lenet, tmp_path / "out.onnx", "--external-data")
    assert result.exit_code == 130
    assert result.output == "onnx-fc2conv: interrupted\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet5.onnx"]


SIGNAL_DURING_WRITE = """
import os, signal, sys
import onnx_fc2conv.modelio as modelio
real = modelio._with_external_data
def write_then_signal(*args):
    shell = real(*args)  # the data temp file is written: now the signal arrives
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    return shell
modelio._with_external_data = write_then_signal
from onnx_fc2conv.cli import main
main(sys.argv[2:], prog_name="onnx-fc2conv")
"""


@pytest.mark.e2e
@pytest.mark.parametrize("signame, code, word", [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")])
def test_a_signal_during_the_write_removes_the_temp_files(tmp_path, lenet, signame, code, word):
    proc = subprocess.run([sys.executable, "-c", SIGNAL_DURING_WRITE, signame, str(lenet), str(tmp_path / "out.onnx"),
                           "--external-data", "-q"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (code, "", f"onnx-fc2conv: {word}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet5.onnx"]


# ---- 6. sizes checked before memory is spent -----------------------------------------------------

def big_npz(path: Path, name: str) -> None:
    """An npz whose member claims a 4 GiB float32 array: the header only, the data is never there."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (1 << 30,)}
    with zipfile.ZipFile(path, "w") as zf, zf.open(f"{name}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_1_0(member, header)


def test_npz_names_are_checked_before_any_array_is_decompressed(tmp_path):
    big_npz(tmp_path / "in.npz", "not_an_input")
    result = invoke(MODELS / "lenet5.onnx", tmp_path / "o.onnx", "--input-data", tmp_path / "in.npz")
    one_line_error(result, "--input-data names 'not_an_input', which is not an input of the model (inputs: input)")


def test_npz_array_sizes_are_checked_from_the_header(tmp_path):
    big_npz(tmp_path / "in.npz", "x")
    with pytest.raises(UsageError) as info:
        load_input_data(tmp_path / "in.npz")
    assert str(info.value) == (f"--input-data {tmp_path / 'in.npz'}: array 'x' would need 4 GB "
                               "(float32 [1073741824]); the limit is 2 GB (ONNX_FC2CONV_MAX_INPUT_BYTES)")


def test_a_huge_input_shape_is_refused_before_allocating(tmp_path):
    result = invoke(MODELS / "lenet5.onnx", tmp_path / "o.onnx", "--input-shape", "input:1000000000x1x32x32")
    one_line_error(result, "input 'input' would need 3,815 GB (float32 [1000000000,1,32,32]); the limit is 2 GB "
                           "(ONNX_FC2CONV_MAX_INPUT_BYTES)")


def test_a_huge_declared_dim_is_refused_before_allocating():
    model = graphs.model([helper.make_node("Relu", ["x"], ["y"])], [graphs.vi("x", [1 << 40])],
                         [graphs.vi("y", [1 << 40])])
    with pytest.raises(UsageError, match=r"^input 'x' would need 4,096 GB \(float32 \[1099511627776\]\)"):
        make_inputs(model)


def test_the_input_size_limit_can_be_raised(monkeypatch):
    model = graphs.model([helper.make_node("Relu", ["x"], ["y"])], [graphs.vi("x", [1024])], [graphs.vi("y", [1024])])
    monkeypatch.setenv("ONNX_FC2CONV_MAX_INPUT_BYTES", "1000")
    with pytest.raises(UsageError, match=r"^input 'x' would need 4 KB \(float32 \[1024\]\); the limit is 1,000 bytes "):
        make_inputs(model)
    monkeypatch.setenv("ONNX_FC2CONV_MAX_INPUT_BYTES", "4096")
    assert make_inputs(model)[0]["x"].shape == (1024,)
    monkeypatch.setenv("ONNX_FC2CONV_MAX_INPUT_BYTES", "lots")
    with pytest.raises(UsageError, match="ONNX_FC2CONV_MAX_INPUT_BYTES 'lots' is not a number of bytes"):
        make_inputs(model)


# ---- 7. tolerances ------------------------------------------------------------------------------

@pytest.mark.parametrize("option, value", [("--rtol", "-1"), ("--atol", "-1e-5"), ("--rtol", "nan"),
                                           ("--atol", "nan"), ("--atol", "inf"), ("--rtol", "inf")])
def test_tolerances_that_prove_nothing_are_usage_errors(tmp_path, option, value):
    result = invoke(MODELS / "lenet5.onnx", tmp_path / "o.onnx", option, value)
    shown = repr(float(value))
    one_line_error(result, f"{option[2:]} {shown} is not a tolerance: give a finite number >= 0")
    assert list(tmp_path.iterdir()) == []


def test_the_api_checks_tolerances_too(tmp_path):
    with pytest.raises(UsageError, match=r"^atol inf is not a tolerance"):
        convert(MODELS / "lenet5.onnx", atol=math.inf)
    with pytest.raises(UsageError, match=r"^rtol -0.1 is not a tolerance"):
        verify(MODELS / "lenet5.onnx", MODELS / "lenet5.onnx", rtol=-0.1)


# ---- 11. external-data keys and lengths, progress, 0-byte data, long names -----------------------

def test_an_unknown_external_data_key_is_one_clear_line(tmp_path, recwarn):
    entries = [("location", "w.bin"), ("offset", "0"), ("length", "720"), ("bogus", "1")]
    source = with_external_weight(tmp_path, "w.bin", entries)
    one_line_error(invoke(source, tmp_path / "out.onnx"),
                   f"{source}: the external data of tensor 'fc.w' has an unknown key 'bogus' "
                   "(known: basepath, checksum, length, location, offset)")
    assert [str(w.message) for w in recwarn] == []


@pytest.mark.e2e
def test_external_data_without_a_length_must_fill_the_tensor(tmp_path):
    weight = next(t for t in graphs.conv_flatten_gemm().graph.initializer if t.name == "fc.w").raw_data
    source = with_external_weight(tmp_path, "w.bin", [("location", "w.bin")], payload=weight + bytes(64))
    with pytest.raises(InvalidModelError) as info:
        convert(source)
    assert str(info.value) == (f"{source}: the external data of tensor 'fc.w' is 784 bytes (it has no length, so "
                               "it runs to the end of 'w.bin'), but its shape [5, 36] needs 720")
    exact = with_external_weight(tmp_path, "exact.bin", [("location", "exact.bin")], name="exact.onnx")
    assert convert(exact).report.converted  # no length, and the file holds exactly the tensor: fine


def test_the_progress_line_says_failed_for_a_step_that_failed():
    import io

    stream = io.StringIO()
    progress = Progress(True, {}, stream)
    progress.large = True
    with pytest.raises(RuntimeError), progress.step("save", "writing out.onnx"):
        raise RuntimeError("disk full")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "onnx-fc2conv: writing out.onnx ..."
    assert lines[1].startswith("onnx-fc2conv: writing out.onnx: failed after ") and lines[1].endswith(" s")


def test_no_data_file_is_written_when_no_tensor_goes_external(tmp_path):
    small = graphs.conv_flatten_gemm()  # every weight under 1 KB
    modelio.save_model(small, tmp_path / "out.onnx", external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]
    assert onnx.load(str(tmp_path / "out.onnx")) == small


def test_an_out_name_near_the_file_name_limit_is_written(tmp_path):
    out = tmp_path / ("o" * 245 + ".onnx")  # 250 bytes: OUT.data's name (255) still fits
    modelio.save_model(weight_model(1.0), out, external_data=True)
    assert saved_weight(out) == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, out.name + ".data"]
