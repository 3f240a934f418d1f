"""The command line: exit codes, what it prints, what it writes and what it never touches."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import MODELS

from onnx_fc2conv.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.e2e
def test_convert_prints_a_compact_summary_and_writes_out(tmp_path):
    out = tmp_path / "out.onnx"
    before = hashlib.sha256((MODELS / "lenet5.onnx").read_bytes()).hexdigest()
    result = invoke(MODELS / "lenet5.onnx", out)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{MODELS / 'lenet5.onnx'}: converted 3 of 3 FC nodes (opset 13)"
    assert lines[1] == "  output logits: [N,10] -> [N,10,logits_height,logits_width]"
    assert lines[2] == "  input input now takes [N,1,height,width] (spatial size >= the original)"
    assert lines[3] == "  windows of logits: 32x32 px of input 'input', stride 4x4, offset 0,0"
    assert lines[4].startswith("verification passed: 5 checks, max abs error ")
    assert lines[4].endswith("20 window positions matched, 48 input crops matched")
    assert lines[5:] == [f"wrote {out}"]
    assert out.exists()
    assert hashlib.sha256((MODELS / "lenet5.onnx").read_bytes()).hexdigest() == before


@pytest.mark.e2e
def test_verbose_adds_one_line_per_fc_node_and_per_check(tmp_path):
    result = invoke(MODELS / "lenet5.onnx", tmp_path / "out.onnx", "-v")
    converted = [line.split()[1] for line in result.output.splitlines() if line.startswith("  converted  ")]
    assert converted == ["c5/Gemm", "f6/Gemm", "output/Gemm"]
    checks = [line.split()[1:3] for line in result.output.splitlines() if line.startswith("  ok   ")]
    assert checks == [["original", "size"], ["sliding", "window"], ["input", "crops"], ["sliding", "window"],
                      ["input", "crops"]]


def test_compact_summary_counts_skipped_nodes_by_reason(tmp_path):
    result = invoke(MODELS / "bert_layer.onnx", tmp_path / "o.onnx")
    assert "  not converted: 6 token_matmul (-v lists each node)" in result.output.splitlines()
    verbose = invoke(MODELS / "bert_layer.onnx", tmp_path / "o.onnx", "-v")
    assert sum(line.startswith("  skipped    ") and "[token_matmul]" in line for line in verbose.output.splitlines()) == 6


def test_nothing_convertible_exits_zero_and_says_so(tmp_path):
    result = invoke(MODELS / "seed_mlp.onnx", tmp_path / "o.onnx")
    assert result.exit_code == 0
    assert "nothing convertible" in result.output


@pytest.mark.e2e
def test_report_json_lists_nodes_and_errors(tmp_path):
    result = invoke(MODELS / "vgg_small.onnx", tmp_path / "o.onnx", "--report-json", tmp_path / "r.json", "-q")
    assert result.exit_code == 0 and result.output == ""
    report = json.loads((tmp_path / "r.json").read_text())
    assert [n["rule"] for n in report["nodes"]] == ["flatten_gemm", "fc_chain", "fc_chain"]
    assert report["verification"]["passed"] is True
    assert report["verification"]["checks"][0]["max_abs_error"] < 1e-5
    assert report["geometry"]["probs"]["axes"] == [{"size": 46, "stride": 8, "offset": -7, "margin": 7, "crop": 32}] * 2


@pytest.mark.parametrize("args, message", [
    (["missing.onnx"], "no such file"),
    (["."], "is a directory"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    result = CliRunner().invoke(main, [*args, str(tmp_path / "o.onnx")])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bad_input_shape_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, [str(MODELS / "lenet5.onnx"), str(tmp_path / "o.onnx"), "--input-shape", "x:1xAx3"])
    assert result.exit_code == 2 and "not a positive size" in result.output


@pytest.mark.e2e
def test_failed_verification_exits_1_and_writes_nothing(tmp_path, monkeypatch):
    # A deliberately broken rewrite: every conv kernel written 1% too large.
    from onnx_fc2conv.rules import _dense

    def broken(index, dense, shape, *layout):
        from onnx import numpy_helper
        w = index.constant(dense.weight)
        w = (w.T if dense.weight_is_k_by_f else w) * dense.alpha * 1.01
        name = index.fresh_name("broken_kernel")
        return name, [numpy_helper.from_array(w.astype(np.float32).reshape(shape), name)], {}

    monkeypatch.setattr(_dense, "_conv_weight", broken)
    out = tmp_path / "o.onnx"
    result = invoke(MODELS / "lenet5.onnx", out)
    assert result.exit_code == 1
    assert "VERIFICATION FAILED" in result.output and "not written" in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.e2e
def test_python_dash_m_runs_the_cli(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "onnx_fc2conv", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "Usage: onnx-fc2conv" in proc.stdout


def test_top_level_help_lists_each_command_form_on_its_own_line():
    result = CliRunner().invoke(main, ["--help"])
    lines = [line.strip() for line in result.output.splitlines()]
    assert result.exit_code == 0
    assert any(line.startswith("onnx-fc2conv IN OUT [options]") and line.endswith("convert IN OUT)") for line in lines)
    assert any(line.startswith("onnx-fc2conv inspect IN [--json]") for line in lines)
    assert "\\b" not in result.output
