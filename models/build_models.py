#!/usr/bin/env python3
"""Build the small example ONNX models used by onnx-fc2conv's tests and demos.

Usage::

    python models/build_models.py                 # rewrite the committed files (opset 13)
    python models/build_models.py --opset 17 --out /tmp/m17

Only numpy and ``onnx.helper`` are used (no torch).  The output is deterministic:
every model draws its weights from its own ``np.random.default_rng(seed)``, the
producer name is fixed, nothing records a time or a path, and the IR version is
the smallest one that the chosen opset needs.  Running the script twice gives
byte-identical files.

Weights are drawn with ``Generator.random()`` (uniform in [0, 1)), which maps the
raw PCG64 stream to floats in the simplest possible way, so the committed files do
not depend on numpy's normal-distribution sampler.  Layers use He-uniform scaling
(bound ``sqrt(6 / fan_in)``) so that activations stay O(1) for a standard-normal
input, which keeps numerical comparisons between a model and its rewrite
meaningful.

Every builder ``<name>(opset=13) -> onnx.ModelProto`` can be imported on its own;
``build_all(out_dir, opset=13)`` writes them all and returns ``{name: path}``.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PRODUCER_NAME = "onnx-fc2conv models/build_models.py"
PRODUCER_VERSION = "1"
DEFAULT_OPSET = 13
SUPPORTED_OPSETS = (11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21)
HERE = Path(__file__).resolve().parent

FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64


# --------------------------------------------------------------------------- helpers


class _Graph:
    """A small accumulator for nodes and initializers with deterministic names."""

    def __init__(self, name: str, seed: int, opset: int):
        self.name = name
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count: dict[str, int] = {}
        self.domains: dict[str, int] = {}  # opsets of other domains the nodes use (com.microsoft)

    # ---- tensors
    def uniform(self, shape: Sequence[int], bound: float) -> np.ndarray:
        u = self.rng.random(tuple(shape))  # float64 in [0, 1)
        return ((2.0 * u - 1.0) * bound).astype(np.float32)

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const_f(self, name: str, value: float) -> str:
        return self.init(name, np.array(value, dtype=np.float32))

    def const_i64(self, name: str, values: Sequence[int]) -> str:
        return self.init(name, np.array(values, dtype=np.int64))

    # ---- nodes
    def node(self, op: str, inputs: Sequence[str], prefix: str, out: str | None = None,
             **attrs) -> str:
        """Append one node named ``<prefix>/<op>``; its output is ``out`` (a graph output
        name) or ``<prefix>/<op>_output_0``."""
        k = self._count.get(prefix, 0)
        self._count[prefix] = k + 1
        base = prefix if k == 0 else f"{prefix}_{k}"
        output = out if out is not None else f"{base}/{op}_output_0"
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=f"{base}/{op}", **attrs))
        return output

    # ---- layers
    def conv(self, x: str, prefix: str, c_in: int, c_out: int, k: int, pad: int, stride: int = 1,
             bias: bool = True) -> str:
        """PyTorch's Conv2d as torch.onnx writes it; ``bias=False`` where a BatchNormalization follows."""
        fan_in = c_in * k * k
        w = self.init(f"{prefix}.weight", self.uniform((c_out, c_in, k, k), math.sqrt(6.0 / fan_in)))
        inputs = [x, w]
        if bias:
            inputs.append(self.init(f"{prefix}.bias", self.uniform((c_out,), 1.0 / math.sqrt(fan_in))))
        return self.node(
            "Conv", inputs, prefix,
            kernel_shape=[k, k], pads=[pad] * 4, strides=[stride, stride], dilations=[1, 1], group=1,
        )

    def batch_norm(self, x: str, prefix: str, c: int) -> str:
        """BatchNorm2d in eval mode, not folded into the conv: scale, bias, running mean and variance."""
        scale = self.init(f"{prefix}.weight", (0.5 + self.rng.random(c)).astype(np.float32))
        shift = self.init(f"{prefix}.bias", self.uniform((c,), 0.5))
        mean = self.init(f"{prefix}.running_mean", self.uniform((c,), 0.5))
        var = self.init(f"{prefix}.running_var", (0.5 + self.rng.random(c)).astype(np.float32))
        return self.node("BatchNormalization", [x, scale, shift, mean, var], prefix, epsilon=1e-5, momentum=0.9)

    def basic_block(self, x: str, prefix: str, c_in: int, c_out: int, stride: int) -> str:
        """torchvision's BasicBlock: conv3x3/stride-bn-relu-conv3x3-bn, plus the identity or a 1x1/stride
        conv + bn downsample, Add, Relu."""
        h = self.conv(x, f"{prefix}.conv1", c_in, c_out, 3, 1, stride, bias=False)
        h = self.node("Relu", [self.batch_norm(h, f"{prefix}.bn1", c_out)], f"{prefix}.relu")
        h = self.batch_norm(self.conv(h, f"{prefix}.conv2", c_out, c_out, 3, 1, bias=False), f"{prefix}.bn2", c_out)
        shortcut = x
        if stride != 1 or c_in != c_out:
            shortcut = self.conv(x, f"{prefix}.downsample.0", c_in, c_out, 1, 0, stride, bias=False)
            shortcut = self.batch_norm(shortcut, f"{prefix}.downsample.1", c_out)
        return self.node("Relu", [self.node("Add", [h, shortcut], f"{prefix}.add")], f"{prefix}.relu_out")

    def gemm(self, x: str, prefix: str, n_in: int, n_out: int, *, weight=None, bias=None,
             out: str | None = None) -> str:
        """PyTorch-style Linear: Gemm(x, W[out, in], b[out], transB=1)."""
        if weight is None:
            weight = self.uniform((n_out, n_in), math.sqrt(6.0 / n_in))
        if bias is None:
            bias = self.uniform((n_out,), 1.0 / math.sqrt(n_in))
        w = self.init(f"{prefix}.weight", np.asarray(weight, dtype=np.float32))
        b = self.init(f"{prefix}.bias", np.asarray(bias, dtype=np.float32))
        return self.node("Gemm", [x, w, b], prefix, out=out, alpha=1.0, beta=1.0, transA=0, transB=1)

    def matmul_weight(self, prefix: str, n_in: int, n_out: int, gain: float = 6.0) -> str:
        """A MatMul right operand W[in, out] (the transpose of PyTorch's Linear weight)."""
        return self.init(f"{prefix}.weight", self.uniform((n_in, n_out), math.sqrt(gain / n_in)))

    def bias(self, prefix: str, n: int, fan_in: int) -> str:
        return self.init(f"{prefix}.bias", self.uniform((n,), 1.0 / math.sqrt(fan_in)))

    def unsqueeze(self, x: str, axes: Sequence[int], prefix: str) -> str:
        if self.opset < 13:
            return self.node("Unsqueeze", [x], prefix, axes=list(axes))
        axes_name = self.const_i64(f"{prefix}.axes", axes)
        return self.node("Unsqueeze", [x, axes_name], prefix)

    def reduce_mean(self, x: str, axes: Sequence[int], prefix: str) -> str:
        if self.opset < 18:
            return self.node("ReduceMean", [x], prefix, axes=list(axes), keepdims=1)
        axes_name = self.const_i64(f"{prefix}.axes", axes)
        return self.node("ReduceMean", [x, axes_name], prefix, keepdims=1)

    def layer_norm(self, x: str, prefix: str, d: int, eps: float, out: str | None = None) -> str:
        """LayerNorm over the last axis: native from opset 17, decomposed (ReduceMean/Sub/Pow/...) below."""
        gamma = self.init(f"{prefix}.weight", (1.0 + self.uniform((d,), 0.1)).astype(np.float32))
        beta = self.init(f"{prefix}.bias", self.uniform((d,), 0.1))
        if self.opset >= 17:
            return self.node("LayerNormalization", [x, gamma, beta], prefix, out=out, axis=-1, epsilon=eps)
        mean = self.reduce_mean(x, [-1], f"{prefix}.mean")
        centred = self.node("Sub", [x, mean], f"{prefix}.sub")
        two = self.const_f(f"{prefix}.two", 2.0)
        sq = self.node("Pow", [centred, two], f"{prefix}.pow")
        var = self.reduce_mean(sq, [-1], f"{prefix}.var")
        e = self.const_f(f"{prefix}.eps", eps)
        var = self.node("Add", [var, e], f"{prefix}.add_eps")
        std = self.node("Sqrt", [var], f"{prefix}.sqrt")
        nrm = self.node("Div", [centred, std], f"{prefix}.div")
        y = self.node("Mul", [nrm, gamma], f"{prefix}.mul_gamma")
        return self.node("Add", [y, beta], f"{prefix}.add_beta", out=out)

    def gelu(self, x: str, prefix: str) -> str:
        """torch.onnx's exact GELU: the Gelu op from opset 20, the erf form below."""
        return self.node("Gelu", [x], prefix) if self.opset >= 20 else self.gelu_erf(x, prefix)

    def gelu_erf(self, x: str, prefix: str) -> str:
        """``0.5 * x * (1 + erf(x / sqrt(2)))``, as torch.onnx writes ``nn.GELU()`` before opset 20."""
        sqrt2 = self.const_f(f"{prefix}.sqrt2", 1.4142135)
        one = self.const_f(f"{prefix}.one", 1.0)
        half = self.const_f(f"{prefix}.half", 0.5)
        t = self.node("Div", [x, sqrt2], f"{prefix}.div")
        t = self.node("Erf", [t], f"{prefix}.erf")
        t = self.node("Add", [t, one], f"{prefix}.add")
        t = self.node("Mul", [x, t], f"{prefix}.mul")
        return self.node("Mul", [t, half], f"{prefix}.mul_half")

    def dropout(self, x: str, prefix: str, ratio: float = 0.5) -> str:
        """Inference-form Dropout: a single data input (identity at inference)."""
        if self.opset < 12:
            return self.node("Dropout", [x], prefix, ratio=ratio)
        # From opset 12 on, ratio and training_mode are optional inputs; leaving both
        # out gives the default ratio 0.5 and training_mode=False.
        return self.node("Dropout", [x], prefix)

    # ---- model
    def model(self, inputs, outputs, doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, inputs, outputs, self.inits, doc_string=doc)
        opset_id = helper.make_opsetid("", self.opset)
        model = helper.make_model(
            graph,
            opset_imports=[opset_id, *(helper.make_opsetid(d, v) for d, v in self.domains.items())],
            producer_name=PRODUCER_NAME,
            producer_version=PRODUCER_VERSION,
            ir_version=helper.find_min_ir_version_for([opset_id]),
        )
        model.model_version = 1
        model.doc_string = doc
        return model


def _vi(name: str, dims: Sequence) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, FLOAT, list(dims))


def _check_opset(opset: int) -> int:
    opset = int(opset)
    if opset not in SUPPORTED_OPSETS:
        raise ValueError(f"opset {opset} not supported; choose one of {SUPPORTED_OPSETS}")
    return opset


# --------------------------------------------------------------------------- models

SEED_W = np.array([[0, 1, 1], [2, 3, 5]], dtype=np.float32)  # [out=2, in=3]
SEED_B = np.array([8, 13], dtype=np.float32)


def seed_fc(opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """x[N,3,1,1] -> Flatten -> Gemm(W=[[0,1,1],[2,3,5]], b=[8,13], transB=1) -> Relu -> y[N,2]."""
    g = _Graph("seed_fc", seed=1, opset=_check_opset(opset))
    h = g.node("Flatten", ["x"], "flatten", axis=1)
    h = g.gemm(h, "fc", 3, 2, weight=SEED_W, bias=SEED_B)
    g.node("Relu", [h], "relu", out="y")
    return g.model(
        [_vi("x", ["N", 3, 1, 1])], [_vi("y", ["N", 2])],
        "Seed FC: y = ReLU(W x + b) on a [N,3,1,1] input flattened to [N,3].",
    )


def seed_mlp(opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """x[N,3] -> Gemm(W=[[0,1,1],[2,3,5]], b=[8,13], transB=1) -> Relu -> y[N,2]."""
    g = _Graph("seed_mlp", seed=2, opset=_check_opset(opset))
    h = g.gemm("x", "fc", 3, 2, weight=SEED_W, bias=SEED_B)
    g.node("Relu", [h], "relu", out="y")
    return g.model(
        [_vi("x", ["N", 3])], [_vi("y", ["N", 2])],
        "Seed MLP: the same y = ReLU(W x + b) as seed_fc, on a 2-D input [N,3].",
    )


def lenet5(opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Classic LeNet-5 on [N,1,32,32] with C5/F6/output as Gemm layers."""
    g = _Graph("lenet5", seed=5, opset=_check_opset(opset))
    h = g.conv("input", "conv1", 1, 6, 5, 0)                     # [N,6,28,28]
    h = g.node("Tanh", [h], "tanh1")
    h = g.node("AveragePool", [h], "pool1", kernel_shape=[2, 2], strides=[2, 2])   # [N,6,14,14]
    h = g.conv(h, "conv2", 6, 16, 5, 0)                          # [N,16,10,10]
    h = g.node("Relu", [h], "relu2")
    h = g.node("MaxPool", [h], "pool2", kernel_shape=[2, 2], strides=[2, 2])       # [N,16,5,5]
    h = g.node("Flatten", [h], "flatten", axis=1)                # [N,400]
    h = g.gemm(h, "c5", 400, 120)
    h = g.node("Relu", [h], "relu_c5")
    h = g.gemm(h, "f6", 120, 84)
    h = g.node("Relu", [h], "relu_f6")
    g.gemm(h, "output", 84, 10, out="logits")
    return g.model(
        [_vi("input", ["N", 1, 32, 32])], [_vi("logits", ["N", 10])],
        "LeNet-5: two valid 5x5 convs with pooling to [N,16,5,5], then Flatten and "
        "Gemm 400->120->84->10.",
    )


def vgg_small(opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Three VGG-style blocks (3x3 conv pad 1 + Relu + MaxPool 2) then a 3-layer classifier."""
    g = _Graph("vgg_small", seed=16, opset=_check_opset(opset))
    h, c_in = "input", 3
    for i, c_out in enumerate((8, 16, 32), start=1):
        h = g.conv(h, f"features.conv{i}", c_in, c_out, 3, 1)
        h = g.node("Relu", [h], f"features.relu{i}")
        h = g.node("MaxPool", [h], f"features.pool{i}", kernel_shape=[2, 2], strides=[2, 2])
        c_in = c_out
    h = g.node("Flatten", [h], "flatten", axis=1)                # [N,512]
    h = g.gemm(h, "classifier.fc1", 512, 64)
    h = g.node("Relu", [h], "classifier.relu1")
    h = g.dropout(h, "classifier.drop1")
    h = g.gemm(h, "classifier.fc2", 64, 64)
    h = g.node("Relu", [h], "classifier.relu2")
    h = g.dropout(h, "classifier.drop2")
    h = g.gemm(h, "classifier.fc3", 64, 10)
    g.node("Softmax", [h], "softmax", out="probs", axis=1)
    return g.model(
        [_vi("input", ["N", 3, 32, 32])], [_vi("probs", ["N", 10])],
        "Small VGG: 3 blocks (8/16/32 ch) to [N,32,4,4], Flatten, Gemm 512->64->64->10 "
        "with inference-mode Dropout, Softmax.",
    )


def gap_head(opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Two padded convs + MaxPool, GlobalAveragePool, Flatten, Gemm 16->10."""
    g = _Graph("gap_head", seed=7, opset=_check_opset(opset))
    h = g.conv("input", "conv1", 3, 8, 3, 1)
    h = g.node("Relu", [h], "relu1")
    h = g.conv(h, "conv2", 8, 16, 3, 1)
    h = g.node("Relu", [h], "relu2")
    h = g.node("MaxPool", [h], "pool", kernel_shape=[2, 2], strides=[2, 2])        # [N,16,16,16]
    h = g.node("GlobalAveragePool", [h], "gap")                   # [N,16,1,1]
    h = g.node("Flatten", [h], "flatten", axis=1)                 # [N,16]
    g.gemm(h, "fc", 16, 10, out="logits")
    return g.model(
        [_vi("input", ["N", 3, 32, 32])], [_vi("logits", ["N", 10])],
        "Global-average-pool head: [N,16,1,1] -> Flatten -> Gemm 16->10.",
    )


def torch_view_head(opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Conv features, then PyTorch's exported ``x.view(x.size(0), -1)`` and two Gemms.

    The shape subgraph uses Constant nodes, as torch.onnx.export writes it:
    Shape -> Gather(0, axis 0) -> Unsqueeze([0]) -> Concat(.., [-1]) -> Reshape.
    """
    opset = _check_opset(opset)
    g = _Graph("torch_view_head", seed=11, opset=opset)
    h = g.conv("input", "conv", 3, 8, 3, 1)
    h = g.node("Relu", [h], "relu")
    h = g.node("MaxPool", [h], "pool", kernel_shape=[4, 4], strides=[4, 4])        # [N,8,4,4]
    shape = g.node("Shape", [h], "view.shape")
    idx = g.node("Constant", [], "view.index",
                 value=numpy_helper.from_array(np.array(0, dtype=np.int64), "view.index"))
    n = g.node("Gather", [shape, idx], "view.gather", axis=0)    # scalar N
    n1 = g.unsqueeze(n, [0], "view.unsqueeze")                  # [1]
    minus1 = g.node("Constant", [], "view.minus_one",
                    value=numpy_helper.from_array(np.array([-1], dtype=np.int64), "view.minus_one"))
    target = g.node("Concat", [n1, minus1], "view.concat", axis=0)  # [N, -1]
    h = g.node("Reshape", [h, target], "view.reshape")          # [N,128]
    h = g.gemm(h, "fc1", 128, 32)
    h = g.node("Relu", [h], "relu_fc1")
    g.gemm(h, "fc2", 32, 5, out="out")
    return g.model(
        [_vi("input", ["N", 3, 16, 16])], [_vi("out", ["N", 5])],
        "PyTorch-style view head: Shape/Gather/Unsqueeze/Concat/Reshape flattening "
        "[N,8,4,4] to [N,128], then Gemm 128->32->5.",
    )


def matmul_add_head(opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Conv features, Reshape([0,-1]), then FC layers written as MatMul + Add."""
    g = _Graph("matmul_add_head", seed=13, opset=_check_opset(opset))
    h = g.conv("input", "conv", 4, 8, 3, 1)                      # [N,8,6,6]
    h = g.node("Relu", [h], "relu")
    shape = g.const_i64("flatten.shape", [0, -1])
    h = g.node("Reshape", [h, shape], "flatten")                 # [N,288]
    w1 = g.matmul_weight("fc1", 288, 16)
    h = g.node("MatMul", [h, w1], "fc1.matmul")
    b1 = g.bias("fc1", 16, 288)
    h = g.node("Add", [b1, h], "fc1.add")                        # bias is the FIRST operand
    h = g.node("Relu", [h], "relu_fc1")
    w2 = g.matmul_weight("fc2", 16, 3)
    h = g.node("MatMul", [h, w2], "fc2.matmul")
    b2 = g.bias("fc2", 3, 16)
    g.node("Add", [h, b2], "fc2.add", out="scores")            # bias is the SECOND operand
    return g.model(
        [_vi("input", ["N", 4, 6, 6])], [_vi("scores", ["N", 3])],
        "MatMul+Add head: Reshape [0,-1] to [N,288], MatMul [288,16] + Add(b, x), Relu, "
        "MatMul [16,3] + Add(x, b).",
    )


def bert_layer(opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """A small post-LN BERT encoder layer (hidden 32, 4 heads of 8, FFN 64) on [B,T,32]."""
    opset = _check_opset(opset)
    g = _Graph("bert_layer", seed=32, opset=opset)
    d_model, n_heads, d_head, d_ff = 32, 4, 8, 64
    eps = 1e-5

    def layer_norm(x: str, prefix: str, out: str | None = None) -> str:
        return g.layer_norm(x, prefix, d_model, eps, out=out)

    def linear(x: str, prefix: str, n_in: int, n_out: int, gain: float) -> str:
        w = g.matmul_weight(prefix, n_in, n_out, gain=gain)
        y = g.node("MatMul", [x, w], f"{prefix}.matmul")
        b = g.bias(prefix, n_out, n_in)
        return g.node("Add", [y, b], f"{prefix}.add")

    heads_shape = g.const_i64("attention.heads_shape", [0, 0, n_heads, d_head])
    merge_shape = g.const_i64("attention.merge_shape", [0, 0, d_model])

    x = "hidden"
    q = linear(x, "attention.query", d_model, d_model, 3.0)
    k = linear(x, "attention.key", d_model, d_model, 3.0)
    v = linear(x, "attention.value", d_model, d_model, 3.0)
    q = g.node("Reshape", [q, heads_shape], "attention.query.split_heads")   # [B,T,4,8]
    k = g.node("Reshape", [k, heads_shape], "attention.key.split_heads")
    v = g.node("Reshape", [v, heads_shape], "attention.value.split_heads")
    q = g.node("Transpose", [q], "attention.query.transpose", perm=[0, 2, 1, 3])  # [B,4,T,8]
    kt = g.node("Transpose", [k], "attention.key.transpose", perm=[0, 2, 3, 1])   # [B,4,8,T]
    v = g.node("Transpose", [v], "attention.value.transpose", perm=[0, 2, 1, 3])  # [B,4,T,8]
    s = g.node("MatMul", [q, kt], "attention.scores")            # [B,4,T,T]
    scale = g.const_f("attention.scale", math.sqrt(d_head))
    s = g.node("Div", [s, scale], "attention.scale")
    p = g.node("Softmax", [s], "attention.softmax", axis=-1)
    c = g.node("MatMul", [p, v], "attention.context")            # [B,4,T,8]
    c = g.node("Transpose", [c], "attention.context.transpose", perm=[0, 2, 1, 3])  # [B,T,4,8]
    c = g.node("Reshape", [c, merge_shape], "attention.context.merge_heads")      # [B,T,32]
    a = linear(c, "attention.output", d_model, d_model, 3.0)
    a = g.node("Add", [a, x], "attention.residual")
    a = layer_norm(a, "attention.layer_norm")

    f = linear(a, "ffn.intermediate", d_model, d_ff, 6.0)
    t = g.gelu_erf(f, "ffn.gelu")
    f = linear(t, "ffn.output", d_ff, d_model, 3.0)
    f = g.node("Add", [f, a], "ffn.residual")
    layer_norm(f, "ffn.layer_norm", out="out")
    return g.model(
        [_vi("hidden", ["B", "T", d_model])], [_vi("out", ["B", "T", d_model])],
        "Small BERT encoder layer: Q/K/V/output projections and a 32->64->32 erf-GELU FFN, "
        "all as MatMul with a constant [in,out] weight + Add bias on 3-D [B,T,C] tensors; "
        f"LayerNormalization is {'native' if opset >= 17 else 'decomposed (opset < 17)'}.",
    )


def bert_layer_fused(opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """:func:`bert_layer` as ONNX Runtime's transformer optimizer writes it (``optimize_model(...,
    model_type="bert", num_heads=4, hidden_size=32)`` of the opset-17 layer, onnxruntime 1.32): the
    attention fused into one com.microsoft ``Attention`` with the Q/K/V weights concatenated to
    ``[32,96]``, each residual Add + LayerNormalization (with the bias of the MatMul before it) into
    ``SkipLayerNormalization``, the FFN bias + erf-GELU into ``BiasGelu``. ONNX's shape inference
    knows none of these ops; the three MatMuls left read their outputs."""
    opset = _check_opset(opset)
    w = {t.name: numpy_helper.to_array(t) for t in bert_layer(opset).graph.initializer}
    g = _Graph("bert_layer_fused", seed=32, opset=opset)
    g.domains = {"com.microsoft": 1}
    qkv = [f"attention.{p}" for p in ("query", "key", "value")]
    qkv_w = g.init("Attention_0_qkv_weight", np.concatenate([w[f"{p}.weight"] for p in qkv], axis=1))
    qkv_b = g.init("Attention_0_qkv_bias", np.concatenate([w[f"{p}.bias"] for p in qkv]))
    for name in ("attention.output.weight", "attention.output.bias", "attention.layer_norm.weight",
                 "attention.layer_norm.bias", "ffn.intermediate.weight", "ffn.intermediate.bias",
                 "ffn.output.weight", "ffn.output.bias", "ffn.layer_norm.weight", "ffn.layer_norm.bias"):
        g.init(name, w[name])
    ms = dict(domain="com.microsoft")
    g.nodes += [
        helper.make_node("Attention", ["hidden", qkv_w, qkv_b, ""], ["attention.context.merge_heads/Reshape_output_0"],
                         name="Attention_0", num_heads=4, **ms),
        helper.make_node("MatMul", ["attention.context.merge_heads/Reshape_output_0", "attention.output.weight"],
                         ["attention.output.matmul/MatMul_output_0"], name="attention.output.matmul/MatMul"),
        helper.make_node("SkipLayerNormalization", ["attention.output.matmul/MatMul_output_0", "hidden",
                                                    "attention.layer_norm.weight", "attention.layer_norm.bias",
                                                    "attention.output.bias"],
                         ["attention.layer_norm/LayerNormalization_output_0"], name="SkipLayerNorm_AddBias_0",
                         epsilon=1e-5, **ms),
        helper.make_node("MatMul", ["attention.layer_norm/LayerNormalization_output_0", "ffn.intermediate.weight"],
                         ["ffn.intermediate.matmul/MatMul_output_0"], name="ffn.intermediate.matmul/MatMul"),
        helper.make_node("BiasGelu", ["ffn.intermediate.matmul/MatMul_output_0", "ffn.intermediate.bias"],
                         ["ffn.gelu.mul_half/Mul_output_0"], name="Gelu_AddBias_0", **ms),
        helper.make_node("MatMul", ["ffn.gelu.mul_half/Mul_output_0", "ffn.output.weight"],
                         ["ffn.output.matmul/MatMul_output_0"], name="ffn.output.matmul/MatMul"),
        helper.make_node("SkipLayerNormalization", ["ffn.output.matmul/MatMul_output_0",
                                                    "attention.layer_norm/LayerNormalization_output_0",
                                                    "ffn.layer_norm.weight", "ffn.layer_norm.bias", "ffn.output.bias"],
                         ["out"], name="SkipLayerNorm_AddBias_1", epsilon=1e-5, **ms),
    ]
    return g.model(
        [_vi("hidden", ["B", "T", 32])], [_vi("out", ["B", "T", 32])],
        "The small BERT layer after ONNX Runtime's transformer optimizer: com.microsoft Attention, "
        "SkipLayerNormalization and BiasGelu around the output, FFN-in and FFN-out MatMuls.",
    )


def keep_io_fp16(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """``model`` in float16 with float32 inputs and outputs, spelled as onnxconverter-common's
    ``float16.convert_float_to_float16(model, keep_io_types=True)`` writes it (1.16, compared node by
    node): every float initializer in fp16; each float input read through one ``Cast(to=FLOAT16)``
    per reader, named ``<input>_cast_to_<reader>``; each output written by ``Cast(to=FLOAT)`` from its
    producer's renamed output ``<producer>_cast_to_<output>``; the inferred fp16 types as value_info."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    g.name = name
    for i, init in enumerate(g.initializer):
        if init.data_type == FLOAT:
            g.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    nodes: list[onnx.NodeProto] = []
    inputs = {vi.name for vi in g.input if vi.type.tensor_type.elem_type == FLOAT}
    outputs = {vi.name for vi in g.output if vi.type.tensor_type.elem_type == FLOAT}
    for node in g.node:
        for slot, x in enumerate(node.input):
            if x in inputs:
                cast = f"{x}_cast_to_{node.name}"
                nodes.append(helper.make_node("Cast", [x], [cast], name=cast, to=TensorProto.FLOAT16))
                node.input[slot] = cast
        nodes.append(node)
        for slot, y in enumerate(node.output):
            if y in outputs:
                cast = f"{node.name}_cast_to_{y}"
                node.output[slot] = cast
                nodes.append(helper.make_node("Cast", [cast], [y], name=cast, to=FLOAT))
    del g.node[:]
    g.node.extend(nodes)
    out.doc_string = g.doc_string = f"{model.doc_string} In float16, with float32 inputs and outputs (keep_io_types)."
    return onnx.shape_inference.infer_shapes(out)


def lenet5_fp16(opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """LeNet-5 in fp16 behind fp32 inputs and outputs, as fp16 converters write it (keep_io_types)."""
    return keep_io_fp16(lenet5(opset), "lenet5_fp16")


def bert_layer_fp16(opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The BERT layer in fp16 behind fp32 inputs and outputs (DistilBERT through an fp16 converter)."""
    return keep_io_fp16(bert_layer(opset), "bert_layer_fp16")


def residual_pad(opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """A padded residual block with a stride-2 1x1 shortcut conv, then Flatten and Gemm (total stride 4)."""
    g = _Graph("residual_pad", seed=21, opset=_check_opset(opset))
    h = g.node("Relu", [g.conv("input", "stem.conv", 3, 8, 3, 1)], "stem.relu")             # [N,8,32,32]
    h = g.node("MaxPool", [h], "stem.pool", kernel_shape=[2, 2], strides=[2, 2])            # [N,8,16,16]
    main = g.node("Relu", [g.conv(h, "block.conv1", 8, 8, 3, 1, 2)], "block.relu1")         # [N,8,8,8]
    main = g.conv(main, "block.conv2", 8, 8, 3, 1)
    shortcut = g.conv(h, "block.shortcut", 8, 8, 1, 0, 2)                                   # [N,8,8,8]
    h = g.node("Relu", [g.node("Add", [main, shortcut], "block.add")], "block.relu2")
    h = g.node("Flatten", [h], "flatten", axis=1)                                           # [N,512]
    g.gemm(h, "fc", 512, 10, out="logits")
    return g.model(
        [_vi("input", ["N", 3, 32, 32])], [_vi("logits", ["N", 10])],
        "Padded residual: conv3x3 + MaxPool 2, block conv3x3/2 -> conv3x3 plus a 1x1/2 shortcut, Add, "
        "Flatten of [N,8,8,8], Gemm 512->10.",
    )


def residual_valid(opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """No padding anywhere: an Inception-style reduction (conv3x3/2 beside MaxPool3x3/2, Concat) and a
    residual block whose shortcut is a 3x3/2 conv, then Flatten and Gemm (total stride 4)."""
    g = _Graph("residual_valid", seed=22, opset=_check_opset(opset))
    h = g.node("Relu", [g.conv("input", "stem.conv", 3, 8, 3, 0)], "stem.relu")             # [N,8,30,30]
    branch = g.node("Relu", [g.conv(h, "reduce.conv", 8, 8, 3, 0, 2)], "reduce.relu")       # [N,8,14,14]
    pooled = g.node("MaxPool", [h], "reduce.pool", kernel_shape=[3, 3], strides=[2, 2])     # [N,8,14,14]
    h = g.node("Concat", [branch, pooled], "reduce.concat", axis=1)                         # [N,16,14,14]
    main = g.node("Relu", [g.conv(h, "block.conv1", 16, 8, 3, 0, 2)], "block.relu1")        # [N,8,6,6]
    main = g.conv(main, "block.conv2", 8, 8, 1, 0)
    shortcut = g.conv(h, "block.shortcut", 16, 8, 3, 0, 2)                                  # [N,8,6,6]
    h = g.node("Relu", [g.node("Add", [main, shortcut], "block.add")], "block.relu2")
    h = g.node("Flatten", [h], "flatten", axis=1)                                           # [N,288]
    g.gemm(h, "fc", 288, 10, out="logits")
    return g.model(
        [_vi("input", ["N", 3, 32, 32])], [_vi("logits", ["N", 10])],
        "Unpadded: conv3x3, Concat(conv3x3/2, MaxPool3x3/2), block conv3x3/2 -> conv1x1 plus a 3x3/2 "
        "shortcut, Add, Flatten of [N,8,6,6], Gemm 288->10.",
    )


def resnet_tiny(opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """torchvision's ResNet at 1/8 width and three stages: conv7x7/2 + bn + MaxPool3x3/2, BasicBlocks
    (stride 1, 2, 2; 1x1/2 downsample + bn), GlobalAveragePool, Flatten, Gemm (total stride 16)."""
    g = _Graph("resnet_tiny", seed=23, opset=_check_opset(opset))
    h = g.batch_norm(g.conv("input", "conv1", 3, 8, 7, 3, 2, bias=False), "bn1", 8)        # [N,8,32,32]
    h = g.node("Relu", [h], "relu")
    h = g.node("MaxPool", [h], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])  # [N,8,16,16]
    h = g.basic_block(h, "layer1.0", 8, 8, 1)
    h = g.basic_block(h, "layer2.0", 8, 16, 2)                                              # [N,16,8,8]
    h = g.basic_block(h, "layer3.0", 16, 32, 2)                                             # [N,32,4,4]
    h = g.node("GlobalAveragePool", [h], "avgpool")
    h = g.node("Flatten", [h], "flatten", axis=1)                                           # [N,32]
    g.gemm(h, "fc", 32, 10, out="logits")
    return g.model(
        [_vi("input", ["N", 3, 64, 64])], [_vi("logits", ["N", 10])],
        "torchvision-style ResNet: conv7x7/2, bn, MaxPool3x3/2, BasicBlocks 8/16/32 (stride 1, 2, 2; "
        "1x1/2 downsample convs), GlobalAveragePool, Flatten, Gemm 32->10; BatchNormalization not folded.",
    )


def vgg_tv(opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """torchvision's VGG (configuration A) at 1/8 width: conv3x3 pad 1 + Relu, MaxPool 2 after blocks of
    1, 1, 2, 2 convs, then Flatten and its classifier Linear-Relu-Dropout twice, Linear (stride 16)."""
    g = _Graph("vgg_tv", seed=24, opset=_check_opset(opset))
    h, c_in, conv = "input", 3, 0
    for widths in ((8,), (16,), (16, 16), (32, 32)):
        for c_out in widths:
            h = g.node("Relu", [g.conv(h, f"features.{conv}", c_in, c_out, 3, 1)], f"features.{conv + 1}")
            c_in, conv = c_out, conv + 2
        h = g.node("MaxPool", [h], f"features.{conv}", kernel_shape=[2, 2], strides=[2, 2])
        conv += 1
    h = g.node("Flatten", [h], "flatten", axis=1)                                           # [N,288]
    h = g.node("Relu", [g.gemm(h, "classifier.0", 288, 64)], "classifier.1")
    h = g.dropout(h, "classifier.2")
    h = g.node("Relu", [g.gemm(h, "classifier.3", 64, 64)], "classifier.4")
    h = g.dropout(h, "classifier.5")
    g.gemm(h, "classifier.6", 64, 10, out="logits")
    return g.model(
        [_vi("input", ["N", 3, 48, 48])], [_vi("logits", ["N", 10])],
        "torchvision-style VGG-A: 6 conv3x3 (8/16/16/16/32/32) in 4 blocks with MaxPool 2 to [N,32,3,3], "
        "Flatten, Gemm 288->64->64->10 with Relu and inference-mode Dropout.",
    )


def gpt2_blocks(opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Two GPT-2 blocks (hidden 32, 4 heads of 8, MLP 128) on [B,T,32], every FC layer a Hugging Face
    ``Conv1D`` as torch.onnx writes it: ``Reshape(x, [-1, D]) -> Gemm(W [D,F], b) -> Reshape([B,T,F])``."""
    opset = _check_opset(opset)
    g = _Graph("gpt2_blocks", seed=2, opset=opset)
    d_model, n_heads, d_head, d_mlp, n_positions = 32, 4, 8, 128, 64
    eps = 1e-5
    causal = g.init("attn.bias", np.tril(np.ones((n_positions, n_positions), np.float32))[None, None])

    def dims_of(x: str, prefix: str, axes: Sequence[int]) -> list[str]:
        """``x.size(i)`` for each axis: one Shape -> Gather -> Unsqueeze each, as TorchScript traces it."""
        sizes = []
        for axis in axes:
            shape = g.node("Shape", [x], f"{prefix}.shape{axis}")
            index = f"{prefix}.axis{axis}"
            g.inits.append(numpy_helper.from_array(np.array(axis, np.int64), index))  # a scalar index
            size = g.node("Gather", [shape, index], f"{prefix}.gather{axis}", axis=0)
            sizes.append(g.unsqueeze(size, [0], f"{prefix}.unsqueeze{axis}"))
        return sizes

    def conv1d(x: str, prefix: str, nx: int, nf: int, gain: float, traced_sizes: bool) -> str:
        """``size_out = x.size()[:-1] + (nf,); x = torch.addmm(bias, x.view(-1, x.size(-1)), weight);
        x.view(size_out)``: the weight is stored [nx, nf] (Gemm transB=0). ``traced_sizes``: the shapes
        come from Shape -> Gather -> Unsqueeze -> Concat; else the row shape is a constant [-1, nx] and
        size_out is Shape -> Slice(:-1) -> Concat (what an exporter that folds static sizes writes)."""
        w = g.init(f"{prefix}.weight", g.uniform((nx, nf), math.sqrt(gain / nx)))
        b = g.bias(prefix, nf, nx)
        if traced_sizes:
            (last,) = dims_of(x, f"{prefix}.size_in", [2])
            rows_shape = g.node("Concat", [g.const_i64(f"{prefix}.minus_one", [-1]), last], f"{prefix}.rows_shape",
                                axis=0)
        else:
            rows_shape = g.const_i64(f"{prefix}.rows_shape", [-1, nx])
        rows = g.node("Reshape", [x, rows_shape], f"{prefix}.view_rows")
        y = g.node("Gemm", [rows, w, b], f"{prefix}.addmm", alpha=1.0, beta=1.0)
        if traced_sizes:
            leading = dims_of(x, f"{prefix}.size_out", [0, 1])
        else:
            shape = g.node("Shape", [x], f"{prefix}.size_out.shape")
            leading = [g.node("Slice", [shape, g.const_i64(f"{prefix}.size_out.start", [0]),
                                        g.const_i64(f"{prefix}.size_out.end", [-1])], f"{prefix}.size_out.slice")]
        out_shape = g.node("Concat", [*leading, g.const_i64(f"{prefix}.nf", [nf])], f"{prefix}.size_out", axis=0)
        return g.node("Reshape", [y, out_shape], f"{prefix}.view_out")

    def split_heads(x: str, prefix: str, perm: list[int]) -> str:
        batch, seq = dims_of(x, f"{prefix}.size", [0, 1])
        shape = g.node("Concat", [batch, seq, g.const_i64(f"{prefix}.heads", [n_heads, d_head])], f"{prefix}.shape",
                       axis=0)
        return g.node("Transpose", [g.node("Reshape", [x, shape], f"{prefix}.view")], f"{prefix}.permute", perm=perm)

    def gelu_new(x: str, prefix: str) -> str:
        """``0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x ** 3)))``, GPT-2's ``gelu_new``."""
        half = g.node("Mul", [x, g.const_f(f"{prefix}.half", 0.5)], f"{prefix}.mul_half")
        cube = g.node("Pow", [x, g.const_f(f"{prefix}.three", 3.0)], f"{prefix}.pow")
        t = g.node("Mul", [cube, g.const_f(f"{prefix}.coef", 0.044715)], f"{prefix}.mul_coef")
        t = g.node("Add", [x, t], f"{prefix}.add")
        t = g.node("Mul", [t, g.const_f(f"{prefix}.sqrt_2_over_pi", math.sqrt(2.0 / math.pi))], f"{prefix}.mul_scale")
        t = g.node("Tanh", [t], f"{prefix}.tanh")
        t = g.node("Add", [t, g.const_f(f"{prefix}.one", 1.0)], f"{prefix}.add_one")
        return g.node("Mul", [half, t], f"{prefix}.mul")

    h = "hidden"
    for i in range(2):
        p, traced = f"h.{i}", i == 0
        a = g.layer_norm(h, f"{p}.ln_1", d_model, eps)
        qkv = conv1d(a, f"{p}.attn.c_attn", d_model, 3 * d_model, 3.0, traced)
        if opset >= 13:
            split = [g.const_i64(f"{p}.attn.split", [d_model] * 3)]
            q, k, v = (f"{p}.attn.split/Split_output_{j}" for j in range(3))
            g.nodes.append(helper.make_node("Split", [qkv, *split], [q, k, v], name=f"{p}.attn.split/Split", axis=2))
        else:
            q, k, v = (f"{p}.attn.split/Split_output_{j}" for j in range(3))
            g.nodes.append(helper.make_node("Split", [qkv], [q, k, v], name=f"{p}.attn.split/Split", axis=2,
                                            split=[d_model] * 3))
        q = split_heads(q, f"{p}.attn.query", [0, 2, 1, 3])
        k = split_heads(k, f"{p}.attn.key", [0, 2, 3, 1])
        v = split_heads(v, f"{p}.attn.value", [0, 2, 1, 3])
        w = g.node("MatMul", [q, k], f"{p}.attn.scores")
        w = g.node("Div", [w, g.const_f(f"{p}.attn.scale", math.sqrt(d_head))], f"{p}.attn.scale")
        (seq,) = dims_of(w, f"{p}.attn.mask_size", [3])
        mask = g.node("Slice", [causal, g.const_i64(f"{p}.attn.mask_start", [0, 0]), g.node(
            "Concat", [seq, seq], f"{p}.attn.mask_end", axis=0), g.const_i64(f"{p}.attn.mask_axes", [2, 3])],
            f"{p}.attn.mask")
        w = g.node("Mul", [w, mask], f"{p}.attn.keep")
        masked = g.node("Sub", [g.const_f(f"{p}.attn.one", 1.0), mask], f"{p}.attn.masked")
        w = g.node("Sub", [w, g.node("Mul", [masked, g.const_f(f"{p}.attn.big", 1e4)], f"{p}.attn.fill")],
                   f"{p}.attn.apply_mask")
        w = g.node("Softmax", [w], f"{p}.attn.softmax", axis=-1)
        c = g.node("MatMul", [w, v], f"{p}.attn.context")
        c = g.node("Transpose", [c], f"{p}.attn.merge.permute", perm=[0, 2, 1, 3])
        batch, seq = dims_of(c, f"{p}.attn.merge.size", [0, 1])
        merged = g.node("Concat", [batch, seq, g.const_i64(f"{p}.attn.merge.width", [d_model])],
                        f"{p}.attn.merge.shape", axis=0)
        c = g.node("Reshape", [c, merged], f"{p}.attn.merge.view")
        h = g.node("Add", [h, conv1d(c, f"{p}.attn.c_proj", d_model, d_model, 3.0, traced)], f"{p}.attn.residual")
        m = g.layer_norm(h, f"{p}.ln_2", d_model, eps)
        m = gelu_new(conv1d(m, f"{p}.mlp.c_fc", d_model, d_mlp, 6.0, traced), f"{p}.mlp.act")
        h = g.node("Add", [h, conv1d(m, f"{p}.mlp.c_proj", d_mlp, d_model, 3.0, traced)], f"{p}.mlp.residual")
    g.layer_norm(h, "ln_f", d_model, eps, out="out")
    return g.model(
        [_vi("hidden", ["B", "T", d_model])], [_vi("out", ["B", "T", d_model])],
        "Two GPT-2 blocks: c_attn, attention c_proj, c_fc, mlp c_proj as Hugging Face Conv1D "
        "(Reshape [-1,D] -> Gemm W[D,F] -> Reshape [B,T,F]); block 0 traces its sizes through Shape/Gather/"
        "Unsqueeze/Concat, block 1 has constant row shapes; gelu_new (tanh form), causal mask table [1,1,64,64].",
    )


def mlp_mixer(opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Two MLP-Mixer blocks (timm ``MixerBlock``) on 16 patches of 32 channels, [N,16,32]: token mixing
    ``x + Transpose(MLP(Transpose(LN(x), (0,2,1))), (0,2,1))`` (16 -> 64 -> 16), then channel mixing
    ``x + MLP(LN(x))`` (32 -> 128 -> 32); every Linear a MatMul + Add, GELU in its erf form."""
    opset = _check_opset(opset)
    g = _Graph("mlp_mixer", seed=16, opset=opset)
    n_patches, d_model, d_tokens, d_channels = 16, 32, 64, 128
    eps = 1e-6

    def mlp(x: str, prefix: str, n_in: int, n_hidden: int) -> str:
        y = g.node("MatMul", [x, g.matmul_weight(f"{prefix}.fc1", n_in, n_hidden)], f"{prefix}.fc1.matmul")
        y = g.gelu_erf(g.node("Add", [y, g.bias(f"{prefix}.fc1", n_hidden, n_in)], f"{prefix}.fc1.add"),
                       f"{prefix}.act")
        y = g.node("MatMul", [y, g.matmul_weight(f"{prefix}.fc2", n_hidden, n_in, gain=3.0)], f"{prefix}.fc2.matmul")
        return g.node("Add", [y, g.bias(f"{prefix}.fc2", n_in, n_hidden)], f"{prefix}.fc2.add")

    x = "patches"
    for i in range(2):
        p = f"blocks.{i}"
        y = g.node("Transpose", [g.layer_norm(x, f"{p}.norm1", d_model, eps)], f"{p}.mlp_tokens.transpose_in",
                   perm=[0, 2, 1])
        y = g.node("Transpose", [mlp(y, f"{p}.mlp_tokens", n_patches, d_tokens)], f"{p}.mlp_tokens.transpose_out",
                   perm=[0, 2, 1])
        x = g.node("Add", [x, y], f"{p}.token_residual")
        y = mlp(g.layer_norm(x, f"{p}.norm2", d_model, eps), f"{p}.mlp_channels", d_model, d_channels)
        x = g.node("Add", [x, y], f"{p}.channel_residual")
    g.layer_norm(x, "norm", d_model, eps, out="out")
    return g.model(
        [_vi("patches", ["N", n_patches, d_model])], [_vi("out", ["N", n_patches, d_model])],
        "Two MLP-Mixer blocks on [N,16,32]: token mixing between Transpose(0,2,1) pairs (MatMul [16,64] + Add, "
        "erf-GELU, MatMul [64,16] + Add), channel mixing (MatMul [32,128] + Add, erf-GELU, MatMul [128,32] + Add), "
        f"residual Adds; LayerNormalization is {'native' if opset >= 17 else 'decomposed (opset < 17)'}.",
    )


def convnext_blocks(opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """A ConvNeXt in timm's ``conv_mlp=False`` spelling: a 4x4 stride-4 stem and its LayerNorm2d, two
    blocks whose pointwise MLP runs channels-last, and the pooled head (LayerNorm2d, Flatten, Gemm)."""
    g = _Graph("convnext_blocks", seed=41, opset=_check_opset(opset))
    dim, hidden, classes, eps = 16, 64, 10, 1e-6

    def layer_norm_2d(x: str, prefix: str) -> str:  # timm LayerNorm2d: permute, LayerNorm, permute back
        t = g.node("Transpose", [x], f"{prefix}.to_nhwc", perm=[0, 2, 3, 1])
        t = g.layer_norm(t, prefix, dim, eps)
        return g.node("Transpose", [t], f"{prefix}.to_nchw", perm=[0, 3, 1, 2])

    def linear(x: str, prefix: str, n_in: int, n_out: int) -> str:  # nn.Linear on a 4D tensor: MatMul + Add
        y = g.node("MatMul", [x, g.matmul_weight(prefix, n_in, n_out)], f"{prefix}.matmul")
        return g.node("Add", [y, g.bias(prefix, n_out, n_in)], f"{prefix}.add")

    w = g.init("stem.0.weight", g.uniform((dim, 3, 4, 4), math.sqrt(6.0 / 48)))
    b = g.bias("stem.0", dim, 48)
    x = g.node("Conv", ["input", w, b], "stem.0", kernel_shape=[4, 4], strides=[4, 4], pads=[0] * 4)  # [N,16,8,8]
    x = layer_norm_2d(x, "stem.1")
    for i in range(2):
        p = f"stages.0.blocks.{i}"
        w = g.init(f"{p}.conv_dw.weight", g.uniform((dim, 1, 7, 7), math.sqrt(6.0 / 49)))
        t = g.node("Conv", [x, w, g.bias(f"{p}.conv_dw", dim, 49)], f"{p}.conv_dw",
                   kernel_shape=[7, 7], strides=[1, 1], pads=[3] * 4, group=dim)
        t = g.node("Transpose", [t], f"{p}.to_nhwc", perm=[0, 2, 3, 1])           # [N,8,8,16]
        t = g.layer_norm(t, f"{p}.norm", dim, eps)
        t = linear(t, f"{p}.mlp.fc1", dim, hidden)
        t = g.gelu(t, f"{p}.mlp.act")
        t = linear(t, f"{p}.mlp.fc2", hidden, dim)
        t = g.node("Mul", [t, g.init(f"{p}.gamma", g.uniform((dim,), 1.0))], f"{p}.gamma")
        t = g.node("Transpose", [t], f"{p}.to_nchw", perm=[0, 3, 1, 2])           # [N,16,8,8]
        x = g.node("Add", [t, x], f"{p}.residual")
    x = g.node("GlobalAveragePool", [x], "head.global_pool")                      # [N,16,1,1]
    x = layer_norm_2d(x, "head.norm")
    x = g.node("Flatten", [x], "head.flatten", axis=1)
    g.gemm(x, "head.fc", dim, classes, out="logits")
    return g.model(
        [_vi("input", ["N", 3, 32, 32])], [_vi("logits", ["N", classes])],
        "ConvNeXt-style classifier: stem Conv 4x4/4 + LayerNorm2d, 2 blocks of depthwise Conv 7x7 -> "
        "Transpose(0,2,3,1) -> LayerNorm -> MatMul 16->64 + Add -> GELU -> MatMul 64->16 + Add -> Mul(gamma) -> "
        "Transpose(0,3,1,2) -> residual Add, then GlobalAveragePool -> LayerNorm2d -> Flatten -> Gemm 16->10; "
        f"LayerNormalization is {'native' if opset >= 17 else 'decomposed (opset < 17)'}, "
        f"GELU is {'the Gelu op' if opset >= 20 else 'the erf form'}.",
    )


def keras_mnist_cnn(opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """A Keras MNIST CNN as tf2onnx writes it: the NHWC input [N,28,28,1] enters NCHW through a Reshape to
    a fixed [-1,1,28,28] (tf2onnx's spelling of the Transpose when C == 1), two Conv/Relu/MaxPool stages,
    the Transpose back to NHWC that Keras' Flatten needs, Reshape [-1,400], MatMul + Add, Softmax."""
    g = _Graph("keras_mnist_cnn", seed=61, opset=_check_opset(opset))
    x = g.node("Reshape", ["input_1", g.const_i64("new_shape__21", [-1, 1, 28, 28])], "sequential/conv2d/Conv2D__6")
    for i, (c_in, c_out) in enumerate(((1, 8), (8, 16))):
        name = "sequential/conv2d" + (f"_{i}" if i else "")
        x = g.conv(x, name, c_in, c_out, 3, 0)                                  # valid: 26, 11
        x = g.node("Relu", [x], f"{name}/Relu")
        x = g.node("MaxPool", [x], f"sequential/max_pooling2d{f'_{i}' if i else ''}/MaxPool",
                   kernel_shape=[2, 2], strides=[2, 2])                          # 13, 5
    x = g.node("Transpose", [x], "sequential/max_pooling2d_1/MaxPool__28", perm=[0, 2, 3, 1])  # [N,5,5,16]
    x = g.node("Reshape", [x, g.const_i64("const_fold_opt__31", [-1, 400])], "sequential/flatten/Reshape")
    y = g.node("MatMul", [x, g.matmul_weight("sequential/dense/MatMul", 400, 10)], "sequential/dense/MatMul")
    y = g.node("Add", [y, g.bias("sequential/dense/BiasAdd", 10, 400)], "sequential/dense/BiasAdd")
    g.node("Softmax", [y], "sequential/dense/Softmax", out="dense", axis=-1 if opset >= 13 else 1)
    return g.model(
        [_vi("input_1", ["N", 28, 28, 1])], [_vi("dense", ["N", 10])],
        "Keras MNIST CNN in tf2onnx's spelling: Reshape [N,28,28,1] -> [-1,1,28,28] (a Transpose of a size-1 "
        "axis), Conv 3x3 8 + Relu + MaxPool 2, Conv 3x3 16 + Relu + MaxPool 2, Transpose(0,2,3,1), "
        "Reshape [-1,400], MatMul 400->10 + Add, Softmax.",
    )


BUILDERS: dict[str, Callable[[int], onnx.ModelProto]] = {
    "seed_fc": seed_fc,
    "seed_mlp": seed_mlp,
    "lenet5": lenet5,
    "vgg_small": vgg_small,
    "gap_head": gap_head,
    "torch_view_head": torch_view_head,
    "matmul_add_head": matmul_add_head,
    "bert_layer": bert_layer,
    "lenet5_fp16": lenet5_fp16,
    "bert_layer_fp16": bert_layer_fp16,
    "bert_layer_fused": bert_layer_fused,
    "residual_pad": residual_pad,
    "residual_valid": residual_valid,
    "resnet_tiny": resnet_tiny,
    "vgg_tv": vgg_tv,
    "gpt2_blocks": gpt2_blocks,
    "mlp_mixer": mlp_mixer,
    "convnext_blocks": convnext_blocks,
    "keras_mnist_cnn": keras_mnist_cnn,
}


def build_all(out_dir=HERE, opset: int = DEFAULT_OPSET, check: bool = True) -> dict[str, Path]:
    """Write every model to ``out_dir/<name>.onnx``; return ``{name: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, builder in BUILDERS.items():
        model = builder(opset)
        if check:
            onnx.checker.check_model(model, full_check=True)
        path = out / f"{name}.onnx"
        path.write_bytes(model.SerializeToString(deterministic=True))
        paths[name] = path
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX default-domain opset (default {DEFAULT_OPSET})")
    parser.add_argument("--out", type=Path, default=HERE,
                        help="output folder (default: the folder holding this script)")
    args = parser.parse_args(argv)
    paths = build_all(args.out, args.opset)
    for path in paths.values():
        print(f"{path}  {path.stat().st_size:>8d} bytes  opset {args.opset}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
