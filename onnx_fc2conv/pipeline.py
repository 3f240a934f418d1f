"""The conversion, top to bottom: load -> check -> plan and apply the rules -> check -> prove -> save.

:func:`convert` is the whole story; each step is one call into the module that does that job
(``modelio``, ``modelcheck``, ``apply``, ``metadata``, ``verify``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import onnx

from .apply import reinfer_shapes, rewrite
from .errors import OutputStrideError, UsageError, VerificationFailed
from .fold import fold_batch
from .graph import opset_version
from .inputs import check_input_options
from .metadata import ConversionRecord, read_record, write_record
from .modelcheck import check_input_model, check_output_model
from .modelio import PathLike, load_model, needs_external_data, payload_bytes, read_streamed, save_model, stage_model
from .options import Options
from .progress import LARGE_MODEL_BYTES, Progress, megabytes
from .report import ConversionReport
from .safety import check_flags, check_output_path, check_seed, check_tolerances, external_data_path
from .stride import refine_output_stride
from .verify import runtimes
from .verify import verify as run_verification


@dataclass
class ConversionResult:
    model: onnx.ModelProto
    report: ConversionReport

    def __bool__(self) -> bool:
        return self.report.verification is None or bool(self.report.verification)


def convert(model: PathLike | onnx.ModelProto, output_path: PathLike | None = None, *,
            options: Options | None = None, verify: bool = True, providers=("cpu",), rtol: float | None = None,
            atol: float | None = None, input_data=None, seed: int = 0, inplace: bool = False,
            external_data: bool = False, fold_batch: bool = False, show_progress: bool = False,
            **rule_options) -> ConversionResult:
    """Rewrite the FC layers of ``model`` into convolutions, prove it, and optionally save it.

    ``model`` is a path or a ``ModelProto`` (never modified). With ``verify`` (the default) the
    result is checked with ONNX Runtime (and on each of ``providers``: ``"cuda"``, ``"openvino"``)
    and :class:`VerificationFailed` is raised on a mismatch, in which case nothing is written to
    ``output_path``; :class:`CouldNotVerify` when the original model itself does not run on the
    verifier's inputs. ``output_path`` may be the input file only with ``inplace``; it is replaced
    atomically, after verification. Weights go to ``<OUT>.data`` beside
    it with ``external_data``, when the input kept them in external data, or when they pass 2 GB.
    ``fold_batch`` folds the batch into a spatial axis for the converted convs, so that ONNX Runtime
    runs them as one GEMM at any batch (see :mod:`onnx_fc2conv.fold`). ``show_progress`` prints the
    steps that take a while on stderr.

    The rule options (``keep_output_shape``, ``dense_pool``, ``skip_rules``, ``include``,
    ``exclude``, ``input_shapes``, ``token_layout``, ``vector_fc``, ``output_stride``: see :class:`Options`) come as
    ``options``, as keywords, or both (keywords win). ``input_data`` (a dict of arrays, or an
    ``.npz`` path) feeds the original-size check; its arrays pin input shapes too.

    A model with external data written to ``output_path`` is never loaded whole: its weights are
    streamed from IN's data files to OUT's, the kernels that need a transpose made block by block
    (:mod:`onnx_fc2conv.weights`), and OUT is proved as written before it is installed. Its
    ``result.model`` is then the graph as written, its large tensors referring to ``<OUT>.data``.
    """
    options = Options.from_keywords(options, rule_options)
    check_tolerances(rtol, atol)
    check_seed(seed)
    check_flags(verify=verify, inplace=inplace, external_data=external_data, fold_batch=fold_batch,
                show_progress=show_progress)
    providers = runtimes(providers)
    if not verify and providers != ("cpu",):  # it would read as proved on them
        raise UsageError(f"--provider {', '.join(providers[1:])} runs in the proof, which --no-verify skips: "
                         "drop one of them")
    if fold_batch and options.output_stride is not None:  # the record's attributes are those before the fold
        raise UsageError("--fold-batch and --output-stride do not combine (the finer map is proved through "
                         "the unfolded convs)")
    if output_path is not None:
        check_output_path(model, Path(output_path), inplace)
    seconds: dict[str, float] = {}
    progress = Progress(show_progress, seconds)
    label = model_label(model)
    progress.large = not isinstance(model, onnx.ModelProto) and Path(model).is_file() and \
        Path(model).stat().st_size >= LARGE_MODEL_BYTES
    with progress.step("load", f"loading {label}"):
        # Written to a file, a model with external data is read without its large weights (weights
        # says where they are): they go from IN's files to OUT's when OUT is written.
        work, weights = read_streamed(model) if output_path is not None else (load_model(model), None)
        input_passes_full_check = check_input_model(work, label)
        input_data = check_input_options(work, options.input_shapes, input_data)
        options = replace(options, input_shapes={**{name: value.shape for name, value in input_data.items()},
                                                 **options.input_shapes})
        previous = read_record(work)
    size = payload_bytes(work)
    progress.large = size >= LARGE_MODEL_BYTES

    with progress.step("rewrite", f"rewriting {label} ({megabytes(size)} of weights)"):
        report = ConversionReport(model=label, opset=opset_version(work), mode=options.mode)
        record = rewrite(work, options, report, weights)
        if options.output_stride is not None:
            report.output_stride = _refine_output_stride(work, record, options.output_stride, report, previous)
        if record is not None:
            write_record(work, record)
            if fold_batch and report.converted:
                _fold_batch(work, record, report)
        if previous and not report.converted:
            report.notes.append(f"already {previous.converted_by}; nothing left to convert")

    with progress.step("check", "checking the rewritten model"):
        check_output_model(work, strict=input_passes_full_check)

    result = ConversionResult(work, report)
    prove = verify and bool(report.converted)
    if weights is not None and output_path is not None:  # OUT written first, from IN's files, proved, installed
        with progress.step("save", f"writing {output_path} (weights in {external_data_path(Path(output_path)).name})"):
            staged = stage_model(work, output_path, weights=weights)
        try:
            result.model = staged.model
            if prove:
                _prove(model, staged.path, result, options, progress, providers, rtol, atol, input_data, seed)
            staged.install()
        finally:
            staged.discard()
        report.seconds = seconds
        return result
    if prove:
        _prove(model, work, result, options, progress, providers, rtol, atol, input_data, seed)
    if output_path is not None:
        external = external_data or needs_external_data(work)
        where = f" (weights in {external_data_path(Path(output_path)).name})" if external else ""
        with progress.step("save", f"writing {output_path}{where}"):
            save_model(work, output_path, external_data=external)
    report.seconds = seconds
    return result


def _refine_output_stride(model: onnx.ModelProto, record: ConversionRecord | None, output_stride, report,
                          previous: ConversionRecord | None):
    if record is None or not report.converted:
        again = " (it is already converted: give --output-stride with the original model)" if previous else ""
        raise OutputStrideError("stride_mode", f"--output-stride: no FC head of this model was converted{again}")
    refined = refine_output_stride(model, record, output_stride)
    reinfer_shapes(model, {})
    report.geometry = record.measure_geometry(model)  # the same windows, now stepping by the finer stride
    return refined


def _prove(model, converted, result: ConversionResult, options: Options, progress: Progress, providers, rtol, atol,
           input_data, seed: int) -> None:
    """Verify ``converted`` (the rewritten model, or its staged file) against ``model``; raise
    :class:`VerificationFailed` (after recording the steps' times) when it fails."""
    report = result.report
    with progress.step("verify", "verifying with ONNX Runtime"):
        report.verification = run_verification(model, converted, providers=providers, rtol=rtol, atol=atol,
                                               input_shapes=options.input_shapes, input_data=input_data, seed=seed)
    if not report.verification:
        report.seconds = progress.seconds
        raise VerificationFailed(report.verification.summary(), result)


def _fold_batch(model: onnx.ModelProto, record: ConversionRecord, report: ConversionReport) -> None:
    runs = fold_batch(model, [head.node for head in record.heads])
    if runs:
        reinfer_shapes(model, {})
        report.transposes_added += 2 * len(runs)
        report.notes.append(f"--fold-batch: the batch is folded into a spatial axis around "
                            f"{'; '.join(' -> '.join(run) for run in runs)}")


def model_label(model) -> str:
    return str(model) if not isinstance(model, onnx.ModelProto) else (model.graph.name or "model")
