"""Tiny ONNX graphs for rule tests, built with onnx.helper: one FC head after a feature map."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def model(nodes, inputs, outputs, inits=(), opset=13, ir_version=None) -> onnx.ModelProto:
    g = helper.make_graph(list(nodes), "test", list(inputs), list(outputs), initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    m.ir_version = ir_version or (7 if opset <= 14 else 8 if opset <= 18 else 10)
    m = onnx.shape_inference.infer_shapes(m)  # fills in output shapes left open by the builder
    del m.graph.value_info[:]
    onnx.checker.check_model(m, full_check=True)
    return m


def vi(name, dims, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, dims)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def weights(rng, *shape, dtype=np.float32):
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(dtype)


def conv_flatten_gemm(*, channels=4, spatial=(3, 3), features=5, trans_b=1, alpha=1.0, beta=1.0, bias="vector",
                      between=(), after=(), opset=13, seed=0, trans_a=0, extra_inits=(), extra_inputs=()) -> onnx.ModelProto:
    """x [N,2,*spatial+2] -> Conv 3x3 valid (channels) -> Relu -> Flatten -> [between] -> Gemm -> [after] -> y.

    ``bias``: "vector" [F], "row" [1,F], "scalar", "none", "per_sample" [2,F].
    ``between``/``after``: lists of (op_type, attrs, extra input names) applied in order;
    ``extra_inits``/``extra_inputs``: initializers and graph inputs those names refer to.
    """
    rng = np.random.default_rng(seed)
    k = channels * int(np.prod(spatial))
    in_dims = ["N", 2, *[s + 2 for s in spatial]]
    nodes = [helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["conv"], name="conv", kernel_shape=[3] * len(spatial)),
             helper.make_node("Relu", ["conv"], ["fmap"], name="relu"),
             helper.make_node("Flatten", ["fmap"], ["flat0"], name="flatten", axis=1)]
    inits = [init("conv.w", weights(rng, channels, 2, *[3] * len(spatial))), init("conv.b", weights(rng, channels))]
    last = "flat0"
    for i, (op, attrs, extra) in enumerate(between):
        nodes.append(helper.make_node(op, [last, *extra], [f"between{i}"], name=f"between{i}", **attrs))
        last = f"between{i}"
    w = weights(rng, features, k)
    gemm_inputs = [last, "fc.w"]
    inits.append(init("fc.w", w if trans_b else w.T.copy()))
    if bias != "none":
        b = {"vector": weights(rng, features), "row": weights(rng, 1, features), "scalar": np.array(0.5, np.float32),
             "per_sample": weights(rng, 2, features)}[bias]
        inits.append(init("fc.b", b))
        gemm_inputs.append("fc.b")
    gemm_attrs = dict(transB=trans_b, alpha=alpha, beta=beta)
    if trans_a:
        gemm_attrs["transA"] = 1
    nodes.append(helper.make_node("Gemm", gemm_inputs, ["fc"], name="fc", **gemm_attrs))
    last = "fc"
    for i, (op, attrs, extra) in enumerate(after):
        out = "y" if i == len(after) - 1 else f"after{i}"
        nodes.append(helper.make_node(op, [last, *extra], [out], name=f"after{i}", **attrs))
        last = out
    if not after:
        nodes[-1].output[0] = "y"
    batch = 2 if bias == "per_sample" else "N"
    in_dims[0] = batch
    outputs = [vi("y", None, 0)] + [vi(name, None, 0) for name in ("y2",) if any(name in n.output for n in nodes)]
    return model(nodes, [vi("x", in_dims), *extra_inputs], outputs, [*inits, *extra_inits], opset=opset)


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)
