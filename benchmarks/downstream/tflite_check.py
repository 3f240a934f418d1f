"""Run onnx2tf's float32 .tflite of a converted model and compare it with ONNX Runtime on the .onnx.

    cp MODEL.onnx COPY.onnx        # onnx2tf saves its simplified model over the file it is given
    onnx2tf -i COPY.onnx -o tf_out -ois INPUT:1,3,64,64
    python tflite_check.py MODEL.onnx tf_out/COPY_float32.tflite 1,3,64,64

Run in its own venv (tensorflow, onnx2tf, ai-edge-litert, onnxruntime); see the README's portability table.
onnx2tf moves the channel axis last (NCHW -> NHWC, NCW -> NWC), so the input is fed and the output
read back with that axis moved; a dynamic input is resized to the shape given.
"""
import sys

import numpy as np
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter

onnx_path, tflite_path, shape = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")]
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
(want,) = session.run(None, {session.get_inputs()[0].name: x})

interpreter = Interpreter(model_path=tflite_path)
signature = list(interpreter.get_input_details()[0]["shape_signature"])
channels_last = [shape[0], *shape[2:], shape[1]]
if -1 in signature:
    interpreter.resize_tensor_input(0, shape if signature[1] == shape[1] else channels_last)
interpreter.allocate_tensors()
inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
interpreter.set_tensor(inp["index"], x if list(inp["shape"]) == shape else np.moveaxis(x, 1, -1))
interpreter.invoke()
got = interpreter.get_tensor(out["index"])
if got.shape != want.shape:
    got = np.moveaxis(got, -1, 1)
print(f"{onnx_path} {shape}: tflite in {list(inp['shape'])} out {list(out['shape'])}, "
      f"max abs diff {np.abs(got - want).max():.3g}")
