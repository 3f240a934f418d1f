"""What the second hostile review found in the API: a ModelProto whose tensors live in external
files, a converted model that cannot run, and two skip messages that named the wrong reason."""
from __future__ import annotations

import os

import graphs
import numpy as np
import onnx
import pytest
from conftest import MODELS
from onnx import helper

from onnx_fc2conv import InvalidModelError, convert, inspect, verify


@pytest.fixture
def proto_with_external_refs(tmp_path, monkeypatch):
    """conv_flatten_gemm saved with its weights in an external file, loaded without them; the
    current folder is the model's, where those files are (so a relative lookup would find them)."""
    path = tmp_path / "m.onnx"
    onnx.save(graphs.conv_flatten_gemm(), str(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    monkeypatch.chdir(tmp_path)
    return onnx.load(str(path), load_external_data=False)


MESSAGE = ("keeps its data in the external file 'w.bin', which a ModelProto cannot locate: pass the model's path, "
           "or load it with its data (onnx.load(path))")


@pytest.mark.parametrize("call", [inspect, lambda m: convert(m, verify=False)], ids=["inspect", "convert"])
def test_a_modelproto_without_its_external_data_is_refused_in_one_line(proto_with_external_refs, call):
    with pytest.raises(InvalidModelError, match=MESSAGE.replace("(", r"\(").replace(")", r"\)")):
        call(proto_with_external_refs)
    assert sorted(os.listdir(".")) == ["m.onnx", "w.bin"]


@pytest.mark.e2e
def test_a_converted_model_that_cannot_run_has_an_unbounded_error():
    result = verify(MODELS / "lenet5.onnx", MODELS / "vgg_small.onnx")  # unrelated: it fails on lenet's inputs
    assert not result and result.max_abs_error == float("inf")
    assert "max abs error inf" in result.summary()


def _block_quantized_head() -> onnx.ModelProto:
    """Flatten -> Gemm whose weight is DequantizeLinear(int8 [5,64], scales [5,2], block_size 32)."""
    rng = np.random.default_rng(0)
    weight = graphs.init("wq", rng.integers(-100, 100, (5, 64)).astype(np.int8))
    scale = graphs.init("ws", np.full((5, 2), 0.01, np.float32))
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], name="dq", axis=1, block_size=32),
             helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"], name="fc", transB=1)]
    return graphs.model(nodes, [graphs.vi("x", [1, 4, 4, 4])], [graphs.vi("y", [1, 5])], [weight, scale], opset=21)


def test_a_weight_quantized_in_blocks_is_skipped_for_its_blocks():
    [row] = inspect(_block_quantized_head()).nodes
    assert (row.status, row.reason) == ("skipped", "quantized_weight_axis")
    assert row.detail == "DequantizeLinear 'dq' quantizes the weight in blocks of 32"


def test_a_rank_4_matmul_is_a_1x1_conv_with_token_layout_and_names_that_flag_without():
    x = graphs.vi("x", ["B", 2, "T", 8])
    w = graphs.init("w", np.ones((8, 6), np.float32))
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="a")
    m = graphs.model([node], [x], [graphs.vi("y", ["B", 2, "T", 6])], [w])
    [row] = inspect(m, token_layout="conv1d").nodes
    assert (row.status, row.rule, row.detail) == ("converts", "channels_last_mlp", "MatMul 8->6 -> Conv 6x8x1x1")
    [row] = inspect(m).nodes
    assert (row.reason, row.detail) == ("token_matmul", "the MatMul runs on a channels-last map [B,2,T,8] (see "
                                                        "--token-layout: a 1x1 Conv on the channels-first map)")


def test_a_rank_5_matmul_is_told_that_token_layouts_take_rank_3():
    x = graphs.vi("x", ["B", 2, 3, "T", 8])
    w = graphs.init("w", np.ones((8, 6), np.float32))
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="a")
    m = graphs.model([node], [x], [graphs.vi("y", ["B", 2, 3, "T", 6])], [w])
    [row] = inspect(m, token_layout="conv1d").nodes
    assert (row.reason, row.detail) == ("token_matmul", "the MatMul runs on a rank-5 tensor [B,2,3,T,8]; the token "
                                                        "layouts take [B,T,D]")
