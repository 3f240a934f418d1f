"""The Llama-style decoder of benchmarks/models.py (RMSNorm, rotary embedding, grouped KV heads, a KV
cache, SwiGLU), tiny: ``--token-layout conv2d`` converts its seven projections and FFN layers per
block and the LM head, each run costs the Transposes counted here, and the proof covers the
original sequence length and two others, the attention mask's total length with them."""
from __future__ import annotations

import importlib.util
import sys
from collections import Counter

import numpy as np
import pytest
from conftest import ROOT

from onnx_fc2conv import convert

pytestmark = pytest.mark.e2e

TINY = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "ffn": 128, "vocab": 100}
PROJECTIONS = ("attn/q_proj", "attn/k_proj", "attn/v_proj", "attn/o_proj", "mlp/gate_proj", "mlp/up_proj",
               "mlp/down_proj")


def load(name: str, file: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # run.py's dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def bench_models():
    return load("bench_models", "models.py")


@pytest.mark.parametrize("dtype, max_error", [(np.float32, 1e-5), (np.float16, 2.5e-2)])
def test_tiny_llama_decoder_converts_seven_layers_a_block_and_is_proved_at_three_lengths(tmp_path, dtype, max_error):
    src = bench_models().llama_decoder(tmp_path / "llama.onnx", dtype=dtype, **TINY)
    assert (tmp_path / "llama.onnx.data").stat().st_size == bench_models().llama_parameters(**TINY) * np.dtype(dtype).itemsize
    result = convert(src, tmp_path / "llama_conv.onnx", token_layout="conv2d")
    report = result.report
    layers = [f"/model/layers.{i}/{p}/MatMul" for i in range(2) for p in PROJECTIONS] + ["/lm_head/MatMul"]
    assert [n.node for n in report.nodes] == layers and {n.status for n in report.nodes} == {"converted"}
    # per block: Q/K/V from one input (one Transpose in, one out each), O alone, gate/up -> down (SwiGLU inside)
    assert [(len(r.converted), len(r.passed_through), r.transposes_added) for r in report.runs] == [
        (3, 0, 4), (1, 0, 2), (3, 3, 2)] * 2 + [(1, 1, 2)]  # the head, with its Identity
    assert report.transposes_added == 2 * 8 + 2
    ops = Counter(n.op_type for n in result.model.graph.node)
    assert ops["Conv"] == 15 and ops["MatMul"] == 2 * 2  # attention's own two MatMuls a block stay
    v = report.verification
    assert v.passed, v.render_text(verbose=True)
    assert v.max_abs_error <= max_error
    lengths = sorted({c.check for c in v.checks if c.check.startswith("sequence length")})
    assert lengths == ["sequence length 16", "sequence length 33"]  # and the original 32
    # every output is compared at each length: the logits and each layer's present key and value
    assert Counter(c.check for c in v.checks) == {"original size": 5, "sequence length 16": 5, "sequence length 33": 5}


def test_decoder_cost_rows_count_the_layers_transposes_per_block_and_lengths_of_the_proof(tmp_path):
    bench = load("bench_run", "run.py")
    src = bench.models.llama_decoder(tmp_path / "llama.onnx", dtype=np.float32, **TINY)
    rows, raw = bench.decoder_cost("tiny", src, tmp_path, layers=2)
    assert (raw["converted"], raw["layers"], raw["transposes_per_block"], raw["sequence_lengths"]) == (15, 15, 8, [16, 33])
    assert raw["passed"] and raw["atol"] == 1e-5 and raw["allowance_used"] <= 1
    assert raw["weight_bytes"] == bench.models.llama_parameters(**TINY) * 4
    assert [(r.part, r.met) for r in rows] == [("P9", True), ("P9", raw["peak_rss_mib"] <= 2.0 * raw["weight_bytes"] / 2**20),
                                               ("P9", None)]
    assert rows[0].ratio == 1.0 and rows[1].ratio == raw["peak_rss_mib"] / (raw["weight_bytes"] / 2**20)
    assert not (tmp_path / "proved_llama.onnx").exists()  # the converted model is removed
