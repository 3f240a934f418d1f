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
    """Makes initializers whose random data goes to ``data_file`` (external data) or inline."""

    def __init__(self, seed: int, data_file: Path | None = None):
        self.rng = np.random.default_rng(seed)
        self.data_file = data_file
        self._out = open(data_file, "wb") if data_file is not None else None
        self.inits: list[onnx.TensorProto] = []

    def add(self, name: str, dims: list[int], fan_in: int) -> str:
        """A He-uniform weight ``dims`` (bound sqrt(6 / fan_in)), so activations stay O(1)."""
        bound = float(np.sqrt(6.0 / fan_in))
        total = int(np.prod(dims))
        init = TensorProto(name=name, data_type=FLOAT, dims=dims)
        if self._out is None:
            init.raw_data = self._draw(total, bound).tobytes()
        else:
            offset = self._out.tell()
            for start in range(0, total, CHUNK_VALUES):
                self._out.write(self._draw(min(CHUNK_VALUES, total - start), bound).tobytes())
            init.data_location = TensorProto.EXTERNAL
            for key, value in (("location", self.data_file.name), ("offset", str(offset)),
                               ("length", str(total * 4))):
                init.external_data.add(key=key, value=value)
        self.inits.append(init)
        return name

    def _draw(self, count: int, bound: float) -> np.ndarray:
        return (self.rng.random(count, dtype=np.float32) * 2 - 1) * np.float32(bound)

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


def files_of(path: Path) -> list[Path]:
    """The model file and its external-data file, if any."""
    path = Path(path)
    return [p for p in (path, path.with_name(path.name + ".data")) if p.exists()]


def size_of(path: Path) -> int:
    return sum(os.path.getsize(p) for p in files_of(path))
