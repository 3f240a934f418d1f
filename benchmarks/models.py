"""The benchmark models, generated at run time with random weights (nothing is downloaded).

Weights are written straight into the ``.onnx`` file (or its external-data file) chunk by chunk, so
building a 3 GB model takes a few seconds and almost no memory; their values only need to be finite
and of a sensible scale, since the benchmarks measure time and memory, and the verifier compares the
converted model against the original on the same weights.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

FLOAT = TensorProto.FLOAT
CHUNK_VALUES = 1 << 24  # 64 MB of float32 per random draw

# VGG16 (Simonyan & Zisserman, configuration D): channels per conv, "M" for a 2x2 max pool.
VGG16_CONVS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
VGG16_FCS = (4096, 4096, 1000)
# The > 2 GB model: a small backbone to a 512x7x7 map, then three wide FC layers (~3 GB of weights).
WIDE_CONVS = (64, "M", 128, "M", 256, "M", 512, "M", 512, "M")
WIDE_FCS = (16384, 16384, 4096)


class WeightWriter:
    """Makes initializers whose random data goes to ``data_file`` (external data) or inline, stored
    as ``dtype`` (drawn in float32 one chunk at a time, then cast)."""

    def __init__(self, seed: int, data_file: Path | None = None, dtype=np.float32):
        self.rng = np.random.default_rng(seed)
        self.data_file = data_file
        self.dtype = np.dtype(dtype)
        self._out = open(data_file, "wb") if data_file is not None else None
        self.inits: list[onnx.TensorProto] = []

    def add(self, name: str, dims: list[int], fan_in: int) -> str:
        """A He-uniform weight ``dims`` (bound sqrt(6 / fan_in)), so activations stay O(1)."""
        bound = float(np.sqrt(6.0 / fan_in))
        total = int(np.prod(dims))
        init = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(self.dtype), dims=dims)
        if self._out is None:
            init.raw_data = self._draw(total, bound).tobytes()
        else:
            offset = self._out.tell()
            for start in range(0, total, CHUNK_VALUES):
                self._out.write(self._draw(min(CHUNK_VALUES, total - start), bound).tobytes())
            init.data_location = TensorProto.EXTERNAL
            for key, value in (("location", self.data_file.name), ("offset", str(offset)),
                               ("length", str(total * self.dtype.itemsize))):
                init.external_data.add(key=key, value=value)
        self.inits.append(init)
        return name

    def _draw(self, count: int, bound: float) -> np.ndarray:
        return ((self.rng.random(count, dtype=np.float32) * 2 - 1) * np.float32(bound)).astype(self.dtype, copy=False)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


def vgg(path: Path, convs=VGG16_CONVS, fcs=VGG16_FCS, image: int = 224, channels_in: int = 3,
        external_data: bool = False, opset: int = 17, seed: int = 0, weights_k_by_f: bool = False) -> Path:
    """A VGG-style classifier: 3x3 padded convs + ReLU, 2x2 max pools, Flatten, Gemm (transB=1)
    layers as PyTorch exports them. The defaults are VGG16 (138 M parameters, ~553 MB).
    ``weights_k_by_f``: the FC weights stored ``[K,F]`` (Gemm transB=0, as MatMul-style exporters
    write them), the layout whose kernels need a transposed copy."""
    path = Path(path)
    data_file = path.with_name(path.name + ".data") if external_data else None
    weights = WeightWriter(seed, data_file)
    nodes, x, c, size = [], "input", channels_in, image
    for i, spec in enumerate(convs):
        if spec == "M":
            nodes.append(helper.make_node("MaxPool", [x], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            x, size = f"pool{i}", size // 2
            continue
        w = weights.add(f"conv{i}.weight", [spec, c, 3, 3], c * 9)
        b = weights.add(f"conv{i}.bias", [spec], c * 9)
        nodes.append(helper.make_node("Conv", [x, w, b], [f"conv{i}"], name=f"conv{i}",
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        x, c = f"relu{i}", spec
    nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
    x, k = "flat", c * size * size
    for i, f in enumerate(fcs):
        w = weights.add(f"fc{i}.weight", [k, f] if weights_k_by_f else [f, k], k)
        b = weights.add(f"fc{i}.bias", [f], k)
        nodes.append(helper.make_node("Gemm", [x, w, b], [f"fc{i}"], name=f"fc{i}", transB=int(not weights_k_by_f)))
        x, k = f"fc{i}", f
        if i < len(fcs) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"fc{i}_relu"]))
            x = f"fc{i}_relu"
    weights.close()
    graph = helper.make_graph(
        nodes, path.stem, [helper.make_tensor_value_info("input", FLOAT, ["N", channels_in, image, image])],
        [helper.make_tensor_value_info(x, FLOAT, ["N", k])], initializer=weights.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="onnx-fc2conv benchmarks")
    with open(path, "wb") as f:  # the proto is small when the weights are external
        f.write(model.SerializeToString())
    return path


def vgg16(path: Path, **kwargs) -> Path:
    return vgg(path, **kwargs)


def vgg16_k_by_f(path: Path, **kwargs) -> Path:
    return vgg(path, weights_k_by_f=True, **kwargs)


def huge_fc(path: Path, **kwargs) -> Path:
    """One FC layer whose weight alone passes 2 GiB (540000 x 1024 float32, 2.2 GB, external data) on
    a 64x4x4 map: the case where ONNX Runtime's NCHWc transform cannot copy the Conv kernel."""
    return vgg(path, convs=(), fcs=(540000,), image=4, channels_in=64, external_data=True, **kwargs)


def wide_external(path: Path, **kwargs) -> Path:
    """The > 2 GB model (~3 GB of FC weights), saved with external data."""
    return vgg(path, convs=WIDE_CONVS, fcs=WIDE_FCS, external_data=True, **kwargs)


def wide_external_k_by_f(path: Path, **kwargs) -> Path:
    """The 3 GB model with its FC weights stored ``[K,F]``: every kernel is a transposed copy."""
    return wide_external(path, weights_k_by_f=True, **kwargs)


def vgg16_k_by_f_external(path: Path, **kwargs) -> Path:
    """VGG16 with external data and its FC weights stored ``[K,F]``."""
    return vgg(path, weights_k_by_f=True, external_data=True, **kwargs)


def vgg16_head(path: Path, **kwargs) -> Path:
    """VGG16's classifier alone, reading the 512x7x7 feature map: where converted and original differ."""
    return vgg(path, convs=(), fcs=VGG16_FCS, image=7, channels_in=512, **kwargs)


def small_vgg(path: Path, **kwargs) -> Path:
    """A VGG-style net small enough to run many times (64x64 input, map 128x8x8)."""
    return vgg(path, convs=(32, 32, "M", 64, 64, "M", 128, 128, "M"), fcs=(1024, 1024, 10), image=64, **kwargs)


# ---- a Llama-style decoder -----------------------------------------------------------------------------

# TinyLlama's block (hidden 2048, FFN 5632, 16 heads, 4 KV heads) at 24 blocks, with Llama 3's vocabulary:
# 1.60 B parameters, 3.2 GB in float16.
LLAMA_1_5B = {"layers": 24, "hidden": 2048, "heads": 16, "kv_heads": 4, "ffn": 5632, "vocab": 128256}


def llama_decoder(path: Path, layers: int = 24, hidden: int = 2048, heads: int = 16, kv_heads: int = 4,
                  ffn: int = 5632, vocab: int = 32000, dtype=np.float16, max_positions: int = 256,
                  external_data: bool = True, opset: int = 17, seed: int = 0) -> Path:
    """A Llama-style decoder step in the op spelling of ONNX Runtime's model builder and torch.onnx,
    with plain ONNX ops only (no contrib op, so ONNX Runtime's CPU runs it). Inputs ``input_ids``
    ``[batch_size, sequence_length]``, ``attention_mask`` ``[batch_size, total_sequence_length]`` and
    ``past_key_values.{i}.key/value`` ``[batch_size, kv_heads, past_sequence_length, head_dim]``;
    outputs ``logits`` and ``present.{i}.key/value``. Per layer: RMSNorm (Pow, ReduceMean, Add, Sqrt,
    Div, Mul, in float32 as torch upcasts it), Q/K/V/O projections as MatMul (weights ``[in, out]``),
    rotary embedding (cos/sin tables gathered at the positions past..past+seq, rotate-half by
    Slice/Neg/Concat), the past concatenated to K and V, grouped KV heads repeated by
    Unsqueeze/Expand/Reshape, causal attention (MatMul, a mask added, Softmax), and a SwiGLU FFN
    (gate * Sigmoid(gate) * up, then down). The defaults: 24 layers, hidden 2048, 16 heads, 4 KV
    heads, FFN 5632, vocabulary 32000 (1.2 B parameters, 2.4 GB in float16)."""
    path = Path(path)
    dtype = np.dtype(dtype)
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    head_dim, group = hidden // heads, heads // kv_heads
    data_file = path.with_name(path.name + ".data") if external_data else None
    weights = WeightWriter(seed, data_file, dtype)
    rng = np.random.default_rng(seed + 1)
    nodes: list[onnx.NodeProto] = []
    consts: list[onnx.TensorProto] = []

    def const(name: str, value) -> str:
        consts.append(onnx.numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(kind: str, inputs: list[str], name: str, **attrs) -> str:
        nodes.append(helper.make_node(kind, inputs, [f"{name}/output_0"], name=name, **attrs))
        return f"{name}/output_0"

    def rms_norm(x: str, prefix: str) -> str:
        weight = const(f"{prefix}.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(dtype))
        wide = op("Cast", [x], f"{prefix}/Cast", to=TensorProto.FLOAT)
        mean = op("ReduceMean", [op("Pow", [wide, "two"], f"{prefix}/Pow")], f"{prefix}/ReduceMean", axes=[-1])
        root = op("Sqrt", [op("Add", [mean, "eps"], f"{prefix}/Add")], f"{prefix}/Sqrt")
        scaled = op("Mul", [wide, op("Div", ["one", root], f"{prefix}/Div")], f"{prefix}/Mul")
        return op("Mul", [op("Cast", [scaled], f"{prefix}/Cast_1", to=elem), weight], f"{prefix}/Mul_1")

    def linear(x: str, prefix: str, k: int, f: int) -> str:
        return op("MatMul", [x, weights.add(f"{prefix}.MatMul.weight", [k, f], k)], f"{prefix}/MatMul")

    def rotary(x: str, prefix: str) -> str:
        first = op("Slice", [x, "zero_1d", "half_1d", "minus_one_1d"], f"{prefix}/Slice")
        second = op("Slice", [x, "half_1d", "big_1d", "minus_one_1d"], f"{prefix}/Slice_1")
        rotated = op("Concat", [op("Neg", [second], f"{prefix}/Neg"), first], f"{prefix}/Concat", axis=-1)
        return op("Add", [op("Mul", [x, "cos"], f"{prefix}/Mul"), op("Mul", [rotated, "sin"], f"{prefix}/Mul_1")],
                  f"{prefix}/Add")

    def heads_first(x: str, prefix: str, count: int) -> str:  # [B,S,count*hd] -> [B,count,S,hd]
        shaped = op("Reshape", [x, const(f"{prefix}/shape", np.array([0, 0, count, head_dim], np.int64))],
                    f"{prefix}/Reshape")
        return op("Transpose", [shaped], f"{prefix}/Transpose", perm=[0, 2, 1, 3])

    def repeat_kv(x: str, prefix: str) -> str:  # [B,kv,T,hd] -> [B,heads,T,hd]
        wide = op("Expand", [op("Unsqueeze", [x, "two_1d"], f"{prefix}/Unsqueeze"), "repeat"], f"{prefix}/Expand")
        return op("Reshape", [wide, "heads_shape"], f"{prefix}/Reshape")

    inv_freq = 1.0 / (10000.0 ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    angles = np.outer(np.arange(max_positions), inv_freq)
    const("cos_cache", np.cos(angles).astype(dtype))
    const("sin_cache", np.sin(angles).astype(dtype))
    const("two", np.float32(2))
    const("eps", np.float32(1e-6))
    const("one", np.float32(1))
    const("zero", np.int64(0))
    const("one_i", np.int64(1))
    const("zero_1d", np.array([0], np.int64))
    const("half_1d", np.array([head_dim // 2], np.int64))
    const("big_1d", np.array([head_dim], np.int64))
    const("minus_one_1d", np.array([-1], np.int64))
    const("two_1d", np.array([2], np.int64))
    const("repeat", np.array([1, 1, group, 1, 1], np.int64))
    const("heads_shape", np.array([0, heads, -1, head_dim], np.int64))
    const("scale", np.array(1 / np.sqrt(head_dim), dtype))
    const("masked", np.array(-10000.0, dtype))
    const("unmasked", np.array(0.0, dtype))
    const("hidden_shape", np.array([0, 0, hidden], np.int64))

    # Positions past..past+seq, the rotary tables at them, and the causal and padding mask [B,1,S,T].
    past_len = op("Shape", ["past_key_values.0.key"], "/model/pos/Shape", start=2, end=3)
    seq_len = op("Shape", ["input_ids"], "/model/pos/Shape_1", start=1, end=2)
    past = op("Squeeze", [past_len], "/model/pos/Squeeze")
    end = op("Add", [past, op("Squeeze", [seq_len], "/model/pos/Squeeze_1")], "/model/pos/Add")
    positions = op("Range", [past, end, "one_i"], "/model/pos/Range")
    for table in ("cos", "sin"):
        half = op("Gather", [f"{table}_cache", positions], f"/model/rotary/{table}/Gather")
        nodes.append(helper.make_node("Concat", [half, half], [table], name=f"/model/rotary/{table}/Concat", axis=-1))
    keys = op("Range", ["zero", end, "one_i"], "/model/mask/Range")
    causal = op("LessOrEqual", [op("Unsqueeze", [keys, "zero_1d"], "/model/mask/Unsqueeze"),
                                op("Unsqueeze", [positions, "minus_one_1d"], "/model/mask/Unsqueeze_1")],
                "/model/mask/LessOrEqual")  # [S,T]
    padding = op("Cast", ["attention_mask"], "/model/mask/Cast", to=TensorProto.BOOL)
    padding = op("Unsqueeze", [padding, const("mask_axes", np.array([1, 2], np.int64))], "/model/mask/Unsqueeze_2")
    allowed = op("And", [causal, padding], "/model/mask/And")
    nodes.append(helper.make_node("Where", [allowed, "unmasked", "masked"], ["attention_bias"], name="/model/mask/Where"))

    embed = weights.add("model.embed_tokens.weight", [vocab, hidden], hidden)
    x = op("Gather", [embed, "input_ids"], "/model/embed_tokens/Gather")
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", elem, ["batch_size", "sequence_length", vocab])]
    cache = ["batch_size", kv_heads, "past_sequence_length", head_dim]
    for i in range(layers):
        p = f"/model/layers.{i}"
        h = rms_norm(x, f"{p}/input_layernorm")
        q = rotary(heads_first(linear(h, f"{p}/attn/q_proj", hidden, hidden), f"{p}/attn/q", heads), f"{p}/attn/q_rotary")
        k = rotary(heads_first(linear(h, f"{p}/attn/k_proj", hidden, kv_heads * head_dim), f"{p}/attn/k", kv_heads),
                   f"{p}/attn/k_rotary")
        v = heads_first(linear(h, f"{p}/attn/v_proj", hidden, kv_heads * head_dim), f"{p}/attn/v", kv_heads)
        for kind, new in (("key", k), ("value", v)):
            nodes.append(helper.make_node("Concat", [f"past_key_values.{i}.{kind}", new], [f"present.{i}.{kind}"],
                                          name=f"{p}/attn/{kind}/Concat", axis=2))
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", elem, cache))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", elem, [*cache[:2], "total_sequence_length",
                                                                                         head_dim]))
        keys_t = op("Transpose", [repeat_kv(f"present.{i}.key", f"{p}/attn/k_repeat")], f"{p}/attn/k/Transpose_1",
                    perm=[0, 1, 3, 2])
        scores = op("Mul", [op("MatMul", [q, keys_t], f"{p}/attn/MatMul"), "scale"], f"{p}/attn/Mul")
        probs = op("Softmax", [op("Add", [scores, "attention_bias"], f"{p}/attn/Add")], f"{p}/attn/Softmax", axis=-1)
        context = op("MatMul", [probs, repeat_kv(f"present.{i}.value", f"{p}/attn/v_repeat")], f"{p}/attn/MatMul_1")
        context = op("Reshape", [op("Transpose", [context], f"{p}/attn/Transpose", perm=[0, 2, 1, 3]), "hidden_shape"],
                     f"{p}/attn/Reshape")
        x = op("Add", [x, linear(context, f"{p}/attn/o_proj", hidden, hidden)], f"{p}/attn/residual/Add")
        h = rms_norm(x, f"{p}/post_attention_layernorm")
        gate = linear(h, f"{p}/mlp/gate_proj", hidden, ffn)
        act = op("Mul", [gate, op("Sigmoid", [gate], f"{p}/mlp/act_fn/Sigmoid")], f"{p}/mlp/act_fn/Mul")
        up = op("Mul", [act, linear(h, f"{p}/mlp/up_proj", hidden, ffn)], f"{p}/mlp/Mul")
        x = op("Add", [x, linear(up, f"{p}/mlp/down_proj", ffn, hidden)], f"{p}/mlp/residual/Add")
    logits = linear(rms_norm(x, "/model/norm"), "/lm_head", hidden, vocab)
    nodes.append(helper.make_node("Identity", [logits], ["logits"], name="/lm_head/Identity"))
    weights.close()
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=weights.inits + consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="onnx-fc2conv benchmarks")
    with open(path, "wb") as f:  # the proto is small when the weights are external
        f.write(model.SerializeToString())
    return path


def llama_parameters(layers: int = 24, hidden: int = 2048, heads: int = 16, kv_heads: int = 4, ffn: int = 5632,
                     vocab: int = 32000) -> int:
    """The weights of :func:`llama_decoder` (its projections, FFNs, embedding and head; norms left out)."""
    kv = kv_heads * (hidden // heads)
    return layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * ffn) + 2 * vocab * hidden


def files_of(path: Path) -> list[Path]:
    """The model file and its external-data file, if any."""
    path = Path(path)
    return [p for p in (path, path.with_name(path.name + ".data")) if p.exists()]


def size_of(path: Path) -> int:
    return sum(os.path.getsize(p) for p in files_of(path))
