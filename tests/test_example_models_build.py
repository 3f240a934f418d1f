"""The example models in models/ build, check, run, and are reproducible byte for byte."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import load_build_models
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "models"
SCRIPT = MODELS_DIR / "build_models.py"
OPSETS = (11, 13, 17)
BATCH = 2
SEQ = 5  # value for the symbolic token axis "T" of bert_layer


bm = load_build_models()  # the builders every test file shares (conftest.py)
NAMES = list(bm.BUILDERS)

# name -> (input name, input shape with symbols, output name, output shape with symbols)
EXPECTED_IO = {
    "seed_fc": ("x", ["N", 3, 1, 1], "y", ["N", 2]),
    "seed_mlp": ("x", ["N", 3], "y", ["N", 2]),
    "lenet5": ("input", ["N", 1, 32, 32], "logits", ["N", 10]),
    "vgg_small": ("input", ["N", 3, 32, 32], "probs", ["N", 10]),
    "gap_head": ("input", ["N", 3, 32, 32], "logits", ["N", 10]),
    "torch_view_head": ("input", ["N", 3, 16, 16], "out", ["N", 5]),
    "matmul_add_head": ("input", ["N", 4, 6, 6], "scores", ["N", 3]),
    "bert_layer": ("hidden", ["B", "T", 32], "out", ["B", "T", 32]),
    "lenet5_fp16": ("input", ["N", 1, 32, 32], "logits", ["N", 10]),
    "bert_layer_fp16": ("hidden", ["B", "T", 32], "out", ["B", "T", 32]),
    "bert_layer_fused": ("hidden", ["B", "T", 32], "out", ["B", "T", 32]),
    "residual_pad": ("input", ["N", 3, 32, 32], "logits", ["N", 10]),
    "residual_valid": ("input", ["N", 3, 32, 32], "logits", ["N", 10]),
    "resnet_tiny": ("input", ["N", 3, 64, 64], "logits", ["N", 10]),
    "vgg_tv": ("input", ["N", 3, 48, 48], "logits", ["N", 10]),
    "gpt2_blocks": ("hidden", ["B", "T", 32], "out", ["B", "T", 32]),
    "mlp_mixer": ("patches", ["N", 16, 32], "out", ["N", 16, 32]),
    "convnext_blocks": ("input", ["N", 3, 32, 32], "logits", ["N", 10]),
    "keras_mnist_cnn": ("input_1", ["N", 28, 28, 1], "dense", ["N", 10]),
}

# name -> (number of Gemm nodes, number of MatMul nodes whose right operand is an initializer)
EXPECTED_FC = {
    "seed_fc": (1, 0),
    "seed_mlp": (1, 0),
    "lenet5": (3, 0),
    "vgg_small": (3, 0),
    "gap_head": (1, 0),
    "torch_view_head": (2, 0),
    "matmul_add_head": (0, 2),
    "bert_layer": (0, 6),
    "lenet5_fp16": (3, 0),
    "bert_layer_fp16": (0, 6),
    "bert_layer_fused": (0, 3),  # the Q/K/V projections are inside the fused Attention
    "residual_pad": (1, 0),
    "residual_valid": (1, 0),
    "resnet_tiny": (1, 0),
    "vgg_tv": (3, 0),
    "gpt2_blocks": (8, 0),
    "mlp_mixer": (0, 8),
    "convnext_blocks": (1, 4),
    "keras_mnist_cnn": (0, 1),
}
# name -> the opsets of other domains it imports
DOMAINS = {"bert_layer_fused": [("com.microsoft", 1)]}
# name -> the element type of its weights (the rest are float32)
WEIGHT_TYPE = {"lenet5_fp16": onnx.TensorProto.FLOAT16, "bert_layer_fp16": onnx.TensorProto.FLOAT16}


def _dims(value_info):
    return [d.dim_param if d.dim_param else d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _concrete(shape):
    sizes = {"N": BATCH, "B": BATCH, "T": SEQ}
    return [sizes[d] if isinstance(d, str) else d for d in shape]


def _session(model_or_path, optimize=True):
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model_or_path if isinstance(model_or_path, (str, Path)) else model_or_path.SerializeToString()
    return ort.InferenceSession(str(src) if isinstance(src, Path) else src, so,
                                providers=["CPUExecutionProvider"])


def _random_input(name, seed=0):
    shape = _concrete(EXPECTED_IO[name][1])
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _run(model_or_path, name, x, optimize=True):
    sess = _session(model_or_path, optimize)
    (out,) = sess.run(None, {EXPECTED_IO[name][0]: x})
    return out


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """{opset: {name: path}} for every opset in OPSETS, built into a temp dir."""
    return {op: bm.build_all(tmp_path_factory.mktemp(f"opset{op}"), opset=op) for op in OPSETS}


def test_builders_cover_the_expected_models():
    assert NAMES == list(EXPECTED_IO)


@pytest.mark.e2e
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("name", NAMES)
def test_model_checks_and_runs(built, name, opset):
    path = built[opset][name]
    assert path.name == f"{name}.onnx" and path.is_file()
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)

    assert [(o.domain, o.version) for o in model.opset_import] == [("", opset), *DOMAINS.get(name, [])]
    assert model.ir_version == helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    assert model.producer_name == "onnx-fc2conv models/build_models.py"

    in_name, in_shape, out_name, out_shape = EXPECTED_IO[name]
    assert [i.name for i in model.graph.input] == [in_name]
    assert [o.name for o in model.graph.output] == [out_name]
    assert _dims(model.graph.input[0]) == in_shape
    assert _dims(model.graph.output[0]) == out_shape
    for vi in (*model.graph.input, *model.graph.output):
        assert vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    for t in model.graph.initializer:
        assert t.data_type in (WEIGHT_TYPE.get(name, onnx.TensorProto.FLOAT), onnx.TensorProto.INT64), t.name

    n_gemm = sum(n.op_type == "Gemm" for n in model.graph.node)
    init_names = {t.name for t in model.graph.initializer}
    n_const_matmul = sum(n.op_type == "MatMul" and n.input[1] in init_names for n in model.graph.node)
    assert (n_gemm, n_const_matmul) == EXPECTED_FC[name]

    y = _run(path, name, _random_input(name))
    assert y.dtype == np.float32
    assert list(y.shape) == _concrete(out_shape)
    assert np.all(np.isfinite(y))
    if name == "vgg_small":
        np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
        assert y.min() >= 0.0
    elif not name.startswith("seed_"):
        # He-style init keeps the outputs O(1): neither vanishing nor exploding.
        assert 0.05 < float(y.std()) < 20.0, float(y.std())


@pytest.mark.e2e
@pytest.mark.parametrize("name", NAMES)
def test_same_function_at_every_opset(built, name):
    """Each opset variant uses the same weights and computes the same function (an fp16 one up to
    fp16 rounding: its LayerNorm is native from opset 17 and decomposed below)."""
    x = _random_input(name, seed=1)
    ref = _run(built[13][name], name, x, optimize=False)
    tolerance = (1e-2, 2.5e-3) if WEIGHT_TYPE.get(name) == onnx.TensorProto.FLOAT16 else (1e-5, 1e-5)
    for opset in OPSETS:
        got = _run(built[opset][name], name, x, optimize=False)
        np.testing.assert_allclose(got, ref, *tolerance, err_msg=f"opset {opset}")


def test_committed_files_match_a_fresh_build(tmp_path):
    fresh = bm.build_all(tmp_path, opset=13)
    torch_built = load_build_models("build_torch_models").TORCH_MODELS  # need torch to rebuild: see below
    committed = sorted(p.name for p in MODELS_DIR.glob("*.onnx") if p.name not in torch_built)
    assert committed == sorted(p.name for p in fresh.values())
    for path in fresh.values():
        assert (MODELS_DIR / path.name).read_bytes() == path.read_bytes(), (
            f"models/{path.name} is stale: rerun python models/build_models.py")
    assert sum((MODELS_DIR / p).stat().st_size for p in committed) < 2_000_000


def test_torch_exported_models_are_committed_small_and_keep_a_symbolic_sequence_length():
    """models/build_torch_models.py needs torch, so only its output is checked here: it is there, small,
    valid, and the encoder layer takes [1,T,64] with T symbolic (the case OpenVINO failed on)."""
    torch_built = load_build_models("build_torch_models").TORCH_MODELS
    assert torch_built == ("torch_encoder_layer.onnx", "hf_gpt2_torchscript.onnx", "hf_gpt2_dynamo.onnx",
                           "timm_convnext_dynamo.onnx", "timm_convnext_ts17.onnx")
    model = onnx.load(str(MODELS_DIR / torch_built[0]))
    onnx.checker.check_model(model, full_check=True)
    assert (MODELS_DIR / torch_built[0]).stat().st_size < 300_000
    assert [(i.name, _dims(i)) for i in model.graph.input] == [("hidden", [1, "T", 64])]
    assert [(o.name, _dims(o)) for o in model.graph.output] == [("out", [1, "T", 64])]
    assert model.producer_name == "pytorch" and model.producer_version.startswith("2.13.0")
    for name in torch_built[1:3]:  # Hugging Face GPT-2 blocks on [B,T,32], both symbolic
        gpt2 = onnx.load(str(MODELS_DIR / name))
        onnx.checker.check_model(gpt2, full_check=True)
        assert (MODELS_DIR / name).stat().st_size < 300_000
        assert [(i.name, _dims(i)) for i in gpt2.graph.input] == [("hidden", ["B", "T", 32])]
        assert sum(n.op_type == "Gemm" for n in gpt2.graph.node) == 8
    for name, opset in (("timm_convnext_dynamo.onnx", 20), ("timm_convnext_ts17.onnx", 17)):
        convnext = onnx.load(str(MODELS_DIR / name))
        onnx.checker.check_model(convnext, full_check=True)
        assert (MODELS_DIR / name).stat().st_size < 300_000 and convnext.opset_import[0].version == opset
        assert [(i.name, _dims(i)) for i in convnext.graph.input] == [("input", [1, 3, 32, 32])]


@pytest.mark.e2e
def test_cli_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        subprocess.run([sys.executable, str(SCRIPT), "--opset", "11", "--out", str(out)],
                       check=True, capture_output=True)
    via_api = bm.build_all(tmp_path / "api", opset=11)
    for name in NAMES:
        data = (a / f"{name}.onnx").read_bytes()
        assert data == (b / f"{name}.onnx").read_bytes()
        assert data == via_api[name].read_bytes()
        assert onnx.load_from_string(data).opset_import[0].version == 11


def test_builders_return_model_protos_equal_to_files(built):
    for name, builder in bm.BUILDERS.items():
        model = builder(17)
        assert isinstance(model, onnx.ModelProto)
        assert model.SerializeToString(deterministic=True) == built[17][name].read_bytes()


def test_bad_opset_is_rejected():
    with pytest.raises(ValueError):
        bm.seed_fc(9)


# --------------------------------------------------------------------------- seed models


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["seed_fc", "seed_mlp"])
def test_seed_weights_and_values(name):
    model = bm.BUILDERS[name](13)
    (gemm,) = [n for n in model.graph.node if n.op_type == "Gemm"]
    attrs = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
    assert attrs.get("transB") == 1 and attrs.get("transA", 0) == 0
    assert attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
    inits = _inits(model)
    w, b = inits[gemm.input[1]], inits[gemm.input[2]]
    assert w.dtype == np.float32 and w.shape == (2, 3)
    assert w.tolist() == [[0, 1, 1], [2, 3, 5]]
    assert b.tolist() == [8, 13]
    assert [n.op_type for n in model.graph.node] == (
        ["Flatten", "Gemm", "Relu"] if name == "seed_fc" else ["Gemm", "Relu"])

    x = np.array([[1, 2, 3], [-10, -10, -10]], dtype=np.float32)
    if name == "seed_fc":
        x = x.reshape(2, 3, 1, 1)
    y = _run(model, name, x)
    # [1,2,3]: W x + b = [0+2+3+8, 2+6+15+13] = [13, 36]; [-10]*3: [-12, -87] -> ReLU 0
    np.testing.assert_array_equal(y, np.array([[13, 36], [0, 0]], dtype=np.float32))


def test_seed_fc_file_weight_is_exact():
    model = onnx.load(str(MODELS_DIR / "seed_fc.onnx"))
    (gemm,) = [n for n in model.graph.node if n.op_type == "Gemm"]
    w = _inits(model)[gemm.input[1]]
    np.testing.assert_array_equal(w, np.array([[0, 1, 1], [2, 3, 5]], dtype=np.float32))


# --------------------------------------------------------------------------- structure


def _ops(model):
    return [n.op_type for n in model.graph.node]


@pytest.mark.e2e
@pytest.mark.parametrize("opset", OPSETS)
def test_torch_view_head_shape_subgraph(opset):
    model = bm.torch_view_head(opset)
    ops = _ops(model)
    i = ops.index("Shape")
    assert ops[i:i + 6] == ["Shape", "Constant", "Gather", "Unsqueeze", "Constant", "Concat"]
    assert ops[i + 6] == "Reshape"
    (unsq,) = [n for n in model.graph.node if n.op_type == "Unsqueeze"]
    attr_axes = [helper.get_attribute_value(a) for a in unsq.attribute if a.name == "axes"]
    if opset < 13:
        assert len(unsq.input) == 1 and attr_axes == [[0]]
    else:
        assert len(unsq.input) == 2 and not attr_axes
        assert _inits(model)[unsq.input[1]].tolist() == [0]
    (gather,) = [n for n in model.graph.node if n.op_type == "Gather"]
    idx = [n for n in model.graph.node if n.output[0] == gather.input[1]][0]
    assert numpy_helper.to_array(idx.attribute[0].t).shape == ()  # scalar index -> scalar N
    # The Reshape really is batch-preserving at another batch size.
    x = np.random.default_rng(3).standard_normal((3, 3, 16, 16)).astype(np.float32)
    assert _session(model).run(None, {"input": x})[0].shape == (3, 5)


def test_matmul_add_head_bias_operand_order():
    model = bm.matmul_add_head(13)
    inits = _inits(model)
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    assert len(adds) == 2
    assert adds[0].input[0] in inits and adds[0].input[1] not in inits  # Add(b, x)
    assert adds[1].input[1] in inits and adds[1].input[0] not in inits  # Add(x, b)
    (reshape,) = [n for n in model.graph.node if n.op_type == "Reshape"]
    assert inits[reshape.input[1]].tolist() == [0, -1]
    shapes = [inits[n.input[1]].shape for n in model.graph.node if n.op_type == "MatMul"]
    assert shapes == [(288, 16), (16, 3)]


@pytest.mark.parametrize("opset", OPSETS)
def test_bert_layer_structure(opset):
    model = bm.bert_layer(opset)
    ops = _ops(model)
    if opset >= 17:
        assert ops.count("LayerNormalization") == 2 and "ReduceMean" not in ops
    else:
        assert "LayerNormalization" not in ops and ops.count("ReduceMean") == 4
    assert ops.count("Erf") == 1 and ops.count("Softmax") == 1
    assert ops.count("MatMul") == 8  # 6 with a constant weight + Q.K^T + P.V
    inits = _inits(model)
    const_shapes = sorted(inits[n.input[1]].shape for n in model.graph.node
                          if n.op_type == "MatMul" and n.input[1] in inits)
    assert const_shapes == sorted([(32, 32)] * 4 + [(32, 64), (64, 32)])


@pytest.mark.parametrize("opset", OPSETS)
def test_gpt2_blocks_write_each_layer_as_hugging_face_conv1d(opset):
    """Reshape of [B,T,D] rows -> Gemm(W [D,F], transB 0) -> Reshape back, per layer; block 0's shapes
    traced (Shape/Gather/Unsqueeze/Concat), block 1's row shape constant and size_out Shape -> Slice."""
    model = bm.gpt2_blocks(opset)
    inits = _inits(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    readers = {i: n for n in model.graph.node for i in n.input}
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    assert [inits[n.input[1]].shape for n in gemms] == [(32, 96), (32, 32), (32, 128), (128, 32)] * 2
    for gemm in gemms:
        flatten, restore = producer[gemm.input[0]], readers[gemm.output[0]]
        assert (flatten.op_type, restore.op_type) == ("Reshape", "Reshape")
        assert not any(a.name == "transB" and a.i for a in gemm.attribute)
        traced = gemm.name.startswith("h.0.")
        assert (flatten.input[1] in inits) is not traced
        if not traced:
            assert inits[flatten.input[1]].tolist() == [-1, inits[gemm.input[1]].shape[0]]
        assert producer[producer[restore.input[1]].input[0]].op_type == ("Unsqueeze" if traced else "Slice")
    ops = _ops(model)
    assert ops.count("Reshape") == 24 and ops.count("Tanh") == 2 and ops.count("Softmax") == 2


@pytest.mark.parametrize("opset", OPSETS)
def test_mlp_mixer_token_mixing_sits_between_two_inverse_transposes(opset):
    model = bm.mlp_mixer(opset)
    transposes = [n for n in model.graph.node if n.op_type == "Transpose"]
    assert [n.name.split("/")[0] for n in transposes] == [f"blocks.{i}.mlp_tokens.transpose_{side}"
                                                         for i in (0, 1) for side in ("in", "out")]
    assert all(list(n.attribute[0].ints) == [0, 2, 1] for n in transposes)
    inits = _inits(model)
    shapes = [inits[n.input[1]].shape for n in model.graph.node if n.op_type == "MatMul"]
    assert shapes == [(16, 64), (64, 16), (32, 128), (128, 32)] * 2


def _bert_reference(model, x):
    """A numpy BERT layer fed with the model's own initializers."""
    p = _inits(model)

    def lin(h, name):
        return h @ p[f"{name}.weight"].astype(np.float64) + p[f"{name}.bias"]

    def ln(h, name):
        mu = h.mean(-1, keepdims=True)
        var = ((h - mu) ** 2).mean(-1, keepdims=True)
        return (h - mu) / np.sqrt(var + 1e-5) * p[f"{name}.weight"] + p[f"{name}.bias"]

    def heads(h):
        b, t, _ = h.shape
        return h.reshape(b, t, 4, 8).transpose(0, 2, 1, 3)

    x = x.astype(np.float64)
    q, k, v = (heads(lin(x, f"attention.{n}")) for n in ("query", "key", "value"))
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(8)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    c = (s @ v).transpose(0, 2, 1, 3).reshape(x.shape)
    a = ln(lin(c, "attention.output") + x, "attention.layer_norm")
    f = lin(a, "ffn.intermediate")
    erf = np.vectorize(math.erf)
    f = f * 0.5 * (1.0 + erf(f / math.sqrt(2.0)))
    return ln(lin(f, "ffn.output") + a, "ffn.layer_norm")


@pytest.mark.e2e
@pytest.mark.parametrize("opset", OPSETS)
def test_bert_layer_matches_numpy_reference(opset):
    model = bm.bert_layer(opset)
    x = _random_input("bert_layer", seed=4)
    got = _run(model, "bert_layer", x, optimize=False)
    np.testing.assert_allclose(got, _bert_reference(model, x), rtol=1e-4, atol=1e-4)


def test_no_committed_model_carries_the_paths_of_the_machine_that_built_it():
    """The dynamo exporter records each node's Python stack trace, with the builder's paths; the
    builders drop them, so a committed model says nothing about the machine that made it."""
    for path in sorted(MODELS_DIR.glob("*.onnx")):
        model = onnx.load(str(path))
        keys = {p.key for node in model.graph.node for p in node.metadata_props}
        assert "pkg.torch.onnx.stack_trace" not in keys, path.name
