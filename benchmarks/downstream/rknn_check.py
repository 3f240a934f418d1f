"""Compile a model for RK3588 with rknn-toolkit2's x86 simulator (fp16, no quantization) and compare
it with ONNX Runtime on the same input.

    python rknn_check.py MODEL.onnx 1,3,64,64

RKNN wants a fixed input shape (pin symbolic dims first with
``python -m onnxruntime.tools.make_dynamic_shape_fixed``) and opset 19 or lower. Run in its own venv:
rknn-toolkit2 2.5 pins onnx<=1.18, numpy<=1.26.4 and torch<=2.4.0; see the README's portability table.
"""
import sys

import numpy as np
import onnxruntime as ort
from rknn.api import RKNN

path, shape = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
want = session.run(None, {session.get_inputs()[0].name: x})

rknn = RKNN(verbose=False)
rknn.config(target_platform="rk3588")
assert rknn.load_onnx(model=path, inputs=[session.get_inputs()[0].name], input_size_list=[shape]) == 0
assert rknn.build(do_quantization=False) == 0
assert rknn.init_runtime() == 0  # no target given: the simulator
got = rknn.inference(inputs=[x], data_format="nchw")
for expected, result in zip(want, got):
    result = np.asarray(result).reshape(expected.shape)
    print(f"{path} {shape}: output {list(expected.shape)}, max abs diff {np.abs(expected - result).max():.3g}, "
          f"max |ref| {np.abs(expected).max():.3g}")
