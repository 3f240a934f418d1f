"""Refusing what the tool must not touch: unsafe external data, unsound graphs, unsafe output paths.

Every check here runs before the work it protects: external-data locations are checked before any
external byte is read, the graph before any rule looks at it, the output path before converting.
Each failure is one line naming the file and the problem (see errors.py for the types).

External-data paths are resolved by onnx itself (>= 1.21 refuses absolute paths, ``..`` escapes
and symbolic links); this module never joins a location to a folder, it only asks onnx, for every
tensor and before loading any, and words the answer for a user.
"""
from __future__ import annotations

import math
import numbers
import os
import stat
from pathlib import Path

import numpy as np
import onnx
from onnx.external_data_helper import _ALLOWED_EXTERNAL_DATA_KEYS, ExternalDataInfo, uses_external_data

from .errors import InvalidModelError, OutputError, UnsafeModelError, UsageError
from .graph import ONNX_DOMAINS, subgraphs, topological_order

# onnx's wording of each refusal -> ours. onnx raises ValidationError with these phrases.
_EXTERNAL_DATA_REFUSALS = (
    ("absolute path", "is an absolute path"),
    ("outside", "points outside the model's folder"),
    ("symbolic link", "is a symbolic link"),
    ("hard link", "has several hard links (a file linked from elsewhere)"),
)
# Element types packed below one byte per element: bits per element (onnx packs them into bytes).
_PACKED_BITS = {getattr(onnx.TensorProto, name): bits for name, bits in (
    ("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2), ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6))
    if hasattr(onnx.TensorProto, name)}


def check_external_data(model: onnx.ModelProto, path: Path) -> set[tuple[int, int]]:
    """Refuse the model if any external tensor's location is unsafe or its file is missing; return
    the identities (device, inode) of the external-data files.

    Uses the resolver ``onnx.load`` itself uses (it opens a file only after validating its path);
    each descriptor is closed at once, so nothing is read here.
    """
    from onnx.external_data_helper import _get_all_tensors  # what onnx.load walks
    from onnx.onnx_cpp2py_export.checker import _open_external_data  # onnx.load's own resolver

    folder = str(path.parent)
    files = set()
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        _check_external_data_entries(tensor, path)
        info = ExternalDataInfo(tensor)
        location = info.location
        try:
            fd = _open_external_data(folder, location, tensor.name, True)
        except (onnx.checker.ValidationError, OSError, RuntimeError) as exc:
            text = str(exc)
            why = next((ours for phrase, ours in _EXTERNAL_DATA_REFUSALS if phrase in text), None)
            if why is not None:
                raise UnsafeModelError(f"{path}: refused: the external data of tensor {tensor.name!r} "
                                       f"({location!r}) {why}; nothing was read") from None
            raise InvalidModelError(f"{path}: the external data file {location!r} of tensor {tensor.name!r} "
                                    "is missing or not a regular file") from None
        stat = os.fstat(fd)
        os.close(fd)
        _check_external_data_size(tensor, info, stat.st_size, path)
        files.add((stat.st_dev, stat.st_ino))
    return files


def _check_external_data_entries(tensor: onnx.TensorProto, path: Path) -> None:
    """Every key one onnx knows, and offset/length plain non-negative integers: onnx would warn and
    skip an unknown key (ONNX Runtime then refuses the model) and raise a bare ValueError on the rest."""
    for entry in tensor.external_data:
        if entry.key not in _ALLOWED_EXTERNAL_DATA_KEYS:
            raise InvalidModelError(f"{path}: the external data of tensor {tensor.name!r} has an unknown key "
                                    f"{entry.key!r} (known: {', '.join(sorted(_ALLOWED_EXTERNAL_DATA_KEYS))})")
        if entry.key in ("offset", "length") and not (entry.value.isascii() and entry.value.isdigit()):
            raise InvalidModelError(f"{path}: the external data of tensor {tensor.name!r} has {entry.key} "
                                    f"{entry.value!r}; it must be a non-negative integer")


def _check_external_data_size(tensor: onnx.TensorProto, info: ExternalDataInfo, file_size: int, path: Path) -> None:
    """The bytes onnx will read must be the tensor's size. Without a length onnx reads to the end of
    the file, so a file holding more than the tensor would give a tensor ONNX Runtime refuses."""
    needed = tensor_bytes(tensor)
    offset = info.offset or 0
    if needed is None or offset > file_size:  # a string tensor; an offset past the end: onnx says so
        return
    size = info.length if info.length is not None else file_size - offset
    if size != needed:
        why = f" (it has no length, so it runs to the end of {info.location!r})" if info.length is None else ""
        raise InvalidModelError(f"{path}: the external data of tensor {tensor.name!r} is {size} bytes{why}, "
                                f"but its shape {list(tensor.dims)} needs {needed}")


def itemsize(data_type: int) -> int:
    """Bytes of one element of an ONNX element type as numpy holds it; 0 for a string or undefined type."""
    if data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return 0
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize


def tensor_bytes(tensor: onnx.TensorProto) -> int | None:
    """The bytes of a tensor's data from its dims and type (packed sub-byte types included); None for
    a string tensor, whose size only its data says."""
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    count = math.prod(tensor.dims)
    if tensor.data_type in _PACKED_BITS:
        return math.ceil(count * _PACKED_BITS[tensor.data_type] / 8)
    return count * itemsize(tensor.data_type)


def check_graph(model: onnx.ModelProto) -> None:
    """Refuse models the tool cannot reason about: too new for the installed onnx, no inputs,
    a tensor name defined twice, a node reading an undefined tensor, a cycle."""
    if model.ir_version > onnx.IR_VERSION:
        raise InvalidModelError(f"the model's ir_version {model.ir_version} is newer than the installed onnx "
                                f"{onnx.__version__} reads (up to {onnx.IR_VERSION}); upgrade onnx")
    _check_opset_imports(model)
    newest = onnx.defs.onnx_opset_version()
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version > newest:
            raise InvalidModelError(f"the model's opset {imp.version} is newer than the installed onnx "
                                    f"{onnx.__version__} knows (up to {newest}); upgrade onnx")
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    if not [i for i in graph.input if i.name not in initializers]:
        raise InvalidModelError("the graph has no inputs: there is nothing to feed it")
    _check_names(graph, outer=set())
    topological_order(graph)  # raises, naming the nodes, on a cycle


def _check_opset_imports(model: onnx.ModelProto) -> None:
    """Refuse a domain imported twice ("" and "ai.onnx" are one domain): onnx.checker lets it pass,
    but which version applies is then ambiguous, and a rewrite made for one version is wrong under
    the other (e.g. the axis a Softmax normalises over changed at opset 13)."""
    seen: dict[str, int] = {}
    for imp in model.opset_import:
        domain = "" if imp.domain in ONNX_DOMAINS else imp.domain
        if domain in seen:
            name = "ONNX" if domain == "" else repr(domain)
            raise InvalidModelError(f"the model imports the {name} operator set twice (versions {seen[domain]} "
                                    f"and {imp.version}); keep one, which one applies is ambiguous")
        seen[domain] = imp.version


def _check_names(graph: onnx.GraphProto, outer: set[str]) -> None:
    """Each tensor defined once (an initializer may also be listed as an input: its default), and
    every name a node reads defined in the graph or an outer scope. Recurses into If/Loop/Scan bodies."""
    defined: set[str] = set()

    def define(name: str, what: str) -> None:
        if name in defined:
            raise InvalidModelError(f"the tensor name {name!r} is defined twice (again as {what}); "
                                    "tensor names must be unique")
        defined.add(name)

    initializers = {t.name for t in graph.initializer}
    for inp in graph.input:
        if inp.name not in initializers:
            define(inp.name, "a graph input")
    for name in [t.name for t in graph.initializer] + [t.values.name for t in graph.sparse_initializer]:
        define(name, "an initializer")
    for node in graph.node:
        for out in node.output:
            if out:
                define(out, f"an output of node {node.name!r}")
    visible = outer | defined
    for node in graph.node:
        for name in node.input:
            if name and name not in visible:
                raise InvalidModelError(f"node {node.name!r} ({node.op_type}) reads {name!r}, which no node, "
                                        "input or initializer defines")
        for body in subgraphs(node):
            _check_names(body, visible)


def check_tolerances(rtol: float | None, atol: float | None) -> None:
    """Refuse a tolerance that makes the proof empty: negative or NaN (nothing, or everything,
    compares), or infinite (every difference passes). None means the dtype's default."""
    for name, value in (("rtol", rtol), ("atol", atol)):
        if value is not None and (not isinstance(value, numbers.Real) or isinstance(value, bool)):
            raise UsageError(f"{name} {value!r} is not a tolerance: give a finite number >= 0")
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UsageError(f"{name} {float(value)!r} is not a tolerance: give a finite number >= 0")


def check_flags(**flags) -> None:
    """Refuse a flag that is not a bool: ``inplace="False"`` is truthy, and would replace IN."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise UsageError(f"option {name} takes True or False, not {value!r}")


def check_seed(seed) -> None:
    """Refuse a seed numpy would reject deep inside the proof, with a traceback."""
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise UsageError(f"seed {seed!r} is not a seed: give an integer >= 0")


def check_output_path(source, output: Path, inplace: bool) -> None:
    """Before any work: OUT's folder exists, OUT and OUT's data file are neither folders nor other
    non-files (devices, FIFOs, sockets), OUT is not IN unless ``inplace``, neither OUT nor its data
    file is IN or one of IN's external-data files, and neither is a symbolic link."""
    _check_writable_as_file(output, "give the path of the .onnx file to write", "give a file path")
    if not output.parent.is_dir():
        raise OutputError(f"{output}: the folder {output.parent} does not exist")
    data = external_data_path(output)
    _check_writable_as_file(data, "OUT's weights would be written there", "OUT's weights would be written there")
    if not isinstance(source, onnx.ModelProto):
        _check_output_spares_input(Path(source), output, data, inplace)
    # After the OUT == IN check, so that OUT linked to IN says so. Writing replaces the link itself
    # with a regular file and leaves its target as it was: never what the user meant.
    if output.is_symlink():
        target = output.resolve()
        raise OutputError(f"{output}: is a symbolic link to {target}; give {target} itself (or another path)")
    if data.is_symlink():
        raise OutputError(f"{data}: is a symbolic link to {data.resolve()}; OUT's weights would replace the link, "
                          "not the file: choose another OUT")


def _check_writable_as_file(path: Path, if_folder: str, if_other: str) -> None:
    """``path`` is absent or a regular file (through a link): a write renames a new file over it, which
    would replace a device or FIFO by a plain file."""
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; {if_folder}")
    kind = _special_file_kind(path)
    if kind is not None:
        raise OutputError(f"{path}: is not a regular file ({kind}); {if_other}")


def _special_file_kind(path: Path) -> str | None:
    """What ``path`` is when it exists and is neither a regular file nor a folder; else None."""
    try:
        mode = path.stat().st_mode
    except OSError:  # absent (or a dangling link): nothing would be replaced
        return None
    kinds = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISSOCK, "a socket"))
    return next((kind for is_kind, kind in kinds if is_kind(mode)), None)


def _check_output_spares_input(source: Path, output: Path, data: Path, inplace: bool) -> None:
    """Neither OUT nor its data file is IN (OUT may be, with ``inplace``) or one of IN's data files."""
    if _same_file(source, output):
        if inplace:
            return  # IN and its data file are replaced as a pair, after verification
        raise OutputError(f"{output}: OUT is the input model; pass --inplace (inplace=True) to overwrite it")
    if _same_file(source, data):
        raise OutputError(f"{output}: its weights would be written to {data}, which is the input model; "
                          "choose another OUT")
    _check_output_keeps_input_data(source, output)


def check_report_path(report: Path, source, output: Path, input_data) -> None:
    """Before any work: the JSON report goes to an existing folder, and replaces none of the files
    the run reads or writes (IN, its external data, OUT, OUT's data file, the --input-data file)."""
    if not report.parent.is_dir():
        raise OutputError(f"{report}: the folder {report.parent} does not exist")
    if report.is_dir():
        raise OutputError(f"--report-json {report}: is a directory")
    source_path = Path(source) if isinstance(source, (str, os.PathLike)) else None  # None: a ModelProto
    if source_path is not None:
        _refuse_report_on(report, source_path, "the input model")
    _refuse_report_on(report, output, "OUT")
    _refuse_report_on(report, external_data_path(output), "OUT's data file")
    if isinstance(input_data, (str, os.PathLike)):
        _refuse_report_on(report, Path(input_data), "the --input-data file")
    if source_path is not None and report.is_file() and _file_identity(report) in _input_data_files(source_path):
        raise OutputError(f"--report-json {report}: is a data file of the input model; choose another path")


def _refuse_report_on(report: Path, path: Path, what: str) -> None:
    if _same_file(report, path):
        raise OutputError(f"--report-json {report}: is {what}; choose another path")


def _same_file(a: Path, b: Path) -> bool:
    """The same file: by identity when both exist (links included), else by resolved path."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _file_identity(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_dev, info.st_ino


def external_data_path(output: Path) -> Path:
    """Where the weights of OUT go when it is saved with external data."""
    return output.with_name(output.name + ".data")


def _input_data_files(source: Path) -> set[tuple[int, int]]:
    """The identities of IN's external-data files (IN's graph is parsed, no weight is read); none
    when IN cannot be read, which the load then reports with its reason."""
    if not source.is_file():
        return set()
    try:
        model = onnx.load(str(source), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable IN is reported, with its reason, by the load
        return set()
    return check_external_data(model, source)


def _check_output_keeps_input_data(source: Path, output: Path) -> None:
    """Refuse an OUT (or its ``.data`` file) that would replace an external-data file of IN, whatever
    its name (a data file may end in .onnx). IN is parsed again only when one of them exists."""
    at_risk = [p for p in (output, external_data_path(output)) if p.is_file()]
    if not at_risk:
        return
    inputs_data = _input_data_files(source)
    for path in at_risk:
        if _file_identity(path) in inputs_data:
            raise OutputError(f"{output}: writing it would replace {path}, which holds the input model's "
                              "weights; choose another OUT")
