"""Property: any FC head converts into a model that verifies, at the original size and by sliding
window, or its nodes are reported skipped with a reason code. Never a wrong rewrite.

The heads are drawn at random: a rank 3/4/5 feature map of random channels and spatial size, a
Flatten or a Reshape (``[0,-1]`` or ``[-1,K]``), a chain of 1-4 FC layers (Gemm with transB,
alpha, beta and every bias form, a per-sample bias no Conv can hold, or MatMul with an Add in either order), random pointwise ops
between them, an optional Softmax at the end, opsets 11-21, fp32 and fp16, both output modes, and
either in the main graph or as both branches of an If (reading the map and weights from outside),
with or without --vector-fc and --fold-batch.

``make test`` runs a bounded, derandomized sample; ``make fuzz`` runs FC2CONV_FUZZ_EXAMPLES of them
(default 2000) with fresh randomness. ``pytest --hypothesis-show-statistics`` shows what ran.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import graphs
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from onnx_fc2conv import REASONS, convert, verify
from onnx_fc2conv.metadata import read_record

pytestmark = pytest.mark.e2e

BOUNDED_EXAMPLES = 100
FUZZ_EXAMPLES = int(os.environ.get("FC2CONV_FUZZ_EXAMPLES", "2000"))
POINTWISE = ("Relu", "Sigmoid", "Tanh", "LeakyRelu", "Identity", "MulScalar", "AddVector")
BATCH = 2  # the static batch of models with a per-sample bias (the verifier's default batch)
ELEM = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}


@dataclass(frozen=True)
class Layer:
    features: int
    op: str  # "Gemm" or "MatMul"
    trans_b: int
    alpha: float
    beta: float
    bias: str  # Gemm: "vector" [F], "row" [1,F], "scalar", "none", "per_sample" [2,F] (not a conv bias);
    # MatMul: "vector" (Add after), "vector_first" (Add before), "none"
    after: tuple[str, ...]  # pointwise ops that follow the layer


@dataclass(frozen=True)
class Head:
    dtype: type
    opset: int
    channels: int
    spatial: tuple[int, ...]
    conv_kernel: int
    flatten: str  # "Flatten", "Reshape[0,-1]", "Reshape[-1,K]"
    layers: tuple[Layer, ...]
    softmax: bool
    keep_output_shape: bool
    in_if: bool  # the head (from the flatten on) is the body of both branches of an If
    vector_fc: bool  # --vector-fc: FC layers on plain [N,D] tensors become 1x1 convs too
    fold_batch: bool  # --fold-batch
    seed: int


@st.composite
def layers(draw) -> Layer:
    op = draw(st.sampled_from(["Gemm", "MatMul"]))
    bias_forms = ["vector", "row", "scalar", "none", "per_sample"] if op == "Gemm" else ["vector", "vector_first", "none"]
    return Layer(features=draw(st.integers(1, 8)), op=op, trans_b=draw(st.integers(0, 1)),
                 alpha=draw(st.sampled_from([1.0, 0.5, 2.0])), beta=draw(st.sampled_from([1.0, 0.5, 0.0])),
                 bias=draw(st.sampled_from(bias_forms)),
                 after=tuple(draw(st.lists(st.sampled_from(POINTWISE), max_size=2))))


@st.composite
def heads(draw) -> Head:
    rank = draw(st.integers(3, 5))
    return Head(dtype=draw(st.sampled_from([np.float32, np.float16])), opset=draw(st.integers(11, 21)),
                channels=draw(st.integers(1, 6)), spatial=tuple(draw(st.integers(1, 4)) for _ in range(rank - 2)),
                conv_kernel=draw(st.integers(1, 2)),
                flatten=draw(st.sampled_from(["Flatten", "Reshape[0,-1]", "Reshape[-1,K]"])),
                layers=tuple(draw(st.lists(layers(), min_size=1, max_size=4))), softmax=draw(st.booleans()),
                keep_output_shape=draw(st.booleans()), in_if=draw(st.booleans()), vector_fc=draw(st.booleans()),
                fold_batch=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


def build(head: Head):
    """x [N,2,*S+k-1] -> Conv kxk -> Relu -> (Flatten|Reshape) -> FC layers and pointwise ops -> y."""
    rng = np.random.default_rng(head.seed)
    dt = head.dtype
    k = head.conv_kernel
    ndim = len(head.spatial)
    nodes, inits = [], []

    def const(name, array):
        inits.append(graphs.init(name, np.asarray(array, dtype=array.dtype if array.dtype == np.int64 else dt)))
        return name

    def node(op, inputs, **attrs):
        out = f"t{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], name=f"{op.lower()}{len(nodes)}", **attrs))
        return out

    x = node("Conv", ["x", const("conv.w", graphs.weights(rng, head.channels, 2, *[k] * ndim, dtype=dt)),
                      const("conv.b", graphs.weights(rng, head.channels, dtype=dt))], kernel_shape=[k] * ndim)
    x = node("Relu", [x])
    width = head.channels * int(np.prod(head.spatial))
    if head.flatten == "Flatten":
        x = node("Flatten", [x], axis=1)
    else:
        target = [0, -1] if head.flatten == "Reshape[0,-1]" else [-1, width]
        x = node("Reshape", [x, const(f"shape{len(nodes)}", np.array(target, np.int64))])
    for i, layer in enumerate(head.layers):
        f = layer.features
        w = graphs.weights(rng, f, width, dtype=dt)
        if layer.op == "Gemm":
            inputs = [x, const(f"fc{i}.w", w if layer.trans_b else np.ascontiguousarray(w.T))]
            bias = {"vector": (f,), "row": (1, f), "scalar": (), "per_sample": (BATCH, f)}.get(layer.bias)
            if bias is not None:
                inputs.append(const(f"fc{i}.b", rng.standard_normal(bias).astype(dt)))
            x = node("Gemm", inputs, transB=layer.trans_b, alpha=layer.alpha, beta=layer.beta)
        else:
            x = node("MatMul", [x, const(f"fc{i}.w", np.ascontiguousarray(w.T))])
            if layer.bias != "none":
                b = const(f"fc{i}.b", rng.standard_normal(f).astype(dt))
                x = node("Add", [b, x] if layer.bias == "vector_first" else [x, b])
        for op in layer.after:
            if op == "MulScalar":
                x = node("Mul", [x, const(f"s{len(nodes)}", np.array(0.5, dt))])
            elif op == "AddVector":
                x = node("Add", [x, const(f"v{len(nodes)}", rng.standard_normal(f).astype(dt))])
            elif op == "LeakyRelu":
                x = node(op, [x], alpha=0.1)
            else:
                x = node(op, [x])
        width = f
    if head.softmax:
        x = node("Softmax", [x], axis=-1)
    nodes[-1].output[0] = "y"
    inputs = []
    if head.in_if:
        nodes[2:] = [helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=_branch(nodes[2:], "then_", dt),
                                      else_branch=_branch(nodes[2:], "else_", dt))]
        inputs.append(graphs.vi("cond", [], TensorProto.BOOL))
    per_sample = any(layer.bias == "per_sample" for layer in head.layers)
    in_dims = [BATCH if per_sample else "N", 2, *[s + k - 1 for s in head.spatial]]
    return graphs.model(nodes, [graphs.vi("x", in_dims, ELEM[dt]), *inputs], [graphs.vi("y", None, 0)], inits,
                        opset=head.opset)


def _branch(nodes, prefix: str, dt):
    """An If branch holding copies of ``nodes`` whose own tensors and names get ``prefix``; what
    they read from outside (the feature map, the weights) stays an outer-scope name."""
    own = {out for n in nodes for out in n.output}
    copies = []
    for n in nodes:
        copy = helper.make_node(n.op_type, [prefix + i if i in own else i for i in n.input],
                                [prefix + o for o in n.output], name=prefix + n.name)
        copy.attribute.extend(n.attribute)
        copies.append(copy)
    return helper.make_graph(copies, prefix + "branch", [], [graphs.vi(prefix + "y", [None, None], ELEM[dt])])


def check_head(head: Head) -> None:
    model = build(head)
    result = convert(model, keep_output_shape=head.keep_output_shape, vector_fc=head.vector_fc,
                     fold_batch=head.fold_batch)  # VerificationFailed fails the test
    report = result.report
    event("head inside an If" if head.in_if else "head in the main graph")
    for node in report.nodes:
        assert node.status == "converted" or node.reason in REASONS, node
        event(f"{node.status} {node.reason or node.rule}")
    if not report.converted:
        return
    verification = report.verification
    assert verification.passed
    assert any(c.check == "original size" and c.passed and c.compared for c in verification.checks)
    windows = [c for c in verification.checks if c.check.startswith("sliding window")]
    if head.in_if:  # the verifier fed cond = True; the else branch must hold too
        assert verify(model, result.model, input_data={"cond": np.array(False)})
    record = read_record(result.model)
    heads = record.heads if record else None
    if head.keep_output_shape or head.in_if or not heads:  # an If body keeps its output shapes; a
        assert windows == []  # model whose only converted layers are --vector-fc ones has no window
    else:
        assert all(c.passed for c in windows)
        assert windows or verification.skipped, "neither a sliding-window check nor a reason it was skipped"
        event("sliding window verified" if windows else f"sliding window skipped: {verification.skipped[0]}")


COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=BOUNDED_EXAMPLES, derandomize=True, **COMMON)
@given(heads())
def test_random_fc_heads_verify_or_are_skipped_with_a_reason(head):
    check_head(head)


@pytest.mark.fuzz
@settings(max_examples=FUZZ_EXAMPLES, **COMMON)
@given(heads())
def test_fuzz_random_fc_heads_verify_or_are_skipped_with_a_reason(head):
    check_head(head)
