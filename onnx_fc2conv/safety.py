"""Refusing what the tool must not touch: unsafe external data, unsound graphs, unsafe output paths.

Every check here runs before the work it protects: external-data locations are checked before any
external byte is read, the graph before any rule looks at it, the output path before converting.
Each failure is one line naming the file and the problem (see errors.py for the types).

External-data paths are resolved by onnx itself (>= 1.21 refuses absolute paths, ``..`` escapes
and symbolic links); this module never joins a location to a folder, it only asks onnx, for every
tensor and before loading any, and words the answer for a user.
"""
from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from .errors import InvalidModelError, OutputError, UnsafeModelError
from .graph import ONNX_DOMAINS, subgraphs, topological_order

# onnx's wording of each refusal -> ours. onnx raises ValidationError with these phrases.
_EXTERNAL_DATA_REFUSALS = (
    ("absolute path", "is an absolute path"),
    ("outside", "points outside the model's folder"),
    ("symbolic link", "is a symbolic link"),
    ("hard link", "has several hard links (a file linked from elsewhere)"),
)


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
        location = ExternalDataInfo(tensor).location
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
        files.add((stat.st_dev, stat.st_ino))
    return files


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


def check_output_path(source, output: Path, inplace: bool) -> None:
    """Before any work: OUT's folder exists, OUT is not a folder, and OUT is not IN unless ``inplace``."""
    if output.is_dir():
        raise OutputError(f"{output}: is a directory; give the path of the .onnx file to write")
    if not output.parent.is_dir():
        raise OutputError(f"{output}: the folder {output.parent} does not exist")
    if isinstance(source, onnx.ModelProto) or inplace:
        return
    same = output.exists() and Path(source).exists() and os.path.samefile(source, output)
    if same or output.resolve() == Path(source).resolve():
        raise OutputError(f"{output}: OUT is the input model; pass --inplace (inplace=True) to overwrite it")
    _check_output_keeps_input_data(Path(source), output)


def external_data_path(output: Path) -> Path:
    """Where the weights of OUT go when it is saved with external data."""
    return output.with_name(output.name + ".data")


def _check_output_keeps_input_data(source: Path, output: Path) -> None:
    """Refuse an OUT (or its ``.data`` file) that would replace an external-data file of IN.

    Only a file that exists can be one, and IN is parsed again only then: an OUT ``.onnx`` from an
    earlier run is not a data file of IN, so re-running a conversion costs nothing here."""
    at_risk = [p for p in (output, external_data_path(output))
               if p.is_file() and (p != output or p.suffix != ".onnx")]
    if not at_risk or not source.is_file():
        return
    try:
        model = onnx.load(str(source), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable IN is reported, with its reason, by the load
        return
    inputs_data = check_external_data(model, source)
    for path in at_risk:
        stat = path.stat()
        if (stat.st_dev, stat.st_ino) in inputs_data:
            raise OutputError(f"{output}: writing it would replace {path}, which holds the input model's "
                              "weights; choose another OUT")
