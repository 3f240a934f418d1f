"""What a conversion did and what the verifier measured, as dataclasses rendered to text or JSON."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Literal

from .geometry import Geometry
from .rounding import Reordering

NodeStatus = Literal["converted", "skipped", "blocked"]


# What a converted model is: fully convolutional (the default), or a drop-in with the same output shapes.
Mode = Literal["fully_convolutional", "keep_output_shape"]

@dataclass
class NodeReport:
    """One FC-like node (or a node where a converted path had to stop)."""

    node: str
    op: str
    status: NodeStatus
    rule: str | None = None
    reason: str | None = None
    message: str = ""
    detail: str = ""

    def line(self) -> str:
        if self.status == "converted":
            return f"converted  {self.node} ({self.op}) by {self.rule}: {self.detail}"
        tag = "skipped " if self.status == "skipped" else "blocked "
        return f"{tag}   {self.node} ({self.op}) [{self.reason}]: {self.message}"


@dataclass
class OutputChange:
    name: str
    before: list | None  # None: shape inference gives no shape
    after: list | None


@dataclass
class InputSummary:
    """An input the verifier fed, so a user can reproduce the run."""

    name: str
    shape: list[int]
    dtype: str
    min: float
    max: float
    source: str  # "random normal, seed 0", "file", "ones (mask)", "index range [0, 50)", ...

    def line(self) -> str:
        values = "empty" if 0 in self.shape else f"in [{self.min:g}, {self.max:g}]"
        return f"  input {self.name}: {self.dtype}[{','.join(map(str, self.shape))}] {values} ({self.source})"


CHECK_WIDTH = 24  # the check column of a report whose labels are all this long or shorter


@dataclass
class CheckResult:
    """One comparison: an output of the converted model against the original's values."""

    check: str  # "original size", "sliding window 64x64", "cuda vs cpu"
    provider: str
    output: str
    passed: bool
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    needed_atol: float = 0.0  # the smallest atol that passes at the configured rtol
    compared: int = 0  # number of values (or window positions) compared
    note: str = ""
    allowed_atol: float = 0.0  # the atol it was held to: the result's, or rounding's allowance (note)

    def line(self, provider_width: int = 5, check_width: int = CHECK_WIDTH) -> str:
        """The check in one line; ``provider_width`` and ``check_width`` align the runtimes and the
        outputs of a report's checks, whatever their labels' and runtimes' lengths."""
        provider = self.provider.ljust(provider_width)
        check = self.check.ljust(check_width)
        if self.compared == 0:
            return f"  {check} {provider} {self.output}: {self.note}"
        status = "ok  " if self.passed else "FAIL"
        return (f"  {status} {check} {provider} {self.output}: max abs {self.max_abs_error:.3g}, "
                f"max rel {self.max_rel_error:.3g}, needs atol >= {self.needed_atol:.3g} ({self.compared} compared)"
                + (f"; {self.note}" if self.note else ""))


@dataclass
class VerificationResult:
    passed: bool
    rtol: float
    atol: float
    checks: list[CheckResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    inputs: list[InputSummary] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what a user of the model needs to know to run it
    # The least precise float type the original computes its outputs in, which chose the default
    # tolerances, and what decided it ("behind Cast 'x'"); "" where no output is a float.
    precision: str = ""
    precision_source: str = ""
    # Per output of the converted model: the converted layers before it, whose rounding its atol allows.
    reorderings: dict[str, Reordering] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def max_abs_error(self) -> float:
        return max((c.max_abs_error for c in self.checks), default=0.0)

    def summary(self) -> str:
        ran = [c for c in self.checks if c.compared]
        windows = sum(c.compared for c in ran if c.check.startswith("sliding window"))
        head = "verification passed" if self.passed else "VERIFICATION FAILED"
        text = (f"{head}: {len(ran)} check{'s' * (len(ran) != 1)}, max abs error {self.max_abs_error:.3g} "
                f"(rtol {self.rtol:g}, atol {self.atol:g})")
        if windows:
            text += f", {windows} window positions matched"
        cells = sum(c.compared for c in ran if c.check.startswith("stride ") and " crops " in c.check)
        if cells:
            text += f", {cells} finer-map cells matched the original on crops"
        crops = sum(c.compared for c in ran if c.check.startswith("input crops"))
        if crops:
            text += f", {crops} input crops matched"
        lengths = sorted({c.check.rsplit(" ", 1)[1] for c in ran if c.check.startswith("sequence length")}, key=int)
        if lengths:
            text += f", also at sequence lengths {' and '.join(lengths)}"
        return text

    def tolerance_line(self) -> str:
        """Which precision chose the tolerances, and why (an output type alone goes unsaid)."""
        if not self.precision or self.precision_source.startswith("the type of output"):
            return ""
        return f"  tolerances: {self.precision} ({self.precision_source}), rtol {self.rtol:g} atol {self.atol:g}"

    def render_text(self, verbose: bool = False) -> str:
        lines = [self.summary()]
        if tolerances := self.tolerance_line():
            lines.append(tolerances)
        width = max([5, *(len(c.provider) for c in self.checks)])  # "openvino" is longer than "cpu"
        check_width = max([CHECK_WIDTH, *(len(c.check) for c in self.checks)])  # "stride 2x2 phase 0 128x128"
        for c in self.checks:
            if verbose or not c.passed:
                lines.append(c.line(width, check_width))
        lines.extend(f"  skipped: {s}" for s in self.skipped)
        lines.extend(f"  note: {n}" for n in self.notes)
        if verbose:
            lines.extend(i.line() for i in self.inputs)
        return "\n".join(lines)


@dataclass
class RunReport:
    """A maximal run of token or vector layers done in a channels-first layout, and what it cost."""

    layout: str  # "conv1d", "conv2d" or "vector"
    starts: list[str] = field(default_factory=list)  # tensors put into the layout
    converted: list[str] = field(default_factory=list)  # FC layers that became Convs
    passed_through: list[str] = field(default_factory=list)  # pointwise ops that run on the map
    ends: list[str] = field(default_factory=list)  # ops (or "output NAME") that get the original layout back
    transposes_added: int = 0
    unsqueezes_added: int = 0  # size-1 axes inserted (conv2d, vector) on entry
    squeezes_added: int = 0  # and removed again on restore
    # the model's own: a GPT-2 layer's two Reshapes, a Transpose that undid one the run would add
    transposes_removed: int = 0
    reshapes_removed: int = 0

    def absorb(self, other: RunReport) -> None:
        for name in ("starts", "converted", "passed_through", "ends"):
            getattr(self, name).extend(getattr(other, name))
        self.transposes_added += other.transposes_added
        self.unsqueezes_added += other.unsqueezes_added
        self.squeezes_added += other.squeezes_added
        self.transposes_removed += other.transposes_removed
        self.reshapes_removed += other.reshapes_removed

    def line(self) -> str:
        return (f"run ({self.layout}) {', '.join(self.starts)} -> {', '.join(dict.fromkeys(self.ends))}: "
                f"{len(self.converted)} FC and {len(self.passed_through)} pointwise ops, "
                f"added {self.transposes_added} Transpose, {self.unsqueezes_added} Unsqueeze and "
                f"{self.squeezes_added} Squeeze" + self.removed_text())

    def removed_text(self) -> str:
        """``, removed N Transpose and M Reshape`` of the model's own; empty when none."""
        if not (self.transposes_removed or self.reshapes_removed):
            return ""
        return f", removed {self.transposes_removed} Transpose and {self.reshapes_removed} Reshape"


@dataclass
class StrideReport:
    """``--output-stride``: the maps' stride before and after (input pixels per cell, per spatial axis),
    the layers that now run at a finer stride, the kernels dilated, the padding margin (pixels from a
    border within which a cell can differ from the original run on its crop), an opset upgrade."""

    before: list[int]
    after: list[int]
    margin: list[int]
    finer_strides: list[str] = field(default_factory=list)
    dilated: list[str] = field(default_factory=list)
    opset_upgraded: list[int] | None = None

    def lines(self) -> list[str]:
        x = lambda sizes: "x".join(map(str, sizes))  # noqa: E731
        changed = (f"{len(self.finer_strides)} strided layer{'s' * (len(self.finer_strides) != 1)} finer "
                   f"({', '.join(self.finer_strides)}), {len(self.dilated)} kernel{'s' * (len(self.dilated) != 1)} "
                   "dilated" if self.finer_strides else "the backbone's own stride, nothing changed")
        lines = [f"output stride {x(self.before)} -> {x(self.after)}: {changed}; padding margin {x(self.margin)} px"]
        if self.opset_upgraded:
            lines.append(f"opset upgraded {self.opset_upgraded[0]} -> {self.opset_upgraded[1]} (onnx's "
                         "version_converter) for the dilated pools")
        return lines


@dataclass
class ConversionReport:
    model: str
    opset: int
    mode: Mode
    nodes: list[NodeReport] = field(default_factory=list)
    outputs: list[OutputChange] = field(default_factory=list)
    symbolic_inputs: dict[str, list | None] = field(default_factory=dict)
    geometry: dict[str, Geometry] = field(default_factory=dict)  # by output map: the input box of each cell
    fully_convolutional: bool = False
    flattens_added: int = 0
    transposes_added: int = 0
    transposes_removed: int = 0  # the model's own, where one undid a Transpose a run would add
    runs: list[RunReport] = field(default_factory=list)
    output_stride: StrideReport | None = None
    notes: list[str] = field(default_factory=list)
    verification: VerificationResult | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def converted(self) -> list[NodeReport]:
        return [n for n in self.nodes if n.status == "converted"]

    @property
    def fc_nodes(self) -> int:
        return sum(1 for n in self.nodes if is_fc_row(n.status, n.op))

    def _why_sizes_kept(self) -> str:
        if any(n.status == "blocked" for n in self.nodes):
            return "see blocked nodes"
        if self.notes:
            return "see the notes"
        return "no input's spatial size reaches the converted maps"

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def render_text(self, verbose: bool = False) -> str:
        lines = [f"{self.model}: converted {len(self.converted)} of {self.fc_nodes} FC nodes (opset {self.opset})"]
        if not self.converted:
            lines[0] += " -- nothing convertible, the model is unchanged"
        if verbose:
            lines.extend("  " + n.line() for n in self.nodes)
        else:  # compact: blocked nodes by name (they change what the model can do), skips by reason
            lines.extend("  " + n.line() for n in self.nodes if n.status == "blocked")
            reasons = Counter(n.reason for n in self.nodes if n.status == "skipped")
            if reasons:
                lines.append("  not converted: " + ", ".join(f"{count} {code}" for code, count in reasons.most_common())
                             + " (-v lists each node)")
        for o in self.outputs:
            if o.before != o.after:
                lines.append(f"  output {o.name}: {format_dims(o.before)} -> {format_dims(o.after)}")
        for name, dims in self.symbolic_inputs.items():
            lines.append(f"  input {name} now takes {format_dims(dims)} (spatial size >= the original)")
        lines.extend(f"  windows of {name}: {geometry.line()}" for name, geometry in self.geometry.items())
        heads_converted = len(self.converted) > sum(len(r.converted) for r in self.runs)
        if heads_converted and self.mode == "fully_convolutional" and not (self.fully_convolutional and
                                                                           self.symbolic_inputs):
            lines.append(f"  not fully convolutional: input sizes kept ({self._why_sizes_kept()})")
        if verbose or len(self.runs) <= 3:
            lines.extend("  " + r.line() for r in self.runs)
        elif self.runs:  # compact: one line for all runs
            total = RunReport("all")
            for run in self.runs:
                total.absorb(run)
            lines.append(f"  {len(self.runs)} runs ({', '.join(sorted({r.layout for r in self.runs}))}): "
                         f"{len(total.converted)} FC layers, added {total.transposes_added} Transpose, "
                         f"{total.unsqueezes_added} Unsqueeze and {total.squeezes_added} Squeeze"
                         f"{total.removed_text()} (-v lists each run)")
        if self.output_stride is not None:
            lines.extend("  " + line for line in self.output_stride.lines())
        if self.flattens_added or self.transposes_added or self.transposes_removed:
            lines.append(f"  added {self.flattens_added} Flatten and {self.transposes_added} Transpose nodes"
                         + (f", removed {self.transposes_removed} Transpose nodes of the model's own"
                            if self.transposes_removed else ""))
        lines.extend(f"  note: {n}" for n in self.notes)
        if self.verification is not None:
            lines.append(self.verification.render_text(verbose))
        if verbose and self.seconds:
            lines.append("  time: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items()))
        return "\n".join(lines)


def is_fc_row(status: str, op: str) -> bool:
    """Whether a report row counts as an FC node: every row but a blocked op that is not itself an
    FC layer (a Concat or Softmax where a converted map stopped)."""
    return status != "blocked" or op in ("Gemm", "MatMul")


def dims_list(dims) -> list | None:
    """Dims as a list for a report field (None: no shape known)."""
    return None if dims is None else list(dims)


def format_dims(dims) -> str:
    if dims is None:
        return "[?]"
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"
