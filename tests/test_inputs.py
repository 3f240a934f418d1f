"""The verifier's inputs: shapes that agree across inputs, and values the model can run on."""
from __future__ import annotations

import numpy as np
import pytest
from graphs import init, model, vi
from onnx import TensorProto, helper

from onnx_fc2conv import CouldNotVerify, UsageError
from onnx_fc2conv.inputs import DEFAULT_BATCH, DEFAULT_SIZE, load_input_data, make_inputs


def _by_name(summaries):
    return {s.name: s for s in summaries}


def embedding_model(ids_type=TensorProto.INT64, through_cast=False):
    """ids [B,T] -> (Cast) -> Gather(table [7,4]) -> y [B,T,4]."""
    nodes, ids = [], "ids"
    if through_cast:
        nodes.append(helper.make_node("Cast", ["ids"], ["ids64"], to=TensorProto.INT64))
        ids = "ids64"
    nodes.append(helper.make_node("Gather", ["table", ids], ["y"], axis=0))
    table = np.arange(28, dtype=np.float32).reshape(7, 4)
    return model(nodes, [vi("ids", ["B", "T"], ids_type)], [vi("y", None, 0)], [init("table", table)])


@pytest.mark.parametrize("through_cast", [False, True])
def test_ids_that_index_a_table_stay_inside_its_rows(through_cast):
    m = embedding_model(TensorProto.INT32 if through_cast else TensorProto.INT64, through_cast)
    feeds, summaries = make_inputs(m)
    ids = feeds["ids"]
    assert ids.shape == (DEFAULT_BATCH, DEFAULT_SIZE)
    assert ids.min() >= 0 and ids.max() <= 6 and len(np.unique(ids)) == 7
    assert summaries[0].source == "index range [0, 7), seed 0"


def test_embed_layer_normalization_ids_index_their_own_tables():
    # onnxruntime's fused embedding: input_ids index the word table (slot 2), position_ids the
    # position table (slot 3); the mask (slot 7) gets ones. Only analysed here, not run.
    node = helper.make_node("EmbedLayerNormalization",
                            ["ids", "", "words", "positions", "", "gamma", "beta", "m", "pos"],
                            ["y", "mask_index"], domain="com.microsoft")
    g = helper.make_graph([node], "g", [vi("ids", ["B", "T"], TensorProto.INT32), vi("m", ["B", "T"], TensorProto.INT32),
                                        vi("pos", ["B", "T"], TensorProto.INT32)], [vi("y", None, 0)],
                          [init("words", np.zeros((50, 4), np.float32)), init("positions", np.zeros((9, 4), np.float32)),
                           init("gamma", np.ones(4, np.float32)), init("beta", np.zeros(4, np.float32))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    feeds, summaries = make_inputs(m)
    assert feeds["ids"].max() < 50 and feeds["ids"].max() >= 9  # its own table, not the smaller one
    assert feeds["pos"].max() < 9
    assert np.all(feeds["m"] == 1) and _by_name(summaries)["m"].source == "ones (mask)"


def test_inputs_named_or_used_as_masks_are_ones():
    nodes = [helper.make_node("Mul", ["x", "attention_mask"], ["a"]),
             helper.make_node("Cast", ["keep"], ["keep_b"], to=TensorProto.BOOL),
             helper.make_node("Where", ["keep_b", "a", "x"], ["y"])]
    m = model(nodes, [vi("x", ["B", 3]), vi("attention_mask", ["B", 3]), vi("keep", ["B", 3], TensorProto.INT64)],
              [vi("y", None, 0)])
    feeds, summaries = make_inputs(m)
    assert np.all(feeds["attention_mask"] == 1) and np.all(feeds["keep"] == 1)
    assert _by_name(summaries)["keep"].source == "ones (mask)"
    assert _by_name(summaries)["x"].source == "random normal, seed 0"  # an ordinary float input stays random


def test_bool_inputs_are_true_and_uint8_images_span_0_to_255():
    nodes = [helper.make_node("Cast", ["img"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Where", ["flag", "f", "f"], ["y"])]
    m = model(nodes, [vi("img", ["B", 3, "H", "W"], TensorProto.UINT8), vi("flag", [1], TensorProto.BOOL)],
              [vi("y", None, 0)])
    feeds, summaries = make_inputs(m)
    assert feeds["flag"].dtype == bool and feeds["flag"].all()
    img = _by_name(summaries)["img"]
    assert img.shape == [DEFAULT_BATCH, 3, DEFAULT_SIZE, DEFAULT_SIZE] and img.dtype == "uint8"
    assert (img.min, img.max) == (0, 255) and img.source == "random 0..255, seed 0"


def reshape_by_scalar_model():
    """x [B,12] -> Reshape([B, 3, k]) where k is a rank-0 input: k decides a shape."""
    nodes = [helper.make_node("Unsqueeze", ["k"], ["k1"], axes=[0]),
             helper.make_node("Concat", ["head", "k1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    return model(nodes, [vi("x", [2, 12]), vi("k", [], TensorProto.INT64)], [vi("y", [2, 3, "k"])],
                 [init("head", np.array([2, 3], np.int64))], opset=11)


def test_a_scalar_that_decides_a_shape_must_come_from_input_data():
    m = reshape_by_scalar_model()
    with pytest.raises(CouldNotVerify, match=r"input 'k' \(int64, shape \[\]\) decides a Reshape .*--input-data"):
        make_inputs(m)
    feeds, summaries = make_inputs(m, data={"k": np.array(4)})
    assert int(feeds["k"]) == 4 and _by_name(summaries)["k"].source == "file"


def test_a_scalar_that_only_scales_values_is_synthesised():
    m = model([helper.make_node("Mul", ["x", "scale"], ["y"])], [vi("x", ["B", 4]), vi("scale", [])], [vi("y", None, 0)])
    feeds, _ = make_inputs(m)
    assert feeds["scale"].shape == ()


def kv_cache_model():
    """ids [batch, seq]; mask [batch, total]; past [batch, 2, past_len, 4]: a decoder step."""
    nodes = [helper.make_node("Gather", ["table", "ids"], ["h"], axis=0),
             helper.make_node("Identity", ["past"], ["present"]),
             helper.make_node("Identity", ["attention_mask"], ["m"])]
    return model(nodes, [vi("ids", ["batch", "seq"], TensorProto.INT64),
                         vi("attention_mask", ["batch", "total"], TensorProto.INT64),
                         vi("past", [2, "batch", "past_len", 4])],
                 [vi("h", None, 0), vi("present", None, 0), vi("m", None, 0)], [init("table", np.zeros((5, 4), np.float32))])


def test_one_symbol_gets_one_value_and_the_past_is_empty():
    feeds, summaries = make_inputs(kv_cache_model())
    assert feeds["ids"].shape == (DEFAULT_BATCH, DEFAULT_SIZE)
    assert feeds["attention_mask"].shape == (DEFAULT_BATCH, DEFAULT_SIZE)  # total = past + seq with an empty past
    assert feeds["past"].shape == (2, DEFAULT_BATCH, 0, 4)  # batch_size at axis 1 agrees with ids
    assert _by_name(summaries)["past"].source == "empty past"
    assert "empty" in _by_name(summaries)["past"].line()


def test_a_pinned_shape_binds_every_input_that_shares_its_symbols():
    feeds, _ = make_inputs(kv_cache_model(), shapes={"ids": (1, 5), "past": (2, None, 3, 4)})
    assert feeds["ids"].shape == (1, 5)
    assert feeds["past"].shape == (2, 1, 3, 4)  # '?' keeps batch symbolic: it follows ids
    assert feeds["attention_mask"].shape == (1, DEFAULT_SIZE)  # 'total' is named nowhere else


def test_data_arrays_bind_symbols_and_are_cast_to_the_input_type():
    feeds, summaries = make_inputs(kv_cache_model(), data={"ids": [[1, 2, 3]], "past": np.zeros((2, 1, 0, 4))})
    assert feeds["ids"].dtype == np.int64 and feeds["ids"].shape == (1, 3)
    assert feeds["past"].dtype == np.float32
    assert feeds["attention_mask"].shape == (1, DEFAULT_SIZE)
    assert _by_name(summaries)["ids"].source == "file"


@pytest.mark.parametrize("kwargs, message", [
    ({"shapes": {"idz": (1, 2)}}, r"--input-shape names 'idz', which is not an input of the model \(inputs: ids, "),
    ({"shapes": {"ids": (1, 2, 3)}}, r"--input-shape 'ids' has rank 3, the model's input is \[batch,seq\]"),
    ({"shapes": {"past": (3, 1, 0, 4)}}, r"--input-shape 'past' has size 3 at axis 0, the model's input is "),
    ({"data": {"ids": np.zeros((1, 3), np.float32)}}, r"--input-data 'ids' is float32, the model takes int64"),
    ({"data": {"ids": np.zeros((1, 3), np.int64)}, "shapes": {"ids": (1, 4)}},
     r"--input-data 'ids' has shape \[1, 3\] but --input-shape says \[1,4\]"),
])
def test_options_that_do_not_fit_the_model_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        make_inputs(kv_cache_model(), **kwargs)


def test_load_input_data_reads_npz_and_rejects_other_files(tmp_path):
    path = tmp_path / "in.npz"
    np.savez(path, **{"gpu_0/data_0": np.ones((1, 3)), "sr": np.array(16000)})
    data = load_input_data(path)
    assert set(data) == {"gpu_0/data_0", "sr"} and int(data["sr"]) == 16000
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(UsageError, match="not an .npz file"):
        load_input_data(tmp_path / "bad.npz")
    with pytest.raises(UsageError, match="no such file"):
        load_input_data(tmp_path / "missing.npz")


@pytest.mark.e2e
def test_verify_and_inspect_check_the_options_too(tmp_path, build_models):
    from onnx_fc2conv import inspect, verify

    lenet = build_models.lenet5()
    with pytest.raises(UsageError, match="--input-shape names 'images', which is not an input of the model"):
        inspect(lenet, input_shapes={"images": (1, 1, 32, 32)})
    np.savez(tmp_path / "x.npz", input=np.ones((1, 1, 32, 32), np.float32))
    result = verify(lenet, lenet, input_data=tmp_path / "x.npz")  # a path works as well as a dict
    assert result.passed and result.inputs[0].shape == [1, 1, 32, 32] and result.inputs[0].source == "file"
