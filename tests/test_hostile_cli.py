"""What a hostile user's review broke at the command line: an OUT that is a device, FIFO, socket or
symbolic link, an empty OUT, a --report-json that is a folder. Each is refused in one line, exit 2,
before any work and writing nothing."""
from __future__ import annotations

import os
import shutil
import socket
import stat

import pytest
from click.testing import CliRunner
from conftest import MODELS

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

    monkeypatch.setattr(pipeline, "read_model", lambda *a: pytest.fail("IN was loaded before the refusal"))


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
