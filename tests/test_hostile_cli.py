"""What a hostile user's review broke at the command line: an OUT that is a device, FIFO, socket or
symbolic link, an empty OUT, a --report-json that is a folder, usage errors in four lines, and one
input's shape given twice. Each is refused in one line, exit 2, before any work and writing nothing."""
from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import MODELS, ROOT

from onnx_fc2conv import OutputError, convert
from onnx_fc2conv.cli import main


@pytest.fixture
def lenet(tmp_path):
    path = tmp_path / "lenet5.onnx"
    shutil.copy(MODELS / "lenet5.onnx", path)
    return path


@pytest.fixture
def no_work(monkeypatch):
    """Loading IN fails the test: each refusal here must come before any work."""
    import onnx_fc2conv.pipeline as pipeline

    for reader in ("read_streamed", "load_model"):  # with an OUT, and without
        monkeypatch.setattr(pipeline, reader, lambda *a: pytest.fail("IN was loaded before the refusal"))


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_refused(result, message: str) -> None:
    """One line on stderr, nothing on stdout, exit 2."""
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", f"onnx-fc2conv: error: {message}\n")


def make_special(path, kind: str) -> None:
    if kind == "a FIFO":
        os.mkfifo(path)
    elif kind == "a socket":
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))  # the socket file stays after the socket closes
    else:  # a copy of /dev/null's device numbers, made in the test's own folder
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))


KINDS = ["a FIFO", "a socket",
         pytest.param("a character device", marks=pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root"))]


# ---- 1. OUT or OUT.data that is not a regular file ---------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_out_that_is_not_a_regular_file_is_refused_before_any_work(lenet, no_work, kind):
    out = lenet.parent / "out"
    make_special(out, kind)
    assert_refused(invoke(lenet, out), f"{out}: is not a regular file ({kind}); give a file path")
    assert not stat.S_ISREG(out.lstat().st_mode)  # left as it was


def test_out_data_that_is_not_a_regular_file_is_refused_before_any_work(lenet, no_work):
    out, data = lenet.parent / "out.onnx", lenet.parent / "out.onnx.data"
    os.mkfifo(data)
    assert_refused(invoke(lenet, out),
                   f"{data}: is not a regular file (a FIFO); OUT's weights would be written there")
    assert not out.exists() and stat.S_ISFIFO(data.lstat().st_mode)


# ---- 2. OUT or OUT.data that is a symbolic link ------------------------------------------------

def test_out_that_is_a_symbolic_link_is_refused_naming_its_target(lenet, no_work):
    target, link = lenet.parent / "target.onnx", lenet.parent / "link.onnx"
    target.write_bytes(b"previous OUT")
    link.symlink_to(target.name)
    assert_refused(invoke(lenet, link),
                   f"{link}: is a symbolic link to {target}; give {target} itself (or another path)")
    assert link.is_symlink() and target.read_bytes() == b"previous OUT"


def test_inplace_on_a_symbolic_link_to_in_is_refused_naming_in(lenet, no_work):
    link = lenet.parent / "link.onnx"
    link.symlink_to(lenet.name)
    before = lenet.read_bytes()
    assert_refused(invoke(link, link, "--inplace", "-q"),
                   f"{link}: is a symbolic link to {lenet}; give {lenet} itself (or another path)")
    assert link.is_symlink() and lenet.read_bytes() == before


def test_out_through_a_symbolic_link_to_in_without_inplace_still_says_out_is_in(lenet, no_work):
    link = lenet.parent / "link.onnx"
    link.symlink_to(lenet.name)
    assert_refused(invoke(lenet, link), f"{link}: OUT is the input model; pass --inplace (inplace=True) to overwrite it")


def test_out_data_that_is_a_symbolic_link_is_refused_naming_its_target(lenet, no_work):
    out, data, target = lenet.parent / "out.onnx", lenet.parent / "out.onnx.data", lenet.parent / "weights.bin"
    target.write_bytes(b"someone's weights")
    data.symlink_to(target.name)
    assert_refused(invoke(lenet, out), f"{data}: is a symbolic link to {target}; OUT's weights would replace "
                                       "the link, not the file: choose another OUT")
    assert not out.exists() and target.read_bytes() == b"someone's weights"


# ---- 3. an empty OUT ---------------------------------------------------------------------------

def test_an_empty_out_is_a_usage_error_in_one_line(lenet, no_work):
    assert_refused(invoke(lenet, ""), "Invalid value for 'OUT': the path is empty; give a file path "
                                      "(see onnx-fc2conv convert --help)")


def test_an_empty_output_path_in_the_api_is_an_output_error(lenet, no_work, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # pathlib reads "" as ".", the current folder
    with pytest.raises(OutputError, match=r"^\.: is a directory; give the path of the \.onnx file to write$"):
        convert(lenet, "")


# ---- 4. --report-json that is a folder ---------------------------------------------------------

def test_report_json_that_is_a_folder_is_refused_before_any_work(lenet, no_work):
    out, folder = lenet.parent / "out.onnx", lenet.parent / "reports"
    folder.mkdir()
    assert_refused(invoke(lenet, out, "--report-json", folder), f"--report-json {folder}: is a directory")
    assert not out.exists()


# ---- 5. usage errors are one line --------------------------------------------------------------

RULES = ("'dense_pool', 'token_rows', 'nhwc_flatten', 'flatten_gemm', 'reshape_flatten', 'matmul_add', 'squeeze_flatten', "
         "'token_matmul', 'channels_last_mlp', 'vector_fc', 'fc_chain', 'axis_fixups'")


@pytest.mark.parametrize("args, message", [
    (["--atol", "abc"], "Invalid value for '--atol': 'abc' is not a valid float (see onnx-fc2conv convert --help)"),
    (["--provider", "tpu"],
     "Invalid value for '--provider': 'tpu' is not one of 'cpu', 'cuda', 'openvino' (see onnx-fc2conv convert --help)"),
    (["--skip-rule", "bogus"],
     f"Invalid value for '--skip-rule': 'bogus' is not one of {RULES} (see onnx-fc2conv convert --help)"),
    (["--bogus"], "No such option '--bogus'. Did you mean '--verbose'? (see onnx-fc2conv convert --help)"),
])
def test_a_usage_error_of_convert_is_one_line(lenet, no_work, args, message):
    assert_refused(invoke(lenet, lenet.parent / "out.onnx", *args), message)


def test_a_missing_out_is_one_line(lenet, no_work):
    assert_refused(invoke(lenet), "Missing argument 'OUT' (see onnx-fc2conv convert --help)")


def test_a_usage_error_of_inspect_is_one_line(lenet):
    assert_refused(invoke("inspect", lenet, "--token-layout", "conv3d"),
                   "Invalid value for '--token-layout': 'conv3d' is not one of 'conv1d', 'conv2d' "
                   "(see onnx-fc2conv inspect --help)")


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["convert", "--help"], ["inspect", "--help"]])
def test_help_still_prints_usage_and_exits_0(args):
    result = invoke(*args)
    assert result.exit_code == 0 and result.stdout.startswith("Usage: ") and result.stderr == ""


def test_version_still_prints_and_exits_0():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("onnx-fc2conv, version ")


def test_no_arguments_still_prints_the_help():
    result = invoke()
    assert result.exit_code == 2 and "Usage: " in result.output and "onnx-fc2conv: error" not in result.output


@pytest.mark.e2e
def test_a_usage_error_in_a_real_process_is_one_line_and_exit_2(lenet, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "onnx_fc2conv", str(lenet), str(tmp_path / "o.onnx"),
                           "--atol", "abc"], capture_output=True, text=True, cwd=ROOT)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == ("onnx-fc2conv: error: Invalid value for '--atol': 'abc' is not a valid float "
                           "(see onnx-fc2conv convert --help)\n")


# ---- 6. one input's shape given twice ----------------------------------------------------------

def test_two_shapes_for_one_input_are_refused(lenet, no_work):
    assert_refused(invoke(lenet, lenet.parent / "out.onnx", "--input-shape", "input:1x1x32x32",
                          "--input-shape", "input:2x1x32x32"),
                   "--input-shape: 'input' is given twice (1x1x32x32 and 2x1x32x32)")


def test_the_same_shape_given_twice_is_accepted(lenet):
    result = invoke("inspect", lenet, "--input-shape", "input:1x1x32x32", "--input-shape", "input:1X1x32x32")
    assert result.exit_code == 0, result.output


# ---- 7. a one-value option given twice ----------------------------------------------------------

@pytest.mark.parametrize(("option", "first", "second"), [
    ("--output-stride", "2", "4"), ("--token-layout", "conv1d", "conv2d"), ("--rtol", "1e-3", "1e-2"),
    ("--atol", "1e-5", "1e-4"), ("--input-data", "a.npz", "b.npz"), ("--report-json", "a.json", "b.json")])
def test_a_one_value_option_given_twice_with_two_values_is_refused(lenet, no_work, option, first, second):
    """Click would keep the last and drop the first without a word, as --input-shape once did."""
    assert_refused(invoke(lenet, lenet.parent / "out.onnx", option, first, option, second),
                   f"Invalid value for '{option}': given twice ({first} and {second}) "
                   "(see onnx-fc2conv convert --help)")


def test_a_one_value_option_given_twice_with_one_value_is_that_value(lenet):
    result = invoke("inspect", lenet, "--token-layout", "conv1d", "--token-layout", "conv1d")
    assert result.exit_code == 0, result.output
    refused = invoke("inspect", lenet, "--token-layout", "conv1d", "--token-layout", "conv2d")
    assert refused.exit_code == 2 and "given twice (conv1d and conv2d)" in refused.stderr
