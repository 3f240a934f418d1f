"""The inputs the verifier feeds: seeded, of the model's declared types and shapes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from .graph import Dim, value_dims
from .report import InputSummary

DEFAULT_BATCH = 2  # not 1: a batch of one hides rewrites that mix samples


@dataclass
class InputSpec:
    name: str
    elem_type: int
    dims: tuple[Dim, ...] | None

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs a caller must feed (initializers listed as inputs have defaults)."""
    inits = {t.name for t in model.graph.initializer}
    return [InputSpec(i.name, *value_dims(i)) for i in model.graph.input if i.name not in inits]


def concrete_shape(spec: InputSpec, override: tuple | None = None, batch: int = DEFAULT_BATCH) -> tuple[int, ...]:
    """Static dims stay; a symbolic batch (axis 0) becomes ``batch``; others come from ``override``."""
    dims = list(override) if override is not None else list(spec.dims or ())
    declared = list(spec.dims or dims)
    shape = []
    for axis, d in enumerate(dims):
        if isinstance(d, int) and d >= 0:
            shape.append(d)
        elif axis == 0:
            shape.append(batch)
        elif axis < len(declared) and isinstance(declared[axis], int):
            shape.append(declared[axis])
        else:
            shape.append(1)
    return tuple(shape)


def synthesize(spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, str]:
    dtype = spec.numpy_dtype
    if dtype == np.bool_:
        return np.ones(shape, dtype=bool), "ones"
    if dtype == np.uint8:
        return rng.integers(0, 256, size=shape, dtype=np.uint8), "random 0..255"
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 10, size=shape).astype(dtype), "random 0..9"
    return rng.standard_normal(shape).astype(dtype), "random normal"


def make_inputs(model: onnx.ModelProto, *, seed: int = 0, shapes: dict | None = None, data: dict | None = None,
                batch: int = DEFAULT_BATCH) -> tuple[dict[str, np.ndarray], list[InputSummary]]:
    """One array per graph input: from ``data`` when given, else synthesised from ``seed``."""
    rng = np.random.default_rng(seed)
    feeds, summaries = {}, []
    for spec in input_specs(model):
        if data and spec.name in data:
            value, source = np.asarray(data[spec.name]), "file"
        else:
            value, source = synthesize(spec, concrete_shape(spec, (shapes or {}).get(spec.name), batch), rng)
        feeds[spec.name] = value
        summaries.append(summary(spec.name, value, source))
    return feeds, summaries


def summary(name: str, value: np.ndarray, source: str) -> InputSummary:
    finite = value.astype(np.float64) if value.size else np.zeros(1)
    return InputSummary(name, list(value.shape), str(value.dtype), float(finite.min()), float(finite.max()), source)
