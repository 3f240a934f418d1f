"""Window geometry: which input pixels each cell of a converted map sees.

A fully convolutional model's output cell ``(i, j)`` is the original head applied to one window of
the backbone's feature map, and that window reads one box of input pixels. Per spatial axis:

* ``size``: the receptive field of one cell, in input pixels;
* ``stride``: input pixels between neighbouring cells (the product of the backbone's strides);
* ``offset``: the input pixel where cell 0's window starts; negative when the backbone pads, since
  the window then reaches into the padding (``offset`` is minus the padding, in input pixels);
* ``margin``: how far a cell's window reaches past the crop of the original input size that it
  stands for, on either side (the backbone's padding, accumulated into input pixels; 0 without);
* ``crop``: the original input size on that axis (None where it is not static). Cell ``i``
  stands for the crop ``[i*stride, i*stride + crop)``. Without padding, the cell equals the
  original model run on that crop wherever the crop lies inside the image; its window can be
  smaller than the crop when the backbone's pooling drops the last rows (``size < crop``), and then
  the map has a few more cells at the far edge than there are crops.

A cell whose window lies inside the image sees no padding at all (every cell whose crop lies at
least ``margin`` inside the image is one): there the map does not depend on where the image ends,
so shifting the image by ``k * stride`` pixels shifts those cells by ``k``. With padding, such a cell still differs
from the original model run on its crop, which sees zeros where the cell sees image pixels.

The walk, :func:`tensor_geometry`, is a pure function of a graph: from the graph inputs to any
tensor, through Conv, MaxPool, AveragePool, LpPool, Pad and position-wise ops (a Reduce* or
LayerNormalization over non-image axes is one), with the receptive-field arithmetic (per layer of
kernel ``k``, dilation ``d``, stride ``s``, pads ``p``, on a tensor whose cells step by ``j`` input
pixels)::

    size'   = size + (k - 1) * d * j
    offset' = offset - p_begin * j
    stride' = j * s

Branches that meet (Add, Mul, Concat on the channel axis, ...) must step alike; the windows then
are the union of theirs. Any op it cannot follow (Resize, Reshape, a global pool, ...) makes the
geometry unknown, with that op named, and never a wrong number. The converter runs it from each
converted output of the rewritten graph, through the head's Conv; it works on any graph made of
those ops (e.g. one whose later kernels are dilated). :func:`map_samplings` is the same walk over
every tensor, giving each map's cumulative stride and the padding before and after it (what
``--output-stride`` plans its rewrite from, telling the walk which ops it can rewrite).
"""
from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import onnx
from onnx import numpy_helper

from .errors import UsageError
from .graph import attr, is_onnx_op, node_key, opset_version, producers, topological_order, upstream, value_dims

# Ops whose output at a position depends on the input at that position alone (they may mix channels).
POSITION_WISE_OPS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Gelu", "Erf", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Mish",
    "Clip", "Cast", "Identity", "Dropout", "Floor", "Ceil", "Round", "Sign", "Not", "IsNaN", "IsInf",
    "BatchNormalization", "LRN", "QuantizeLinear", "DequantizeLinear",
})
# Ops that combine their inputs position by position, with broadcasting.
BROADCAST_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Sum", "Mean", "Max", "Min", "Where", "Equal", "Less", "Greater",
    "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "BitShift", "Mod",
})
SLIDING_OPS = frozenset({"Conv", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool"})
# Over one axis from opset 13, over every axis from ``axis`` on before: position-wise where no axis
# it runs over is an image axis (axis 1 of a map; the last of a map transposed to NHWC).
CHANNEL_OPS = frozenset({"Softmax", "LogSoftmax", "Hardmax"})
# Ops whose output says how large a tensor is, never what its pixels hold.
SIZE_OPS = frozenset({"Shape", "Size"})
WHOLE_MAP_OPS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "InstanceNormalization"})
# Every op whose output cell reads its inputs at that cell alone: the walk gives CHANNEL_OPS and
# Concat this reading only where they run over no image axis, and refuses them otherwise.
PER_POSITION_OPS = POSITION_WISE_OPS | BROADCAST_OPS | CHANNEL_OPS | {"Concat"}


@dataclass(frozen=True)
class AxisGeometry:
    """One spatial axis of a converted map, in input pixels (see the module docstring)."""

    size: int
    stride: int
    offset: int
    margin: int
    crop: int | None = None


@dataclass(frozen=True)
class Geometry:
    """Which input box each cell of one output map sees: one :class:`AxisGeometry` per spatial axis
    of the map, taken from axes ``input_axes`` of graph input ``input``; or, where the walk met an
    op it cannot follow, no axes and ``unknown`` saying which op."""

    input: str | None = None
    input_axes: tuple[int, ...] = ()
    axes: tuple[AxisGeometry, ...] = ()
    unknown: str | None = None

    @property
    def known(self) -> bool:
        return self.unknown is None

    def line(self) -> str:
        """The geometry in words, as the report prints it after ``windows of OUTPUT:``."""
        if not self.known:
            return f"unknown: {self.unknown}"
        join = lambda values, sep="x": sep.join(str(v) for v in values)  # noqa: E731
        text = (f"{join(a.size for a in self.axes)} px of input {self.input!r}, stride "
                f"{join(a.stride for a in self.axes)}, offset {join((a.offset for a in self.axes), ',')}")
        if any(a.margin for a in self.axes):
            return text + f", margin {join(a.margin for a in self.axes)} (the backbone pads)"
        if any(a.crop is not None and a.size < a.crop for a in self.axes):
            text += (f" (smaller than the {join(a.crop for a in self.axes)} crop: the backbone drops its last "
                     "rows, so the map has more cells than there are crops)")
        return text

    @classmethod
    def from_dict(cls, data) -> Geometry:
        """The geometry in ``data`` (as ``dataclasses.asdict`` writes it, in a conversion record);
        ValueError, TypeError or KeyError where it is not one."""
        if not isinstance(data, dict):
            raise TypeError(f"expected a geometry object, got {type(data).__name__}")
        axes = tuple(AxisGeometry(_int(a["size"], 1), _int(a["stride"], 1), _int(a["offset"]), _int(a["margin"], 0),
                                  None if a.get("crop") is None else _int(a["crop"], 1)) for a in data["axes"])
        unknown = data["unknown"]
        if (unknown is None) == (not axes) or (unknown is not None and not isinstance(unknown, str)):
            raise ValueError("a geometry has either axes or the reason it is unknown")
        name = data["input"]
        return cls(None if name is None else str(name), tuple(_int(a, 0) for a in data["input_axes"]), axes, unknown)


def _int(value, least: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or (least is not None and value < least):
        raise ValueError(f"{value!r} is not an integer" + (f" >= {least}" if least is not None else ""))
    return value


# ---- cells and boxes ----------------------------------------------------------------------------

Box = tuple[int, ...]  # (y0, x0, y1, x1) for two axes: starts, then ends (exclusive), in input pixels


def cell_box(geometry: Geometry, *cell: int) -> Box:
    """The input box ``(y0, x0, y1, x1)`` that output cell ``(i, j)`` sees (ends exclusive; starts
    below 0 or ends past the image are padding)."""
    cell = _indices("cell", cell, least=0)
    axes = _axes_for(geometry, cell)
    starts = [a.offset + c * a.stride for a, c in zip(axes, cell)]
    return (*starts, *(s + a.size for s, a in zip(starts, axes)))


def crop_box(geometry: Geometry, *cell: int) -> Box:
    """The box of the original input size that output cell ``(i, j)`` stands for: the original model
    run on this crop of the image gives the cell's value wherever the crop lies inside the image and
    the backbone has no padding (``margin`` 0)."""
    cell = _indices("cell", cell, least=0)
    axes = _axes_for(geometry, cell)
    if any(a.crop is None for a in axes):
        raise UsageError("the original input size is not static, so a cell has no crop of that size")
    starts = [c * a.stride for a, c in zip(axes, cell)]
    return (*starts, *(s + a.crop for s, a in zip(starts, axes)))  # type: ignore[operator]


def cells_containing(geometry: Geometry, box: Box, map_shape: Sequence[int] | None = None) -> tuple[range, ...]:
    """The cells whose windows contain all of ``box`` ``(y0, x0, y1, x1)`` (a pixel ``(y, x)`` is
    the box ``(y, x, y+1, x+1)``), one range per axis; within ``map_shape`` (the map's spatial
    size) when given."""
    return _cell_ranges(geometry, box, map_shape, containing=True)


def cells_within(geometry: Geometry, box: Box, map_shape: Sequence[int] | None = None) -> tuple[range, ...]:
    """The cells whose windows lie inside ``box``, one range per axis. ``box = (0, 0, height, width)``
    gives the cells that see no padding of the image."""
    return _cell_ranges(geometry, box, map_shape, containing=False)


def _cell_ranges(geometry: Geometry, box: Box, map_shape: Sequence[int] | None, containing: bool) -> tuple[range, ...]:
    box = _indices("box", box)
    map_shape = None if map_shape is None else _indices("map_shape", map_shape, least=0)
    axes = _known_axes(geometry)
    if len(box) != 2 * len(axes) or map_shape is not None and len(map_shape) != len(axes):
        raise UsageError(f"box {box} and map shape {map_shape} do not fit a map of {len(axes)} spatial axes")
    ranges = []
    for i, a in enumerate(axes):
        start, end = box[i], box[len(axes) + i]
        if end <= start:
            raise UsageError(f"box {box} is empty")
        if containing:  # offset + c*stride <= start and offset + c*stride + size >= end
            lo, hi = -(-(end - a.size - a.offset) // a.stride), (start - a.offset) // a.stride + 1
        else:  # offset + c*stride >= start and offset + c*stride + size <= end
            lo, hi = -(-(start - a.offset) // a.stride), (end - a.size - a.offset) // a.stride + 1
        lo = max(lo, 0)
        hi = hi if map_shape is None else min(hi, map_shape[i])
        ranges.append(range(lo, max(lo, hi)))
    return tuple(ranges)


def _indices(what: str, values, least: int | None = None) -> tuple[int, ...]:
    """``values`` as a tuple of ints (numpy's too), or a one-line UsageError: a float or a string
    would give a box of floats, or a TypeError deep in the arithmetic."""
    if isinstance(values, str | bytes) or not hasattr(values, "__iter__"):
        raise UsageError(f"{what} {values!r}: give a tuple of integers")
    values = tuple(values)
    try:
        ints = tuple(operator.index(v) for v in values if not isinstance(v, bool))
    except TypeError:
        ints = ()
    if len(ints) != len(values) or least is not None and any(v < least for v in ints):
        raise UsageError(f"{what} {values!r}: give integers" + ("" if least is None else f" >= {least}"))
    return ints


def _axes_for(geometry: Geometry, values: Sequence[int]) -> tuple[AxisGeometry, ...]:
    axes = _known_axes(geometry)
    if len(values) != len(axes):
        raise UsageError(f"the map has {len(axes)} spatial axes, not {len(values)}")
    return axes


def _known_axes(geometry: Geometry) -> tuple[AxisGeometry, ...]:
    if not isinstance(geometry, Geometry):
        raise UsageError(f"expected a Geometry (read_geometry(model)[output]), not {type(geometry).__name__}")
    if not geometry.known:
        raise UsageError(f"the geometry is unknown: {geometry.unknown}")
    return geometry.axes


# ---- the walk -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Axis:
    """A tensor axis that runs along input axis ``axis`` of graph input ``input``."""

    input: str
    axis: int
    size: int = 1
    stride: int = 1
    offset: int = 0  # minus the padding before it, in input pixels
    pad_end: int = 0  # the padding after it


State = tuple["_Axis | None", ...] | str | None  # per tensor axis; a str: why unknown; None: no geometry


@dataclass
class _Walk:
    model: onnx.ModelProto
    spatial: Mapping[str, Sequence[int]] | None
    producer: dict[str, onnx.NodeProto] = field(default_factory=dict)
    dims: dict[str, tuple | None] = field(default_factory=dict)
    constants: dict[str, onnx.TensorProto] = field(default_factory=dict)
    states: dict[str, State] = field(default_factory=dict)
    stopped: dict[str, onnx.NodeProto | None] = field(default_factory=dict)  # per unknown tensor: the node


def tensor_geometry(model: onnx.ModelProto, name: str, spatial_inputs: Mapping[str, Sequence[int]] | None = None,
                    input_sizes: Mapping[str, Sequence | None] | None = None) -> Geometry:
    """The geometry of tensor ``name`` of ``model``'s graph (a converted output map, or any feature
    map ``[N, C, *S]``): a pure function of the graph, linear in its nodes.

    ``spatial_inputs`` names the graph-input axes that are image axes (default: axes 2.. of every
    graph input); ``input_sizes`` gives the original input dims for the ``crop`` of each axis
    (default: the graph inputs' declared dims, where static)."""
    if not isinstance(model, onnx.ModelProto) or not isinstance(name, str):
        raise UsageError(f"tensor_geometry takes an onnx.ModelProto and a tensor name, not {type(model).__name__} "
                         f"and {type(name).__name__}")
    for option, value in (("spatial_inputs", spatial_inputs), ("input_sizes", input_sizes)):
        if value is not None and not isinstance(value, Mapping):
            raise UsageError(f"tensor_geometry: {option} takes a dict by input name, not {value!r}")
    return tensor_geometries(model, [name], spatial_inputs, input_sizes)[name]


def tensor_geometries(model: onnx.ModelProto, names: Sequence[str],
                      spatial_inputs: Mapping[str, Sequence[int]] | None = None,
                      input_sizes: Mapping[str, Sequence | None] | None = None) -> dict[str, Geometry]:
    """:func:`tensor_geometry` of each of ``names``, by one walk of the nodes they need."""
    walk = _walk(model, spatial_inputs, upstream_of=names)
    return {name: _geometry(walk.states.get(name), name, input_sizes, walk) for name in names}


@dataclass(frozen=True)
class Sampling:
    """How a map ``[N, C, *S]`` samples its input, per spatial axis: its cumulative stride (input
    pixels per cell), and its padding margin, how far padding reaches into it from each border
    (``margin_begin`` is minus the walk's offset; ``margin_end`` the padding after)."""

    stride: tuple[int, ...]
    margin_begin: tuple[int, ...]
    margin_end: tuple[int, ...]


@dataclass
class SamplingWalk:
    """Each map's :class:`Sampling`; ``unknown`` names, per image-derived tensor whose sampling the
    walk cannot follow (or that is no map ``[N, C, *S]``), the node that stopped it (None: a graph
    input without a shape)."""

    sampling: dict[str, Sampling] = field(default_factory=dict)
    unknown: dict[str, onnx.NodeProto | None] = field(default_factory=dict)


def map_samplings(model: onnx.ModelProto, spatial_inputs: Mapping[str, Sequence[int]],
                  follows: Callable[[onnx.NodeProto], bool] | None = None) -> SamplingWalk:
    """The sampling of every tensor of ``model``'s graph computed from the ``spatial_inputs``, by the
    same walk as :func:`tensor_geometry`. ``follows``: the ops a caller can handle (a rewrite that
    must change each op it meets); any other op that reads a map stops the walk there."""
    walk = _walk(model, spatial_inputs, follows=follows)
    found = SamplingWalk()
    for name, state in walk.states.items():
        if isinstance(state, str):
            found.unknown[name] = walk.stopped.get(name)
        elif state is not None and name not in spatial_inputs:
            sampling = _sampling(state)
            if sampling is None:
                found.unknown[name] = walk.producer.get(name)
            else:
                found.sampling[name] = sampling
    for name, axes in spatial_inputs.items():  # the inputs themselves: every axis of theirs a spatial one
        if not isinstance(walk.states.get(name), str):
            found.sampling[name] = Sampling((1,) * len(axes), (0,) * len(axes), (0,) * len(axes))
    return found


def _sampling(state: tuple) -> Sampling | None:
    """A map's sampling from its walk state; None where it is no map [N, C, *S] of one input."""
    spatial = _map_axes(state, "")
    if isinstance(spatial, str):
        return None
    return Sampling(tuple(a.stride for a in spatial), tuple(-a.offset for a in spatial),
                    tuple(a.pad_end for a in spatial))


def _map_axes(state: State, name: str) -> tuple[_Axis, ...] | str:
    """The spatial axes of a map [N, C, *S] of one image input, from tensor ``name``'s walk state;
    where it is no such map, why."""
    if isinstance(state, str):
        return state
    if state is None or len(state) < 3:
        return f"{name!r} is no map [N,C,*S] computed from an image input"
    axes = tuple(a for a in state[2:] if a is not None)
    if len(axes) < len(state) - 2 or state[0] is not None or state[1] is not None:
        return f"the axes of {name!r} are not the image's axes in order [N,C,*S]"
    inputs = {a.input for a in axes}
    if len(inputs) > 1 or len({a.axis for a in axes}) < len(axes):
        return (f"the spatial axes of {name!r} come from {sorted(inputs)} axes {[a.axis for a in axes]}, "
                "not one image")
    return axes


def _walk(model: onnx.ModelProto, spatial_inputs: Mapping[str, Sequence[int]] | None,
          upstream_of: Sequence[str] | None = None, follows: Callable[[onnx.NodeProto], bool] | None = None) -> _Walk:
    """Walk ``model``'s graph in topological order (only the nodes the tensors ``upstream_of`` need,
    when given), giving each tensor its state."""
    graph = model.graph
    walk = _Walk(model, spatial_inputs, producer=producers(graph))
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        walk.dims.setdefault(vi.name, value_dims(vi)[1])
    for tensor in graph.initializer:
        walk.dims[tensor.name] = tuple(tensor.dims)
        walk.constants[tensor.name] = tensor
    initializers = set(walk.constants)
    needed = None if upstream_of is None else {id(n) for n in upstream(walk.producer, upstream_of)[1]}
    for inp in graph.input:
        if inp.name not in initializers:
            walk.states[inp.name] = _input_state(walk, inp.name)
    for position in topological_order(graph):
        node = graph.node[position]
        if needed is not None and id(node) not in needed:
            continue
        if is_onnx_op(node, "Constant"):
            value = attr(node, "value")
            if isinstance(value, onnx.TensorProto):
                walk.constants[node.output[0]] = value
                walk.dims[node.output[0]] = tuple(value.dims)
            continue
        inputs = [walk.states.get(i) if i else None for i in node.input]
        stopped = next((walk.stopped.get(i) for i, s in zip(node.input, inputs) if isinstance(s, str)), node)
        if follows is not None and not is_onnx_op(node, *SIZE_OPS) and not any(isinstance(s, str) for s in inputs) \
                and any(s is not None for s in inputs) and not follows(node):
            state: State = f"{node.op_type} {node_key(node)!r}: the caller cannot follow this op"
        else:
            state = _node_state(walk, node, inputs)
        for out in node.output:
            walk.states[out] = state
            if isinstance(state, str):
                walk.stopped[out] = stopped
    return walk


def _input_state(walk: _Walk, name: str) -> State:
    dims = walk.dims.get(name)
    if dims is None:
        return f"graph input {name!r} has no shape"
    axes = walk.spatial.get(name) if walk.spatial is not None else range(2, len(dims))
    if axes is None:
        return None  # not an image input: a constant as far as the windows go
    return tuple(_Axis(name, a) if a in axes else None for a in range(len(dims)))


def _geometry(state: State, name: str, input_sizes, walk: _Walk) -> Geometry:
    axes = _map_axes(state, name)
    if isinstance(axes, str):
        return Geometry(unknown=axes)
    source = axes[0].input
    sizes = (input_sizes or {}).get(source) or walk.dims.get(source) or ()
    crop = lambda axis: sizes[axis] if axis < len(sizes) and isinstance(sizes[axis], int) else None  # noqa: E731
    return Geometry(source, tuple(a.axis for a in axes),
                    tuple(AxisGeometry(a.size, a.stride, a.offset, max(-a.offset, a.pad_end), crop(a.axis))
                          for a in axes))


def _node_state(walk: _Walk, node: onnx.NodeProto, inputs: list[State]) -> State:
    """The state of ``node``'s outputs from its inputs' states."""
    label = f"{node.op_type} {node_key(node)!r}"
    if is_onnx_op(node, *SIZE_OPS):
        return None  # a map's size, whatever is known of its windows
    unknown = next((s for s in inputs if isinstance(s, str)), None)
    if unknown is not None:
        return unknown
    if all(s is None for s in inputs):
        return None  # computed from constants (or non-image inputs) alone
    if not is_onnx_op(node):
        return f"{node.domain}::{node.op_type} {node_key(node)!r} is no ONNX op the walk knows"
    if node.op_type in POSITION_WISE_OPS:
        return inputs[0] if all(s is None for s in inputs[1:]) else _broadcast(node, inputs, label)
    if node.op_type in BROADCAST_OPS:
        return _broadcast(node, inputs, label)
    if node.op_type in CHANNEL_OPS:
        state = inputs[0]
        assert isinstance(state, tuple)
        since_13 = opset_version(walk.model) >= 13
        axis = attr(node, "axis", -1 if since_13 else 1) % len(state)
        over = state[axis:axis + 1] if since_13 else state[axis:]
        if any(a is not None for a in over):
            return f"{label} runs over an image axis"
        return state
    if node.op_type in SLIDING_OPS:
        return _sliding(walk, node, inputs, label)
    if node.op_type == "Concat":
        return _concat(node, inputs, label)
    if node.op_type == "Transpose":
        state = inputs[0]
        assert not isinstance(state, str) and state is not None
        perm = attr(node, "perm") or list(range(len(state)))[::-1]
        return tuple(state[p] for p in perm)
    if node.op_type == "Pad":
        return _pad(walk, node, inputs, label)
    if node.op_type.startswith("Reduce"):
        return _reduce(walk, node, inputs, label)
    if node.op_type == "LayerNormalization":  # over axes axis.. : position-wise when those hold no image axis
        state = inputs[0]
        assert isinstance(state, tuple)
        if any(a is not None for a in state[attr(node, "axis", -1) % len(state):]):
            return f"{label} normalizes over an image axis"
        return state
    if node.op_type in WHOLE_MAP_OPS:
        return f"{label} pools over the whole map, so each cell sees the whole input"
    return f"{label}: the walk cannot follow this op"


def _ints_input_or_attribute(walk: _Walk, node: onnx.NodeProto, name: str) -> list[int] | None:
    """``node``'s ``name`` (Reduce axes, Pad pads): its second input where it has one (newer opsets;
    None where that input is not a constant), else its attribute."""
    if len(node.input) > 1 and node.input[1]:
        tensor = walk.constants.get(node.input[1])
        return None if tensor is None else [int(v) for v in numpy_helper.to_array(tensor).ravel()]
    return attr(node, name)


def _reduce(walk: _Walk, node: onnx.NodeProto, inputs: list[State], label: str) -> State:
    """A Reduce* over non-image axes only (a decomposed LayerNorm's mean over the channels of a
    channels-last map) works on each position; one over an image axis pools over the whole map."""
    state = inputs[0]
    if not isinstance(state, tuple) or any(isinstance(s, tuple) for s in inputs[1:]):
        return f"{label} reduces over axes computed from the image"
    axes = _ints_input_or_attribute(walk, node, "axes")
    if not axes and not (attr(node, "noop_with_empty_axes", 0) and len(node.input) < 2):
        axes = list(range(len(state)))  # no axes: every axis
    if axes is None:
        return f"{label}: its axes are not constant"
    reduced = {a % len(state) for a in axes}
    if any(state[a] is not None for a in reduced):
        return f"{label} pools over the whole map, so each cell sees the whole input"
    if attr(node, "keepdims", 1):
        return state
    return tuple(a for i, a in enumerate(state) if i not in reduced)


def _broadcast(node: onnx.NodeProto, inputs: list[State], label: str) -> State:
    """Inputs combined position by position: aligned from the last axis (numpy broadcasting), the
    operands that carry no geometry (constants, per-channel values) left out."""
    carried = [s for s in inputs if isinstance(s, tuple)]
    rank = max(len(s) for s in carried)
    merged: list[_Axis | None] = [None] * rank
    for state in carried:
        for axis, a in enumerate(state, start=rank - len(state)):
            if a is None:
                continue
            if merged[axis] is None:
                merged[axis] = a
                continue
            union = _union(merged[axis], a)  # type: ignore[arg-type]
            if union is None:
                return (f"{label} combines maps whose axis {axis} steps differently ({_describe(merged[axis])} "
                        f"and {_describe(a)})")
            merged[axis] = union
    return tuple(merged)


def _concat(node: onnx.NodeProto, inputs: list[State], label: str) -> State:
    carried = [s for s in inputs if isinstance(s, tuple)]
    rank = len(carried[0])
    axis = attr(node, "axis") % rank
    if any(s[axis] is not None for s in carried):
        return f"{label} joins maps along a spatial axis (axis {axis})"
    if any(len(s) != rank for s in carried):
        return f"{label} joins tensors of different ranks"
    return _broadcast(node, inputs, label)


def _union(a: _Axis, b: _Axis) -> _Axis | None:
    """The window of two branches that meet: the union of theirs, if they step alike."""
    if (a.input, a.axis, a.stride) != (b.input, b.axis, b.stride):
        return None
    start = min(a.offset, b.offset)
    end = max(a.offset + a.size, b.offset + b.size)
    return replace(a, size=end - start, offset=start, pad_end=max(a.pad_end, b.pad_end))


def _describe(a: _Axis | None) -> str:
    return "no image axis" if a is None else f"input {a.input!r} axis {a.axis} at stride {a.stride}"


def _sliding(walk: _Walk, node: onnx.NodeProto, inputs: list[State], label: str) -> State:
    """A Conv or a pool: each spatial axis 2.. grows by its kernel and steps by its stride."""
    state = inputs[0]
    if not isinstance(state, tuple):
        return f"{label} slides over a tensor that is no image map"
    if any(s is not None for s in inputs[1:]):
        return f"{label}: its kernel or bias is computed from the image"
    spatial = len(state) - 2
    if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
        weight = walk.dims.get(node.input[3 if node.op_type == "QLinearConv" else 1])
        kernel = attr(node, "kernel_shape") or (list(weight[2:]) if weight is not None else None)
    else:
        kernel = attr(node, "kernel_shape")
    if kernel is None or len(kernel) != spatial or not all(isinstance(k, int) for k in kernel):
        return f"{label}: its kernel size is not known"
    strides = attr(node, "strides") or [1] * spatial
    dilations = attr(node, "dilations") or [1] * spatial
    pads = attr(node, "pads") or [0] * (2 * spatial)
    auto_pad = attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if any(s != 1 for s in strides):
            return f"{label} pads {auto_pad} with strides {list(strides)}: its padding depends on the input size"
        totals = [(k - 1) * d for k, d in zip(kernel, dilations)]
        begins = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]
        pads = [*begins, *(t - b for t, b in zip(totals, begins))]
    elif auto_pad == "VALID":
        pads = [0] * (2 * spatial)
    ceil = attr(node, "ceil_mode", 0)
    out: list[_Axis | None] = [None, None]
    if state[1] is not None:
        return f"{label} mixes an image axis ({_describe(state[1])}) as its channels"
    for i, a in enumerate(state[2:]):
        k, s, d, begin, end = kernel[i], strides[i], dilations[i], pads[i], pads[spatial + i]
        if a is None:
            if (k, s, begin, end) != (1, 1, 0, 0):
                return f"{label} slides over axis {i + 2}, which is no image axis"
            out.append(None)
            continue
        # ceil_mode: a last window may hang over the end by up to stride - 1 rows, read as padding.
        end += (s - 1) if ceil else 0
        out.append(replace(a, size=a.size + (k - 1) * d * a.stride, offset=a.offset - begin * a.stride,
                           stride=a.stride * s, pad_end=a.pad_end + end * a.stride))
    return tuple(out)


def _pad(walk: _Walk, node: onnx.NodeProto, inputs: list[State], label: str) -> State:
    state = inputs[0]
    if not isinstance(state, tuple) or any(isinstance(s, tuple) for s in inputs[1:]):
        return f"{label} pads by amounts computed from the image"
    pads = _ints_input_or_attribute(walk, node, "pads")
    rank = len(state)
    if pads is None or len(node.input) > 3 and node.input[3]:
        return f"{label}: its pads are not constant (or it pads only some axes)"
    if len(pads) != 2 * rank or min(pads) < 0:
        return f"{label}: pads {pads} are not one non-negative begin and end per axis"
    out: list[_Axis | None] = []
    for i, a in enumerate(state):
        begin, end = pads[i], pads[rank + i]
        if a is None:
            if begin or end:
                return f"{label} pads axis {i}, which is no image axis"
            out.append(None)
            continue
        out.append(replace(a, offset=a.offset - begin * a.stride, pad_end=a.pad_end + end * a.stride))
    return tuple(out)
