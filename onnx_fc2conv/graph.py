"""Protobuf-level helpers every other module uses: attributes, subgraphs, shapes of value infos,
the shape-inference skeleton, and the graph walks (the one producer walk, the one topological
order and cycle check, and the clean-up of dead nodes).

Everything works on the protobuf directly rather than through onnx-graphsurgeon, because importing
and exporting a large model through graphsurgeon costs several times a plain load+save (see
benchmarks/README.md), and a rewrite touches a handful of nodes. Every walk here is linear in
nodes + edges.
"""
from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import InvalidModelError

Dim = int | str | None  # static size, symbolic name, or unknown

# Initializers with more elements than this are not copied into the shape-inference skeleton; they
# are declared as typed graph inputs instead, which is all shape inference needs of a weight. (The
# count comes from the dims: ``ByteSize()`` of a big tensor costs as much as serializing it.)
SKELETON_MAX_ELEMENTS = 1 << 14


# The two names of ONNX's own operator set.
ONNX_DOMAINS = ("", "ai.onnx")


def opset_version(model: onnx.ModelProto, domain: str = "") -> int:
    for imp in model.opset_import:
        if imp.domain in ONNX_DOMAINS and domain in ONNX_DOMAINS or imp.domain == domain:
            return imp.version
    return 0


def is_onnx_op(node: onnx.NodeProto, *op_types: str) -> bool:
    """Whether ``node`` is ONNX's own op (one of ``op_types`` when given). Every rule asks this, not
    ``op_type`` alone: an op of another domain (a model-local function, a runtime's contrib op) may
    reuse an ONNX name for other maths, e.g. a ``custom::Flatten`` that clips first."""
    return node.domain in ONNX_DOMAINS and (not op_types or node.op_type in op_types)


def op_label(node: onnx.NodeProto) -> str:
    """The op as a report shows it: ``Gemm`` for ONNX's, ``custom::Gemm`` for another domain's."""
    return node.op_type if node.domain in ONNX_DOMAINS else f"{node.domain}::{node.op_type}"


def node_key(node: onnx.NodeProto) -> str:
    """A node's name, or its first output where it has none: how reports and the conversion record
    name a node (onnx's version converter keeps both)."""
    return node.name or node.output[0]


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
    defined = defined_names(graph)
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
        if math.prod(init.dims) <= SKELETON_MAX_ELEMENTS:
            sg.initializer.append(init)
        elif init.name not in input_names:
            sg.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    # Sparse initializers as dense typed inputs: onnx's inference types them sparse_tensor, which no
    # op a rule reads (Gemm, MatMul, Conv) takes, while ONNX Runtime makes them dense when it loads.
    sg.input.extend(helper.make_tensor_value_info(t.values.name, t.values.data_type, list(t.dims))
                    for t in g.sparse_initializer if t.values.name not in input_names)
    return sk


def dense_initializer(sparse: onnx.SparseTensorProto) -> onnx.TensorProto:
    """``sparse`` as the dense tensor it stands for (the value ONNX Runtime gives it): its values at
    its indices (linear ``[NNZ]`` or coordinates ``[NNZ, rank]``), zeros elsewhere."""
    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    dense = np.zeros(tuple(sparse.dims), dtype=values.dtype)
    if indices.ndim == 1:
        dense.reshape(-1)[indices] = values
    else:
        dense[tuple(indices.T)] = values
    return numpy_helper.from_array(dense, sparse.values.name)


def set_shape(vi: onnx.ValueInfoProto, dims: Iterable[Dim]) -> None:
    shape = vi.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif isinstance(d, str):
            dim.dim_param = d


def names_in(graph: onnx.GraphProto) -> set[str]:
    """Every tensor and node name of ``graph`` and of the If/Loop/Scan bodies inside it."""
    names = defined_names(graph) | {o.name for o in graph.output}
    for node in graph.node:
        names.add(node.name)
        names.update(node.input)
        names.update(node.output)
        for body in subgraphs(node):
            names |= names_in(body)
    return names




# ---- walks -------------------------------------------------------------------------------------

def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def consumers(graph: onnx.GraphProto) -> defaultdict[str, list[onnx.NodeProto]]:
    """The nodes that read each tensor, in graph order, each once however often it reads it."""
    readers: defaultdict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in dict.fromkeys(node_inputs(node)):
            readers[name].append(node)
    return readers


def upstream(producer: Mapping[str, onnx.NodeProto], tensors: Iterable[str],
             stop: Iterable[str] = ()) -> tuple[set[str], list[onnx.NodeProto]]:
    """``tensors`` and every tensor they are computed from, and the nodes that compute them (in no
    particular order); the walk does not go past the names in ``stop``."""
    stopped = set(stop)
    seen: set[str] = set()
    nodes: dict[int, onnx.NodeProto] = {}
    stack = list(tensors)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = producer.get(name)
        if node is None or name in stopped or id(node) in nodes:
            continue
        nodes[id(node)] = node
        stack.extend(node_inputs(node))
    return seen, list(nodes.values())


def defined_names(graph: onnx.GraphProto) -> set[str]:
    """The names a graph defines before any node runs: inputs, initializers, sparse initializers."""
    return ({i.name for i in graph.input} | {t.name for t in graph.initializer}
            | {t.values.name for t in graph.sparse_initializer})


def toposort(graph: onnx.GraphProto) -> None:
    """Order nodes so each comes after its producers, keeping the existing order where it is valid
    (of the nodes ready to run, the one that stood first goes first). Raises InvalidModelError,
    naming the nodes, on a cycle or a read of an undefined tensor."""
    nodes = list(graph.node)
    order = topological_order(graph)
    if order != list(range(len(nodes))):
        del graph.node[:]
        graph.node.extend(nodes[i] for i in order)


def topological_order(graph: onnx.GraphProto) -> list[int]:
    """The positions of ``graph``'s nodes in a valid order (Kahn's algorithm, earliest first)."""
    nodes = list(graph.node)
    producer_at = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    available = defined_names(graph)
    waiting = [0] * len(nodes)  # per node: how many of its inputs are not made yet
    readers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in set(node_inputs(node)):
            if name in producer_at and name not in available:
                waiting[i] += 1
                readers.setdefault(producer_at[name], []).append(i)
            elif name not in available:
                waiting[i] += 1  # never made: the node can never run
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for reader in readers.get(i, ()):
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, reader)
    if len(order) < len(nodes):
        stuck = set(range(len(nodes))) - set(order)
        raise InvalidModelError(_why_stuck(nodes, stuck, producer_at, available))
    return order


def _why_stuck(nodes: list[onnx.NodeProto], stuck: set[int], producer_at: dict[str, int], available: set[str]) -> str:
    """Name the cycle among the ``stuck`` nodes (walking up from one of them through stuck producers
    must come back to a node it passed), or the undefined tensor a stuck node reads."""
    label = lambda i: repr(nodes[i].name or nodes[i].output[0])  # noqa: E731 - a local one-liner
    for i in sorted(stuck):
        missing = [n for n in node_inputs(nodes[i]) if n not in available and n not in producer_at]
        if missing:
            return f"the graph reads an undefined tensor {missing[0]!r} at node {label(i)}"
    path, current = [], min(stuck)
    while current not in path:
        path.append(current)
        current = next(producer_at[n] for n in node_inputs(nodes[current])
                       if n in producer_at and producer_at[n] in stuck)
    loop = path[path.index(current):] + [current]
    return "the graph has a cycle: " + " -> ".join(label(i) for i in reversed(loop))


def cleanup(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nothing needed reads, then initializers nothing reads (e.g. the old
    weights and PyTorch's shape subgraph). Nodes are side-effect free in ONNX, so this is safe. One
    walk back from the graph outputs, so a dead chain of any length goes in one pass."""
    outputs = [o.name for o in graph.output]
    read, live = upstream(producers(graph), outputs)
    live_ids = {id(n) for n in live}
    if len(live_ids) < len(graph.node):
        kept = [n for n in graph.node if id(n) in live_ids]
        del graph.node[:]
        graph.node.extend(kept)
    unused = {t.name for t in graph.initializer if t.name not in read}
    unused |= {t.values.name for t in graph.sparse_initializer if t.values.name not in read}
    # Deleted in place, back to front: rebuilding the list would copy every kept weight.
    for i in reversed([i for i, t in enumerate(graph.initializer) if t.name in unused]):
        del graph.initializer[i]
    for i in reversed([i for i, t in enumerate(graph.sparse_initializer) if t.values.name in unused]):
        del graph.sparse_initializer[i]
    for i in reversed([i for i, v in enumerate(graph.input) if v.name in unused]):
        del graph.input[i]
