"""External-data models written to a file are never loaded whole: kernels that are their weight with
new dims are copied file to file, the ones that need a transpose are made block by block, the
weights the rewrite does not touch are copied too, and inspect and the planning read only the small
constants they fold (see onnx_fc2conv/weights.py)."""
from __future__ import annotations

import errno
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import conv_flatten_gemm, init, model, vi
from onnx import TensorProto, helper, numpy_helper

from onnx_fc2conv import convert, index, inspect, modelio, weights
from onnx_fc2conv.graph import SKELETON_MAX_ELEMENTS
from onnx_fc2conv.rules._dense import kernel_layout
from onnx_fc2conv.weights import DataFile, KernelRecipe

SMALL_CHUNK = 4000  # bytes: several blocks per kernel below, the last one ragged


def save_external(m: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(path), save_as_external_data=True, location=path.name + ".weights", size_threshold=0)
    return path


def arrays(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def external_names(path: Path) -> set[str]:
    written = onnx.load(str(path), load_external_data=False)
    return {t.name for t in written.graph.initializer if t.data_location == TensorProto.EXTERNAL}


def nhwc_head(np_dtype=np.float32, elem=TensorProto.FLOAT, c=13, h=5, w=7, f=67) -> onnx.ModelProto:
    """x [N,c,h,w] -> Transpose to NHWC -> Flatten -> MatMul W [h*w*c, f] -> Add: the kernel needs
    the weight transposed and its rows reordered from H,W,C to C,H,W."""
    rng = np.random.default_rng(3)
    k = c * h * w
    nodes = [helper.make_node("Relu", ["x"], ["fmap"], name="relu"),
             helper.make_node("Transpose", ["fmap"], ["nhwc"], name="to_nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("Flatten", ["nhwc"], ["flat"], name="flatten", axis=1),
             helper.make_node("MatMul", ["flat", "fc.w"], ["mm"], name="fc"),
             helper.make_node("Add", ["mm", "fc.b"], ["y"], name="fc_add")]
    inits = [init("fc.w", rng.standard_normal((k, f)).astype(np_dtype)),
             init("fc.b", rng.standard_normal(f).astype(np_dtype))]
    return model(nodes, [vi("x", ["N", c, h, w], elem)], [vi("y", None, 0)], inits)


CASES = {
    "Gemm [F,K]: the kernel is the weight with new dims": lambda: conv_flatten_gemm(
        channels=16, spatial=(6, 6), features=67),
    "Gemm [K,F]: transposed": lambda: conv_flatten_gemm(channels=16, spatial=(6, 6), features=67, trans_b=0),
    "Gemm [F,K] with alpha: scaled": lambda: conv_flatten_gemm(channels=16, spatial=(6, 6), features=67, alpha=0.5),
    "MatMul after an NHWC flatten, float32": lambda: nhwc_head(),
    "MatMul after an NHWC flatten, float16": lambda: nhwc_head(np.float16, TensorProto.FLOAT16),
}


@pytest.mark.parametrize("case", CASES)
def test_streamed_output_has_the_tensors_of_the_in_memory_conversion(tmp_path, monkeypatch, case):
    monkeypatch.setattr(weights, "CHUNK_BYTES", SMALL_CHUNK)
    src = save_external(CASES[case](), tmp_path / "in" / "model.onnx")
    reference = convert(onnx.load(str(src)), verify=False)  # the whole model in memory
    out = tmp_path / "out.onnx"
    result = convert(src, out, verify=False)
    assert [n.op_type for n in result.model.graph.node] == [n.op_type for n in reference.model.graph.node]
    expected, written = arrays(reference.model), arrays(onnx.load(str(out)))
    assert written.keys() == expected.keys()
    for name, value in expected.items():
        assert written[name].dtype == value.dtype and np.array_equal(written[name], value), name
    big = {name for name, value in expected.items() if value.size > SKELETON_MAX_ELEMENTS}
    assert len(big) == 1 and big <= external_names(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out.onnx", "out.onnx.data"]  # no staging left


def test_inplace_streamed_conversion_replaces_the_pair_it_reads_from(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "CHUNK_BYTES", SMALL_CHUNK)
    src = tmp_path / "model.onnx"
    onnx.save(conv_flatten_gemm(channels=16, spatial=(6, 6), features=67, trans_b=0), str(src), save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    expected = arrays(convert(onnx.load(str(src)), verify=False).model)
    convert(src, src, inplace=True, verify=False)  # reads model.onnx.data while it writes the new one
    written = arrays(onnx.load(str(src)))
    assert written.keys() == expected.keys() and all(np.array_equal(written[n], v) for n, v in expected.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]


def test_weights_the_rewrite_does_not_touch_are_copied_as_they_are(tmp_path):
    original = conv_flatten_gemm(channels=16, spatial=(6, 6), features=67)
    src = save_external(conv_flatten_gemm(channels=16, spatial=(6, 6), features=67), tmp_path / "in" / "model.onnx")
    result = convert(src, tmp_path / "out.onnx", exclude=("fc",), verify=False)  # nothing converts
    assert [n.op_type for n in result.model.graph.node][-1] == "Gemm"
    written, expected = arrays(onnx.load(str(tmp_path / "out.onnx"))), arrays(original)
    assert written.keys() == expected.keys() and all(np.array_equal(written[n], v) for n, v in expected.items())
    assert "fc.w" in external_names(tmp_path / "out.onnx")


def test_a_failed_install_of_a_streamed_model_leaves_the_previous_pair(tmp_path, replace_fails):
    from onnx_fc2conv.errors import OutputError

    src = save_external(CASES["Gemm [K,F]: transposed"](), tmp_path / "in" / "model.onnx")
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")
    (tmp_path / "out.onnx.data").write_bytes(b"previous data")
    replace_fails(lambda src, dst: dst.endswith("out.onnx"))  # the data file is in place, OUT fails
    with pytest.raises(OutputError, match="No space left on device"):
        convert(src, out, verify=False)
    assert out.read_bytes() == b"previous" and (tmp_path / "out.onnx.data").read_bytes() == b"previous data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out.onnx", "out.onnx.data"]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("k_by_f, conv_shape, perm, alpha", [
    (True, (37, 5, 3, 7), None, 1.0),  # MatMul [K,F]: a plain transpose, odd sizes
    (False, (37, 5, 3, 7), (0, 2, 3, 1), 1.0),  # [F,K] rows in H,W,C order
    (True, (37, 5, 3, 7), (0, 2, 3, 1), 1.0),  # both
    (True, (29, 11, 1, 1), None, -0.75),  # transposed and scaled
    (False, (29, 11, 1, 1), None, 1.0),  # the same bytes: a copy
])
@pytest.mark.parametrize("chunk_bytes, transpose_rows", [
    (700, 3),  # 2-12 rows a block: many blocks, a ragged last one; ragged transpose steps in each band
    (97, 1),  # a row a block and a band, a row a step
    (1 << 20, 128),  # the kernel in one block, one band, one step
])
def test_chunked_kernel_equals_the_numpy_kernel_exactly(tmp_path, monkeypatch, dtype, k_by_f, conv_shape, perm,
                                                        alpha, chunk_bytes, transpose_rows):
    monkeypatch.setattr(weights, "CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(weights, "TRANSPOSE_ROWS", transpose_rows)
    f, k = conv_shape[0], math.prod(conv_shape[1:])
    stored = np.random.default_rng(0).standard_normal((k, f) if k_by_f else (f, k)).astype(dtype)
    source = weight_file(tmp_path, stored, lead=13)
    kernel = kernel_layout(stored, k_by_f, conv_shape, perm)
    kernel = (kernel * alpha).astype(dtype) if alpha != 1.0 else kernel
    written = write_one(tmp_path, lambda data: data.write_kernel(KernelRecipe(source, k_by_f, conv_shape, perm, alpha),
                                                                 tmp_path))
    assert written == kernel.tobytes()


@pytest.mark.parametrize("copy_range", ["kernel copy", "read and write"])
def test_streamed_copy_gives_the_same_bytes_in_chunks(tmp_path, monkeypatch, copy_range):
    monkeypatch.setattr(weights, "CHUNK_BYTES", 1000)
    if copy_range == "read and write":  # a file system without copy_file_range
        monkeypatch.setattr(os, "copy_file_range", lambda *a: (_ for _ in ()).throw(OSError(18, "EXDEV")))
    payload = np.random.default_rng(1).standard_normal(2501).astype(np.float32)
    weight_file(tmp_path, payload, lead=7)
    written = write_one(tmp_path, lambda data: data.copy(tmp_path / "w.bin", 7, payload.nbytes))
    assert written == payload.tobytes()


def test_a_data_file_swapped_for_a_link_after_the_checks_is_not_followed(tmp_path):
    payload = np.arange(3000, dtype=np.float32).reshape(1, 3000)  # a MatMul weight [K=1, F=3000]
    source = weight_file(tmp_path, payload, lead=0)
    (tmp_path / "w.bin").rename(tmp_path / "elsewhere.bin")
    (tmp_path / "w.bin").symlink_to(tmp_path / "elsewhere.bin")
    recipe = KernelRecipe(source, True, (3000, 1, 1, 1))
    for write in (lambda data: data.copy(tmp_path / "w.bin", 0, payload.nbytes),
                  lambda data: data.write_kernel(recipe, tmp_path)):
        with pytest.raises(OSError) as refused:
            write_one(tmp_path, write)
        assert refused.value.errno == errno.ELOOP


@pytest.mark.e2e
def test_the_cli_without_verification_writes_out_and_never_imports_onnx_runtime(tmp_path):
    src = save_external(CASES["Gemm [K,F]: transposed"](), tmp_path / "in" / "model.onnx")
    out = tmp_path / "out.onnx"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "onnx_fc2conv", str(src), str(out),
                           "--no-verify", "-q"], capture_output=True, text=True)
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert proc.returncode == 0 and out.exists() and (tmp_path / "out.onnx.data").exists()
    assert {"onnx", "onnx_fc2conv.cli", "onnx_fc2conv.weights"} <= imported
    assert not {name for name in imported if name.split(".")[0] == "onnxruntime"}


def weight_file(folder: Path, array: np.ndarray, lead: int) -> onnx.TensorProto:
    """``array`` written to folder/w.bin after ``lead`` bytes, and a tensor referring to it."""
    (folder / "w.bin").write_bytes(b"x" * lead + array.tobytes())
    tensor = onnx.TensorProto(name="w", data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", str(lead)), ("length", str(array.nbytes))):
        tensor.external_data.add(key=key, value=value)
    return tensor


def write_one(folder: Path, write) -> bytes:
    """What ``write(DataFile)`` puts in a new data file (after one aligned, earlier byte)."""
    fd = os.open(folder / "out.data", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        data = DataFile(fd, 64)
        data.write(b"!")
        start = data.start_tensor()
        write(data)
    finally:
        os.close(fd)
    return (folder / "out.data").read_bytes()[start:]


# ---- what is read ----------------------------------------------------------------------------

@pytest.fixture
def reads(monkeypatch):
    """The tensors whose external bytes are read into memory (name -> elements), and onnx's
    whole-model reader made to fail the test."""
    seen: dict[str, int] = {}
    real = weights.read_external

    def spy(tensor, folder):
        seen[tensor.name] = math.prod(tensor.dims)
        return real(tensor, folder)

    for module in (index, modelio):
        monkeypatch.setattr(module, "read_external", spy)
    monkeypatch.setattr(onnx, "load_external_data_for_model", lambda *a: pytest.fail("the whole model was loaded"))
    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_model",
                        lambda *a: pytest.fail("the whole model was loaded"))
    return seen


@pytest.mark.parametrize("trans_b", [1, 0])
def test_inspect_reads_no_weight_bytes_but_the_small_constants(tmp_path, reads, trans_b):
    src = save_external(conv_flatten_gemm(channels=16, spatial=(6, 6), features=67, trans_b=trans_b),
                        tmp_path / "model.onnx")
    found = inspect(src)
    assert [(n.node, n.status) for n in found.nodes] == [("fc", "converts")]
    assert reads == {"fc.b": 67}  # the bias a rule folds; fc.w (38592 values) and the conv are never read


@pytest.mark.parametrize("trans_b", [1, 0])
def test_conversion_to_a_file_reads_only_the_small_constants(tmp_path, reads, trans_b):
    src = save_external(conv_flatten_gemm(channels=16, spatial=(6, 6), features=67, trans_b=trans_b),
                        tmp_path / "model.onnx")
    result = convert(src, tmp_path / "out.onnx", verify=False)
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "Relu", "Conv"]
    assert "fc.w" not in reads and max(reads.values()) <= SKELETON_MAX_ELEMENTS
    assert set(reads) == {"conv.w", "conv.b", "fc.b"}  # small enough for shape inference to see


# ---- proved as written -----------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("case", ["Gemm [K,F]: transposed", "MatMul after an NHWC flatten, float32"])
def test_streamed_external_data_model_is_proved_from_the_written_files(tmp_path, monkeypatch, case):
    monkeypatch.setattr(weights, "CHUNK_BYTES", SMALL_CHUNK)
    src = save_external(CASES[case](), tmp_path / "in" / "model.onnx")
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    result = convert(src, out)
    assert result.report.verification.passed
    assert result.report.verification.checks[0].compared > 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    refs = [t for t in result.model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert refs and all({e.key: e.value for e in t.external_data}["location"] == "model.onnx.data" for t in refs)


@pytest.mark.e2e
def test_a_failed_proof_of_a_streamed_model_writes_nothing(tmp_path, monkeypatch):
    from onnx_fc2conv.errors import VerificationFailed

    src = save_external(CASES["Gemm [K,F]: transposed"](), tmp_path / "in" / "model.onnx")
    real = DataFile.write_kernel

    def wrong_kernel(self, recipe, folder):  # a transpose that forgot to transpose
        return real(self, KernelRecipe(recipe.source, False, recipe.conv_shape), folder)

    monkeypatch.setattr(DataFile, "write_kernel", wrong_kernel)
    with pytest.raises(VerificationFailed):
        convert(src, tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
