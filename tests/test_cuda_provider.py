"""--provider cuda: checked on CUDA where onnxruntime-gpu and a GPU are present, else one clean
"skipped" line while the CPU proof still runs and decides."""
from __future__ import annotations

import onnxruntime as ort
import pytest
from click.testing import CliRunner
from conftest import MODELS

from onnx_fc2conv import convert
from onnx_fc2conv.cli import main

pytestmark = pytest.mark.e2e

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
SKIPPED = "skipped: CUDAExecutionProvider not available (install onnxruntime-gpu and run on a GPU)"


def test_provider_cuda_from_the_cli_checks_cuda_or_says_skipped(tmp_path):
    result = CliRunner().invoke(main, [str(MODELS / "lenet5.onnx"), str(tmp_path / "o.onnx"), "--provider", "cuda"])
    assert result.exit_code == 0, result.output
    assert "verification passed" in result.output
    assert (SKIPPED in result.output) is not HAS_CUDA
    assert result.output.count("skipped: CUDA") == (0 if HAS_CUDA else 1)


def test_provider_cuda_from_the_api_runs_cuda_checks_or_records_the_skip():
    verification = convert(MODELS / "lenet5.onnx", providers=("cpu", "cuda")).report.verification
    cuda_checks = [c for c in verification.checks if c.provider == "cuda"]
    cpu_checks = [c for c in verification.checks if c.provider == "cpu"]
    assert verification.passed and cpu_checks and all(c.passed for c in cpu_checks)
    if HAS_CUDA:
        assert cuda_checks and all(c.passed for c in cuda_checks) and verification.skipped == []
    else:
        assert cuda_checks == [] and verification.skipped == [SKIPPED.removeprefix("skipped: ")]
