"""fp16 and bf16 proofs: each comparison allows a few units in the last place of its largest value,
so rounding differences between a Gemm and a Conv pass and a wrong kernel still fails; a model that
computes in fp16 behind fp32 inputs and outputs is held to fp16's tolerances."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_properties import Head, Layer, build

from onnx_fc2conv import VerificationFailed, convert, verify
from onnx_fc2conv.index import GraphIndex
from onnx_fc2conv.rounding import Reordering
from onnx_fc2conv.rules import _dense
from onnx_fc2conv.verify import computation_precision

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
    assert (verification.rtol, verification.atol) == (1e-2, 2.5e-3)  # fp16's defaults, as reported
    assert [c.check for c in verification.checks] == ["original size", "sliding window 6", "input crops 6",
                                                       "sliding window 5", "input crops 5"]
    # three converted layers in series: each comparison allows 4 * sqrt(3) = 6.93 ulps of its largest
    # value (the products' term is negligible: fp16 is summed in fp32); at 4-8 an fp16 ulp is 2**-8
    assert verification.reorderings == {"y": Reordering(layers=3, products=9)}
    assert any(c.note.startswith("atol 0.0271 here: 6.93 units in the last place of 7.01, for 3 converted layers")
               for c in verification.checks)


@pytest.mark.e2e
def test_an_fp16_kernel_one_percent_off_still_fails(monkeypatch):
    real = _dense.kernel_layout
    monkeypatch.setattr(_dense, "kernel_layout", lambda *args: (real(*args) * 1.01).astype(np.float16))
    with pytest.raises(VerificationFailed) as failed:
        convert(build(GROWING_FP16_HEAD))
    assert failed.value.result.report.verification.max_abs_error > 4 * 2.0 ** -8


def _bf16_head(seed: int = 0) -> onnx.ModelProto:
    """x [N,1,3,3] -> Conv 3x3 pad 1 -> Flatten -> Gemm 18->4 -> Relu -> Gemm 4->3, all bfloat16, with
    unit-variance weights, so the outputs reach tens (opset 22: Conv takes bfloat16 from there)."""
    rng = np.random.default_rng(seed)

    def weight(name, *shape):
        values = rng.standard_normal(shape).astype(np.float32)
        return helper.make_tensor(name, TensorProto.BFLOAT16, shape, values.flatten().tolist())

    nodes = [helper.make_node("Conv", ["x", "cw"], ["fm"], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["fm"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w1", "b1"], ["g1"], name="fc1"),  # [K,F]: its kernel is a copy
             helper.make_node("Relu", ["g1"], ["r1"]),
             helper.make_node("Gemm", ["r1", "w2", "b2"], ["y"], name="fc2", transB=1)]
    inits = [weight("cw", 2, 1, 3, 3), weight("w1", 18, 4), weight("b1", 4), weight("w2", 3, 4), weight("b2", 3)]
    graph = helper.make_graph(nodes, "bf16", [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["N", 1, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])


@pytest.mark.e2e
def test_a_bf16_head_is_proved_within_units_in_the_last_place_of_its_outputs():
    verification = convert(_bf16_head()).report.verification
    assert verification.passed and (verification.rtol, verification.atol) == (1e-2, 2e-2)
    assert max(c.needed_atol for c in verification.checks) > 2e-2  # bf16's table atol alone would fail it
    assert all("units in the last place of" in c.note and "in bfloat16" in c.note for c in verification.checks)


@pytest.mark.e2e
def test_a_bf16_kernel_ten_percent_off_still_fails(monkeypatch):
    import ml_dtypes

    real = _dense.kernel_layout
    monkeypatch.setattr(_dense, "kernel_layout",
                        lambda *args: (real(*args).astype(np.float32) * 1.1).astype(ml_dtypes.bfloat16))
    with pytest.raises(VerificationFailed):
        convert(_bf16_head())


# ---- fp16 models with fp32 inputs and outputs (fp16 converters' keep_io_types) ----------------------

MODELS = Path(__file__).resolve().parents[1] / "models"
# model, rule options, the Cast named as what decided fp16, the output: the default mode (sliding
# window) and the token layout (sequence lengths), each of which failed at fp32's tolerances
KEEP_IO_FP16 = {
    "lenet5_fp16": ({}, "input_cast_to_conv1/Conv", "logits"),
    "bert_layer_fp16": ({"token_layout": "conv1d"}, "hidden_cast_to_attention.key.matmul/MatMul", "out"),
}


@pytest.mark.parametrize("name", sorted(KEEP_IO_FP16))
def test_the_precision_of_an_fp16_model_with_fp32_outputs_is_found_behind_its_cast(name):
    _, cast, output = KEEP_IO_FP16[name]
    index = GraphIndex(onnx.load(str(MODELS / f"{name}.onnx")))
    assert computation_precision(index) == ("float16", f"output {output!r} is computed in float16 behind Cast {cast!r}")
    fp32 = GraphIndex(onnx.load(str(MODELS / f"{name.removesuffix('_fp16')}.onnx")))
    assert computation_precision(fp32) == ("float32", f"the type of output {output!r}")


def test_an_fp16_weight_cast_up_to_fp32_makes_the_output_fp16_precise():
    w16 = numpy_helper.from_array(np.arange(6, dtype=np.float16).reshape(3, 2), "w16")
    graph = helper.make_graph(
        [helper.make_node("Cast", ["w16"], ["w"], to=TensorProto.FLOAT),
         helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [w16])
    index = GraphIndex(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert computation_precision(index) == ("float16", "output 'y' is computed in float16: weight 'w16'")



def test_the_least_precise_of_several_outputs_decides_and_bfloat16_is_less_precise_than_float16():
    def weight(name, elem):
        return helper.make_tensor(name, elem, [3, 2], [0.5] * 6)

    graph = helper.make_graph(
        [helper.make_node("Cast", [name], [f"{name}_f32"], to=TensorProto.FLOAT) for name in ("w16", "wb16")]
        + [helper.make_node("MatMul", ["x", "w16_f32"], ["y16"]), helper.make_node("MatMul", ["x", "wb16_f32"], ["yb16"]),
           helper.make_node("Relu", ["x"], ["y32"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 2 if name != "y32" else 3])
         for name in ("y32", "y16", "yb16")],
        [weight("w16", TensorProto.FLOAT16), weight("wb16", TensorProto.BFLOAT16)])
    index = GraphIndex(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)]))
    assert computation_precision(index) == ("bfloat16", "output 'yb16' is computed in bfloat16: weight 'wb16'")

@pytest.mark.e2e
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("name", sorted(KEEP_IO_FP16))
def test_an_fp16_model_with_fp32_io_is_proved_with_fp16_tolerances_at_every_seed(name, seed):
    options, cast, output = KEEP_IO_FP16[name]
    verification = convert(MODELS / f"{name}.onnx", seed=seed, **options).report.verification
    assert verification.passed, verification.render_text(verbose=True)
    assert (verification.rtol, verification.atol) == (1e-2, 2.5e-3)  # fp16's, though the outputs are fp32
    assert 4e-4 < verification.max_abs_error < 2.5e-3  # measured 4.6e-4 to 2.0e-3: fp32's 1e-5 fails every seed
    assert len(verification.checks) == (5 if name == "lenet5_fp16" else 3)  # LeNet-5's crops, or two lengths
    line = (f"  tolerances: float16 (output {output!r} is computed in float16 behind Cast {cast!r}), "
            "rtol 0.01 atol 0.0025")
    assert verification.render_text().splitlines()[1] == line
    assert (verification.precision, verification.precision_source) == ("float16", line.split("(", 1)[1].split(")")[0])
    assert json.loads(json.dumps(asdict(verification)))["precision"] == "float16"
    # the allowance is in fp16 ulps too: fp32 outputs computed in fp16 are only as fine as fp16
    assert all(c.note.endswith(" in float16") for c in verification.checks)


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(KEEP_IO_FP16))
def test_an_fp16_model_with_fp32_io_whose_last_kernel_is_two_percent_off_still_fails(name):
    options, _, _ = KEEP_IO_FP16[name]
    original = onnx.load(str(MODELS / f"{name}.onnx"))
    broken = convert(original, **options).model
    last_conv = [n for n in broken.graph.node if n.op_type == "Conv"][-1]
    kernel = next(t for t in broken.graph.initializer if t.name == last_conv.input[1])
    kernel.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(kernel) * 1.02).astype(np.float16), kernel.name))
    verification = verify(original, broken)
    assert not verification.passed
    assert verification.max_abs_error > 0.03  # measured 0.041; the correct conversion is within 0.002
    assert not any(c.passed for c in verification.checks)


@pytest.mark.e2e
def test_tolerances_given_by_the_caller_are_reported_as_such():
    verification = convert(MODELS / "lenet5_fp16.onnx", rtol=1e-3, atol=1e-3).report.verification
    assert (verification.rtol, verification.atol, verification.precision_source) == (1e-3, 1e-3, "set by the caller")
