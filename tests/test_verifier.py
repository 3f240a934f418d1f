"""The verifier is the proof: it must pass a right rewrite and catch a wrong one."""
from __future__ import annotations

import pytest
from onnx import helper, numpy_helper

from onnx_fc2conv import convert, verify
from onnx_fc2conv.verify import larger_sizes


def _head_conv(model):
    return next(n for n in model.graph.node if n.op_type == "Conv" and n.name == "c5/Gemm")


@pytest.mark.e2e
def test_verify_passes_a_correct_rewrite_with_both_checks(build_models):
    original = build_models.lenet5()
    converted = convert(original, verify=False).model
    result = verify(original, converted)
    assert result and result.passed
    kinds = sorted({c.check for c in result.checks})
    assert kinds == ["input crops 48x65", "input crops 64x64", "original size", "sliding window 48x65",
                     "sliding window 64x64"]
    assert result.inputs[0].shape == [2, 1, 32, 32]  # batch 2, not 1


@pytest.mark.e2e
def test_verify_catches_one_wrong_weight(build_models):
    original = build_models.lenet5()
    converted = convert(original, verify=False).model
    weight = next(t for t in converted.graph.initializer if t.name == _head_conv(converted).input[1])
    w = numpy_helper.to_array(weight).copy()
    w[7, 3, 2, 1] += 0.05
    weight.CopyFrom(numpy_helper.from_array(w, weight.name))
    result = verify(original, converted)
    assert not result
    failed = [c for c in result.checks if not c.passed]
    assert failed and failed[0].check == "original size" and failed[0].max_abs_error > 1e-4


@pytest.mark.e2e
def test_verify_catches_a_rewrite_that_is_right_only_at_the_original_size(build_models):
    # Stride 2 on the head Conv changes nothing at the original size (one window), but the map on a
    # larger input no longer matches one output per window: only the sliding-window check sees it.
    original = build_models.lenet5()
    converted = convert(original, verify=False).model
    _head_conv(converted).attribute.append(helper.make_attribute("strides", [2, 2]))
    for a in list(_head_conv(converted).attribute):
        if a.name == "strides" and list(a.ints) == [1, 1]:
            _head_conv(converted).attribute.remove(a)
    result = verify(original, converted)
    assert not result
    assert all(c.passed for c in result.checks if c.check == "original size")
    assert any(not c.passed for c in result.checks if c.check.startswith("sliding window"))


@pytest.mark.e2e
def test_verify_reports_cuda_as_skipped_when_not_available(build_models):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    original = build_models.seed_fc()
    result = verify(original, convert(original, verify=False).model, providers=("cuda",))
    assert result.passed
    assert result.skipped[0].startswith("CUDAExecutionProvider not available")
    assert {c.provider for c in result.checks} == {"cpu"}


def test_larger_sizes_are_larger_and_one_is_not_square():
    assert larger_sizes([32, 32]) == [[64, 64], [48, 65]]
    assert larger_sizes([1, 1]) == [[2, 2], [2, 3]]


@pytest.mark.e2e
def test_error_tolerance_report_gives_the_smallest_passing_atol(build_models):
    original = build_models.vgg_small()
    result = verify(original, convert(original, verify=False).model, rtol=0.0, atol=1e-12)
    worst = max(c.needed_atol for c in result.checks)
    assert worst == pytest.approx(result.max_abs_error)
    again = verify(original, convert(original, verify=False).model, rtol=0.0, atol=worst)
    assert again.passed
