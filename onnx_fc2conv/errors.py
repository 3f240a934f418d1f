"""Typed errors. Every error the tool raises on purpose is a :class:`Fc2ConvError`.

The CLI maps them to exit codes: :class:`VerificationFailed` and :class:`CouldNotVerify` exit 1
(the rewrite could not be proven, nothing is written); every other error exits 2 (bad input or usage).
"""
from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message (or its type): what a one-line error shows."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


class Fc2ConvError(Exception):
    """Base class of every error onnx-fc2conv raises on purpose."""

    exit_code = 2


class InvalidModelError(Fc2ConvError):
    """The input is not a model the tool can read: missing, truncated, not ONNX, invalid graph."""


class UnsafeModelError(InvalidModelError):
    """The model refers to files outside its own folder (external data path traversal)."""


class OutputError(Fc2ConvError):
    """The output cannot be written where asked (missing folder, OUT == IN, ...)."""


class UsageError(Fc2ConvError, ValueError):
    """An option or argument value is malformed (e.g. ``--input-shape``, a cell of ``cell_box``); a
    ValueError too, as Python code expects of a bad argument."""


class OutputStrideError(Fc2ConvError):
    """``--output-stride`` cannot be exact on this model; ``code`` is one of stride.STRIDE_REASONS.
    Raised before anything is written."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{message} [{code}]")
        self.code = code


class VerificationFailed(Fc2ConvError):
    """The converted model does not compute what the original computes. Carries ``.result``."""

    exit_code = 1

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


class CouldNotVerify(Fc2ConvError):
    """The original model itself cannot run on the inputs the verifier made: no proof is possible."""

    exit_code = 1
