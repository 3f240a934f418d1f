"""The command line: a thin click layer over :func:`onnx_fc2conv.convert` and :func:`onnx_fc2conv.inspect`.

``onnx-fc2conv IN OUT`` converts (the ``convert`` subcommand is implied); ``onnx-fc2conv inspect IN``
shows what would happen.
"""
from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from .errors import CouldNotVerify, Fc2ConvError, OutputError, UsageError, VerificationFailed
from .inspection import inspect
from .layouts import TOKEN_LAYOUTS
from .modelio import write_text_atomically
from .options import Options
from .pipeline import convert
from .rules import RULE_NAMES
from .safety import check_report_path, check_tolerances
from .verify import RUNTIMES
from .version import __version__

INT64_MAX = (1 << 63) - 1


def parse_input_shape(text: str) -> tuple[str, tuple]:
    """``NAME:1x3x224x224`` (``?`` keeps a dim symbolic). The name may itself contain ``:``."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name or not dims:
        raise UsageError(f"--input-shape {text!r}: expected NAME:DIMS, e.g. images:1x3x224x224")
    parsed: list[int | None] = []
    for d in dims.lower().split("x"):
        if d == "?":
            parsed.append(None)
        elif not (d.isascii() and d.isdigit() and int(d) > 0):  # isdigit alone takes '²'
            raise UsageError(f"--input-shape {text!r}: {d!r} is not a positive size or '?'")
        elif int(d) > INT64_MAX:
            raise UsageError(f"--input-shape {text!r}: {d} is larger than an int64")
        else:
            parsed.append(int(d))
    return name, tuple(parsed)


def parse_input_shapes(texts: Iterable[str]) -> dict[str, tuple]:
    """Every ``--input-shape``, by input name. One name with two different shapes is refused: the
    last would silently win."""
    shapes: dict[str, tuple] = {}
    for text in texts:
        name, dims = parse_input_shape(text)
        if shapes.get(name, dims) != dims:
            raise UsageError(f"--input-shape: {name!r} is given twice "
                             f"({_dims_text(shapes[name])} and {_dims_text(dims)})")
        shapes[name] = dims
    return shapes


def _dims_text(dims: tuple) -> str:
    return "x".join("?" if d is None else str(d) for d in dims)


class FilePath(click.Path):
    """A path that is not empty: pathlib reads "" as ".", the current folder, and the error would
    then name a folder the user never gave."""

    def convert(self, value, param, ctx):
        if value == "":
            self.fail("the path is empty; give a file path", param, ctx)
        return super().convert(value, param, ctx)


class OneValue(click.Option):
    """An option that takes one value. Click keeps the last of an option given twice and drops the
    first without a word; given twice with two values it is a usage error here (as --input-shape's
    two shapes for one input are), twice with the same value that value."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "multiple": True})

    def type_cast_value(self, ctx, value):
        given: dict = {}  # each value, cast, as the command line gave it first
        for text, cast in zip(value, super().type_cast_value(ctx, value)):
            given.setdefault(cast, text)
        if len(given) > 1:
            first, second = list(given.values())[:2]
            raise click.BadParameter(f"given twice ({first} and {second})", ctx, self)
        return next(iter(given), None)

    def process_value(self, ctx, value):
        value = super().process_value(ctx, value)
        return None if value == () else value  # not given: click's empty tuple of a repeatable option


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class ConvertByDefault(click.Group):
    """A group whose first argument, when it is not a subcommand, is IN of ``convert``: so
    ``onnx-fc2conv IN OUT`` keeps working next to ``onnx-fc2conv inspect IN``."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help", "--version"):
            args = ["convert", *args]
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        """Run the command; a usage error of the command is one line and exit 2, as are the tool's own
        errors; Ctrl-C or SIGTERM at any point of it is one line (click would say "Aborted!" and exit 1),
        after the clean-ups of what was being written have run."""
        try:
            with _sigterm_as_interrupt():
                return super().invoke(ctx)
        except click.UsageError as exc:  # a command's bad option or argument; click would print four lines
            _fail(f"{exc.format_message().removesuffix('.')} (see {_command_path(exc.ctx, ctx)} --help)", exc.exit_code)
        except Terminated:
            _say_and_exit("terminated", 128 + signal.SIGTERM)
        except KeyboardInterrupt:
            _say_and_exit("interrupted", 128 + signal.SIGINT)


def _command_path(ctx: click.Context | None, group: click.Context) -> str:
    """The program's own name and the subcommand, whatever name the program was run by. Click's
    parser raises some errors (an option missing its value) without the subcommand's context: the
    group's then names the subcommand."""
    if ctx is None and group.invoked_subcommand:
        return f"onnx-fc2conv {group.invoked_subcommand}"
    return "onnx-fc2conv" if ctx is None or ctx.parent is None else f"onnx-fc2conv {ctx.info_name}"


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt, not an Exception, so that no ``except Exception`` on
    the way swallows it, and every ``finally`` and clean-up runs as for Ctrl-C."""


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # only the main thread takes signals
        yield
        return

    def terminate(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.group(cls=ConvertByDefault, context_settings=CONTEXT, subcommand_metavar="[COMMAND] IN [OUT] ...")
@click.version_option(__version__, prog_name="onnx-fc2conv")
def main():
    """Rewrite the fully-connected layers of an ONNX model into convolutions and prove it.

    \b
      onnx-fc2conv IN OUT [options]       convert (same as: onnx-fc2conv convert IN OUT)
      onnx-fc2conv inspect IN [--json]    what would be converted, and why not; writes nothing
    """  # noqa: D301 (click keeps a paragraph that starts with a backspace character as written)


def rule_options(command):
    """The options that change which rules match: shared by convert and inspect."""
    command = click.option("--exclude", multiple=True, metavar="GLOB",
                           help="Leave FC nodes whose name matches this glob as they are (repeatable).")(command)
    command = click.option("--include", multiple=True, metavar="GLOB",
                           help="Convert only FC nodes whose name matches this glob (repeatable), "
                                "e.g. 'ffn*'.")(command)
    command = click.option("--vector-fc", is_flag=True,
                           help="Also turn Gemm/MatMul on plain [N,D] tensors (MLPs) into 1x1 Convs on "
                                "[N,D,1,1].")(command)
    command = click.option("--token-layout", cls=OneValue, type=click.Choice(sorted(TOKEN_LAYOUTS)),
                           help="Also turn MatMuls on [B,T,D] tokens (Transformer projections and FFNs) into "
                                "kernel-1 Convs: conv1d on [B,D,T], conv2d on [B,D,1,T] (tokens last, for "
                                "Apple ANE / Qualcomm HTP).")(command)
    command = click.option("--dense-pool", is_flag=True,
                           help="A global pool before an FC head becomes a stride-1 pool over its window, so a "
                                "pooled classifier returns a class map on larger inputs.")(command)
    command = click.option("--skip-rule", "skip_rules", multiple=True, type=click.Choice(RULE_NAMES),
                           help="Turn a rule off (repeatable).")(command)
    return click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME:DIMS",
                        help="Shape of an input (repeatable): fixes the feature-map sizes the graph leaves "
                             "symbolic, and (convert) the verifier's inputs, e.g. x:1x3x224x224; '?' keeps a "
                             "dim symbolic, e.g. x:?x3x48x192.")(command)


@main.command("convert", context_settings=CONTEXT, short_help="Convert IN, prove it, write OUT (the default).")
@click.argument("in_path", metavar="IN", type=FilePath(dir_okay=True, path_type=Path))
@click.argument("out_path", metavar="OUT", type=FilePath(path_type=Path))
@click.option("--keep-output-shape", is_flag=True,
              help="Drop-in replacement: same input and output shapes (one Flatten at each head output).")
@click.option("--output-stride", cls=OneValue, metavar="N|NxM",
              help="Make the output map step by N input pixels (a divisor of the backbone's total stride) instead "
                   "of the backbone's stride: the last strided layers run at stride 1 and later kernels are "
                   "dilated, proved against the original on crops.")
@click.option("--inplace", is_flag=True, help="Allow OUT to be IN: replace it (atomically, after verification).")
@click.option("--external-data", is_flag=True,
              help="Write the weights to OUT.data beside OUT. Automatic when IN has external data or the "
                   "weights pass 2 GB.")
@click.option("--fold-batch", is_flag=True,
              help="Fold the batch into a spatial axis around the converted convs, so ONNX Runtime runs "
                   "each as one GEMM at batch > 1 (its Conv runs one GEMM per image).")
@click.option("--no-verify", is_flag=True, help="Skip the ONNX Runtime proof (not recommended).")
@click.option("--provider", "providers", multiple=True, type=click.Choice(RUNTIMES), default=("cpu",),
              show_default=True, help="Runtime(s) to verify on, each also compared with CPU: ONNX Runtime's CPU "
                                      "(always runs) or CUDA provider, OpenVINO's CPU plugin (at f32).")
@click.option("--rtol", cls=OneValue, type=float,
              help="Relative tolerance (default by the precision used: fp32 1e-4, fp16 1e-2).")
@click.option("--atol", cls=OneValue, type=float,
              help="Absolute tolerance (default by the precision used: fp32 1e-5, fp16 2.5e-3).")
@rule_options
@click.option("--input-data", "input_data", cls=OneValue, metavar="FILE.npz", type=FilePath(path_type=Path),
              help="Arrays by input name (numpy.savez) for the original-size check; inputs it does not "
                   "name are synthesised.")
@click.option("--report-json", cls=OneValue, type=FilePath(path_type=Path), help="Also write the report as JSON here.")
@click.option("-q", "--quiet", is_flag=True, help="Print errors only (no report, no progress on stderr).")
@click.option("-v", "--verbose", is_flag=True, help="Print every node, every check and the inputs used.")
def convert_command(in_path, out_path, inplace, external_data, fold_batch, no_verify, providers, rtol, atol,
                    input_data, report_json, quiet, verbose, **rule_flags):
    """Rewrite the fully-connected layers of the ONNX model IN into convolutions, prove the rewrite
    with ONNX Runtime, and write the result to OUT.

    By default the Flatten in front of each FC head is removed, so the model takes any input at
    least as large as the original and returns one output per window. IN is never modified; OUT is
    written only when verification passes.

    Steps that take more than a second, and every step on a large model, are shown on stderr.

    Exit codes: 0 converted (or nothing to convert), 1 verification failed or could not run (the
    original model fails on the verifier's inputs: pass --input-shape / --input-data), 2 bad input
    or usage.
    """
    try:
        check_tolerances(rtol, atol)
        if report_json is not None:  # fail before the work, not after
            check_report_path(report_json, in_path, out_path, input_data)
        result = convert(in_path, out_path, options=_options(rule_flags), input_data=input_data, verify=not no_verify,
                         providers=providers, rtol=rtol, atol=atol, inplace=inplace, external_data=external_data,
                         fold_batch=fold_batch, show_progress=not quiet)
    except CouldNotVerify as exc:
        _fail(f"{exc}; {out_path} not written", exc.exit_code)
    except VerificationFailed as exc:
        if exc.result is not None and not quiet:
            click.echo(exc.result.report.render_text(verbose=True))
        _write_json(report_json, exc.result.report if exc.result is not None else None)
        _fail(f"{exc}; {out_path} not written", exc.exit_code)
    except Fc2ConvError as exc:
        _fail(str(exc), exc.exit_code)
    if not quiet:
        click.echo(result.report.render_text(verbose=verbose))
        click.echo(f"wrote {out_path}")
    _write_json(report_json, result.report)


@main.command("inspect", context_settings=CONTEXT, short_help="Show what would convert, and why not; write nothing.")
@click.argument("in_path", metavar="IN", type=FilePath(dir_okay=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@rule_options
def inspect_command(in_path, as_json, **rule_flags):
    """Show each FC-like node of the ONNX model IN: op, input and weight shapes, what feeds it, and
    the rule that will convert it or the reason code that stops it. Nothing is written.

    Exit codes: 0 shown (also when nothing would convert), 2 bad input or usage.
    """
    try:
        result = inspect(in_path, options=_options(rule_flags))
    except Fc2ConvError as exc:
        _fail(str(exc), exc.exit_code)
    click.echo(result.to_json() if as_json else result.render_text())


def _options(rule_flags: dict) -> Options:
    """The rule options from their flags, which click names after the :class:`Options` fields."""
    return Options(input_shapes=parse_input_shapes(rule_flags.pop("input_shapes")), **rule_flags)


def _write_json(path: Path | None, report) -> None:
    if path is not None and report is not None:
        try:
            write_text_atomically(path, report.to_json() + "\n")
        except OutputError as exc:
            _fail(str(exc), exc.exit_code)
        except OSError as exc:
            _fail(f"{path}: cannot write the report ({exc.strerror})", 2)


def _fail(message: str, code: int) -> None:
    _say_and_exit(f"error: {message}", code)


def _say_and_exit(message: str, code: int) -> None:
    click.echo(f"onnx-fc2conv: {message}", err=True)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
