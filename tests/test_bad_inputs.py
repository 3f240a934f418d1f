"""Bad input: every case is one clear line and exit 2 from the CLI, a typed error from the API,
and nothing written. External data that points outside the model's folder is refused before any
of it is read."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import graphs
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import MODELS
from onnx import helper
from onnx.external_data_helper import set_external_data

from onnx_fc2conv import Fc2ConvError, InvalidModelError, UnsafeModelError, convert
from onnx_fc2conv.cli import main


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())  # onnx.save would refuse some of these models
    return path


def _with_external_weight(folder: Path, location: str, name: str = "model.onnx") -> Path:
    """A valid FC head whose Gemm weight lives in an external file at ``location``."""
    model = graphs.conv_flatten_gemm()
    weight = next(t for t in model.graph.initializer if t.name == "fc.w")
    raw = weight.raw_data
    set_external_data(weight, location, offset=0, length=len(raw))
    weight.ClearField("raw_data")
    return _save(model, folder / name)


def _outside_secret(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "secret.bin"
    secret.parent.mkdir()
    secret.write_bytes(b"\0" * 4096)
    return secret


def _cyclic(tmp_path: Path) -> Path:
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second"),
             helper.make_node("Identity", ["a"], ["y"], name="out")]
    g = helper.make_graph(nodes, "cycle", [graphs.vi("x", [1, 2])], [graphs.vi("y", [1, 2])])
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")


def _duplicate_names(tmp_path: Path) -> Path:
    nodes = [helper.make_node("Relu", ["x"], ["t"], name="a"), helper.make_node("Neg", ["x"], ["t"], name="b"),
             helper.make_node("Identity", ["t"], ["y"], name="c")]
    g = helper.make_graph(nodes, "dup", [graphs.vi("x", [1, 2])], [graphs.vi("y", [1, 2])])
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")


def _no_inputs(tmp_path: Path) -> Path:
    node = helper.make_node("Constant", [], ["y"], value=onnx.numpy_helper.from_array(np.ones(2, np.float32)))
    g = helper.make_graph([node], "const", [], [graphs.vi("y", [2])])
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")


def _versioned(tmp_path: Path, ir_version=None, opset=None) -> Path:
    model = graphs.conv_flatten_gemm()
    if ir_version:
        model.ir_version = ir_version
    if opset:
        model.opset_import[0].version = opset
    return _save(model, tmp_path / "m.onnx")


def _symlink_out(tmp_path: Path) -> Path:
    (tmp_path / "m").mkdir()
    os.symlink(_outside_secret(tmp_path), tmp_path / "m" / "w.bin")
    return _with_external_weight(tmp_path / "m", "w.bin")


def _symlinked_folder_out(tmp_path: Path) -> Path:
    (tmp_path / "m").mkdir()
    os.symlink(_outside_secret(tmp_path).parent, tmp_path / "m" / "data")
    return _with_external_weight(tmp_path / "m", "data/secret.bin")


def _hard_link(tmp_path: Path) -> Path:
    (tmp_path / "m").mkdir()
    os.link(_outside_secret(tmp_path), tmp_path / "m" / "w.bin")
    return _with_external_weight(tmp_path / "m", "w.bin")


def _escaping(location: str):
    def build(tmp_path: Path) -> Path:
        _outside_secret(tmp_path)
        (tmp_path / "m").mkdir()
        return _with_external_weight(tmp_path / "m", location)
    return build


def _one_node(tmp_path: Path, op: str, source: str) -> Path:
    g = helper.make_graph([helper.make_node(op, [source], ["y"], name="only")], "one", [graphs.vi("x", [1, 2])],
                          [graphs.vi("y", [1, 2])])
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")


def _duplicate_initializer(tmp_path: Path) -> Path:
    model = graphs.conv_flatten_gemm()
    model.graph.initializer.append(model.graph.initializer[0])
    return _save(model, tmp_path / "m.onnx")


LENET = (MODELS / "lenet5.onnx").read_bytes()

# name -> (how to make it, error type, the words the one-line message must contain)
BAD_INPUTS = {
    "missing path": (lambda p: p / "nope.onnx", InvalidModelError, "no such file"),
    "a directory": (lambda p: p, InvalidModelError, "is a directory"),
    "empty file": (lambda p: _write(p, b""), InvalidModelError, "the file is empty"),
    "truncated model": (lambda p: _write(p, LENET[: len(LENET) // 2]), InvalidModelError, "not a readable ONNX model"),
    "truncated header": (lambda p: _write(p, LENET[:7]), InvalidModelError, "not a readable ONNX model"),
    "random bytes": (lambda p: _write(p, np.random.default_rng(0).bytes(3000)), InvalidModelError, "not a"),
    "a JSON file": (lambda p: _write(p, b'{"graph": {"node": []}, "opset_import": 13}\n'), InvalidModelError, "not a"),
    "a text file": (lambda p: _write(p, b"hello, this is not a model\n"), InvalidModelError, "not a"),
    "ir_version too new": (lambda p: _versioned(p, ir_version=onnx.IR_VERSION + 1), InvalidModelError,
                           "is newer than the installed onnx"),
    "opset too new": (lambda p: _versioned(p, opset=onnx.defs.onnx_opset_version() + 1), InvalidModelError,
                      "is newer than the installed onnx"),
    "missing external data file": (lambda p: _with_external_weight(p, "weights.bin"), InvalidModelError,
                                   "'weights.bin' of tensor 'fc.w' is missing"),
    "external data ../../etc/passwd": (_escaping("../../etc/passwd"), UnsafeModelError,
                                       "points outside the model's folder"),
    "external data ../outside": (_escaping("../outside/secret.bin"), UnsafeModelError,
                                 "points outside the model's folder"),
    "external data absolute path": (_escaping("/etc/passwd"), UnsafeModelError, "is an absolute path"),
    "external data symlink out": (_symlink_out, UnsafeModelError, "is a symbolic link"),
    "external data hard-linked from outside": (_hard_link, UnsafeModelError, "has several hard links"),
    "external data in a symlinked folder": (_symlinked_folder_out, UnsafeModelError,
                                            "points outside the model's folder"),
    "duplicate tensor names": (_duplicate_names, InvalidModelError, "'t' is defined twice"),
    "a cycle": (_cyclic, InvalidModelError, "the graph has a cycle: 'first' -> 'second' -> 'first'"),
    "no inputs": (_no_inputs, InvalidModelError, "the graph has no inputs"),
    "duplicate initializer": (_duplicate_initializer, InvalidModelError, "'conv.w' is defined twice"),
    "a node reading an undefined tensor": (lambda p: _one_node(p, "Relu", "nowhere"), InvalidModelError,
                                           "node 'only' (Relu) reads 'nowhere', which no node"),
    "an op onnx does not know": (lambda p: _one_node(p, "FooBar", "x"), InvalidModelError,
                                 "is not a valid ONNX model: No Op registered for FooBar"),
    "a gzipped model": (lambda p: _write(p, gzip.compress(LENET)), InvalidModelError, "not a readable ONNX model"),
}


def _write(folder: Path, data: bytes) -> Path:
    path = folder / "m.onnx"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2_from_the_cli(tmp_path, case):
    make, _, words = BAD_INPUTS[case]
    source = make(tmp_path)
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, [str(source), str(out)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("onnx-fc2conv: error: "), result.output
    assert words in lines[0] and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_a_typed_error_from_the_api(tmp_path, case):
    make, error, words = BAD_INPUTS[case]
    with pytest.raises(error, match=".") as info:
        convert(make(tmp_path), tmp_path / "out.onnx")
    assert isinstance(info.value, Fc2ConvError) and words in str(info.value)


def test_external_data_outside_the_folder_is_refused_before_any_tensor_is_read(tmp_path, monkeypatch):
    # Two external tensors: a safe one first, then one escaping the folder. Neither may be read.
    (tmp_path / "m").mkdir()
    model = graphs.conv_flatten_gemm()
    for tensor, location in zip(model.graph.initializer[-2:], ["ok.bin", "../../etc/passwd"]):
        (tmp_path / "m" / "ok.bin").write_bytes(tensor.raw_data)
        set_external_data(tensor, location, offset=0, length=len(tensor.raw_data))
        tensor.ClearField("raw_data")
    path = _save(model, tmp_path / "m" / "model.onnx")
    reads = []
    monkeypatch.setattr(onnx, "load_external_data_for_model", lambda *a: reads.append(a))
    with pytest.raises(UnsafeModelError):
        convert(path)
    assert reads == []


@pytest.mark.e2e
def test_external_data_inside_the_folder_loads_and_converts(tmp_path):
    model = graphs.conv_flatten_gemm()
    weight = next(t for t in model.graph.initializer if t.name == "fc.w")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.bin").write_bytes(weight.raw_data)
    set_external_data(weight, "sub/w.bin", offset=0, length=len(weight.raw_data))
    weight.ClearField("raw_data")
    result = convert(_save(model, tmp_path / "model.onnx"))
    assert [n.status for n in result.report.nodes] == ["converted"] and result.report.verification


@pytest.mark.e2e
def test_custom_domain_ops_are_left_alone_and_the_rest_converts():
    # A com.microsoft op (ONNX Runtime knows it, onnx does not) on a side output of the head model.
    model = graphs.conv_flatten_gemm()
    model.graph.node.append(helper.make_node("Gelu", ["x"], ["side"], name="custom_gelu", domain="com.microsoft"))
    model.graph.output.append(graphs.vi("side", ["N", 2, 5, 5]))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    result = convert(model)
    assert [n.status for n in result.report.nodes] == ["converted"] and result.report.verification
    custom = [n for n in result.model.graph.node if n.domain == "com.microsoft"]
    assert [(n.op_type, list(n.input), list(n.output)) for n in custom] == [("Gelu", ["x"], ["side"])]


def test_ops_of_a_domain_nobody_knows_are_kept_and_the_head_still_converts():
    # ONNX Runtime cannot run "my.company" ops, so there is no proof here; the rewrite still happens.
    model = graphs.conv_flatten_gemm()
    model.graph.node.append(helper.make_node("Mystery", ["x"], ["side"], name="custom", domain="my.company", k=3))
    model.graph.output.append(graphs.vi("side", ["N", 2, 5, 5]))
    model.opset_import.append(helper.make_opsetid("my.company", 1))
    result = convert(model, verify=False)
    assert [n.status for n in result.report.nodes] == ["converted"]
    (custom,) = [n for n in result.model.graph.node if n.domain == "my.company"]
    assert custom == model.graph.node[-1]
