"""Weights left in IN's external-data files: read only when small, written to OUT.data in chunks.

A model with external data that is converted to a file is read without its large weights
(:func:`onnx_fc2conv.modelio.read_streamed`): their initializers keep their references into IN's
files. A Conv kernel that is its weight with new dims keeps that reference (the rule changes the
dims). A kernel that needs its weight rearranged or scaled gets a placeholder initializer (the
kernel's name, dims and type, no data) and a :class:`KernelRecipe` in :class:`ExternalWeights`.
When OUT is written, :class:`DataFile` copies each reference's bytes from IN's file into OUT.data
(``os.copy_file_range``, at most ``CHUNK_BYTES`` a call) and writes each recipe's kernel a block of
output channels at a time from a memory map of IN's file (on two threads: one writes a block while
the next is made), so the memory this takes is a few chunks, not a tensor, and no weight passes
through protobuf.

Weight maths of a block. The kernel ``[F, C, *S]`` is, row by row, ``W'[f] = W[:, f]`` for a weight
stored ``[K, F]`` (MatMul) or ``W[f]`` for ``[F, K]`` (Gemm transB=1), rearranged by
:func:`kernel_rows` when the layer flattened a transposed map, times Gemm's ``alpha``. Row ``f``
depends on column (or row) ``f`` of the weight only, so the rows ``f0:f1`` are computed from the
slice ``W[:, f0:f1]`` (or ``W[f0:f1]``) alone and written at their place, one block after another.
"""
from __future__ import annotations

import errno
import math
import os
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_tensor

from .safety import itemsize, tensor_bytes

# Bytes of weight one step of a streamed copy or transpose holds (the memory it needs, three times
# over for kernel rows made in blocks: the block being written, the next one being made and the band
# of IN's file mapped to read it).
CHUNK_BYTES = 64 << 20
# Rows of a weight stored [K,F] that one step of a transpose reads (see _transpose_into).
TRANSPOSE_ROWS = 128
# Kernels rearranged chunk by chunk: the float types numpy computes with (Conv takes these; others
# are read whole, as a rule's build reads any constant).
STREAMED_KERNEL_TYPES: dict[int, type] = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
                         onnx.TensorProto.DOUBLE: np.float64}
# copy_file_range fails with these where a file system or kernel cannot copy between the two files.
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM}


@dataclass
class KernelRecipe:
    """How a Conv kernel is made from a weight that stays in IN's file (see the module's maths)."""

    source: onnx.TensorProto  # the weight: dims, type and its reference into IN's data
    weight_is_k_by_f: bool
    conv_shape: tuple[int, ...]
    flatten_perm: tuple[int, ...] | None = None
    alpha: float = 1.0


class ExternalWeights:
    """The folder of IN's external data, and the kernels to make from it when OUT is written."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.recipes: dict[str, KernelRecipe] = {}  # placeholder initializer name -> its kernel

    def kernel(self, name: str, recipe: KernelRecipe) -> onnx.TensorProto:
        """The placeholder initializer of kernel ``name``: dims and type, no data (anything that
        read it as a tensor would fail, rather than see the weight's bytes in the wrong order)."""
        self.recipes[name] = recipe
        return _placeholder(name, recipe.source.data_type, recipe.conv_shape)

    def streams(self, tensor: onnx.TensorProto, weight_is_k_by_f: bool, alpha: float) -> bool:
        """Whether a kernel made from ``tensor`` is made at write time (it stays in IN's file and
        its type is one numpy computes with), rather than read whole now."""
        return onnx.external_data_helper.uses_external_data(tensor) and (
            tensor.data_type in STREAMED_KERNEL_TYPES or (not weight_is_k_by_f and alpha == 1.0))


def _placeholder(name: str, data_type: int, dims: tuple[int, ...]) -> onnx.TensorProto:
    tensor = onnx.TensorProto(name=name, data_type=data_type)
    tensor.dims.extend(dims)
    return tensor


def read_external(tensor: onnx.TensorProto, folder: Path) -> onnx.TensorProto:
    """A copy of ``tensor`` with its external data read from ``folder`` (the one place the tool reads
    a weight's bytes into memory; the model keeps its reference). Locations were checked when the
    model was read, and onnx's reader checks them again."""
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    load_external_data_for_tensor(copy, str(folder))
    return copy


def kernel_rows(rows: np.ndarray, conv_shape: tuple[int, ...], flatten_perm: tuple[int, ...] | None) -> np.ndarray:
    """Rows ``[b, K]`` of the weight in output-channel order as rows of the conv kernel ``[b, C*prod(S)]``.

    With ``flatten_perm`` each row is in the order of ``Transpose(x, perm)`` (e.g. H,W,C for
    ``perm=[0,2,3,1]``): axis ``j`` of a row is axis ``perm[j]`` of ``x``, so the row is reshaped to
    ``x.shape[perm[1:]]`` and transposed back to x's axis order."""
    if flatten_perm is None:
        return np.ascontiguousarray(rows)
    perm = list(flatten_perm)
    dims = (rows.shape[0], *(conv_shape[p] for p in perm[1:]))
    back = [0, *(perm.index(axis) for axis in range(1, len(perm)))]
    return np.ascontiguousarray(rows.reshape(dims).transpose(back)).reshape(rows.shape[0], -1)


class DataFile:
    """OUT's data file being written: each tensor at a ``alignment``-byte offset, by position (no
    buffering to keep in step with the copies made by the kernel)."""

    def __init__(self, fd: int, alignment: int):
        self.fd = fd
        self.alignment = alignment
        self.size = 0

    def start_tensor(self) -> int:
        """The offset of the next tensor."""
        self.size += -self.size % self.alignment
        return self.size

    def write(self, data: bytes | np.ndarray) -> None:
        view = memoryview(data.reshape(-1).view(np.uint8).data if isinstance(data, np.ndarray) else data).cast("B")
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:done + CHUNK_BYTES], self.size + done)
        self.size += done

    def copy(self, source: Path, offset: int, length: int) -> None:
        """``length`` bytes of ``source`` from ``offset``, copied by the kernel where it can."""
        with open_source(source) as src:
            done = 0
            while done < length:
                count = min(CHUNK_BYTES, length - done)
                copied = self._copy_range(src.fileno(), count, offset + done)
                if copied == 0:
                    copied = self._read_and_write(src.fileno(), count, offset + done)
                if copied == 0:
                    raise OSError(errno.EIO, f"{source} ended before the {length} bytes of a tensor")
                done += copied
                self.size += copied

    def copy_tensor(self, tensor: onnx.TensorProto, folder: Path) -> None:
        """The bytes of ``tensor``'s external data in ``folder``: its length, or where it has none what
        its dims and type need (the reader checked that the file holds exactly that from the offset)."""
        info = ExternalDataInfo(tensor)
        length = info.length if info.length is not None else tensor_bytes(tensor) or 0
        self.copy(folder / info.location, info.offset or 0, length)

    def _copy_range(self, src: int, count: int, offset: int) -> int:
        try:
            return os.copy_file_range(src, self.fd, count, offset, self.size)
        except OSError as exc:
            if exc.errno not in _NO_COPY_RANGE:
                raise
            return 0

    def _read_and_write(self, src: int, count: int, offset: int) -> int:
        chunk = os.pread(src, count, offset)
        done = 0
        while done < len(chunk):
            done += os.pwrite(self.fd, chunk[done:], self.size + done)
        return done

    def write_kernel(self, recipe: KernelRecipe, folder: Path) -> int:
        """Write the kernel of ``recipe`` a block of output channels at a time; its byte length. A
        block is written on a helper thread while the next one is made, and a transpose runs on
        both threads (numpy's copies and ``pwrite`` release the GIL): two blocks at most in memory."""
        source = recipe.source
        info = ExternalDataInfo(source)
        start = self.size
        if not recipe.weight_is_k_by_f and recipe.flatten_perm is None and recipe.alpha == 1.0:
            self.copy_tensor(source, folder)
            return self.size - start  # the same bytes: a copy
        dtype = np.dtype(STREAMED_KERNEL_TYPES.get(source.data_type) or f"V{itemsize(source.data_type)}")
        stored = (folder / info.location, dtype, info.offset or 0, tuple(source.dims))
        out_f, k = recipe.conv_shape[0], math.prod(recipe.conv_shape[1:])
        block = max(1, CHUNK_BYTES // max(k * dtype.itemsize, 1))
        # Blocks are made in two buffers in turn, one written while the other is filled: the
        # kernel zeroes their pages once, not once a block.
        buffers = [np.empty(min(block, out_f) * k, dtype) for _ in range(2)]
        with ThreadPoolExecutor(2) as helpers:
            written: Future | None = None
            for n, f0 in enumerate(range(0, out_f, block)):
                f1 = min(out_f, f0 + block)
                rows = buffers[n % 2][:(f1 - f0) * k].reshape(f1 - f0, k)
                if recipe.weight_is_k_by_f:  # columns f0:f1, transposed
                    _read_block(*stored, slice(0, k), slice(f0, f1), rows, transpose_with=helpers)
                else:
                    _read_block(*stored, slice(f0, f1), slice(0, k), rows)
                rows = kernel_rows(rows, recipe.conv_shape, recipe.flatten_perm)
                if recipe.alpha != 1.0:
                    rows = (rows * recipe.alpha).astype(dtype)
                if written is not None:
                    written.result()  # blocks are written in order, one at a time
                written = helpers.submit(self.write, rows)
                del rows
            if written is not None:
                written.result()
        return self.size - start


def _read_block(path: Path, dtype: np.dtype, offset: int, shape: tuple[int, ...], rows: slice,
                cols: slice, into: np.ndarray, transpose_with: Executor | None = None) -> None:
    """Fill ``into`` with ``array[rows, cols]`` of the 2-D ``array`` stored at ``offset`` in ``path``
    or, with ``transpose_with``, with its transpose (made on this thread and that executor's), read
    through a memory map of one band of rows at a time. A map is dropped after its band: the pages
    it touched (the kernel maps whole runs of them around each one read) leave the process with it,
    so the memory this takes stays the block and a band, however large the tensor."""
    width = shape[1]
    band = max(1, CHUNK_BYTES // (width * dtype.itemsize))
    with open_source(path) as source:
        for r0 in range(rows.start, rows.stop, band):
            r1 = min(rows.stop, r0 + band)
            mapped = np.memmap(source, dtype, "r", offset=offset + r0 * width * dtype.itemsize, shape=(r1 - r0, width))
            if transpose_with is None:
                into[r0 - rows.start:r1 - rows.start] = mapped[:, cols]
            else:  # half the band's rows on the executor's thread
                out, band_rows, half = into[:, r0 - rows.start:r1 - rows.start], mapped[:, cols], -(-(r1 - r0) // 2)
                second = transpose_with.submit(_transpose_into, out[:, half:], band_rows[half:])
                _transpose_into(out[:, :half], band_rows[:half])
                second.result()
            del mapped


def _transpose_into(out: np.ndarray, source: np.ndarray) -> None:
    """``out[...] = source.T`` for a ``source`` in a memory map, ``TRANSPOSE_ROWS`` rows at a time:
    each step copies its rows out of the map in file order into a buffer small enough to stay in
    cache, then writes them transposed. numpy's copy of the whole transposed view walks the map down
    its columns, a cache miss per element: 2.5-3x slower on VGG16's FC kernels here."""
    for t0 in range(0, source.shape[0], TRANSPOSE_ROWS):
        rows = np.array(source[t0:t0 + TRANSPOSE_ROWS])
        out[:, t0:t0 + TRANSPOSE_ROWS] = rows.T


def open_source(path: Path) -> BinaryIO:
    """IN's data file, unbuffered, for reading; not through a symbolic link (the locations were
    checked when the model was read; a link put there since is refused, not followed)."""
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb", buffering=0)
