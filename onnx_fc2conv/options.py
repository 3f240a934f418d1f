"""The rule options: which FC layers convert, and into what. Declared once here, and shared by
:func:`onnx_fc2conv.convert`, :func:`onnx_fc2conv.inspect` and the command line.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, fields, replace
from typing import Any

import onnx

from .errors import Fc2ConvError, UsageError
from .graph import Dim
from .layouts import TOKEN_LAYOUTS
from .report import Mode
from .rules import RULE_NAMES
from .safety import check_flags


@dataclass(frozen=True)
class Options:
    """``keep_output_shape``: a drop-in model (a Flatten back at each head output). ``dense_pool``: a
    global pool before a head becomes a stride-1 pool over its window, so a pooled classifier returns
    a class map. ``skip_rules``: rules turned off by name. ``include``/``exclude``: node-name globs that
    pick FC layers. ``input_shapes``: input name -> dims (``None`` keeps a dim symbolic), which pin
    sizes for the verifier and tell the rules the feature-map size the graph leaves symbolic.
    ``token_layout`` ("conv1d" or "conv2d"): MatMuls on ``[B,T,D]`` tokens become kernel-1 Convs.
    ``vector_fc``: FC layers on plain ``[N,D]`` tensors become 1x1 Convs. ``output_stride`` (N, or one
    size per spatial axis; ``"4x2"`` from the command line): the maps step by N input pixels instead of
    the backbone's stride (fully convolutional mode only; see :mod:`onnx_fc2conv.stride`)."""

    keep_output_shape: bool = False
    dense_pool: bool = False
    skip_rules: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    input_shapes: dict[str, tuple[Dim, ...]] = field(default_factory=dict)
    token_layout: str | None = None
    vector_fc: bool = False
    output_stride: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_stride", parse_output_stride(self.output_stride))
        if self.output_stride is not None and self.keep_output_shape:
            raise UsageError("--output-stride needs the fully convolutional mode, not --keep-output-shape")
        for name in ("skip_rules", "include", "exclude"):
            object.__setattr__(self, name, _names(name, getattr(self, name)))
        check_flags(**{name: getattr(self, name) for name in ("keep_output_shape", "dense_pool", "vector_fc")})
        if not isinstance(self.input_shapes or {}, dict):
            raise UsageError(f"option input_shapes takes a dict of input name -> dims, not {self.input_shapes!r}")
        object.__setattr__(self, "input_shapes", dict(self.input_shapes or {}))
        for name, dims in self.input_shapes.items():
            if not isinstance(dims, tuple | list) or not all(
                    d is None or isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
                raise UsageError(f"option input_shapes: {name!r} takes a tuple of dims (ints >= 0, None for a free "
                                 f"dim), not {dims!r}")
        unknown = sorted(set(self.skip_rules) - set(RULE_NAMES))
        if unknown:
            raise Fc2ConvError(f"unknown rule {unknown[0]!r}; rules are: {', '.join(RULE_NAMES)}")
        if self.token_layout is not None and self.token_layout not in TOKEN_LAYOUTS:
            raise Fc2ConvError(f"unknown token layout {self.token_layout!r}; "
                               f"layouts are: {', '.join(TOKEN_LAYOUTS)}")

    @property
    def mode(self) -> Mode:
        return "keep_output_shape" if self.keep_output_shape else "fully_convolutional"

    @classmethod
    def from_keywords(cls, options: Options | None, keywords: dict[str, Any]) -> Options:
        """``options`` (or the defaults) with the named fields of ``keywords`` set; a name that is
        not an option is an error, in one line."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(keywords) - set(names))
        if unknown:
            raise Fc2ConvError(f"unknown option {unknown[0]!r}; options are: {', '.join(names)}")
        return replace(options or cls(), **keywords)

    def selects(self, node: onnx.NodeProto) -> bool:
        """Whether ``--include``/``--exclude`` leave the FC layer ``node`` to the rules."""
        name = node.name or node.output[0]
        if self.include and not any(fnmatch.fnmatchcase(name, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)


def parse_output_stride(value) -> tuple[int, ...] | None:
    """``4``, ``"4"``, ``"4x2"`` or ``(4, 2)`` as a tuple of positive sizes (one: every spatial axis)."""
    if value is None:
        return None
    malformed = UsageError(f"--output-stride {value!r}: expected a positive size N or NxM, e.g. 4 or 4x2")
    sizes = value
    if isinstance(value, str):
        parts = value.lower().split("x")
        if not all(p.isascii() and p.isdigit() for p in parts):
            raise malformed
        if any(len(p.lstrip("0")) >= 10 for p in parts):  # int() of a long one is slow, or refused past 4300 digits
            raise UsageError(f"--output-stride {value[:20]!r}{'...' if len(value) > 20 else ''}: "
                             "larger than any backbone's stride")
        sizes = tuple(int(p) for p in parts)
    sizes = (sizes,) if isinstance(sizes, int) else sizes
    if not isinstance(sizes, tuple | list) or not sizes or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
        raise malformed
    return tuple(sizes)


def _names(option: str, value) -> tuple[str, ...]:
    """A tuple of names or globs; one string is one name (``exclude="fc1"``), not its letters."""
    names = (value,) if isinstance(value, str) else value
    if not isinstance(names, tuple | list | set | frozenset) or not all(isinstance(n, str) for n in names):
        raise UsageError(f"option {option} takes names or globs (strings), not {value!r}")
    return tuple(names)
