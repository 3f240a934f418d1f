"""Where maps start and end: entering a layout once per tensor, restoring it once per map, and the
runs of token or vector layers in between.

A run starts where a tensor is put into a layout (``token_matmul``, ``vector_fc``), goes on through
converted FC layers and pointwise ops, and ends wherever its map meets an op that needs the original
layout (a residual Add, LayerNorm, an attention Reshape, a graph output). Layers that read the same
tensor share its entry (Q, K and V projections: one Transpose), so they are one run; so are maps that
meet in one op (an Add of two maps). A head's flat map (no run) is restored with a Flatten.
"""
from __future__ import annotations

import onnx

from .graph import rename_input
from .index import GraphIndex
from .layouts import Layout
from .report import RunReport


class LayoutBridge:
    """The entries and restores of one graph's maps, and the runs they delimit."""

    def __init__(self, index: GraphIndex):
        self.index = index
        self.flattens_added = 0
        self._reports: list[RunReport] = []
        self._parent: list[int] = []
        self._run_of: dict[str, int] = {}  # map tensor -> its run
        self._entered: dict[tuple[str, str], str] = {}  # (tensor, layout name) -> the map of it
        self._restored: dict[str, str] = {}  # map -> the same values in the original layout

    # ---- entering ------------------------------------------------------------------------------
    def enter(self, name: str, layout: Layout, nodes: list[onnx.NodeProto]
              ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
        """Make ``nodes`` read ``name`` in ``layout``; returns the nodes to insert (the entry first,
        the first time ``name`` enters this layout), the entry's constants and the map's name."""
        key = (name, layout.name)
        entry_nodes: list[onnx.NodeProto] = []
        inits: list[onnx.TensorProto] = []
        if key not in self._entered:
            entry_nodes, inits, mapped = layout.enter(self.index, name)
            self._entered[key] = mapped
            run = len(self._reports)
            self._reports.append(RunReport(layout.name, starts=[name]))
            self._parent.append(run)
            self._run_of[mapped] = run
            self._count(run, entry_nodes)
        for node in nodes:
            rename_input(node, name, self._entered[key])
        return entry_nodes + nodes, inits, self._entered[key]

    def record(self, label: str, kind: str, inputs: list[str], outputs: list[str]) -> None:
        """A rewritten node that reads maps ``inputs`` and writes maps ``outputs`` joins their run."""
        runs = sorted({self._find(self._run_of[i]) for i in inputs if i in self._run_of})
        if not runs:
            return
        root = runs[0]
        for other in runs[1:]:
            self._reports[root].absorb(self._reports[other])
            self._parent[other] = root
        for out in outputs:
            self._run_of[out] = root
        report = self._reports[root]
        (report.converted if kind == "fc" else report.passed_through).append(label)

    def cancel(self, name: str, reader: str) -> None:
        """The model's own ``reader`` turns map ``name`` into what the map already is (ConvNeXt's
        closing Transpose): it is removed, and the run ends there."""
        report = self._reports[self._find(self._run_of[name])]
        report.ends.append(reader)
        report.transposes_removed += 1

    # ---- restoring -----------------------------------------------------------------------------
    def restore(self, name: str, layout: Layout, reader: str
                ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
        """Nodes that give map ``name`` its original layout for ``reader``, and the restored tensor's
        name; once per map: a later reader gets the same tensor and no new nodes."""
        nodes: list[onnx.NodeProto] = []
        inits: list[onnx.TensorProto] = []
        if name not in self._restored:
            nodes, inits, self._restored[name] = layout.restore(self.index, name)
        run = self._run_of.get(name)
        if run is None:
            self.flattens_added += sum(n.op_type == "Flatten" for n in nodes)
        else:
            run = self._find(run)
            self._reports[run].ends.append(reader)
            self._count(run, nodes)
        return nodes, inits, self._restored[name]

    def in_run(self, name: str) -> bool:
        return name in self._run_of

    # ---- report --------------------------------------------------------------------------------
    def reports(self) -> list[RunReport]:
        return [r for i, r in enumerate(self._reports) if self._parent[i] == i]

    @property
    def entered(self) -> list[tuple[str, str]]:
        """(tensor, layout name) of every tensor put into a layout."""
        return list(self._entered)

    def _count(self, run: int, nodes: list[onnx.NodeProto]) -> None:
        report = self._reports[run]
        report.transposes_added += sum(n.op_type == "Transpose" for n in nodes)
        report.unsqueezes_added += sum(n.op_type == "Unsqueeze" for n in nodes)
        report.squeezes_added += sum(n.op_type == "Squeeze" for n in nodes)

    def _find(self, run: int) -> int:
        while self._parent[run] != run:
            run = self._parent[run]
        return run
