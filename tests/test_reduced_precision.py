"""fp16 proofs: the default atol follows the output's scale (a few units in its last place), so
rounding differences between a Gemm and a Conv pass and a wrong kernel still fails."""
from __future__ import annotations

import numpy as np
import pytest
from test_properties import Head, Layer, build

from onnx_fc2conv import VerificationFailed, convert
from onnx_fc2conv.rules import _dense

# Found by `make fuzz` (10,000 cases): three fp16 Gemms with alpha 2 grow the outputs to 7.6, and one
# window position of 0.43 differs by 0.0078, one unit in the last place at 4-8 (two at 4).
GROWING_FP16_HEAD = Head(
    dtype=np.float16, opset=11, channels=2, spatial=(2,), conv_kernel=2, flatten="Flatten",
    layers=(Layer(features=3, op="Gemm", trans_b=0, alpha=2.0, beta=0.5, bias="scalar", after=("AddVector",)),
            Layer(features=2, op="Gemm", trans_b=0, alpha=2.0, beta=1.0, bias="vector", after=()),
            Layer(features=3, op="Gemm", trans_b=0, alpha=2.0, beta=0.5, bias="scalar", after=())),
    softmax=False, keep_output_shape=False, in_if=False, vector_fc=False, fold_batch=False, seed=1243)


@pytest.mark.e2e
def test_an_fp16_head_whose_outputs_grow_is_proved_within_units_in_the_last_place():
    verification = convert(build(GROWING_FP16_HEAD)).report.verification
    assert verification.passed and verification.max_abs_error == pytest.approx(0.0078125)
    assert verification.atol == pytest.approx(4 * 2.0 ** (2 - 10))  # 4 ulps at 7.6 (exponent 2)
    assert [c.check for c in verification.checks] == ["original size", "sliding window 6", "sliding window 5"]


@pytest.mark.e2e
def test_an_fp16_kernel_one_percent_off_still_fails(monkeypatch):
    real = _dense.kernel_layout
    monkeypatch.setattr(_dense, "kernel_layout", lambda *args: (real(*args) * 1.01).astype(np.float16))
    with pytest.raises(VerificationFailed) as failed:
        convert(build(GROWING_FP16_HEAD))
    assert failed.value.result.report.verification.max_abs_error > 4 * 2.0 ** (2 - 10)
