"""The proof: run the original and the converted model with ONNX Runtime and compare.

The checks:

* **Original size.** The same seeded inputs (batch 2 where the batch is free) go into both models on
  every requested runtime; every output must match within ``rtol``/``atol``, the atol raised where
  rounding alone may move an output further (the converted layers before it sum their products in
  another order: :mod:`onnx_fc2conv.rounding`). Each runtime besides
  ONNX Runtime's CPU provider (CUDA, OpenVINO) is also compared with the CPU outputs of the
  converted model ("cuda vs cpu", "openvino vs cpu"), and takes part in the checks below.
* **Sliding window** (fully convolutional models). The original model is cut at the tensor its head
  flattens (the feature map). On a larger input, the backbone gives a larger map; every sampled
  output position of the converted model (the corners, the centre and random ones) must equal the
  original head applied to the matching window of that map. This holds even when the backbone pads.
* **Input crops** (fully convolutional models with a backbone that does not pad). On the same larger
  inputs, every sampled cell whose crop of the original size lies inside the input must equal the
  original model run on that crop, where the conversion record's window geometry places it
  (:func:`~onnx_fc2conv.geometry.crop_box`): this proves the geometry the report gives.
* **Sequence lengths** (token layers converted). The token axis is dynamic, so both models also run
  at two other lengths (one shorter where possible, one longer) and every output must match.
"""
from __future__ import annotations

import itertools
import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx.external_data_helper import uses_external_data

from .errors import CouldNotVerify, UsageError, first_line
from .geometry import Geometry, cell_box, cells_within, crop_box
from .graph import attr, is_onnx_op, producers, set_shape, upstream
from .index import GraphIndex
from .inputs import input_specs, make_inputs
from .metadata import METADATA_KEY, ConversionRecord, read_record, record_mismatch
from .modelio import needs_external_data, payload_bytes, read_model, save_model
from .progress import LARGE_MODEL_BYTES, megabytes
from .report import CheckResult, VerificationResult
from .rounding import MANTISSA_BITS, Reordering, reorderings, rounding_atol, rounding_note
from .safety import check_seed, check_tolerances
from .spatial import reshapes_as_transposes
from .stride import coarse_model, crop_geometry
from .weights import ExternalWeights

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}  # ONNX Runtime's
RUNTIMES = (*PROVIDERS, "openvino")  # what ``providers`` (CLI: --provider) takes
UNAVAILABLE = {"cuda": "CUDAExecutionProvider not available (install onnxruntime-gpu and run on a GPU)",
               "openvino": "openvino not installed (pip install 'onnx-fc2conv[openvino]')"}
# OpenVINO's CPU plugin runs float32 models in bfloat16 on CPUs that have it, unless told: that moves
# outputs by 4e-3 to 1.7e-2 (measured on the original models too), which reads as a conversion error.
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
# ONNX Runtime's own test tolerances (onnxruntime/test/providers/checkers.cc), by element type.
TOLERANCES = {
    "float64": (1e-7, 1e-9),
    "float32": (1e-4, 1e-5),
    "float16": (1e-2, 2.5e-3),
}
BF16_TOLERANCE = (1e-2, 2e-2)
# A check whose converted model gave no values: its error is unbounded, not 0.
NOT_COMPARED = dict(max_abs_error=math.inf, max_rel_error=math.inf, needed_atol=math.inf)
# The float element types from the least precise to the most: a proof is held to the tolerance of
# the least precise one its outputs are computed in (see computation_precision).
PRECISIONS: dict[int, str] = {onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.FLOAT16: "float16",
                               onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64"}
NCHWC_BLOCK = 16  # the largest block ONNX Runtime's NCHWc transform pads a Conv's output channels to
PROTOBUF_TENSOR_LIMIT = 1 << 31  # bytes of one initializer ONNX Runtime embeds
FLOAT_TYPES = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.DOUBLE: 8}
RANDOM_POSITIONS = 6
MAX_CROP_CELLS = 24  # cells of a finer map compared against the original on crops, per size


def verify(original, converted, *, providers=("cpu",), rtol: float | None = None, atol: float | None = None,
           input_shapes: dict | None = None, input_data=None, seed: int = 0) -> VerificationResult:
    """Compare ``converted`` against ``original`` (paths or ModelProtos). Truthy when it passes.

    ``providers`` (of RUNTIMES) adds runtimes for the converted model to ONNX Runtime's CPU provider,
    the reference: ``"cuda"`` (ONNX Runtime's CUDA provider), ``"openvino"`` (OpenVINO's CPU plugin at
    f32); one that is not available is a line in ``skipped``.
    ``input_shapes`` (name -> dims, ``None`` for a free dim) and ``input_data`` (name -> array, or an
    ``.npz`` path) fix the inputs; the rest are synthesised (see :mod:`onnx_fc2conv.inputs`).
    Raises :class:`CouldNotVerify` when the original model itself fails on the inputs.
    """
    check_tolerances(rtol, atol)
    check_seed(seed)
    providers = runtimes(providers)
    with tempfile.TemporaryDirectory(prefix="onnx-fc2conv-verify-") as spill:
        original, original_folder, original_path = _graph_on_file(original, Path(spill) / "original")
        converted, converted_folder, converted_path = _graph_on_file(converted, Path(spill) / "converted")
        return _verify(original, original_folder, original_path, converted, converted_folder, converted_path,
                       providers, rtol, atol, input_shapes, input_data, seed)


def _verify(original, original_folder, original_path, converted, converted_folder, converted_path, providers, rtol,
            atol, input_shapes, input_data, seed) -> VerificationResult:
    record = read_record(converted)
    if record is None or record.output_stride is None or record_mismatch(record, original, converted) is not None:
        return _prove(original, original_folder, original_path, converted, converted_folder, converted_path, providers,
                      rtol, atol, input_shapes, input_data, seed).result
    # A finer map: today's proof of the stride-S conversion it came from, then the finer map against
    # that conversion (phase 0) and against the original on crops.
    proof = _prove(original, original_folder, original_path, coarse_model(converted), converted_folder, None,
                   providers, rtol, atol, input_shapes, input_data, seed)
    result = proof.result
    _output_stride_checks(original, original_folder, proof, converted, converted_folder, converted_path, record,
                          providers, seed)
    result.passed = all(c.passed for c in result.checks) and any(c.compared for c in result.checks)
    return result


def runtimes(providers) -> tuple[str, ...]:
    """``providers`` (one name, or several, of RUNTIMES) as the runtimes to prove on, CPU first: it
    always runs, as the reference. UsageError for anything else (a string is one name, not letters)."""
    names = (providers,) if isinstance(providers, str) else providers
    if not isinstance(names, tuple | list) or not all(isinstance(n, str) and n in RUNTIMES for n in names):
        raise UsageError(f"providers {providers!r}: give names among {', '.join(RUNTIMES)}")
    return tuple(dict.fromkeys(("cpu", *names)))


@dataclass
class _Proof:
    """What :func:`_prove` found, and what the finer-map checks reuse of it."""

    result: VerificationResult
    feeds: dict  # the original-size inputs
    index: GraphIndex  # of the original
    original_session: LazySession
    converted_session: object | None  # on ONNX Runtime's CPU provider; None where it does not load


def _prove(original, original_folder, original_path, converted, converted_folder, converted_path, providers, rtol, atol,
           input_shapes, input_data, seed) -> _Proof:
    """Today's proof of ``converted`` (read from ``converted_path`` where it is a file, as the original
    from ``original_path``): the original size, the sliding window, the sequence lengths.

    The original's session is released once its outputs at the original size and at the other
    sequence lengths are kept, before the converted model's sessions are built, and built again only
    for the input-crop checks: the two models' weights are never in memory at once for the others."""
    index = GraphIndex(original, data_folder=original_folder)  # one index of the original serves every check
    feeds, summaries = make_inputs(original, seed=seed, shapes=input_shapes, data=input_data, index=index)
    expected_session = LazySession(lambda: _session(original, "cpu", original_folder, original_path))
    try:
        expected_session.build()
    except Exception as exc:  # noqa: BLE001 - e.g. an op or opset this onnxruntime has no kernel for
        raise CouldNotVerify(f"could not verify: onnxruntime cannot load the original model: "
                             f"{first_line(exc)}") from None
    try:
        expected = _run(expected_session, feeds)
    except Exception as exc:  # noqa: BLE001 - any runtime failure of the original means no proof
        raise CouldNotVerify(
            f"could not verify: the original model fails on synthesised inputs: {first_line(exc)}; "
            "pass --input-data or --input-shape") from None
    record = read_record(converted)
    # Kept now, not when their check runs: a decoder's original rebuilt beside the converted model's session
    # held both models' weights, the proof's peak (4-block Llama-style decoder, float32: 1.9x its weights).
    length_references = (_sequence_length_references(original, expected_session, record.token_axes, feeds, seed)
                         if record is not None and record.token_axes else [])
    expected_session.release()
    precision, precision_source = computation_precision(index)
    if rtol is not None and atol is not None:
        precision_source = "set by the caller"
    out_rtol, out_atol = _tolerances(expected, rtol, atol, quantization_steps(index), precision)
    result = VerificationResult(passed=True, rtol=out_rtol, atol=out_atol, inputs=summaries, precision=precision,
                                precision_source=precision_source, reorderings=reorderings(original, converted))
    if needs_nchwc_off(converted):
        result.notes.append("a Conv kernel passes 2 GiB once ONNX Runtime's NCHWc transform pads it: the proof "
                            "ran with that transform off, and your sessions need it off too: "
                            "SessionOptions.add_session_config_entry('optimization.disable_specified_optimizers', "
                            "'NchwcTransformer')")
    large = [f"{what} ({megabytes(payload_bytes(model))} of weights)"
             for what, model in (("the original", original), ("the converted model", converted))
             if payload_bytes(model) >= LARGE_MODEL_BYTES]
    if large:
        result.notes.append(memory_note(large, float16=any(map(has_float16_weights, (original, converted)))))

    sessions = {}
    for provider in providers:
        try:
            session = _session(converted, provider, converted_folder, converted_path)
        except Exception as exc:  # noqa: BLE001 - a converted model that does not load is a failed proof
            result.checks.append(CheckResult("original size", provider, "*", False, compared=1,
                                             note=f"the converted model does not load: {first_line(exc)}",
                                             **NOT_COMPARED))
            continue
        if session is None:
            result.skipped.append(UNAVAILABLE[provider])
            continue
        sessions[provider] = session
        if isinstance(session, OpenVinoSession):
            result.notes.append(f"OpenVINO ran on its CPU plugin at {session.precision} (INFERENCE_PRECISION_HINT): "
                                "its default on CPUs with bfloat16 is bf16, 4e-3..1.7e-2 off the float32 outputs")
    outputs = dict(_converted_outputs("original size", sessions, feeds, result))
    for provider, got in outputs.items():
        for name, want in expected.items():
            result.checks.append(_compare("original size", provider, name, got[name], want, result))
    for provider, got in outputs.items():
        if provider != "cpu" and "cpu" in outputs:
            check = f"{provider} vs cpu"
            for name, want in outputs["cpu"].items():
                result.checks.append(_compare(check, provider, name, got[name], want, result))

    problem = _record_problem(record, original, converted, expected, outputs.get("cpu"))
    if problem is not None:
        result.checks.append(CheckResult("conversion record", "cpu", "*", False, compared=1, note=problem))
    if record is None or problem is not None:
        why = problem or f"the converted model carries no conversion record ({METADATA_KEY!r} metadata)"
        result.skipped.append(f"sliding window and sequence lengths: not run: {why}")
    elif record.heads and record.mode == "fully_convolutional" and record.spatial_inputs:
        _sliding_window_checks(original, original_folder, record, feeds, sessions, result, seed, index,
                               expected_session)
    elif record.heads and record.mode == "fully_convolutional":
        result.skipped.append("sliding window: no input size to grow (a path is blocked, or no input's "
                              "spatial size reaches the converted maps)")
    if record is not None and problem is None and record.token_axes is not None:
        _sequence_length_checks(record.token_axes, length_references, sessions, result)
    result.passed = all(c.passed for c in result.checks) and any(c.compared for c in result.checks)
    return _Proof(result, feeds, index, expected_session, sessions.get("cpu"))


def _record_problem(record: ConversionRecord | None, original, converted, expected: dict,
                    got: dict | None) -> str | None:
    """Why the conversion record cannot be trusted to say which checks to run, or None: it names what
    the models lack, or its mode does not fit the outputs (a head's output is a map ``[N,F,h,w]`` of
    the original's ``[N,F]`` in the fully convolutional mode only, and every such map has its head)."""
    if record is not None:
        mismatch = record_mismatch(record, original, converted)
        if mismatch is not None:
            return f"the conversion record does not fit the models: {mismatch}"
    if got is None:
        return None  # the converted model did not run: that check has failed already
    maps = [name for name, want in expected.items() if name in got and np.ndim(got[name]) > np.ndim(want)]
    shapes = lambda name: f"{list(np.shape(got[name]))} where the original's is {list(np.shape(expected[name]))}"  # noqa: E731
    if maps and record is None:
        return (f"output {maps[0]!r} is a map {shapes(maps[0])}, but the converted model carries no conversion "
                f"record ({METADATA_KEY!r} metadata), so the sliding window cannot be checked")
    if record is None:
        return None
    if record.mode != "fully_convolutional":  # its heads' outputs got the original layout back
        return (f"output {maps[0]!r} is a map {shapes(maps[0])}, but the conversion record's mode is {record.mode}"
                if maps else None)
    written = {o: head.node for head in record.heads for o in head.outputs}
    unnamed = [name for name in maps if name not in written]
    if unnamed:
        return f"output {unnamed[0]!r} is a map {shapes(unnamed[0])}, but no head of the conversion record writes it"
    flat = [name for name in written if name in got and name not in maps]
    if flat:
        return (f"the conversion record says head {written[flat[0]]!r} writes the map {flat[0]!r}, but it has "
                f"the original's shape {list(np.shape(got[flat[0]]))}")
    return None


# ---- sequence lengths ---------------------------------------------------------------------------

def other_lengths(length: int) -> list[int]:
    """Two sequence lengths besides ``length``: half of it (when that is at least 1) and one more,
    else one and two more."""
    return [n for n in (length // 2, length + 1, 2 * length + 1) if 1 <= n != length][:2]


def _sequence_length_references(original, session, token_axes, feeds, seed) -> list[tuple[str, dict, dict | str]]:
    """For each other sequence length: its check's name, its inputs, and the original model's outputs
    there (or, where it does not run, why: that check is skipped)."""
    name, axes = next(iter(token_axes.items()))
    current = feeds[name].shape[axes[0]]
    varied = _axes_of_length(original, token_axes, feeds, current)
    rng = np.random.default_rng(seed + 2)
    references: list[tuple[str, dict, dict | str]] = []
    for length in other_lengths(current):
        resized = _resized_feeds(feeds, {inp: {axis: length for axis in inp_axes} for inp, inp_axes in varied.items()},
                                 rng)
        try:
            references.append((f"sequence length {length}", resized, _run(session, resized)))
        except Exception as exc:  # noqa: BLE001 - any runtime failure of the original
            references.append((f"sequence length {length}", resized, first_line(exc)))
    return references


def _sequence_length_checks(token_axes, references, sessions, result) -> None:
    if not token_axes:
        result.skipped.append("sequence lengths: the token axis is not a symbolic input dimension")
        return
    for check, resized, expected in references:
        if isinstance(expected, str):
            result.skipped.append(f"{check}: the original model does not run at this length ({expected})")
            continue
        for provider, got in _converted_outputs(check, sessions, resized, result):
            for output, want in expected.items():
                result.checks.append(_compare(check, provider, output, got[output], want, result))


def _axes_of_length(original, token_axes, feeds, length) -> dict[str, list[int]]:
    """The token axes, and every other symbolic non-batch input axis fed at the same length: a
    decoder's attention mask runs over ``total_seq_len``, which is the sequence length when the past
    is empty."""
    varied = {name: list(axes) for name, axes in token_axes.items()}
    for spec in input_specs(original):
        for axis, dim in enumerate(spec.dims or ()):
            if (axis > 0 and isinstance(dim, str) and spec.name in feeds and feeds[spec.name].shape[axis] == length
                    and axis not in varied.get(spec.name, [])):
                varied.setdefault(spec.name, []).append(axis)
    return varied


# ---- sliding window ----------------------------------------------------------------------------

def larger_sizes(size: list[int]) -> list[list[int]]:
    """Two inputs larger than ``size``: twice as large, and a non-square one (1.5x by 2x+1)."""
    return [[2 * s for s in size], [-(-3 * s // 2) if i % 2 == 0 else 2 * s + 1 for i, s in enumerate(size)]]


def _sliding_window_checks(original, folder, record, feeds, sessions, result, seed, index: GraphIndex,
                           original_session) -> None:
    spatial = record.spatial_inputs
    heads = [h for h in record.heads if h.outputs]
    if not heads:
        result.skipped.append("sliding window: no converted head reaches a graph output")
        return
    backbone, head_sessions = _original_cuts(original, folder, heads, index, spatial)
    rng = np.random.default_rng(seed + 1)
    crop_rng = np.random.default_rng(seed + 3)  # its own: the sliding-window positions stay as they were
    for which in range(2):
        sizes = {name: dict(zip(axes, larger_sizes([feeds[name].shape[a] for a in axes])[which]))
                 for name, axes in spatial.items()}
        large = _resized_feeds(feeds, sizes, rng)
        check = "sliding window " + "x".join(str(size) for size in list(sizes.values())[-1].values())
        maps = _reference_run(backbone, large, result, f"{check}: the original backbone does not run at this size")
        if maps is None:
            continue
        for provider, got in _converted_outputs(check, sessions, large, result):
            for head, head_session in zip(heads, head_sessions):
                fmap = maps[head.feature_map]
                for output in head.outputs:
                    result.checks.append(_window_check(check, provider, output, got[output], fmap, head,
                                                       head_session, large, result, rng))
            for output, geometry in _crop_geometries(heads, spatial).items():
                result.checks.append(_input_crops_check(check.replace("sliding window", "input crops"), provider,
                                                        output, got[output], geometry, original_session, large,
                                                        result, crop_rng))


def _original_cuts(original, folder, heads, index: GraphIndex, spatial: dict[str, list[int]]):
    """CPU sessions of the original cut in two: its backbone, from the graph inputs (their ``spatial``
    axes free) to the heads' feature maps, and each head, from its feature map to its outputs. The
    backbone's Reshapes that only move a size-1 axis run as the Transposes they are (the same values
    at its own size), as the conversion does, so it runs on larger inputs."""
    feature_maps = [h.feature_map for h in heads]
    cut = cut_model(original, [], feature_maps, index.types, free_axes=spatial)
    reshapes_as_transposes(index, cut.graph, feature_maps)
    return _session(cut, "cpu", folder), [
        _session(cut_model(original, [h.feature_map], h.outputs, index.types, batch_free=True,
                           spatial_free=None in h.window), "cpu", folder) for h in heads]


def _crop_geometries(heads, spatial: dict[str, list[int]]) -> dict[str, Geometry]:
    """The output maps whose cells stand for crops of the input: their geometry is known, the
    backbone does not pad, the original size is static, and the image is the only input resized.
    A head that flattens the image itself has no backbone: its sliding-window check already ran the
    original model on those very crops."""
    return {output: g for head in heads if head.feature_map not in spatial for output, g in head.geometry.items()
            if g.known and list(spatial) == [g.input] and sorted(spatial[g.input]) == sorted(g.input_axes)
            and all(a.margin == 0 and a.crop is not None for a in g.axes)}


def _reference_run(session, feeds, result, skip_line: str) -> dict | None:
    """The original model's (or its backbone's) outputs on ``feeds``; None, with ``skip_line`` in the
    result, where it does not run there: with nothing to compare against, that check is skipped."""
    try:
        return _run(session, feeds)
    except Exception as exc:  # noqa: BLE001 - any runtime failure of the original
        result.skipped.append(f"{skip_line} ({first_line(exc)})")
        return None


def _converted_outputs(check, sessions, feeds, result):
    """Each provider's outputs of the converted model on ``feeds``; a run that fails is a failed check."""
    for provider, session in sessions.items():
        try:
            got = _run(session, feeds)
        except Exception as exc:  # noqa: BLE001 - a converted model that cannot run is a failed proof
            result.checks.append(CheckResult(check, provider, "*", False, compared=1,
                                             note=f"the converted model fails: {first_line(exc)}", **NOT_COMPARED))
            continue
        yield provider, got


def _window_check(check, provider, output, out_map, fmap, head, head_session, feeds, result, rng) -> CheckResult:
    # None: the head reduces the whole map (a global reduce kept by squeeze_flatten), so its window
    # on a larger input is the whole larger map.
    window = [f if w is None else w for f, w in zip(fmap.shape[2:], head.window[1:])]
    spatial_out = out_map.shape[2:]
    expect_out = tuple(f - w + 1 for f, w in zip(fmap.shape[2:], window))
    if spatial_out != expect_out:
        return CheckResult(check, provider, output, False, compared=1,
                           note=f"map is {list(spatial_out)}, expected {list(expect_out)} from the feature map")
    positions = _sample_positions(spatial_out, rng)
    worst = CheckResult(check, provider, output, True, compared=len(positions))
    extra = {k: v for k, v in feeds.items() if k in {i.name for i in head_session.get_inputs()}}
    for pos in positions:
        crop = fmap[(slice(None), slice(None), *(slice(p, p + w) for p, w in zip(pos, window)))]
        want = _run(head_session, {**extra, head.feature_map: crop})[output]
        got = out_map[(slice(None), slice(None), *pos)]
        one = _compare(check, provider, output, got, want, result)
        worst.note = worst.note or one.note
        _keep_worst(worst, one)
    return worst


def _input_crops_check(check, provider, output, out_map, geometry: Geometry, original_session, feeds,
                       result, rng) -> CheckResult:
    """The converted map against the original model run on input crops: sampled cells whose crop of
    the original size (:func:`crop_box`) lies inside the larger input must equal the original model's
    output on that crop. Run only where the backbone does not pad (margin 0), so this proves the
    window geometry the report gives."""
    image = feeds[geometry.input]
    counts = tuple((image.shape[axis] - a.crop) // a.stride + 1 for axis, a in zip(geometry.input_axes, geometry.axes))
    if any(c > n for c, n in zip(counts, out_map.shape[2:])):
        return CheckResult(check, provider, output, False, compared=1,
                           note=f"map is {list(out_map.shape[2:])}, fewer cells than the {list(counts)} crops "
                                "the geometry places in the input")
    cells = list(itertools.product(*(range(c) for c in counts)))
    return _crop_check(check, provider, output, out_map, cells,
                       _crop_reference(original_session, feeds, geometry, output), result, rng)


def _keep_worst(worst: CheckResult, one: CheckResult) -> None:
    """Fold one comparison of a sampled check into the check's line: failed if any failed, the
    largest of each error, and the tightest atol a sample was held to (0: none folded in yet)."""
    worst.passed &= one.passed
    for measure in ("max_abs_error", "max_rel_error", "needed_atol"):
        setattr(worst, measure, max(getattr(worst, measure), getattr(one, measure)))
    worst.allowed_atol = min(worst.allowed_atol, one.allowed_atol) if worst.allowed_atol else one.allowed_atol


def _sample_positions(shape: tuple[int, ...], rng: np.random.Generator) -> list[tuple[int, ...]]:
    corners = set(itertools.product(*[(0, s - 1) for s in shape]))
    corners.add(tuple(s // 2 for s in shape))
    for _ in range(RANDOM_POSITIONS):
        corners.add(tuple(int(rng.integers(0, s)) for s in shape))
    return sorted(corners)


def cut_model(model: onnx.ModelProto, inputs: list[str], outputs: list[str], types, batch_free=False,
              free_axes: dict[str, list[int]] | None = None, spatial_free=False) -> onnx.ModelProto:
    """The part of ``model`` that computes ``outputs`` from ``inputs`` (and the graph's own inputs).

    ``free_axes`` names graph-input axes to make symbolic, so the cut runs on larger inputs;
    ``batch_free`` makes the batch of the new ``inputs`` symbolic, ``spatial_free`` their axes 2..
    (a head that reduces the whole map takes the whole larger map).

    Not ``onnx.utils.Extractor``: it follows ``node.input`` only, so a backbone with an If/Loop body
    that reads an outer tensor is cut without that tensor's producer (tried with onnx 1.23: the cut
    fails the checker, "input 'a' of node If ... must be topologically sorted"); graph.upstream
    follows the names bodies read."""
    graph = model.graph
    reached, nodes = upstream(producers(graph), outputs, stop=inputs)
    needed = reached - set(inputs)  # the new inputs are declared below, even where they are graph inputs
    keep = {id(n) for n in nodes}
    g = onnx.GraphProto()
    g.name = f"{graph.name}_cut"
    g.node.extend(n for n in graph.node if id(n) in keep)
    g.initializer.extend(t for t in graph.initializer if t.name in needed)
    g.sparse_initializer.extend(t for t in graph.sparse_initializer if t.values.name in needed)
    for inp in graph.input:
        if inp.name in needed and inp.name not in {t.name for t in g.initializer}:
            g.input.append(inp)
            if free_axes and inp.name in free_axes:
                dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in inp.type.tensor_type.shape.dim]
                set_shape(g.input[-1], [f"free{a}" if a in free_axes[inp.name] else d for a, d in enumerate(dims)])
    for name in inputs:
        elem, dims = types[name]
        vi = onnx.helper.make_tensor_value_info(name, elem, None)
        if spatial_free:
            dims = [*dims[:2], *(f"S{i}" for i in range(len(dims) - 2))]
        set_shape(vi, ["N", *dims[1:]] if batch_free else dims)
        g.input.append(vi)
    for name in outputs:
        g.output.append(onnx.helper.make_tensor_value_info(name, types.get(name, (1, None))[0], None))
    m = onnx.helper.make_model(g, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    m.functions.extend(model.functions)
    return m


# ---- output stride ------------------------------------------------------------------------------

def _output_stride_checks(original, original_folder, proof: _Proof, fine, folder, fine_path, record, providers,
                          seed) -> None:
    """(a) At the original size and two larger ones (one not square), the finer map's phase-0 cells
    (``out[..., ::S/N, ::S/N]``) equal the stride-S conversion's map. (b) Every sampled cell (i, j)
    whose crop of the original size at (i*N, j*N) lies inside the image equals the original model
    run on that crop. (c) Where the backbone pads, the crop keeps the padding margin around it (the
    begin side rounded up to S): the original backbone runs on the larger crop and the original head
    on the window at the margin, so padding reaches neither that window nor the finer map's cell.
    ``proof`` is the stride-S conversion's: its sessions of that conversion and of the original serve here too."""
    result, feeds, index = proof.result, proof.feeds, proof.index
    stride = record.output_stride
    name, axes = next(iter(record.spatial_inputs.items()))
    heads = [h for h in record.heads if h.outputs]
    every = "x".join(map(str, stride.stride))
    result.notes.append(f"output stride {every} (the backbone's is {'x'.join(map(str, stride.backbone_stride))}): "
                        f"the 'stride {every}' checks prove the finer map; the others prove the stride-"
                        f"{'x'.join(map(str, stride.backbone_stride))} conversion it was made from; padding margin "
                        f"{'x'.join(str(max(b, e)) for b, e in zip(stride.margin_begin, stride.margin_end))} px")
    fine_sessions = {}
    for provider in providers:
        try:
            session = _session(fine, provider, folder, fine_path)
        except Exception as exc:  # noqa: BLE001 - a finer model that does not load is a failed proof
            result.checks.append(CheckResult(f"stride {every}", provider, "*", False, compared=1,
                                             note=f"the finer model does not load: {first_line(exc)}", **NOT_COMPARED))
            continue
        if session is not None:
            fine_sessions[provider] = session
    original_size = [feeds[name].shape[a] for a in axes]
    crops = crop_geometry(stride, name, axes, original_size)
    pad = [a.size - a.crop for a in crops.axes]  # type: ignore[operator]
    rng = np.random.default_rng(seed + 3)
    sizes = [original_size] + [[s + p for s, p in zip(size, pad)] for size in larger_sizes(original_size)]
    padded = any(pad)
    if padded:
        backbone, head_sessions = _original_cuts(original, original_folder, heads, index, record.spatial_inputs)
    for number, size in enumerate(sizes):
        text = "x".join(map(str, size))
        large = feeds if number == 0 else _resized_feeds(feeds, {name: dict(zip(axes, size))}, rng)
        want = None if proof.converted_session is None else _reference_run(
            proof.converted_session, large, result, f"stride {every} phase 0 {text}: the stride-S conversion "
            "does not run at this size")  # one that does not load has failed its checks already
        for provider, got in _converted_outputs(f"stride {every} phase 0 {text}", fine_sessions, large, result):
            for output in (o for h in heads for o in h.outputs):
                if want is not None:
                    result.checks.append(_phase_zero_check(f"stride {every} phase 0 {text}", provider, output,
                                                           got[output], want[output], stride, result))
                if number == 0:
                    continue
                cells = list(itertools.product(*cells_within(crops, (0,) * len(size) + tuple(size),
                                                             got[output].shape[2:])))
                if not cells:
                    result.skipped.append(f"stride {every} crops {text}: no cell's crop lies inside the image")
                    continue
                if padded:
                    head = next(h for h in heads if output in h.outputs)
                    reference = _margin_reference(backbone, head_sessions[heads.index(head)], head, large, crops,
                                                  stride, index.types, output)
                else:
                    reference = _crop_reference(proof.original_session, large, crops, output)
                result.checks.append(_crop_check(f"stride {every} crops {text}", provider, output, got[output],
                                                 cells, reference, result, rng))


def _phase_zero_check(check, provider, output, got, want, stride, result) -> CheckResult:
    steps = [s // n for s, n in zip(stride.backbone_stride, stride.stride)]
    phase = got[(slice(None), slice(None), *(slice(None, None, r) for r in steps))]
    if any(p < w for p, w in zip(phase.shape[2:], want.shape[2:])):
        return CheckResult(check, provider, output, False, compared=1,
                           note=f"phase 0 of the map is {list(phase.shape[2:])}, smaller than the stride-S "
                                f"map {list(want.shape[2:])}", **NOT_COMPARED)
    phase = phase[(slice(None), slice(None), *(slice(0, w) for w in want.shape[2:]))]
    return _compare(check, provider, output, phase, want, result)


def _crop_reference(session, feeds, crops: Geometry, output):
    """The original model's output on the crop of the original size at ``cell * N``."""
    def reference(cell):
        return _run(session, {**feeds, crops.input: _box(feeds[crops.input], crops.input_axes,
                                                         crop_box(crops, *cell))})[output]
    return reference


def _margin_reference(backbone, head_session, head, feeds, crops: Geometry, stride, types, output):
    """The original backbone on the crop at ``cell * N`` with the padding margin around it, and the
    original head on the window of its map at the margin."""
    map_size = list(types[head.feature_map][1][2:])
    extra = {k: v for k, v in feeds.items() if k in {i.name for i in head_session.get_inputs()}}

    def reference(cell):
        box = _box(feeds[crops.input], crops.input_axes, cell_box(crops, *cell))
        fmap = _run(backbone, {**feeds, crops.input: box})[head.feature_map]
        window = fmap[(slice(None), slice(None), *(slice(-a.offset // s, -a.offset // s + w)
                                                   for a, s, w in zip(crops.axes, stride.backbone_stride, map_size)))]
        return _run(head_session, {**extra, head.feature_map: window})[output]
    return reference


def _box(value: np.ndarray, axes, box) -> np.ndarray:
    """The part of ``value`` in ``box`` (starts, then ends, as geometry's boxes) on its ``axes``."""
    index = [slice(None)] * value.ndim
    for axis, begin, end in zip(axes, box[:len(box) // 2], box[len(box) // 2:]):
        index[axis] = slice(begin, end)
    return value[tuple(index)]


def _crop_check(check, provider, output, out_map, cells, reference, result, rng) -> CheckResult:
    """The finer map's cells against ``reference(cell)``, at up to MAX_CROP_CELLS of ``cells`` (the
    corners and the centre of their range, then random ones)."""
    chosen = cells
    if len(cells) > MAX_CROP_CELLS:
        ranges = [sorted({c[a] for c in cells}) for a in range(len(cells[0]))]
        picked = set(itertools.product(*[(r[0], r[-1]) for r in ranges])) | {tuple(r[len(r) // 2] for r in ranges)}
        rest = [c for c in cells if c not in picked]
        picked.update(rest[int(i)] for i in rng.choice(len(rest), MAX_CROP_CELLS - len(picked), replace=False))
        chosen = sorted(picked)
    worst = CheckResult(check, provider, output, True, compared=len(chosen),
                        note=f"cells of {len(cells)} whose crop lies inside the image")
    rounding_noted = False
    for cell in chosen:
        one = _compare(check, provider, output, out_map[(slice(None), slice(None), *cell)], reference(cell),
                       result)
        if one.note and not one.passed:
            worst.note = f"{worst.note}; at cell {list(cell)}: {one.note}"
        elif one.note and not rounding_noted:  # rounding's allowance (onnx_fc2conv.rounding), said once
            worst.note, rounding_noted = f"{worst.note}; {one.note}", True
        _keep_worst(worst, one)
    return worst


# ---- running and comparing ---------------------------------------------------------------------

def _graph_on_file(model, spill: Path) -> tuple[onnx.ModelProto, Path | None, Path | None]:
    """The graph of ``model`` (a path or a ModelProto), the folder ONNX Runtime reads its external
    data from, and its file (None, None for a small model in memory).

    A model given by path is read without its external data: the tool never holds a second copy of
    the weights just to run them. One whose weights in memory reach LARGE_MODEL_BYTES (a ModelProto,
    or a file with its weights inline) is first written to ``spill`` with external data and read back
    the same way: the proof then drops the copy it read, makes no other (its cuts of the model refer
    to that file too), and ONNX Runtime maps the weights from there."""
    path = None
    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        model = read_model(path, load_external_data=False)[0]
    if payload_bytes(model, in_memory=True) >= LARGE_MODEL_BYTES:
        spill.mkdir()
        # the tensors a file already keeps in its external data are copied from there, file to file
        weights = ExternalWeights(path.parent) if path is not None else None
        path = spill / "model.onnx"
        save_model(model, path, external_data=True, weights=weights)
        model = read_model(path, load_external_data=False)[0]
    return model, None if path is None else path.parent, path


def _session(model: onnx.ModelProto, provider: str, folder: Path | None = None, path: Path | None = None):
    """A session for ``model`` on ``provider`` (one of RUNTIMES), None where that runtime is not
    available; ``folder`` is where its external-data references point, ``path`` its file where it was
    given as one. ONNX Runtime reads a model given as a file from there (and maps its external data);
    one in memory with LARGE_MODEL_BYTES of weights or more is written to a temporary file with
    external data first (its bytes would be one more copy of the weights, and protobuf holds no more
    than 2 GB); a large one runs with the CPU memory arena and prepacking off, and at ORT_ENABLE_EXTENDED
    in PRIORITY_BASED order where its weights are float16 (memory_note names them for the report)."""
    if provider == "openvino":
        return OpenVinoSession.compile(model, path, folder)
    import onnxruntime as ort  # here, not at the top: inspect and --no-verify never load the runtime
    from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as NotImplementedByRuntime

    # 4 (fatal only): a failing run is reported as a check or as "could not verify", so the runtime's
    # own error log (3) would print the same message twice, in colour, before the tool's one line.
    ort.set_default_logger_severity(4)
    name = PROVIDERS[provider]
    if name not in ort.get_available_providers():
        return None
    if provider == "cpu" and any(i.type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16 for i in model.graph.input):
        return ReferenceSession(model)  # ONNX Runtime's Python API takes no bfloat16 arrays
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    # Run Q/DQ models as written: ORT's QDQ fusions replace DQ(W) -> MatMul by kernels that also
    # quantize the activations, which moves a float output by far more than any tolerance.
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    # The proof runs many short sessions one after another: worker threads that spin between runs
    # only take the cores from the next session's setup.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if needs_nchwc_off(model):
        opts.add_session_config_entry("optimization.disable_specified_optimizers", "NchwcTransformer")
    # A large model's sessions, measured with ONNX Runtime 1.32 on an AVX-512 CPU (2026-12-02, the proof's peak
    # RSS over the weight bytes; benchmarks/README.md, P8):
    # * Prepacking off (session.disable_prepacking): a MatMul or Gemm session no longer copies each weight into a
    #   packed buffer when it is built, it reads them from the memory map of their file (the original VGG16's
    #   session: 580 MiB more after its build, now 4), and a float32 decoder's MatMuls and the NCHWc Convs its
    #   conv2d layers become then give outputs equal to the bit (a 4-block Llama-style decoder: 2.2e-5 on the
    #   logits before, which failed fp32's atol; 12 blocks: 3.7e-5 before; VGG16's Gemm head against its Conv:
    #   8.1e-6, now 8.6e-6).
    # * float16 weights at ORT_ENABLE_EXTENDED, in PRIORITY_BASED order: x86 has no float16 Conv kernel, so ONNX
    #   Runtime casts a Conv's inputs to float32; at ORT_ENABLE_ALL it folds the casts of the weights into float32
    #   copies (twice their bytes), which the NCHWc transform copies again (the converted 4-block float16
    #   decoder's session alone peaked at 4.9x its weights). At EXTENDED the casts run with the model, but in the
    #   default order most come first (4 blocks: 26 of its 38 weight casts ran before the first Conv), so their
    #   copies live at once: the 24-block decoder's proof peaked at 2.5x. In PRIORITY_BASED order each runs just
    #   before the layer that reads it: 24 blocks 1.23x (4 blocks 4.95x -> 1.5x). The same kernels, the same errors.
    # * The CPU arena off: allocation only (the outputs are the same to the bit), so that the activations of the
    #   larger inputs go back when a run ends.
    # Not used: the NCHWc transform off (NchwcTransformer, or EXTENDED for float32) saves its reordered copy of
    # each Conv kernel (building the converted VGG16's session peaks at 3.4x), but the plain Conv's im2col buffers
    # then make the 448x448 sliding-window runs peak at 3.1x, and the float32 decoder's Convs no longer give
    # MatMul's outputs (2.8e-5); session.use_device_allocator_for_initializers changed nothing; the weights are mapped
    # whatever their offsets in the data file (onnx.save's are not page-aligned, ONNX Runtime maps them too).
    large = payload_bytes(model) >= LARGE_MODEL_BYTES
    if large:
        opts.enable_cpu_mem_arena = False
        opts.add_session_config_entry("session.disable_prepacking", "1")
        if has_float16_weights(model):
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    try:
        if path is not None:
            return ort.InferenceSession(str(path), opts, providers=[name])
        if folder is not None:
            opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
        elif large:
            with tempfile.TemporaryDirectory(prefix="onnx-fc2conv-verify-") as tmp:
                path = Path(tmp) / "model.onnx"
                save_model(model, path, external_data=True)
                return ort.InferenceSession(str(path), opts, providers=[name])
        return ort.InferenceSession(model.SerializeToString(), opts, providers=[name])
    except NotImplementedByRuntime:
        if provider != "cpu" or not _has_float64(model):
            raise
        return ReferenceSession(model)


def needs_nchwc_off(model: onnx.ModelProto) -> bool:
    """Whether ONNX Runtime's NCHWc layout transform would fail on ``model``: it copies each float
    Conv kernel, its output channels padded to a multiple of the CPU's block (16 with AVX-512, 8 with
    AVX2), into an initializer of its own, and a copy over protobuf's 2 GiB limit stops the session
    from loading ("declares a size of ... which exceeds the 2147483648 byte limit"). Turning that one
    transform off (``NchwcTransformer``) changes speed only; the README says how users set it."""
    kernels = {t.name: t for t in model.graph.initializer if len(t.dims) >= 3}
    for node in model.graph.node:
        kernel = kernels.get(node.input[1]) if is_onnx_op(node, "Conv") and len(node.input) > 1 else None
        if kernel is None or kernel.data_type not in FLOAT_TYPES:
            continue
        padded_out = -(-kernel.dims[0] // NCHWC_BLOCK) * NCHWC_BLOCK
        if padded_out * math.prod(kernel.dims[1:]) * FLOAT_TYPES[kernel.data_type] > PROTOBUF_TENSOR_LIMIT:
            return True
    return False


def _has_float64(model: onnx.ModelProto) -> bool:
    return any(t.data_type == onnx.TensorProto.DOUBLE for t in model.graph.initializer) or any(
        i.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE for i in model.graph.input)


def has_float16_weights(model: onnx.ModelProto) -> bool:
    return any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)


def memory_note(large: list[str], float16: bool = False) -> str:
    """The report's line on how the proof kept its memory down, for the ``large`` models it names
    (with ``float16``, models with float16 weights): the options their sessions ran with (see _session)."""
    level = (", at graph_optimization_level ORT_ENABLE_EXTENDED in execution_order PRIORITY_BASED (float16 "
             "weights: ONNX Runtime's x86 kernels compute them in float32; at ORT_ENABLE_ALL it folds their casts "
             "into copies, and in the default order it runs all their casts first)") if float16 else ""
    return (f"memory: {' and '.join(large)}: ONNX Runtime was given each model as a file and mapped its weights "
            "from there (one with its weights inline or in memory written to a temporary file with external data "
            "first); its sessions ran with the CPU memory arena off (enable_cpu_mem_arena=False) and without "
            f"prepacking (session.disable_prepacking=1){level}; the original's session was released before the "
            "converted model's was built, once its outputs at the original size and the other sequence lengths "
            "were kept")


class LazySession:
    """A session built on first use (or by :meth:`build`) and dropped by :meth:`release`, behind the
    session calls the checks make, so a check that needs the original again builds it again rather
    than the proof holding it beside the converted model's."""

    def __init__(self, build):
        self._build = build
        self._session = None

    def build(self):
        if self._session is None:
            self._session = self._build()
        return self._session

    def release(self) -> None:
        self._session = None

    def get_inputs(self):
        return self.build().get_inputs()

    def get_outputs(self):
        return self.build().get_outputs()

    def run(self, names, feeds):
        return self.build().run(names, feeds)


class ReferenceSession:
    """ONNX's reference runtime behind ONNX Runtime's session calls, for double models whose ops
    ONNX Runtime's CPU provider lacks for that type (Conv in double) and for bfloat16 models (its
    Python API takes no bfloat16 arrays): slower, but it runs every op of the standard, so such a
    model is still checked with numbers."""

    def __init__(self, model: onnx.ModelProto):
        from onnx.reference import ReferenceEvaluator

        self._evaluator = ReferenceEvaluator(model)
        self._inputs = [_Named(i.name) for i in model.graph.input
                        if i.name not in {t.name for t in model.graph.initializer}]
        self._outputs = [_Named(o.name) for o in model.graph.output]

    def get_inputs(self):
        return self._inputs

    def get_outputs(self):
        return self._outputs

    def run(self, names, feeds):
        return self._evaluator.run(names, feeds)


class OpenVinoSession:
    """A model compiled by OpenVINO's CPU plugin (at OPENVINO_CONFIG's precision) behind ONNX
    Runtime's session calls, so the checks run it as they run a session: feeds by name in, outputs by
    name out. A port is named by the model's own input or output name: OpenVINO gives a tensor every
    name its folded Identity ops had (tinybert's ``output_0`` is also ``173`` and ``174``)."""

    def __init__(self, compiled, model: onnx.ModelProto):
        self._compiled = compiled
        declared = {v.name for v in (*model.graph.input, *model.graph.output)}
        name = lambda port: next((n for n in sorted(port.names) if n in declared), port.get_any_name())  # noqa: E731
        self._inputs = [_Named(name(port)) for port in compiled.inputs]
        self._ports = {name(port): port for port in compiled.outputs}
        self._outputs = [_Named(n) for n in self._ports]
        self.precision = str(compiled.get_property("INFERENCE_PRECISION_HINT").to_string())

    @classmethod
    def compile(cls, model: onnx.ModelProto, path: Path | None = None,
                folder: Path | None = None) -> OpenVinoSession | None:
        """``model`` compiled, None where openvino is not installed. A model given by ``path`` is read
        from there (OpenVINO reads its external data beside it), one in memory from its bytes. One in
        memory is first written to a temporary file with external data where it passes protobuf's 2 GB
        limit, or where it refers to external data in ``folder`` (those bytes copied file to file):
        OpenVINO resolves a reference in bytes against the current folder, and refuses a file outside
        the model's or the current folder, by a symbolic link or an absolute location too (tried with
        OpenVINO 2026.4: "resolves to ... which is outside the base directory"). Raises RuntimeError
        with OpenVINO's message, put on one line, where OpenVINO cannot read or compile it."""
        try:
            import openvino
        except ImportError:
            return None
        referred = any(uses_external_data(t) for t in model.graph.initializer)
        weights = ExternalWeights(folder) if referred and folder is not None else None
        if path is None and (weights is not None or needs_external_data(model)):
            with tempfile.TemporaryDirectory(prefix="onnx-fc2conv-verify-") as tmp:
                path = Path(tmp) / "model.onnx"
                save_model(model, path, external_data=True, weights=weights)
                return cls.compile(model, path)
        core = openvino.Core()
        try:
            read = core.read_model(str(path) if path is not None else model.SerializeToString())
            return cls(core.compile_model(read, "CPU", OPENVINO_CONFIG), model)
        except RuntimeError as exc:
            raise RuntimeError(openvino_error(exc)) from None

    def get_inputs(self):
        return self._inputs

    def get_outputs(self):
        return self._outputs

    def run(self, names, feeds):
        try:
            results = self._compiled(feeds)
        except RuntimeError as exc:
            raise RuntimeError(openvino_error(exc)) from None
        return [results[self._ports[name]] for name in names]


def openvino_error(exc: BaseException) -> str:
    """OpenVINO's message on one line: its lines without the source locations it stacks above them
    ("Exception from src/...:105:", "Check 'false' failed at src/...:151:")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if not re.fullmatch(r"(Exception from|Check '.*' failed at) \S+:\d+:", line)]
    return " ".join(said) or first_line(exc)


class _Named:
    def __init__(self, name: str):
        self.name = name


def _run(session, feeds: dict) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    return dict(zip(names, session.run(names, {k: v for k, v in feeds.items() if k in wanted})))


def _compare(check, provider, output, got, want, result: VerificationResult) -> CheckResult:
    """One output against the original's, at ``result``'s tolerances. Its atol is at least what
    rounding alone may make of the converted layers before ``output`` (see onnx_fc2conv.rounding), in
    the least precise of the values' type and the precision the original computes in."""
    got, want = np.asarray(got), np.asarray(want)
    if got.size != want.size:
        return CheckResult(check, provider, output, False, compared=max(got.size, 1),
                           note=f"shape {list(got.shape)} cannot stand for {list(want.shape)}")
    got = got.reshape(want.shape)
    precision = min((want.dtype.name, result.precision), key=lambda p: MANTISSA_BITS.get(p, math.inf))
    if want.dtype.name == "bfloat16":  # ml_dtypes' bfloat16 is not a numpy floating type
        got, want = got.astype(np.float32), want.astype(np.float32)
    if not np.issubdtype(want.dtype, np.floating):
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        mismatched = int(np.count_nonzero(diff))
        return CheckResult(check, provider, output, mismatched == 0, float(diff.max(initial=0)), 0.0, 0.0,
                           compared=want.size, note=f"{mismatched} values differ" if mismatched else "")
    rtol, atol = result.rtol, result.atol
    g, w = got.astype(np.float64), want.astype(np.float64)
    finite = np.isfinite(g) & np.isfinite(w)
    # NaN in both models, or the same inf, at one place is agreement (a NaN weight or input gives it);
    # NaN or inf in one model only is a mismatch no tolerance covers.
    one_sided = ~finite & ~(np.isnan(g) & np.isnan(w)) & (g != w)
    g, w = np.where(finite, g, 0.0), np.where(finite, w, 0.0)
    diff = np.abs(g - w)
    reordering = result.reorderings.get(output, Reordering())
    largest = float(np.abs(w).max(initial=0.0))
    rounding = rounding_atol(largest, precision, reordering)
    passed = not one_sided.any() and bool(np.all(diff <= max(atol, rounding) + rtol * np.abs(w)))
    one = CheckResult(check, provider, output, passed, float(diff.max(initial=0)),
                      float((diff / np.maximum(np.abs(w), np.finfo(np.float64).tiny)).max(initial=0)),
                      float(np.maximum(diff - rtol * np.abs(w), 0.0).max(initial=0)), compared=want.size,
                      allowed_atol=max(atol, rounding))
    if rounding > atol:
        one.note = rounding_note(largest, precision, reordering)
    if one_sided.any():
        one.max_abs_error = one.max_rel_error = one.needed_atol = float("inf")
        one.note = _one_sided_note(got, want, one_sided)
    return one


def _one_sided_note(got: np.ndarray, want: np.ndarray, one_sided: np.ndarray) -> str:
    """Where one model gives NaN or inf and the other does not: how often, and the first place."""
    count = int(np.count_nonzero(one_sided))
    first = tuple(int(i) for i in np.argwhere(one_sided)[0])
    return (f"{count} value{'s' * (count != 1)} NaN or inf in one model only "
            f"(first at {list(first)}: {got[first]:g}, the original gives {want[first]:g})")


def quantization_steps(index: GraphIndex) -> list[float]:
    """The (largest) step of each graph output written by a DequantizeLinear (QDQ models).

    ONNX Runtime fuses DQ -> Gemm -> Q into QGemm and DQ -> Conv -> Q into QLinearConv; the two
    integer kernels round the requantization differently, so an exact rewrite can move an output by
    one step (with graph optimizations off the two models agree exactly)."""
    steps = []
    for name in index.graph_outputs:
        node = index.producer.get(index.skip_passthrough(name))
        scale = index.constant(node.input[1]) if node is not None and is_onnx_op(node, "DequantizeLinear") else None
        if scale is not None and scale.size:
            steps.append(float(np.abs(scale).max()))
    return steps


def computation_precision(index: GraphIndex) -> tuple[str, str]:
    """The least precise float type the graph outputs are computed in, and what decided it ("" and
    "" where no output is a float).

    An fp16 model with fp32 inputs and outputs (what fp16 converters write with ``keep_io_types``)
    computes in fp16 behind Casts, so its outputs are only as exact as fp16, whatever their type.
    Every float tensor on the paths to the outputs counts (weights, Cast outputs, what shape
    inference types); the source named is a Cast to that type where there is one, else a weight."""
    order = list(PRECISIONS.values())
    lowest, source = "", ""
    for output in index.graph_outputs:
        tensors, nodes = upstream(index.producer, [output])
        found = {PRECISIONS[index.dtype(t)] for t in tensors if index.dtype(t) in PRECISIONS}
        precision = min(found, key=order.index, default="")
        if precision and (not lowest or order.index(precision) < order.index(lowest)):
            lowest, source = precision, _precision_source(index, output, precision, tensors, nodes)
    return lowest, source


def _precision_source(index: GraphIndex, output: str, precision: str, tensors: set[str], nodes) -> str:
    """Why ``output`` is computed in ``precision``: its own type, a Cast, a weight, or a tensor."""
    if PRECISIONS.get(index.dtype(output)) == precision:
        return f"the type of output {output!r}"
    casts = sorted(n.name or n.output[0] for n in nodes
                   if is_onnx_op(n, "Cast") and PRECISIONS.get(attr(n, "to", 0)) == precision)
    if casts:
        return f"output {output!r} is computed in {precision} behind Cast {casts[0]!r}"
    weights = sorted(t for t in tensors if t in index.initializers and PRECISIONS.get(index.dtype(t)) == precision)
    named = weights or sorted(t for t in tensors if PRECISIONS.get(index.dtype(t)) == precision)
    return f"output {output!r} is computed in {precision}: {'weight' if weights else 'tensor'} {named[0]!r}"


def _tolerances(outputs: dict, rtol, atol, steps=(), precision: str = "") -> tuple[float, float]:
    """The loosest default among the outputs' types and the precision they are computed in (and one
    quantization step of a QDQ output), unless the caller set them: a double model is held to
    double's tolerance, an fp16 one with fp32 outputs to fp16's."""
    defaults = [(0.0, step * 1.001) for step in steps] or [(0.0, 0.0)]  # 1.001: room for rounding the step
    for dtype in [np.asarray(value).dtype.name for value in outputs.values()] + ([precision] if precision else []):
        defaults.append(BF16_TOLERANCE if dtype == "bfloat16" else TOLERANCES.get(dtype, (1e-4, 1e-5)))
    return (rtol if rtol is not None else max(r for r, _ in defaults),
            atol if atol is not None else max(a for _, a in defaults))


def _resized_feeds(feeds: dict, sizes: dict[str, dict[int, int]], rng) -> dict:
    """``feeds`` with fresh random values for the inputs in ``sizes``, resized there (axis -> size)."""
    resized = dict(feeds)
    for name, axis_sizes in sizes.items():
        shape = list(feeds[name].shape)
        for axis, size in axis_sizes.items():
            shape[axis] = size
        resized[name] = _random_like(feeds[name], shape, rng)
    return resized


def _random_like(value: np.ndarray, shape, rng) -> np.ndarray:
    if np.issubdtype(value.dtype, np.floating):
        return rng.standard_normal(shape).astype(value.dtype)
    lo, hi = (int(value.min()), int(value.max()) + 1) if value.size else (0, 1)
    return rng.integers(lo, hi, size=shape).astype(value.dtype)
