"""A read-mostly index over an ONNX graph: who produces and who reads each tensor, its inferred
shape, and its value when it is a constant.

The rules only ask questions of this index and describe edits; the pipeline applies the edits.
It works on the protobuf directly rather than through onnx-graphsurgeon, because importing and
exporting a large model through graphsurgeon costs several times a plain load+save (see
benchmarks/README.md), and a rewrite touches a handful of nodes.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

Dim = int | str | None  # static size, symbolic name, or unknown

# Initializers with more elements than this are not copied into the shape-inference skeleton; they
# are declared as typed graph inputs instead, which is all shape inference needs of a weight. (The
# count comes from the dims: ``ByteSize()`` of a big tensor costs as much as serializing it.)
_SKELETON_MAX_ELEMENTS = 1 << 14
# Constant values up to this size are cached; larger ones (weights) are read on demand.
_CACHE_MAX_BYTES = 1 << 20

# Ops folded when every input is a constant, so weights written as e.g. Reshape(initializer) or
# ConstantOfShape (Caffe2) are still recognised as constants.
FOLDABLE_OPS = frozenset({
    "Identity", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat",
    "ConstantOfShape", "Gather", "Slice", "Neg", "Mul", "Add", "Sub", "Div", "Sqrt", "Reciprocal",
})
# Quantization ops are folded in numpy (onnx's reference runtime lacks some of their opsets).
QUANTIZE_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def opset_version(model: onnx.ModelProto, domain: str = "") -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and domain in ("", "ai.onnx") or imp.domain == domain:
            return imp.version
    return 0


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def named_subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """The If/Loop/Scan bodies of ``node``, with the name of the attribute that holds each."""
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.name, a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from ((a.name, g) for g in a.graphs)


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for _, body in named_subgraphs(node):
        yield body


def outer_names_read(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads that it does not define itself: its outer-scope references."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    read: set[str] = set()
    for node in graph.node:
        read.update(n for n in node.input if n)
        for sub in subgraphs(node):
            read.update(outer_names_read(sub))
        defined.update(node.output)
    read.update(o.name for o in graph.output)
    return read - defined


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Explicit inputs plus the outer-scope names its subgraphs (If/Loop/Scan bodies) read."""
    names = [n for n in node.input if n]
    for sub in subgraphs(node):
        names.extend(sorted(outer_names_read(sub)))
    return names


def rename_input(node: onnx.NodeProto, old: str, new: str) -> None:
    """Make ``node`` read ``new`` where it read ``old``, inside its subgraphs too."""
    for i, name in enumerate(node.input):
        if name == old:
            node.input[i] = new
    for sub in subgraphs(node):
        if old in outer_names_read(sub):
            for inner in sub.node:
                rename_input(inner, old, new)
            for out in sub.output:
                if out.name == old:
                    out.name = new


def value_dims(vi: onnx.ValueInfoProto) -> tuple[int, tuple[Dim, ...] | None]:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return t.elem_type, None
    dims: list[Dim] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return t.elem_type, tuple(dims)


def skeleton(model: onnx.ModelProto, input_shapes: dict[str, tuple[Dim, ...]] | None = None) -> onnx.ModelProto:
    """A copy of ``model`` without the payload of its large initializers (declared as inputs).

    Shape inference and the structural checker only need types and shapes of weights; copying a
    500 MB model to infer shapes would double the tool's memory.
    """
    g = model.graph
    sk = onnx.ModelProto()
    sk.ir_version = model.ir_version
    sk.opset_import.extend(model.opset_import)
    sk.functions.extend(model.functions)
    sg = sk.graph
    sg.name = g.name
    sg.node.extend(g.node)
    sg.output.extend(g.output)
    input_names = {i.name for i in g.input}
    for inp in g.input:
        new = sg.input.add()
        new.CopyFrom(inp)
        if input_shapes and inp.name in input_shapes:
            _, declared = value_dims(inp)
            pinned = input_shapes[inp.name]  # None keeps the declared (symbolic) dim
            set_shape(new, [p if p is not None else d for p, d in zip(pinned, declared or (None,) * len(pinned))])
    for init in g.initializer:
        if math.prod(init.dims) <= _SKELETON_MAX_ELEMENTS:
            sg.initializer.append(init)
        elif init.name not in input_names:
            sg.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return sk


def set_shape(vi: onnx.ValueInfoProto, dims: Iterable[Dim]) -> None:
    shape = vi.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif isinstance(d, str):
            dim.dim_param = d


def infer_value_types(model: onnx.ModelProto, input_shapes=None) -> dict[str, tuple[int, tuple[Dim, ...] | None]]:
    """Element type and shape of every top-level tensor that shape inference can type."""
    sk = skeleton(model, input_shapes)
    try:
        inferred = onnx.shape_inference.infer_shapes(sk, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is a best effort; rules skip what stays unknown
        inferred = sk
    g = inferred.graph
    types: dict[str, tuple[int, tuple[Dim, ...] | None]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        elem, dims = value_dims(vi)
        if vi.name not in types or (types[vi.name][1] is None and dims is not None):
            types[vi.name] = (elem, dims)
    for init in g.initializer:
        types[init.name] = (init.data_type, tuple(init.dims))
    return types


def names_in(graph: onnx.GraphProto) -> set[str]:
    """Every tensor and node name of ``graph`` and of the If/Loop/Scan bodies inside it."""
    names = {i.name for i in graph.input} | {o.name for o in graph.output} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.add(node.name)
        names.update(node.input)
        names.update(node.output)
        for body in subgraphs(node):
            names |= names_in(body)
    return names


def body_model(body: onnx.GraphProto, outer: "GraphIndex") -> onnx.ModelProto:
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


class GraphIndex:
    """Producers, consumers, shapes and constant values of one model's top-level graph.

    With ``outer`` (the index of the enclosing graph) it indexes an If/Loop/Scan body made into a
    model by :func:`body_model`: outer-scope constants are read through ``outer``, and fresh names
    are unique across every scope."""

    def __init__(self, model: onnx.ModelProto, input_shapes: dict[str, tuple[Dim, ...]] | None = None,
                 outer: "GraphIndex | None" = None):
        self.model = model
        self.outer = outer
        self.graph = model.graph
        self.opset = opset_version(model)
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for name in dict.fromkeys(node_inputs(node)):
                self.consumers[name].append(node)
        self.graph_inputs = {i.name: i for i in self.graph.input if i.name not in self.initializers}
        self.graph_outputs = [o.name for o in self.graph.output]
        self.input_shapes = input_shapes
        self.types = infer_value_types(model, input_shapes)
        self._const_cache: dict[str, np.ndarray | None] = {}
        self._refine_resize_shapes()
        self._used_names = outer._used_names if outer is not None else set()  # shared: one namespace
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
            inferred = _symbolic_shape_inference(skeleton(self.model, self.input_shapes))
        except Exception:  # noqa: BLE001 - ImportError without sympy, or any op it cannot follow
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
            if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3]:
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
        return name in self.initializers or self.constant(name) is not None

    def constant_meta(self, name: str) -> tuple[tuple[int, ...], np.dtype] | None:
        """Shape and dtype of a constant; an initializer's are read without copying its data."""
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
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is None and self.outer is not None:
            return self.outer.constant(name)
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "Constant":
            return _constant_node_value(node)
        if node.op_type not in FOLDABLE_OPS | QUANTIZE_OPS:
            return None
        values = [self.constant(i) if i else None for i in node.input]
        if any(v is None for i, v in zip(node.input, values) if i):
            return None
        if node.op_type in QUANTIZE_OPS:
            return _fold_quantize(node, values)
        try:
            return _run_single_node(node, values, self.model.opset_import)[list(node.output).index(name)]
        except Exception:  # noqa: BLE001 - an op the reference runtime cannot fold is simply not known
            return None

    def is_static(self, name: str) -> bool:
        """Whether ``name`` is computed from initializers and Constant nodes only, without evaluating
        it (e.g. DequantizeLinear of a quantized weight, which :meth:`constant` does not fold)."""
        seen: set[str] = set()
        stack = [name]
        while stack:
            current = stack.pop()
            if current in seen or current in self.initializers:
                continue
            seen.add(current)
            node = self.producer.get(current)
            if node is None:
                return False  # a graph input, or a name this graph does not define
            stack.extend(node_inputs(node))
        return True

    # ---- walking ------------------------------------------------------------------------------
    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        readers = self.consumers.get(name, [])
        if len(readers) == 1 and name not in self.graph_outputs:
            return readers[0]
        return None

    def skip_passthrough(self, name: str) -> str:
        """Walk up through Identity and inference Dropout, which do not change values."""
        node = self.producer.get(name)
        while node is not None and node.op_type in ("Identity", "Dropout") and node.output[0] == name:
            name = node.input[0]
            node = self.producer.get(name)
        return name

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


def shape_entries(index: "GraphIndex", name: str, batch_dim) -> list | None:
    """Evaluate a 1D shape tensor to a list of ints and ``BATCH`` markers, or None if unknown."""
    value = index.constant(name)
    if value is not None:
        return [int(v) for v in np.asarray(value).reshape(-1)]
    node = index.producer.get(name)
    if node is None:
        return None
    op = node.op_type
    if op in ("Cast", "Identity", "Squeeze", "Unsqueeze"):
        # These change a shape entry's type or rank (scalar <-> [1]), never its values.
        return shape_entries(index, node.input[0], batch_dim)
    if op == "Concat":
        parts = [shape_entries(index, i, batch_dim) for i in node.input]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    if op == "Shape":
        src = index.shape(node.input[0])
        if src is None or attr(node, "start", 0) != 0 or attr(node, "end") is not None:
            return None
        return [BATCH if d == batch_dim and i == 0 else d for i, d in enumerate(src)]
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


def _slice_bounds(index: "GraphIndex", node: onnx.NodeProto) -> tuple[int, int] | None:
    if len(node.input) >= 3:
        starts, ends = index.constant(node.input[1]), index.constant(node.input[2])
        steps = index.constant(node.input[4]) if len(node.input) > 4 and node.input[4] else None
        if starts is None or ends is None or (steps is not None and int(np.asarray(steps).reshape(-1)[0]) != 1):
            return None
        return int(np.asarray(starts).reshape(-1)[0]), int(np.asarray(ends).reshape(-1)[0])
    starts, ends = attr(node, "starts"), attr(node, "ends")
    return (starts[0], ends[0]) if starts and ends else None


def _symbolic_shape_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's symbolic shape inference, keeping what it inferred even where it stops.

    ``SymbolicShapeInference.infer_shapes`` runs these same steps, but when a shape stays unknown it
    writes ``sym_shape_infer_temp.onnx`` (and weight files) into the current folder and raises: a
    library must not leave files in its caller's folder, and the partial result is what we want.
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inference = SymbolicShapeInference(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess_output_rank, verbose
    inference._preprocess(model)
    while inference.run_:
        inference._infer_impl()
    inference._update_output_from_vi()
    return inference.out_mp_
