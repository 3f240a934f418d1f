"""The proof's memory: which sessions it holds at once, how it hands models to ONNX Runtime, and
what the report says (structure only; the figures are measured by ``make bench``, P8)."""
from __future__ import annotations

import importlib
import weakref
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
from graphs import conv_flatten_gemm

from onnx_fc2conv import convert

verify_module = importlib.import_module("onnx_fc2conv.verify")  # the package's ``verify`` is the function


class SessionLog:
    """Every InferenceSession the proof builds: what it was given (a path, or "bytes"), its options,
    and the sources of the sessions alive when it was built; the size of each model given as bytes."""

    def __init__(self, monkeypatch):
        self.built: list[tuple[str, list[str], ort.SessionOptions]] = []
        self.alive: dict[int, str] = {}
        self.byte_sizes: list[int] = []
        real, log = ort.InferenceSession, self

        class CountedSession(real):
            def __init__(self, source, options=None, **kwargs):
                name = source if isinstance(source, str) else "bytes"
                if name == "bytes":
                    log.byte_sizes.append(len(source))
                log.built.append((name, sorted(log.alive.values()), options))
                super().__init__(source, options, **kwargs)
                log.alive[id(self)] = name
                weakref.finalize(self, log.alive.pop, id(self), None)

        monkeypatch.setattr(ort, "InferenceSession", CountedSession)


# Large for these tests' models given by path: below their weights, above the bytes they hold inline (a
# model read from a file with that much inline would be spilled to a temporary one).
SMALL_LARGE = 30_000


def _external(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(conv_flatten_gemm(channels=8, spatial=(4, 4), features=64), str(path), save_as_external_data=True,
              location=path.name + ".data", size_threshold=0)
    return path


@pytest.mark.e2e
def test_the_original_session_is_released_before_the_converted_models_is_built(tmp_path, monkeypatch):
    log = SessionLog(monkeypatch)
    src, out = _external(tmp_path / "in" / "m.onnx"), tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    assert convert(src, out).report.verification.passed
    original = str(src)
    # OUT is proved as staged (in a folder beside it, by the name it will have), before it is installed
    staged = next(i for i, (name, _, _) in enumerate(log.built) if name not in (original, "bytes"))
    assert log.built[0][:2] == (original, [])
    assert Path(log.built[staged][0]).name == "m.onnx" and Path(log.built[staged][0]).parent.parent == out.parent
    assert log.built[staged][1] == []  # the original's outputs are kept, its session gone


@pytest.mark.e2e
def test_models_with_external_data_are_given_to_onnx_runtime_by_path(tmp_path, monkeypatch):
    log = SessionLog(monkeypatch)
    original = _external(tmp_path / "in" / "m.onnx")
    converted = tmp_path / "c" / "m.onnx"
    converted.parent.mkdir()
    convert(original, converted, verify=False)
    assert verify_module.verify(original, converted).passed
    given = [name for name, _, _ in log.built]
    assert given[:2] == [str(original), str(converted)]  # the original, then the converted model: no bytes


@pytest.mark.e2e
def test_a_large_model_is_proved_from_files_with_the_arena_off_and_the_report_says_so(tmp_path, monkeypatch):
    log = SessionLog(monkeypatch)
    monkeypatch.setattr(verify_module, "LARGE_MODEL_BYTES", 100)  # a small model (and its cuts) stand for large ones
    result = verify_module.verify(conv_flatten_gemm(channels=8, spatial=(4, 4), features=64),
                                  convert(conv_flatten_gemm(channels=8, spatial=(4, 4), features=64),
                                          verify=False).model)
    assert result.passed
    # in memory: written to a file with external data first, given by path; its cuts refer to that file
    assert [Path(name).parent.name for name, _, _ in log.built[:2]] == ["original", "converted"]
    weights = sum(t.ByteSize() for t in conv_flatten_gemm(channels=8, spatial=(4, 4), features=64).graph.initializer)
    assert log.byte_sizes and max(log.byte_sizes) < weights / 2
    assert all(options.enable_cpu_mem_arena is False for _, _, options in log.built)
    (note,) = [n for n in result.notes if n.startswith("memory:")]
    assert "the original (" in note and "the converted model (" in note
    assert "enable_cpu_mem_arena=False" in note and "released before the converted model's was built" in note


@pytest.mark.e2e
def test_a_small_model_runs_from_bytes_with_the_default_options_and_no_memory_note(monkeypatch):
    log = SessionLog(monkeypatch)
    m = conv_flatten_gemm(channels=8, spatial=(4, 4), features=64)
    result = verify_module.verify(m, convert(m, verify=False).model)
    assert result.passed and not [n for n in result.notes if n.startswith("memory:")]
    assert {name for name, _, _ in log.built} == {"bytes"}
    assert all(options.enable_cpu_mem_arena for _, _, options in log.built)


@pytest.mark.e2e
def test_a_large_model_runs_without_prepacking_at_the_default_optimization_level(tmp_path, monkeypatch):
    log = SessionLog(monkeypatch)
    monkeypatch.setattr(verify_module, "LARGE_MODEL_BYTES", SMALL_LARGE)
    original, converted = _external(tmp_path / "in" / "m.onnx"), tmp_path / "c" / "m.onnx"
    converted.parent.mkdir()
    convert(original, converted, verify=False)
    result = verify_module.verify(original, converted)
    assert result.passed
    (note,) = [n for n in result.notes if n.startswith("memory:")]
    assert "session.disable_prepacking=1" in note and "ORT_ENABLE_EXTENDED" not in note
    models = [options for name, _, options in log.built if name != "bytes"]  # the two models; not their small cuts
    assert len(models) >= 2 and all(o.get_session_config_entry("session.disable_prepacking") == "1" for o in models)
    assert {o.graph_optimization_level for o in models} == {ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


@pytest.mark.e2e
@pytest.mark.parametrize("dtype, level", [("float32", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
                                          ("float16", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)])
def test_a_large_decoder_is_proved_at_every_length_from_one_session_at_a_time_and_the_report_names_its_options(
        tmp_path, monkeypatch, dtype, level):
    from test_llama_decoder import TINY, bench_models

    log = SessionLog(monkeypatch)
    monkeypatch.setattr(verify_module, "LARGE_MODEL_BYTES", SMALL_LARGE)
    (tmp_path / "in").mkdir()
    src = bench_models().llama_decoder(tmp_path / "in" / "llama.onnx", dtype=dtype, **TINY)
    out = tmp_path / "out" / "llama.onnx"
    out.parent.mkdir()
    v = convert(src, out, token_layout="conv2d").report.verification
    assert v.passed and {c.check for c in v.checks} == {"original size", "sequence length 16", "sequence length 33"}
    # the original's outputs at the three lengths are kept from one session, released before the converted
    # model's is built: each model's session is built once, and never beside the other's
    assert [Path(name).name for name, _, _ in log.built] == ["llama.onnx", "llama.onnx"]
    assert log.built[0][0] == str(src) and all(alive == [] for _, alive, _ in log.built)
    assert {options.graph_optimization_level for _, _, options in log.built} == {level}
    assert {options.execution_order for _, _, options in log.built} == {
        ort.ExecutionOrder.PRIORITY_BASED if dtype == "float16" else ort.ExecutionOrder.DEFAULT}
    (note,) = [n for n in v.notes if n.startswith("memory:")]
    assert "session.disable_prepacking=1" in note
    assert ("ORT_ENABLE_EXTENDED" in note and "PRIORITY_BASED" in note) == (dtype == "float16")
    assert "the other sequence lengths" in note


@pytest.mark.e2e
def test_a_file_with_external_data_and_large_inline_weights_is_spilled_with_both(tmp_path, monkeypatch):
    """It failed: the spill wrote the graph without the bytes its external tensors refer to
    ("should be stored in model.onnx.data, but it is not regular file")."""
    model = conv_flatten_gemm(channels=8, spatial=(4, 4), features=64)
    src = tmp_path / "in" / "m.onnx"
    src.parent.mkdir()
    onnx.save(model.__deepcopy__(), str(src), save_as_external_data=True, location="m.onnx.data",
              size_threshold=1024)
    saved = onnx.load(str(src), load_external_data=False)
    inline = sum(len(t.raw_data) for t in saved.graph.initializer)
    assert 0 < inline and any(t.data_location == onnx.TensorProto.EXTERNAL for t in saved.graph.initializer)
    monkeypatch.setattr(verify_module, "LARGE_MODEL_BYTES", inline)  # its inline bytes alone are large
    log = SessionLog(monkeypatch)
    result = verify_module.verify(src, convert(model, verify=False).model)
    assert result.passed, result.render_text(verbose=True)
    assert Path(log.built[0][0]).parent.name == "original"  # spilled, and run from the spill
