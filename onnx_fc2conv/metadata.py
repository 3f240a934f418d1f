"""The conversion record: what a converted model says about itself, for the verifier and for a
second run of the tool.

It is written as JSON under the metadata key ``onnx_fc2conv`` and read back as a
:class:`ConversionRecord`: the mode, each converted head (the feature map it reads, its window, the
Conv that replaced it, the graph outputs that carry its map), the graph-input axes made symbolic for
the sliding-window proof, the input axes that carry the token axis (token layers converted), and
the window geometry of each output map (which input box each cell sees; a record written by an earlier
version has none, and reads so).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import onnx

from .errors import InvalidModelError, UsageError
from .geometry import Geometry, tensor_geometries
from .graph import names_in, node_key, value_dims
from .report import Mode
from .version import __version__

METADATA_KEY = "onnx_fc2conv"
MODES = ("keep_output_shape", "fully_convolutional")


@dataclass
class HeadRecord:
    """A converted head: the feature map it reads, its window ``[C, *S]`` (``None`` where the head
    reduces the whole map), the Conv that replaced it, the graph outputs that carry its map, and the
    input geometry of each of those maps (fully convolutional mode only)."""

    feature_map: str
    window: tuple[int | None, ...]
    node: str
    outputs: list[str] = field(default_factory=list)
    geometry: dict[str, Geometry] = field(default_factory=dict)


@dataclass
class StrideRecord:
    """``--output-stride``: the maps step by ``stride`` input pixels per spatial axis instead of the
    backbone's ``backbone_stride``; padding reaches ``margin_begin``/``margin_end`` pixels into them
    from each border; ``original`` holds, per changed node (name, or first output), its strides,
    dilations and pads before, from which the verifier rebuilds the stride-S conversion."""

    stride: list[int]
    backbone_stride: list[int]
    margin_begin: list[int]
    margin_end: list[int]
    original: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> StrideRecord:
        sizes = {k: [int(v) for v in data[k]] for k in ("stride", "backbone_stride", "margin_begin", "margin_end")}
        if len({len(v) for v in sizes.values()}) != 1 or any(v < 1 for k in ("stride", "backbone_stride")
                                                           for v in sizes[k]):
            raise ValueError("an output stride's sizes differ in rank or are below 1")
        original = {str(node): {str(k): [int(v) for v in values] for k, values in attrs.items()}
                    for node, attrs in data["original"].items()}
        return cls(**sizes, original=original)


@dataclass
class ConversionRecord:
    mode: Mode
    heads: list[HeadRecord] = field(default_factory=list)
    spatial_inputs: dict[str, list[int]] = field(default_factory=dict)
    token_axes: dict[str, list[int]] | None = None  # None: no token layer was converted
    output_stride: StrideRecord | None = None  # None: the maps step by the backbone's stride
    version: str = __version__

    @property
    def converted_by(self) -> str:
        """Who converted the model, as the notes say it. The record holds no time: the same input
        always gives byte-identical output."""
        return f"converted by onnx-fc2conv {self.version}"

    def line(self) -> str:
        """The record in words: who converted the model, in which mode, how many heads."""
        mode = "fully convolutional" if self.mode == "fully_convolutional" else "output shape kept"
        heads = f"{len(self.heads)} head{'' if len(self.heads) == 1 else 's'}"
        stride = "" if self.output_stride is None else \
            f", output stride {'x'.join(map(str, self.output_stride.stride))}"
        return f"{self.converted_by} ({mode}, {heads}{stride})"

    def measure_geometry(self, model: onnx.ModelProto, input_sizes: dict | None = None) -> dict[str, Geometry]:
        """Give each head the geometry of each of its output maps, walked on the converted ``model``
        (through the head's Conv; see :func:`~onnx_fc2conv.geometry.tensor_geometry`) in one walk for
        all of them, and return them all by output.
        ``input_sizes``: the original dims of the spatial inputs, for each axis's crop (default: the
        crops this record's geometry already gives). A pass that changes the backbone or a head's
        kernel after the rewrite (dilating it, say) calls it again, or the record says what was."""
        if input_sizes is None:
            input_sizes = self._recorded_sizes()
        found = tensor_geometries(model, [o for head in self.heads for o in head.outputs], self.spatial_inputs,
                                  input_sizes)
        for head in self.heads:
            head.geometry = {o: found[o] for o in head.outputs}
        return {o: g for head in self.heads for o, g in head.geometry.items()}

    def _recorded_sizes(self) -> dict[str, list[int | None]]:
        """The original input sizes, axis by axis, as the crops of the recorded geometry give them."""
        sizes: dict[str, list[int | None]] = {}
        for geometry in (g for head in self.heads for g in head.geometry.values()):
            if geometry.input is None:  # unknown: no axes
                continue
            dims = sizes.setdefault(geometry.input, [])
            dims.extend([None] * (max(geometry.input_axes) + 1 - len(dims)))
            for axis, a in zip(geometry.input_axes, geometry.axes):
                dims[axis] = a.crop
        return sizes

    def to_json(self) -> str:
        data = asdict(self)
        for head in data["heads"]:
            head["window"] = list(head["window"])
        for key in ("token_axes", "output_stride"):
            if data[key] is None:
                del data[key]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ConversionRecord:
        """The record in ``text``; InvalidModelError, in one line, where it is not one."""
        try:
            data = json.loads(text)
            mode = data["mode"]
            if mode not in MODES:
                raise ValueError(f"unknown mode {mode!r}")
            heads = [HeadRecord(str(h["feature_map"]), tuple(_size(w) for w in h["window"]), str(h["node"]),
                                [str(o) for o in h["outputs"]],
                                {str(o): Geometry.from_dict(g) for o, g in h.get("geometry", {}).items()})
                     for h in data["heads"]]
            return cls(mode=mode, heads=heads, spatial_inputs=_axes(data["spatial_inputs"]),
                       token_axes=_axes(data["token_axes"]) if "token_axes" in data else None,
                       output_stride=StrideRecord.from_dict(data["output_stride"]) if "output_stride" in data
                       else None,
                       version=str(data["version"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidModelError(f"the model's {METADATA_KEY!r} metadata is not a conversion record "
                                    f"({type(exc).__name__}: {exc}); was it edited?") from None


def _size(value) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"window size {value!r} is not a positive integer")
    return value


def _axes(value) -> dict[str, list[int]]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object of input axes, got {type(value).__name__}")
    axes = {str(name): [int(a) for a in items] for name, items in value.items()}
    if any(a < 1 for items in axes.values() for a in items):
        raise ValueError("an input axis below 1 (the batch axis is never varied)")
    return axes


def record_mismatch(record: ConversionRecord, original: onnx.ModelProto, converted: onnx.ModelProto) -> str | None:
    """What ``record`` names that the two models do not have (a feature map of the original, a Conv or
    an output of the converted model, an input axis of the original), in words; None when all exist.
    A record copied from another model or edited by hand fails here before a check trusts it."""
    original_names = names_in(original.graph)
    outputs = {o.name for o in converted.graph.output}
    nodes = {n.name for n in converted.graph.node}
    for head in record.heads:
        if head.feature_map not in original_names:
            return (f"its head {head.node!r} reads the feature map {head.feature_map!r}, "
                    "which the original model does not have")
        if head.node not in nodes:
            return f"its head {head.node!r} is no node of the converted model"
        missing = [o for o in head.outputs if o not in outputs]
        if missing:
            return f"its head {head.node!r} writes {missing[0]!r}, which is no output of the converted model"
        stray = [o for o in head.geometry if o not in outputs]
        if stray:
            return (f"its head {head.node!r} gives the geometry of {stray[0]!r}, "
                    "which is no output of the converted model")
    if record.output_stride is not None:
        keys = {node_key(n) for n in converted.graph.node}
        unknown = [k for k in record.output_stride.original if k not in keys]
        if unknown:
            return f"its output stride names the node {unknown[0]!r}, which is no node of the converted model"
    ranks = {i.name: len(value_dims(i)[1] or ()) for i in original.graph.input}
    for kind, axes in (("spatial", record.spatial_inputs), ("token", record.token_axes or {})):
        for name, items in axes.items():
            if name not in ranks:
                return f"it names the {kind} input {name!r}, which the original model does not have"
            beyond = [a for a in items if a >= ranks[name]]
            if beyond:
                return f"it names {kind} axis {beyond[0]} of input {name!r}, which has rank {ranks[name]}"
    return None


def write_record(model: onnx.ModelProto, record: ConversionRecord) -> None:
    """Store ``record`` in ``model``'s metadata, replacing an earlier one."""
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    model.metadata_props.add(key=METADATA_KEY, value=record.to_json())


def read_record(model: onnx.ModelProto) -> ConversionRecord | None:
    """The conversion record ``model`` carries; None where it has none."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return ConversionRecord.from_json(prop.value)
    return None


def read_geometry(model: onnx.ModelProto) -> dict[str, Geometry]:
    """The window geometry of each output map of a converted ``model``, by output name, as its
    conversion record gives it; empty where it has none (not fully convolutional, or converted by a
    version that did not record it). InvalidModelError where the record is not one."""
    if not isinstance(model, onnx.ModelProto):
        raise UsageError(f"read_geometry takes an onnx.ModelProto (onnx.load(path)), not {type(model).__name__}")
    record = read_record(model)
    return {} if record is None else {o: g for head in record.heads for o, g in head.geometry.items()}
