"""The rounding allowance of the proof (onnx_fc2conv.rounding): a converted layer sums its products
in another order, so deep models differ by more than one layer's rounding; the allowance grows with
the converted layers and products before each output, and a wrong kernel still fails."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from test_llama_decoder import TINY, bench_models

from onnx_fc2conv import convert, verify
from onnx_fc2conv.rounding import Reordering, reorderings, rounding_atol

# Deep enough that fp32's fixed atol (1e-5) fails on the logits: 8 blocks at hidden 512 (88 MB).
DEEP = {"layers": 8, "hidden": 512, "heads": 4, "kv_heads": 1, "ffn": 1408, "vocab": 1000}


def test_the_allowance_adds_each_layers_rounding_and_each_products_reordering_in_quadrature():
    deep = Reordering(layers=5, products=6912)
    assert deep.ulps("float32") == pytest.approx(math.sqrt(4 ** 2 * 5 + 6912))
    # float16 is summed in float32, 2**13 times finer: the products hardly count
    assert deep.ulps("float16") == pytest.approx(math.sqrt(4 ** 2 * 5 + 6912 * 2.0 ** -26))
    assert Reordering(layers=1, products=9).ulps("float16") == pytest.approx(4.0, abs=1e-6)
    assert Reordering().ulps("float32") == 0.0  # behind no converted layer an output must not move
    assert Reordering(layers=1, products=1).ulps("int8") == 0.0
    # in ulps of the largest value: 7.0 lies in [4, 8), where a float32 ulp is 2**(2 - 23)
    assert rounding_atol(7.0, "float32", deep) == pytest.approx(deep.ulps("float32") * 2.0 ** -21)
    assert rounding_atol(0.0, "float32", deep) == 0.0


def test_reorderings_count_the_converted_layers_in_series_and_the_products_they_sum(tmp_path):
    src = bench_models().llama_decoder(tmp_path / "llama.onnx", dtype=np.float32, **TINY)
    converted = convert(src, token_layout="conv2d", verify=False).model
    found = reorderings(onnx.load(str(src), load_external_data=False), converted)
    # per block, in series: Q/K/V (K = hidden 64), O (64), gate/up (64), down (K = FFN 128)
    block = 64 + 64 + 64 + 128
    assert found["present.0.key"] == Reordering(layers=1, products=64)  # k_proj only
    assert found["present.1.value"] == Reordering(layers=5, products=block + 64)
    assert found["logits"] == Reordering(layers=2 * 4 + 1, products=2 * block + 64)  # and the LM head


@pytest.fixture(scope="module")
def deep_decoder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deep")
    src = bench_models().llama_decoder(folder / "deep.onnx", dtype=np.float32, **DEEP)
    convert(src, folder / "deep_conv.onnx", token_layout="conv2d", verify=False)
    return src, onnx.load(str(folder / "deep_conv.onnx"))


@pytest.mark.e2e
def test_a_deep_fp32_decoder_is_proved_within_the_allowance_where_fp32s_fixed_atol_fails(deep_decoder):
    src, converted = deep_decoder
    result = verify(src, converted)
    assert result.passed, result.render_text(verbose=True)
    logits = [c for c in result.checks if c.output == "logits"]
    assert len(logits) == 3  # the original length, 16 and 33
    assert max(c.needed_atol for c in logits) > result.atol == 1e-5  # fixed fp32 atol alone would fail
    assert all(c.needed_atol <= c.allowed_atol for c in logits)
    assert result.reorderings["logits"] == Reordering(layers=33, products=8 * (3 * 512 + 1408) + 512)
    assert all("33 converted layers in series summing 24,064 products" in c.note for c in logits)


@pytest.mark.e2e
@pytest.mark.parametrize("scale", [1 + 1e-3, 1 + 1e-4])
def test_a_deep_decoders_kernel_a_thousandth_or_ten_thousandth_off_still_fails(deep_decoder, scale):
    src, converted = deep_decoder
    broken = converted.__deepcopy__()
    down = next(n for n in broken.graph.node if n.op_type == "Conv" and "layers.4/mlp/down_proj" in n.name)
    kernel = next(t for t in broken.graph.initializer if t.name == down.input[1])
    kernel.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(kernel) * np.float32(scale), kernel.name))
    result = verify(src, broken)
    assert not result.passed
    failed = [c for c in result.checks if not c.passed]
    assert {c.output for c in failed} >= {"logits", "present.7.key"}  # what the 5th block feeds, not before it
    assert all(c.passed for c in result.checks if c.output in ("present.0.key", "present.4.key"))
