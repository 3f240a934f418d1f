"""Reading and writing models: clear errors for bad input, and output that is never half-written."""
from __future__ import annotations

import fcntl
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper
from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

from .errors import InvalidModelError, OutputError, first_line
from .graph import SKELETON_MAX_ELEMENTS
from .safety import check_external_data, external_data_path, itemsize
from .weights import DataFile, ExternalWeights, read_external

PathLike = str | os.PathLike

PROTOBUF_LIMIT = (1 << 31) - 1  # one serialized protobuf message, in bytes
GRAPH_HEADROOM = 64 << 20  # room left for the graph itself when deciding on external data
EXTERNAL_MIN_BYTES = 1024  # smaller tensors stay inside the .onnx file, as onnx.save does
DATA_ALIGNMENT = 4096  # external tensors start at page offsets, so a runtime can map them
TEMP_NAME_BYTES = 64  # of OUT's name, in its temp and lock file names (a name may have 255 bytes)


def load_model(source: PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """A private copy of ``source``: the caller's model or file is never changed."""
    return read_model(source)[0]


def read_model(source: PathLike | onnx.ModelProto, *,
               load_external_data: bool = True) -> tuple[onnx.ModelProto, bool]:
    """:func:`load_model`, and whether the file kept weights in external data.

    Without ``load_external_data`` the external tensors keep their (checked) references, for a
    reader that only needs the graph, or that lets ONNX Runtime read the data from the model's folder.
    """
    if isinstance(source, onnx.ModelProto):
        referenced = next((t for t in _get_all_tensors(source) if uses_external_data(t)), None)
        if referenced is not None:  # its files would be looked up in whatever the current folder is
            location = ExternalDataInfo(referenced).location
            raise InvalidModelError(f"the model's tensor {referenced.name!r} keeps its data in the external file "
                                    f"{location!r}, which a ModelProto cannot locate: pass the model's path, "
                                    "or load it with its data (onnx.load(path))")
        model = onnx.ModelProto()
        model.CopyFrom(source)
        return model, False
    path = Path(source)
    if not path.exists():
        raise InvalidModelError(f"{path}: no such file")
    if path.is_dir():
        raise InvalidModelError(f"{path}: is a directory, not an ONNX file")
    if path.stat().st_size == 0:
        raise InvalidModelError(f"{path}: the file is empty")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InvalidModelError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
    except OSError as exc:
        raise InvalidModelError(f"{path}: cannot read ({exc.strerror or first_line(exc)})") from None
    if not model.HasField("graph") or not model.opset_import:
        raise InvalidModelError(f"{path}: not an ONNX model (no graph or no opset)")
    check_external_data(model, path)  # every location, before any external byte is read
    external = any(uses_external_data(t) for t in _get_all_tensors(model))
    if external and load_external_data:
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except (onnx.checker.ValidationError, ValueError, OSError) as exc:
            raise InvalidModelError(f"{path}: cannot read its external data ({first_line(exc)})") from None
    return model, external


def read_streamed(source: PathLike) -> tuple[onnx.ModelProto, ExternalWeights | None]:
    """:func:`read_model` for a conversion written to a file: a model with external data is read
    without its large weights, whose top-level initializers keep their references (the returned
    :class:`ExternalWeights` knows the folder; :func:`save_model` copies them from there). Its
    other external tensors are read now: those small enough for shape inference to use their values
    (the ones the skeleton keeps), and those inside If/Loop/Scan bodies or Constant nodes. The
    weights are None when the model has no external data."""
    model, external = read_model(source, load_external_data=False)
    if not external:
        return model, None
    folder = Path(source).parent
    kept = {t.name for t in model.graph.initializer
            if uses_external_data(t) and math.prod(t.dims) > SKELETON_MAX_ELEMENTS}
    try:
        for tensor in _get_all_tensors(model):
            if uses_external_data(tensor) and tensor.name not in kept:
                tensor.CopyFrom(read_external(tensor, folder))
    except (onnx.checker.ValidationError, ValueError, OSError) as exc:
        raise InvalidModelError(f"{source}: cannot read its external data ({first_line(exc)})") from None
    return model, ExternalWeights(folder)


def save_model(model: onnx.ModelProto, path: PathLike, external_data: bool = False,
               weights: ExternalWeights | None = None) -> None:
    """Write ``model`` to ``path`` atomically: the files are written in a staging folder beside
    OUT, then renamed into place, so a failure leaves neither a partial OUT nor a temp file behind,
    and OUT with its data file is either the previous pair or the new one.

    With ``external_data``, with ``weights`` (the model still refers to IN's external data, see
    :func:`read_streamed`), or when the weights pass protobuf's 2 GB limit, tensors of 1 KB and more
    go to ``<OUT>.data`` beside OUT (one file, each tensor at a 4 KB-aligned offset) and OUT holds
    the graph; when no tensor is that large, no data file is written. ``model`` itself is not changed.
    """
    staged = stage_model(model, path, external_data, weights)
    try:
        staged.install()
    finally:
        staged.discard()


@dataclass
class StagedModel:
    """OUT written in its staging folder, its data file beside it under its final name (so the pair
    can be read and run as it will be installed), and the model as written (its large tensors
    referring to the data file). :meth:`install` puts it in place; :meth:`discard` removes what is
    left of the staging folder (call it either way)."""

    path: Path  # OUT as staged
    target: Path  # OUT
    model: onnx.ModelProto

    def install(self) -> None:
        data_path = external_data_path(self.target)
        staged_data = self.path.with_name(data_path.name)
        temps: list[str] = []
        try:
            with _lock_beside(self.target):
                _install(str(self.path), self.target, str(staged_data) if staged_data.exists() else None,
                         data_path, temps)
        except OSError as exc:
            raise OutputError(f"{self.target}: cannot write ({exc.strerror or first_line(exc)})") from None
        finally:
            for leftover in temps:
                Path(leftover).unlink(missing_ok=True)

    def discard(self) -> None:
        shutil.rmtree(self.path.parent, ignore_errors=True)


def stage_model(model: onnx.ModelProto, path: PathLike, external_data: bool = False,
                weights: ExternalWeights | None = None) -> StagedModel:
    """The first step of :func:`save_model`: OUT and its data file written in a new staging folder
    beside ``path`` (nothing of it is left when this raises)."""
    path = Path(path)
    if not path.parent.exists():
        raise OutputError(f"{path}: the folder {path.parent} does not exist")
    data_path = external_data_path(path)
    if data_path.is_dir():
        raise OutputError(f"{data_path}: is a directory; OUT's weights would be written there")
    staging = _staging_beside(path)
    try:
        return _write_staged(model, path, staging, external_data or weights is not None or needs_external_data(model),
                             weights)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_staged(model: onnx.ModelProto, path: Path, staging: Path, external: bool,
                  weights: ExternalWeights | None) -> StagedModel:
    """OUT (and its data file when ``external`` and some tensor goes there) in the staging folder."""
    model_tmp, data_tmp = staging / path.name, staging / external_data_path(path).name
    try:
        shell = model
        if external:
            fd = os.open(data_tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                data = DataFile(fd, DATA_ALIGNMENT)
                shell = _with_external_data(model, data, data_tmp.name, weights)
            finally:
                os.close(fd)
            if data.size == 0:  # every tensor stayed inline: no data file to install
                data_tmp.unlink()
        blob = shell.SerializeToString()
        with open(model_tmp, "wb") as f:
            f.write(blob)
        del blob
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or first_line(exc)})") from None
    return StagedModel(model_tmp, path, shell)


def _install(model_tmp: str, path: Path, data_tmp: str | None, data_path: Path, temps: list[str]) -> None:
    """Rename the written temp files into place: the data file first, so a new OUT never refers to
    a missing one; on any failure the previous OUT keeps the data file it refers to."""
    previous_data = None  # the old OUT.data, once it has really been moved aside
    data_installed = False
    try:
        if data_tmp is not None:
            os.chmod(data_tmp, _file_mode(data_path))
            if data_path.exists():
                aside = _temp_beside(data_path, temps)
                os.replace(data_path, aside)
                previous_data = aside
            os.replace(data_tmp, data_path)
            data_installed = True
        os.chmod(model_tmp, _file_mode(path))
        os.replace(model_tmp, path)
    except BaseException:
        if data_installed:
            data_path.unlink(missing_ok=True)
        if previous_data is not None:
            os.replace(previous_data, data_path)
        raise


@contextmanager
def _lock_beside(path: Path) -> Iterator[None]:
    """Hold an advisory lock on a lock file beside ``path`` (flock), so two writers of one OUT
    install their pairs one after the other instead of interleaving their renames.

    The holder removes the lock file before it lets go, so none is left behind; a writer that was
    waiting on the removed file then holds a lock nobody else sees, so it checks and tries again."""
    lock_path = path.with_name(f".{_name_start(path)}.lock")
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _is_open_file(fd, lock_path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(fd)


def _is_open_file(fd: int, path: Path) -> bool:
    """Whether ``path`` is still the file open as ``fd``."""
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file beside it and a rename: a failure keeps the
    previous file and leaves no temp file. Raises OSError (the temp file: :class:`OutputError`)."""
    temps: list[str] = []
    try:
        tmp = _temp_beside(path, temps)
        Path(tmp).write_text(text)
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    finally:
        for leftover in temps:
            Path(leftover).unlink(missing_ok=True)


def payload_bytes(model: onnx.ModelProto, in_memory: bool = False) -> int:
    """The bytes of the model's initializers (with ``in_memory``, of those whose data is in the
    proto, not in external data), from their dims (no data is touched)."""
    total = 0
    for init in model.graph.initializer:
        if in_memory and uses_external_data(init):
            continue
        if init.data_type == onnx.TensorProto.STRING:
            total += sum(len(s) for s in init.string_data)
        else:
            total += math.prod(init.dims) * itemsize(init.data_type)
    return total


def needs_external_data(model: onnx.ModelProto) -> bool:
    """Whether the model cannot be one protobuf: its weights (plus headroom for the graph) pass 2 GB."""
    return payload_bytes(model) > PROTOBUF_LIMIT - GRAPH_HEADROOM


def _with_external_data(model: onnx.ModelProto, data: DataFile, location: str,
                        weights: ExternalWeights | None) -> onnx.ModelProto:
    """A copy of ``model`` whose large initializers point into ``data`` (written here), without
    copying their payload: everything but the initializers is copied, then each initializer is
    either copied (small) or replaced by a reference. An initializer that still refers to IN's
    external data is copied file to file, and a kernel with a recipe in ``weights`` is made from
    IN's file block by block (see :mod:`onnx_fc2conv.weights`): neither is held in memory."""
    shell = onnx.ModelProto()
    _copy_fields(model, shell, skip="graph")
    _copy_fields(model.graph, shell.graph, skip="initializer")
    for init in model.graph.initializer:
        recipe = weights.recipes.get(init.name) if weights is not None else None
        in_source = uses_external_data(init)
        size = math.prod(init.dims) * itemsize(init.data_type)
        if recipe is None and not in_source and (init.data_type == onnx.TensorProto.STRING
                                                 or size < EXTERNAL_MIN_BYTES):
            shell.graph.initializer.append(init)
            continue
        offset = data.start_tensor()
        if recipe is not None and weights is not None:
            data.write_kernel(recipe, weights.folder)
        elif in_source and weights is not None:
            data.copy_tensor(init, weights.folder)
        else:
            payload = init.raw_data if init.HasField("raw_data") else numpy_helper.to_array(init).tobytes()
            data.write(payload)
            del payload
        ref = shell.graph.initializer.add(name=init.name, data_type=init.data_type, dims=init.dims,
                                          doc_string=init.doc_string)
        ref.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(data.size - offset))):
            ref.external_data.add(key=key, value=value)
    return shell


def _copy_fields(source, target, skip: str) -> None:
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if hasattr(value, "extend"):  # a repeated field
            getattr(target, field.name).extend(value)
        elif hasattr(value, "CopyFrom"):  # a message
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _staging_beside(path: Path) -> Path:
    """A new folder in ``path``'s folder for the files of one write (the final renames stay on one
    filesystem), named like a temp file of ``path``."""
    try:
        return Path(tempfile.mkdtemp(prefix=f".{_name_start(path)}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise OutputError(f"{path}: cannot write in {path.parent} ({exc.strerror})") from None


def _temp_beside(path: Path, temps: list[str]) -> str:
    """A new temp file in ``path``'s folder (so the final rename stays on one filesystem), named after
    the start of ``path``'s name: an OUT near the file-name limit still gets a temp name that fits."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{_name_start(path)}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write in {path.parent} ({exc.strerror})") from None
    os.close(fd)
    temps.append(tmp)
    return tmp


def _name_start(path: Path) -> str:
    """The first ``TEMP_NAME_BYTES`` bytes of ``path``'s name, cut at a whole character."""
    return path.name.encode()[:TEMP_NAME_BYTES].decode(errors="ignore")


def _file_mode(path: Path) -> int:
    """The mode OUT keeps when replaced, else what a plain open() would give (mkstemp makes 0600)."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
