"""Reading and writing models: clear errors for bad input, and output that is never half-written."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import InvalidModelError, OutputError
from .safety import check_external_data

PathLike = str | os.PathLike


def load_model(source: PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """A private copy of ``source``: the caller's model or file is never changed."""
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        return model
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
        raise InvalidModelError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from None
    except OSError as exc:
        raise InvalidModelError(f"{path}: cannot read ({exc.strerror or _first_line(exc)})") from None
    if not model.HasField("graph") or not model.opset_import:
        raise InvalidModelError(f"{path}: not an ONNX model (no graph or no opset)")
    check_external_data(model, path)  # every location, before any external byte is read
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (onnx.checker.ValidationError, ValueError, OSError) as exc:
        raise InvalidModelError(f"{path}: cannot read its external data ({_first_line(exc)})") from None
    return model


def save_model(model: onnx.ModelProto, path: PathLike) -> None:
    """Write ``model`` to ``path`` atomically: a temp file in the same folder, then a rename, so a
    failure leaves neither a partial OUT nor a temp file behind."""
    path = Path(path)
    if not path.parent.exists():
        raise OutputError(f"{path}: the folder {path.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write in {path.parent} ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"{path}: cannot write ({exc.strerror or _first_line(exc)})") from None
        raise


def _file_mode(path: Path) -> int:
    """The mode OUT keeps when replaced, else what a plain open() would give (mkstemp makes 0600)."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
