"""A read-mostly index over an ONNX graph: who produces and who reads each tensor, its inferred
shape, and its value when it is a constant.

The rules only ask questions of this index and describe edits; the apply step makes the edits.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.external_data_helper import uses_external_data

from .errors import Fc2ConvError
from .graph import (
    Dim,
    attr,
    consumers,
    dense_initializer,
    is_onnx_op,
    names_in,
    node_inputs,
    opset_version,
    outer_names_read,
    producers,
    set_shape,
    skeleton,
    upstream,
    value_dims,
)
from .modelcheck import infer_value_types, log, symbolic_shape_inference
from .weights import ExternalWeights, read_external

# Constant values up to this size are cached; larger ones (weights) are read on demand.
_CACHE_MAX_BYTES = 1 << 20
# A fold may make at most this many bytes more than its inputs hold (a Reshape or Cast of a weight
# makes as many as it reads; a ConstantOfShape or a broadcast can ask for any size).
FOLD_HEADROOM_BYTES = 256 << 20

# Ops folded when every input is a constant, so weights written as e.g. Reshape(initializer) or
# ConstantOfShape (Caffe2) are still recognised as constants.
FOLDABLE_OPS = frozenset({
    "Identity", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat",
    "ConstantOfShape", "Gather", "Slice", "Neg", "Mul", "Add", "Sub", "Div", "Sqrt", "Reciprocal",
})
# Quantization ops are folded in numpy (onnx's reference runtime lacks some of their opsets).
QUANTIZE_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


class GraphIndex:
    """Producers, consumers, shapes and constant values of one model's top-level graph.

    With ``outer`` (the index of the enclosing graph) it indexes an If/Loop/Scan body made into a
    model by :func:`body_model`: outer-scope constants are read through ``outer``, and fresh names
    are unique across every scope."""

    def __init__(self, model: onnx.ModelProto, input_shapes: dict[str, tuple[Dim, ...]] | None = None,
                 outer: GraphIndex | None = None, data_folder: Path | None = None,
                 weights: ExternalWeights | None = None):
        self.model = model
        self.outer = outer
        # Where the external data of a model read without it lives (``inspect``, a conversion
        # written to a file): a constant the rules need (a bias, a scale) is read from there when
        # asked, the rest never. ``weights`` takes the kernels a build makes from that data at write time.
        self.weights: ExternalWeights | None = outer.weights if outer is not None else weights
        self.data_folder: Path | None = (outer.data_folder if outer is not None
                                         else weights.folder if weights is not None else data_folder)
        self.unfolded: dict[str, str] = {}  # constant -> why it was not folded, for the skip message
        self.graph = model.graph
        self.opset = opset_version(model)
        # Sparse initializers are read as the dense tensors they stand for (copies: never edited in place).
        self.sparse = {t.values.name for t in self.graph.sparse_initializer}
        self.initializers = {**{t.values.name: dense_initializer(t) for t in self.graph.sparse_initializer},
                             **{t.name: t for t in self.graph.initializer}}
        self.producer = producers(self.graph)
        self.consumers = consumers(self.graph)
        self.graph_inputs = {i.name: i for i in self.graph.input if i.name not in self.initializers}
        # From IR 4 an initializer listed as a graph input is only a default the caller may replace
        # (ONNX Runtime does not fold it either), so it is no constant. Before IR 4 every initializer
        # had to be listed: there the listing says nothing, and ONNX Runtime treats them as constants.
        self.overridable = ({i.name for i in self.graph.input if i.name in self.initializers}
                            if model.ir_version >= 4 else set())
        self.graph_outputs = [o.name for o in self.graph.output]
        self.input_shapes = input_shapes
        self.types = infer_value_types(model, input_shapes)
        self._const_cache: dict[str, np.ndarray | None] = {}
        self._refine_resize_shapes()
        # Shared with the enclosing scopes: one namespace for fresh names.
        self._used_names: set[str] = outer._used_names if outer is not None else set()
        self._used_names.update(names_in(self.graph))

    # ---- shapes -------------------------------------------------------------------------------
    def shape(self, name: str) -> tuple[Dim, ...] | None:
        return self.types.get(name, (0, None))[1]

    def infer_unknown_shapes(self) -> None:
        """Fill in the shapes ONNX's own inference leaves unknown with ONNX Runtime's symbolic shape
        inference, which also follows a Reshape to a computed target (``x.view(B, T, H, D)`` in BERT's
        attention) and ORT's com.microsoft ops (Attention, SkipLayerNormalization). Shapes already
        known stay. Best effort: without sympy, or where it fails, nothing changes."""
        if all(self.shape(o) is not None for n in self.graph.node for o in n.output if o):
            return
        try:
            inferred = symbolic_shape_inference(skeleton(self.model, self.input_shapes))
        except Exception as exc:  # noqa: BLE001 - ImportError without sympy, or any op it cannot follow
            log.debug("symbolic shape inference failed (the shapes onnx inferred stay): %s", exc)
            return
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            elem, dims = value_dims(vi)
            if dims is not None and self.shape(vi.name) is None:
                self.types[vi.name] = (elem, dims)

    def dtype(self, name: str) -> int:
        return self.types.get(name, (0, None))[0]

    def _refine_resize_shapes(self) -> None:
        """ONNX shape inference leaves a Resize to ``sizes`` computed from Shape (PyTorch's
        ``interpolate(size=...)`` exports ``Concat(Shape(x)[:2], [h, w])``) unknown; evaluating the
        sizes gives the map after it its static size, which a head reading it needs."""
        for node in self.graph.node:
            if not is_onnx_op(node, "Resize") or len(node.input) < 4 or not node.input[3]:
                continue
            src, out = self.shape(node.input[0]), self.shape(node.output[0])
            if src is None or (out is not None and all(isinstance(d, int) for d in out[1:])):
                continue
            entries = shape_entries(self, node.input[3], src[0])
            if entries is not None and len(entries) == len(src):
                self.types[node.output[0]] = (self.dtype(node.input[0]),
                                              tuple(src[0] if e == BATCH else e for e in entries))

    # ---- constants ----------------------------------------------------------------------------
    def is_constant(self, name: str) -> bool:
        return self.constant_meta(name) is not None

    def constant_meta(self, name: str) -> tuple[tuple[int, ...], np.dtype] | None:
        """Shape and dtype of a constant; an initializer's are read without copying its data."""
        if name in self.overridable:
            return None
        if name in self.initializers:
            init = self.initializers[name]
            return tuple(init.dims), np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type))
        value = self.constant(name)
        return None if value is None else (value.shape, value.dtype)

    def owned_initializer(self, name: str) -> onnx.TensorProto | None:
        """The initializer ``name`` when exactly one node reads it and nothing else can see it (not a
        graph input or output), so a rewrite of that node may take over its data without a copy."""
        init = self.initializers.get(name)
        if init is None or self.initializer_users(name) != 1 or name in self.graph_outputs:
            return None
        if name in self.sparse:  # its dense copy lives in this index only
            return None
        if any(i.name == name for i in self.graph.input):  # IR < 4 lists initializers as inputs
            return None
        return init

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` when it is known without running the model, else None."""
        if not name:
            return None
        if name in self._const_cache:
            return self._const_cache[name]
        value = self._evaluate_constant(name)
        if value is not None and value.nbytes <= _CACHE_MAX_BYTES:
            self._const_cache[name] = value
        elif value is None:
            self._const_cache[name] = None
        return value

    def _evaluate_constant(self, name: str) -> np.ndarray | None:
        if name in self.overridable:
            return None
        if name in self.initializers:
            return self._initializer_value(self.initializers[name])
        node = self.producer.get(name)
        if node is None and self.outer is not None:
            return self.outer.constant(name)
        if node is None or not is_onnx_op(node):
            return None
        if node.op_type == "Constant":
            return _constant_node_value(node)
        if node.op_type not in FOLDABLE_OPS | QUANTIZE_OPS:
            return None
        values = [self.constant(i) if i else None for i in node.input]
        if any(v is None for i, v in zip(node.input, values) if i):
            reason = next((self.unfolded[i] for i in node.input if i in self.unfolded), None)
            if reason is not None:
                self.unfolded[name] = reason
            return None
        too_large = self._fold_too_large(node, name, values)
        if too_large:
            self.unfolded[name] = too_large
            return None
        if node.op_type in QUANTIZE_OPS:
            return _fold_quantize(node, values)
        try:
            return _run_single_node(node, values, self.model.opset_import)[list(node.output).index(name)]
        except Exception:  # noqa: BLE001 - an op the reference runtime cannot fold is simply not known
            return None

    def known_constant(self, name: str) -> np.ndarray:
        """The value of ``name``, which the plan has already found to be a constant (a build step
        reads its weights through this); an internal error where it is not one."""
        value = self.constant(name)
        if value is None:
            raise Fc2ConvError(f"internal error: {name!r} was planned as a constant but has no value")
        return value

    def _initializer_value(self, tensor: onnx.TensorProto) -> np.ndarray:
        if self.data_folder is None or not uses_external_data(tensor):
            return numpy_helper.to_array(tensor)
        return numpy_helper.to_array(read_external(tensor, self.data_folder))  # the model keeps its reference

    def _fold_too_large(self, node: onnx.NodeProto, name: str, values: list) -> str | None:
        """Why folding ``node`` must not run: its output (by shape inference, or ConstantOfShape's
        shape) would be more than ``FOLD_HEADROOM_BYTES`` beyond what its inputs already hold, as a
        251-byte model asking for a 4 GB ConstantOfShape does. None when it may run."""
        dims = self.shape(name)
        if node.op_type == "ConstantOfShape":
            dims = tuple(int(d) for d in np.asarray(values[0]).reshape(-1))
        if dims is None or not all(isinstance(d, int) for d in dims):
            return None
        count = math.prod(d for d in dims if isinstance(d, int))
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(self.dtype(name) or onnx.TensorProto.FLOAT)).itemsize
        size = count * itemsize
        held = sum(v.nbytes for v in values if v is not None)
        if size <= held + FOLD_HEADROOM_BYTES:
            return None
        return (f"folding {node.op_type} {node.name or name!r} would need {size / 1e9:.1f} GB "
                f"(more than {FOLD_HEADROOM_BYTES >> 20} MB beyond its inputs)")

    def is_static(self, name: str) -> bool:
        """Whether ``name`` is computed from initializers and Constant nodes only, without evaluating
        it (e.g. DequantizeLinear of a quantized weight, which :meth:`constant` does not fold)."""
        reached, _ = upstream(self.producer, [name])
        return all(n in self.initializers or n in self.producer for n in reached)

    # ---- walking ------------------------------------------------------------------------------
    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        readers = self.consumers.get(name, [])
        if len(readers) == 1 and name not in self.graph_outputs:
            return readers[0]
        return None

    def feeding_only(self, nodes: list[onnx.NodeProto], tensors: list[str]) -> list[onnx.NodeProto]:
        """The nodes that compute ``tensors`` (inputs of ``nodes``) whose outputs only ``nodes`` or each
        other read, none a graph output: the shape subgraph that goes when ``nodes`` go. The walk
        goes up from nodes found dead only, and not past a Shape, so it stops at the subgraph's border."""
        dead = {id(n) for n in nodes}
        found: list[onnx.NodeProto] = []
        stack = list(tensors)
        while stack:  # a node is looked at again each time one more of its readers is found dead
            node = self.producer.get(stack.pop())
            if node is None or id(node) in dead or any(o in self.graph_outputs for o in node.output):
                continue
            if all(id(reader) in dead for o in node.output for reader in self.consumers.get(o, [])):
                dead.add(id(node))
                found.append(node)
                if not is_onnx_op(node, "Shape"):  # a Shape reads only the dims: its input stays
                    stack.extend(node_inputs(node))
        return found

    def skip_passthrough(self, name: str) -> str:
        """Walk up through Identity and inference Dropout, which do not change values."""
        node = self.producer.get(name)
        while node is not None and self.is_passthrough(node) and node.output[0] == name:
            name = node.input[0]
            node = self.producer.get(name)
        return name

    def is_passthrough(self, node: onnx.NodeProto) -> bool:
        """Identity, or a Dropout that runs in inference mode: its ``training_mode`` input (opset 12)
        absent or a constant false, ``is_test`` set before opset 7. A training-mode Dropout, or one
        whose mode is known only at run time, zeroes values at random: it is not a pass-through."""
        if is_onnx_op(node, "Identity"):
            return True
        if not is_onnx_op(node, "Dropout"):
            return False
        if self.opset < 7:
            return bool(attr(node, "is_test", 0))
        if len(node.input) < 3 or not node.input[2]:
            return True
        training = self.constant(node.input[2])
        return training is not None and not training.any()

    def fresh_name(self, base: str) -> str:
        name, k = base, 1
        while name in self._used_names:
            name, k = f"{base}_{k}", k + 1
        self._used_names.add(name)
        return name

    def initializer_users(self, name: str) -> int:
        return len(self.consumers.get(name, []))


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None


def _fold_quantize(node: onnx.NodeProto, values: list) -> np.ndarray | None:
    """QuantizeLinear / DequantizeLinear on constants, per tensor or per axis (blocked: not folded)."""
    x, scale = values[0], values[1]
    zero = values[2] if len(values) > 2 and values[2] is not None else None
    if attr(node, "block_size", 0) or scale.ndim > 1:
        return None
    axis = attr(node, "axis", 1)
    shape = [1] * x.ndim
    if scale.ndim == 1 and scale.size > 1:
        shape[axis % x.ndim] = scale.size
    scale = scale.reshape(shape)
    zp = np.zeros(1, np.uint8) if zero is None else zero.reshape(shape if zero.size > 1 else ())
    if node.op_type == "DequantizeLinear":
        return ((x.astype(np.int64) - zp.astype(np.int64)) * scale).astype(scale.dtype)
    info = np.iinfo(zp.dtype)
    q = np.rint(x / scale) + zp.astype(np.int64)  # ONNX rounds half to even, as np.rint does
    return np.clip(q, info.min, info.max).astype(zp.dtype)


def _run_single_node(node: onnx.NodeProto, values: list, opset_import) -> list[np.ndarray]:
    """Evaluate one node on constant inputs with onnx's reference runtime, at the model's opset."""
    from onnx.reference import ReferenceEvaluator

    inits = [numpy_helper.from_array(np.asarray(v), name) for name, v in zip(node.input, values) if name]
    outputs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o]
    g = helper.make_graph([node], "fold", [], outputs, initializer=inits)
    m = helper.make_model(g, opset_imports=list(opset_import))
    return [np.asarray(v) for v in ReferenceEvaluator(m).run(None, {})]


# ---- shape tensors -----------------------------------------------------------------------------

BATCH = "batch"  # a shape entry that evaluates to the batch dimension of a tensor at run time


def shape_entries(index: GraphIndex, name: str, batch_dim) -> list | None:
    """Evaluate a 1D shape tensor to a list of ints and ``BATCH`` markers, or None if unknown."""
    value = index.constant(name)
    if value is not None:
        return [int(v) for v in np.asarray(value).reshape(-1)]
    node = index.producer.get(name)
    if node is None or not is_onnx_op(node):
        return None
    op = node.op_type
    if op in ("Cast", "Identity", "Squeeze", "Unsqueeze"):
        # These change a shape entry's type or rank (scalar <-> [1]), never its values.
        return shape_entries(index, node.input[0], batch_dim)
    if op == "Concat":
        parts = [shape_entries(index, i, batch_dim) for i in node.input]
        return None if any(p is None for p in parts) else [e for p in parts if p is not None for e in p]
    if op == "Shape":  # from opset 15 with start and end: the dims [start:end], as Python slices them
        src = index.shape(node.input[0])
        if src is None:
            return None
        dims: list = [BATCH if d == batch_dim and i == 0 else d for i, d in enumerate(src)]
        return dims[attr(node, "start", 0):attr(node, "end")]
    if op == "Gather":
        indices = index.constant(node.input[1])
        entries = shape_entries(index, node.input[0], batch_dim)
        if indices is None or entries is None:
            return None
        return [entries[int(i)] for i in np.asarray(indices).reshape(-1)]
    if op == "Slice":
        entries = shape_entries(index, node.input[0], batch_dim)
        bounds = _slice_bounds(index, node)
        if entries is None or bounds is None:
            return None
        return entries[bounds[0]:bounds[1]]
    return None


def _slice_bounds(index: GraphIndex, node: onnx.NodeProto) -> tuple[int, int] | None:
    if len(node.input) >= 3:
        starts, ends = index.constant(node.input[1]), index.constant(node.input[2])
        steps = index.constant(node.input[4]) if len(node.input) > 4 and node.input[4] else None
        if starts is None or ends is None or (steps is not None and int(np.asarray(steps).reshape(-1)[0]) != 1):
            return None
        return int(np.asarray(starts).reshape(-1)[0]), int(np.asarray(ends).reshape(-1)[0])
    starts, ends = attr(node, "starts"), attr(node, "ends")
    return (starts[0], ends[0]) if starts and ends else None


def body_model(body: onnx.GraphProto, outer: GraphIndex) -> onnx.ModelProto:
    """An If/Loop/Scan body as a model of its own, so that GraphIndex and the rules read it as they
    read a top-level graph: the outer-scope tensors it reads become typed inputs (their values, when
    constant, stay with ``outer``). The nodes are copies: write them back when done."""
    g = onnx.GraphProto()
    g.CopyFrom(body)
    del g.value_info[:]
    for name in sorted(outer_names_read(body)):
        elem, dims = outer.types.get(name, (onnx.TensorProto.UNDEFINED, None))
        vi = helper.make_tensor_value_info(name, elem, None)
        if dims is not None:
            set_shape(vi, dims)
        g.input.append(vi)
    model = helper.make_model(g, opset_imports=list(outer.model.opset_import), ir_version=outer.model.ir_version)
    model.functions.extend(outer.model.functions)
    return model
