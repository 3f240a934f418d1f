"""Token and vector FC layers of real exporters' models in ../shared/models (skipped when absent):
what converts, how many Transposes each run costs, and the proof (original size and two other
sequence lengths). Some models need real-looking inputs to run at all; they are given here."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import SHARED_MODELS

from onnx_fc2conv import convert

pytestmark = pytest.mark.e2e


def shared(name: str):
    path = SHARED_MODELS / name
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


def assert_proved(result, lengths=2, max_error=1e-5):
    v = result.report.verification
    assert v.passed, v.render_text(verbose=True)
    assert v.max_abs_error <= max_error
    assert len({c.check for c in v.checks if c.check.startswith("sequence length")}) == lengths, v.skipped


def tinybert_inputs(tokens=9):
    rng = np.random.default_rng(0)
    return {"input_ids": rng.integers(0, 100, (2, tokens)).astype(np.int64),
            "attention_mask": np.ones((2, tokens), np.int64), "token_type_ids": np.zeros((2, tokens), np.int64)}


@pytest.mark.parametrize("layout", ["conv1d", "conv2d"])
def test_tinybert_converts_every_token_matmul_and_its_ffn_costs_two_transposes(layout):
    # The attention output and the FFN come after a Reshape to a computed shape (x.view(B, T, 50)),
    # where ONNX's own shape inference loses the rank; ORT's symbolic inference keeps it.
    result = convert(shared("tribuo_tinybert_pytorch_op11.onnx"), token_layout=layout, input_data=tinybert_inputs())
    report = result.report
    assert [n.node for n in report.converted] == ["MatMul_31", "MatMul_33", "MatMul_45", "MatMul_87", "MatMul_101",
                                                  "MatMul_111"]
    assert [(n.node, n.reason) for n in report.nodes if n.status != "converted"] == [("Gemm_127", "not_a_feature_map")]
    assert [(len(r.converted), len(r.passed_through), r.transposes_added) for r in report.runs] == [
        (3, 0, 4), (1, 0, 2), (2, 5, 2)]  # Q/K/V, attention output, FFN with its erf-GELU
    assert_proved(result)


@pytest.mark.parametrize("precision, dtype, max_error", [("fp32", np.float32, 1e-5), ("fp16", np.float16, 2.5e-3)])
def test_gpt2_with_ort_fused_ops_converts_all_sixteen_layers(precision, dtype, max_error):
    tokens = 5
    data = {"input_ids": np.arange(1, tokens + 1, dtype=np.int32)[None], "position_ids": np.arange(tokens, dtype=np.int32)[None],
            "attention_mask": np.ones((1, tokens), np.int32),
            **{f"past_{i}": np.zeros((2, 1, 4, 0, 8), dtype) for i in range(5)}}
    result = convert(shared(f"ortgenai_tiny_gpt2_{precision}_op11.onnx"), token_layout="conv1d", input_data=data)
    report = result.report
    assert len(report.converted) == 16
    ffn_runs = [r for r in report.runs if len(r.converted) == 2]  # MatMul -> FastGelu(bias) -> MatMul
    assert len(ffn_runs) == 5 and all(r.transposes_added == 2 for r in ffn_runs)
    assert report.transposes_added == 22
    assert_proved(result, max_error=max_error)


def test_qwen_decoder_converts_projections_ffns_and_lm_head():
    tokens = 6
    data = {"input_ids": np.arange(1, tokens + 1, dtype=np.int32)[None], "attention_mask": np.ones((1, tokens), np.int64),
            **{f"past_key_values.{i}.{kv}": np.zeros((1, 2, 0, 16), np.float16) for i in range(2) for kv in ("key", "value")}}
    result = convert(shared("ortgenai_tiny_qwen35_fp16_op21.onnx"), token_layout="conv2d", input_data=data)
    report = result.report
    assert len(report.converted) == 13 and not [n for n in report.nodes if n.status != "converted"]
    ffn_runs = [r for r in report.runs if any(name.endswith(".dn") for name in r.converted)]
    assert [(r.converted, r.transposes_added) for r in ffn_runs] == [(["l0.up", "l0.dn"], 2), (["l1.up", "l1.dn"], 2)]
    # The attention mask's total_seq_len is the sequence length with an empty past: it is varied too.
    assert_proved(result, max_error=2.5e-3)


def test_polygraphy_attention_head_converts_q_k_v_but_not_the_runtime_matmuls():
    x = np.random.default_rng(0).standard_normal((100, 100, 100)).astype(np.float32)  # its Transpose needs a cube
    result = convert(shared("polygraphy_attention_head_op22.onnx"), token_layout="conv1d", input_data={"input": x})
    report = result.report
    assert [n.node for n in report.converted] == ["mmq", "mmk", "mmv"]
    (only_run,) = report.runs
    assert only_run.transposes_added == 4  # one in, shared by the three; one out each
    v = report.verification
    assert v.passed and v.max_abs_error < 1e-4, v.render_text(verbose=True)


def test_magika_token_matmul_verifies_with_a_static_token_axis():
    result = convert(shared("magika_standard_v3_3_tf2onnx_op15.onnx"), token_layout="conv1d")
    assert [n.rule for n in result.report.converted] == ["token_matmul"]
    assert result.report.transposes_added == 2
    v = result.report.verification
    assert v.passed and v.skipped == ["sequence lengths: the token axis is not a symbolic input dimension"]


@pytest.mark.parametrize("name, layers", [
    ("winml_iris_mlp_pytorch_op11.onnx", 3),
    ("tract_keras_mlp_tf2onnx_op13.onnx", 2),
    ("onnx2c_mnist_mlp_bn_pytorch_op9.onnx", 3),  # MatMul -> BatchNormalization -> Relu: BN stays in the run
])
def test_mlps_become_one_run_of_1x1_convs_with_an_unsqueeze_in_and_a_squeeze_out(name, layers):
    result = convert(shared(name), vector_fc=True)
    report = result.report
    assert len(report.converted) == layers and all(n.status == "converted" for n in report.nodes)
    (only_run,) = report.runs
    assert (only_run.layout, only_run.transposes_added, only_run.unsqueezes_added, only_run.squeezes_added) == (
        "vector", 0, 1, 1)
    assert not {"Gemm", "MatMul"} & {n.op_type for n in result.model.graph.node}
    assert report.verification.passed and report.verification.max_abs_error < 1e-5


def test_opset6_linear_converts_and_runs_though_ort_cannot_run_the_original():
    path = shared("onnx_pytorch03_linear_op6.onnx")
    result = convert(path, vector_fc=True, verify=False)  # ONNX Runtime has no Gemm-6 kernel: checked by hand
    assert [n.rule for n in result.report.converted] == ["vector_fc"]
    original = onnx.load(path)
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in original.graph.initializer}
    (gemm,) = original.graph.node
    w, b = consts[gemm.input[1]], consts[gemm.input[2]]
    x = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    import onnxruntime as ort

    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(y, x @ w.T + b, rtol=1e-5, atol=1e-5)


def test_smart_turn_qdq_encoder_converts_with_its_int8_weights_and_qdq_pairs_inside_the_runs():
    result = convert(shared("smart_turn_v3_2_qdq_op18.onnx"), token_layout="conv2d", vector_fc=True)
    report = result.report
    assert len(report.converted) == 29 and all(n.status == "converted" for n in report.nodes)
    token_runs = [r for r in report.runs if r.layout == "conv2d"]
    ffns = [r for r in token_runs if len(r.converted) == 2]
    assert len(ffns) == 5 and all(r.transposes_added == 2 for r in ffns)  # 4 encoder FFNs, the attention-pool MLP
    dequantized = {o for n in result.model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert all(c.input[1] in dequantized for c in result.model.graph.node if c.op_type == "Conv")
    v = report.verification
    assert v.passed and v.max_abs_error < 1e-5, v.render_text(verbose=True)
