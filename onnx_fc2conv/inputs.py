"""The inputs the verifier feeds: seeded, of the model's declared types and shapes, and valid for
the model, so that the original model runs on them.

Shapes. A dim comes from ``--input-shape`` (``?`` keeps it symbolic), else from the array given for
that input in ``--input-data``, else from the model: static dims stay, and a symbolic dim gets one
value for every input that names it (``batch_size`` of ``input_ids`` and of ``past_0`` agree). Once
a name is pinned by an option or by data, every input that uses it follows. Unpinned symbolic dims:

* axis 0, or a name like ``batch``/``N``: the batch, ``DEFAULT_BATCH`` (2: a batch of one hides
  rewrites that mix samples);
* a dim that only past key/value inputs use (``past_seq_len``): 0, an empty past;
* any other: ``DEFAULT_SIZE``. One value for all of them keeps ``total_seq_len = past + seq_len``
  true when the past is empty.

Values, first rule that applies:

* the array from ``--input-data``;
* ``bool``: True;
* a mask (named ``*mask*``, or read as the mask of Where/Attention/MultiHeadAttention/
  EmbedLayerNormalization): ones;
* an integer input that indexes a table (Gather indices, EmbedLayerNormalization ids, looked for
  through Cast/Reshape/Unsqueeze...): uniform in ``[0, rows)`` of the smallest table;
* a rank-0 or 1-element input that feeds shape arithmetic or control flow (a Reshape shape, an If
  condition, Range bounds...): no synthesised value is safe, so :class:`CouldNotVerify` asks for it
  in ``--input-data``;
* ``uint8``: uniform 0..255 (images); other integers: 0..9; floats: standard normal.
"""
from __future__ import annotations

import math
import os
import re
import zipfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from .errors import CouldNotVerify, UsageError
from .graph import Dim, attr, value_dims
from .index import GraphIndex
from .report import InputSummary, format_dims

DEFAULT_BATCH = 2  # not 1: a batch of one hides rewrites that mix samples
# The most one input array may take (synthesised, or read from --input-data); the environment
# variable raises it. Checked from shapes and npz headers, before anything is allocated.
MAX_INPUT_BYTES = 2 << 30
MAX_INPUT_BYTES_VARIABLE = "ONNX_FC2CONV_MAX_INPUT_BYTES"
NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
DEFAULT_SIZE = 32  # every other free dim: sequence length, or height and width of an image
BATCH_NAME = re.compile(r"batch|^n$", re.IGNORECASE)
PAST_NAME = re.compile(r"past|cache", re.IGNORECASE)
MASK_NAME = re.compile(r"mask", re.IGNORECASE)

# Ops that pass an input's values on unchanged (only rearranged or retyped): an id stays an id.
PASS_THROUGH_OPS = frozenset({"Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Transpose"})
# (domain, op) -> {input slot of the ids: input slot of the table they index}
TABLE_SLOTS = {
    ("", "Gather"): {1: 0},
    ("com.microsoft", "EmbedLayerNormalization"): {0: 2, 1: 4, 8: 3},
}
# (domain, op) -> input slots read as a mask
MASK_SLOTS = {
    ("", "Where"): {0},
    ("com.microsoft", "Attention"): {3},
    ("com.microsoft", "MultiHeadAttention"): {4},
    ("com.microsoft", "EmbedLayerNormalization"): {7},
}
# op -> input slots whose values decide a shape, an axis or a branch (not tensor data).
CONTROL_SLOTS = {
    "Reshape": {1}, "Expand": {1}, "Tile": {1}, "ConstantOfShape": {0}, "Range": {0, 1, 2},
    "Slice": {1, 2, 3, 4}, "Pad": {1, 3}, "Resize": {1, 2, 3}, "Upsample": {1}, "TopK": {1},
    "OneHot": {1}, "Split": {1}, "Squeeze": {1}, "Unsqueeze": {1}, "If": {0}, "Loop": {0, 1},
    "CenterCropPad": {1}, "STFT": {1, 3},
}
# Ops whose output depends on the input's shape only, never on its values.
SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})


@dataclass
class InputSpec:
    name: str
    elem_type: int
    dims: tuple[Dim, ...] | None

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))

    @property
    def is_past(self) -> bool:
        return bool(PAST_NAME.search(self.name))


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs a caller must feed (initializers listed as inputs have defaults)."""
    inits = {t.name for t in model.graph.initializer}
    return [InputSpec(i.name, *value_dims(i)) for i in model.graph.input if i.name not in inits]


def load_input_data(path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, by input name; their sizes are checked from the headers first."""
    for name, (shape, dtype) in npz_headers(path).items():
        check_input_size(f"--input-data {path}: array {name!r}", shape, dtype)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise UsageError(f"--input-data {path}: not an .npz file of arrays ({exc})") from None


def npz_headers(path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The shape and dtype of each array of an ``.npz`` file, by name, read from the zip members'
    npy headers: nothing is decompressed past them."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--input-data {path}: no such file")
    with open(path, "rb") as f:
        if f.read(6) == b"\x93NUMPY":
            raise UsageError(f"--input-data {path}: a .npy file holds one array without an input name; "
                             "save the arrays with numpy.savez(FILE, NAME=array)")
    headers = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.infolist():
                with zf.open(member) as f:
                    reader = NPY_HEADER_READERS.get(np.lib.format.read_magic(f))
                    if reader is None:
                        raise ValueError(f"{member.filename}: an npy format this tool does not read")
                    shape, _, dtype = reader(f)
                headers[member.filename.removesuffix(".npy")] = (shape, dtype)  # numpy.savez adds .npy
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise UsageError(f"--input-data {path}: not an .npz file of arrays ({exc})") from None
    return headers


def check_input_size(what: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse an input array over the size limit before it is allocated, with its size."""
    limit = max_input_bytes()
    size = math.prod(shape) * dtype.itemsize
    if size > limit:
        raise UsageError(f"{what} would need {format_bytes(size)} ({dtype} {format_dims(shape)}); the limit is "
                         f"{format_bytes(limit)} ({MAX_INPUT_BYTES_VARIABLE})")


def max_input_bytes() -> int:
    """``MAX_INPUT_BYTES``, or the environment's ``ONNX_FC2CONV_MAX_INPUT_BYTES``."""
    text = os.environ.get(MAX_INPUT_BYTES_VARIABLE)
    if text is None:
        return MAX_INPUT_BYTES
    if not (text.isascii() and text.isdigit()):
        raise UsageError(f"{MAX_INPUT_BYTES_VARIABLE} {text!r} is not a number of bytes")
    return int(text)


def format_bytes(size: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:,.0f} {unit}"
    return f"{size:,} bytes"


def check_input_options(model: onnx.ModelProto, shapes: dict | None, data) -> dict[str, np.ndarray]:
    """Raise :class:`UsageError` when ``shapes`` or ``data`` (a dict of arrays or an ``.npz`` path) do
    not fit the model's inputs; return ``data`` with each array in its input's element type (a
    float64 array for a float32 input)."""
    specs = {s.name: s for s in input_specs(model)}
    known = ", ".join(specs) or "none"
    if isinstance(data, (str, os.PathLike)):
        names = npz_headers(data)  # the names are checked below before any array is decompressed
    else:
        names = data or {}
    checked = {}
    for option, given in (("--input-shape", shapes or {}), ("--input-data", names)):
        for name in given:
            if name not in specs:
                raise UsageError(f"{option} names {name!r}, which is not an input of the model (inputs: {known})")
    for name, dims in (shapes or {}).items():
        _check_dims(specs[name], tuple(dims), "--input-shape")
    if isinstance(data, (str, os.PathLike)):
        data = load_input_data(data)
    for name, value in (data or {}).items():
        spec, value = specs[name], np.asarray(value)
        _check_dims(spec, value.shape, "--input-data")
        override = (shapes or {}).get(name)
        if override is not None and any(o is not None and o != v for o, v in zip(override, value.shape)):
            raise UsageError(f"--input-data {name!r} has shape {list(value.shape)} but --input-shape says "
                             f"{format_dims(override)}")
        want = spec.numpy_dtype
        if value.dtype != want:
            if not np.can_cast(value.dtype, want, casting="same_kind"):
                raise UsageError(f"--input-data {name!r} is {value.dtype}, the model takes {want}")
            value = value.astype(want)
        checked[name] = value
    return checked


def _check_dims(spec: InputSpec, dims: tuple, option: str) -> None:
    if spec.dims is None:
        return
    if len(dims) != len(spec.dims):
        raise UsageError(f"{option} {spec.name!r} has rank {len(dims)}, the model's input is {format_dims(spec.dims)}")
    for axis, (given, declared) in enumerate(zip(dims, spec.dims)):
        if given is not None and _is_static(declared) and given != declared:
            raise UsageError(f"{option} {spec.name!r} has size {given} at axis {axis}, the model's input is "
                             f"{format_dims(spec.dims)}")


def make_inputs(model: onnx.ModelProto, *, seed: int = 0, shapes: dict | None = None, data: dict | None = None,
                batch: int = DEFAULT_BATCH,
                index: GraphIndex | None = None) -> tuple[dict[str, np.ndarray], list[InputSummary]]:
    """One array per graph input: from ``data`` when given, else synthesised from ``seed``.
    ``index``: the caller's index of ``model``, when it has one (else one is built).

    Raises :class:`UsageError` when ``shapes``/``data`` do not fit the model, and
    :class:`CouldNotVerify` when an input needs a value only the user can give.
    """
    data = check_input_options(model, shapes, data)
    specs = input_specs(model)
    concrete = resolve_shapes(specs, shapes or {}, data, batch)
    usage = InputUsage(index or GraphIndex(model))
    rng = np.random.default_rng(seed)
    feeds, summaries = {}, []
    for spec in specs:
        if spec.name in data:
            value, source = data[spec.name], "file"
        else:
            check_input_size(f"input {spec.name!r}", concrete[spec.name], spec.numpy_dtype)
            value, source = synthesize(spec, concrete[spec.name], usage, rng)
        feeds[spec.name] = value
        seeded = source.startswith(("random", "index range"))
        summaries.append(summary(spec.name, value, f"{source}, seed {seed}" if seeded else source))
    return feeds, summaries


def resolve_shapes(specs: list[InputSpec], shapes: dict, data: dict,
                   batch: int = DEFAULT_BATCH) -> dict[str, tuple[int, ...]]:
    """The concrete shape of every input, by the rules in this module's docstring."""
    bound: dict[str, int] = {}
    for spec in specs:  # names pinned by the user bind every input that uses them
        given = data[spec.name].shape if spec.name in data else shapes.get(spec.name)
        for declared, size in zip(spec.dims or (), given or ()):
            symbol = _symbol(declared)
            if symbol and size is not None:
                bound.setdefault(symbol, size)
    used_outside_past = {_symbol(d) for s in specs if not s.is_past for d in s.dims or ()}
    result = {}
    for spec in sorted(specs, key=lambda s: s.is_past):  # non-past inputs bind batch and sequence first
        if spec.name in data:
            result[spec.name] = tuple(data[spec.name].shape)
            continue
        override = shapes.get(spec.name) or (None,) * len(spec.dims or ())
        shape = []
        for axis, (declared, given) in enumerate(zip(spec.dims or override, override)):
            symbol = _symbol(declared)
            if given is not None:
                size = given
            elif _is_static(declared):
                size = declared
            elif symbol in bound:
                size = bound[symbol]
            elif axis == 0 or (symbol and BATCH_NAME.search(symbol)):
                size = batch
            elif spec.is_past and symbol and symbol not in used_outside_past:
                size = 0
            else:
                size = DEFAULT_SIZE
            if symbol:
                bound.setdefault(symbol, size)
            shape.append(size)
        result[spec.name] = tuple(shape)
    return {spec.name: result[spec.name] for spec in specs}


class InputUsage:
    """What the graph does with each input: index a table, act as a mask, steer shapes or branches."""

    def __init__(self, index: GraphIndex):
        self.index = index

    def table_rows(self, name: str) -> int | None:
        """Rows of the smallest table the input indexes (through pass-through ops), if any."""
        rows: list[int] = []
        for node, slot, _ in self._readers(name, pass_through=True):
            table_slot = TABLE_SLOTS.get((node.domain or "", node.op_type), {}).get(slot)
            if table_slot is None or table_slot >= len(node.input):
                continue
            dims = self.index.shape(node.input[table_slot])
            if not dims:
                continue
            axis = attr(node, "axis", 0) % len(dims) if node.op_type == "Gather" else 0
            size = dims[axis]
            if isinstance(size, int) and size >= 0:
                rows.append(size)
        return min(rows) if rows else None

    def is_mask(self, name: str) -> bool:
        if MASK_NAME.search(name):
            return True
        return any(slot in MASK_SLOTS.get((node.domain or "", node.op_type), ())
                   for node, slot, _ in self._readers(name, pass_through=True))

    def steers_shapes(self, name: str) -> str | None:
        """The first op whose shape, axis or branch the input's value decides (e.g. ``If``), else None."""
        for node, slot, _ in self._readers(name, pass_through=False):
            if slot in CONTROL_SLOTS.get(node.op_type, ()) and (node.domain or "") == "":
                return node.op_type
        return None

    def _readers(self, name: str, pass_through: bool):
        """(node, input slot, tensor) for every node that reads ``name`` or a tensor computed from it:
        through value-preserving ops only with ``pass_through``, else through every op whose output
        depends on values."""
        seen, queue = {name}, deque([name])
        while queue:
            tensor = queue.popleft()
            for node in self.index.consumers.get(tensor, []):
                for slot, inp in enumerate(node.input):
                    if inp == tensor:
                        yield node, slot, tensor
                follow = (node.op_type in PASS_THROUGH_OPS and node.input[0] == tensor if pass_through
                          else node.op_type not in SHAPE_ONLY_OPS)
                if follow:
                    for out in node.output:
                        if out and out not in seen:
                            seen.add(out)
                            queue.append(out)


def synthesize(spec: InputSpec, shape: tuple[int, ...], usage: InputUsage,
               rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A value for ``spec`` of ``shape`` that the model can run on, and how it was made."""
    dtype = spec.numpy_dtype
    if 0 in shape:
        return np.zeros(shape, dtype=dtype), "empty past" if spec.is_past else "empty"
    if dtype == np.bool_:
        return np.ones(shape, dtype=bool), "True"
    if usage.is_mask(spec.name):
        return np.ones(shape, dtype=dtype), "ones (mask)"
    integer = np.issubdtype(dtype, np.integer)
    rows = usage.table_rows(spec.name) if integer else None
    if rows:
        return rng.integers(0, rows, size=shape).astype(dtype), f"index range [0, {rows})"
    if int(np.prod(shape)) == 1:
        op = usage.steers_shapes(spec.name)
        if op is not None:
            raise CouldNotVerify(
                f"could not verify: input {spec.name!r} ({dtype}, shape {list(shape)}) decides a {op} "
                f"(shape arithmetic or control flow), so no synthesised value is safe; pass its value with "
                f"--input-data")
    if dtype == np.uint8:
        return rng.integers(0, 256, size=shape, dtype=np.uint8), "random 0..255"
    if integer:
        return rng.integers(0, 10, size=shape).astype(dtype), "random 0..9"
    return rng.standard_normal(shape).astype(dtype), "random normal"


def summary(name: str, value: np.ndarray, source: str) -> InputSummary:
    finite = value.astype(np.float64) if value.size else np.zeros(1)
    return InputSummary(name, list(value.shape), str(value.dtype), float(finite.min()), float(finite.max()), source)


def _symbol(dim) -> str | None:
    """The name of a symbolic dim, or None for a static, unknown or anonymous (``?``) one."""
    return dim if isinstance(dim, str) and dim.strip("?") else None


def _is_static(dim) -> bool:
    return isinstance(dim, int) and dim >= 0
