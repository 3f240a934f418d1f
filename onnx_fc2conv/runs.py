"""Where maps start and end: entering a layout once per tensor, restoring it once per map, and the
runs of token or vector layers in between.

A run starts where a tensor is put into a layout (``token_matmul``, ``vector_fc``), goes on through
converted FC layers and pointwise ops, and ends wherever its map meets an op that needs the original
layout (a residual Add, LayerNorm, an attention Reshape, a graph output). Layers that read the same
tensor share its entry (Q, K and V projections: one Transpose), so they are one run; so are maps that
meet in one op (an Add of two maps). A head's flat map (no run) is restored with a Flatten.

Where a Transpose the bridge added meets a Transpose of the model's own that undoes it (MLP-Mixer's
token mixing is ``Transpose(0,2,1) -> MLP -> Transpose(0,2,1)``, and a conv1d run enters and leaves
with the same perm), both go: :meth:`LayoutBridge.cancel_inverse_transposes`.
"""
from __future__ import annotations

from collections.abc import Sequence

import onnx

from .graph import attr, consumers, is_onnx_op, producers, rename_input
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
        self._transposes: dict[str, int] = {}  # output of a Transpose the bridge added -> its run

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

    def record(self, label: str, kind: str, inputs: list[str], outputs: list[str],
               removed: Sequence[onnx.NodeProto] = (), made: Sequence[onnx.NodeProto] = ()) -> None:
        """A rewritten node that reads maps ``inputs`` and writes maps ``outputs`` joins their run;
        the Reshapes and Transposes among the nodes it replaces (``removed``), less those among the
        nodes written in their place (``made``), count as removed there."""
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
        net = lambda op: sum(is_onnx_op(n, op) for n in removed) - sum(is_onnx_op(n, op) for n in made)  # noqa: E731
        report.reshapes_removed += net("Reshape")
        report.transposes_removed += net("Transpose")

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

    # ---- Transposes that cancel ----------------------------------------------------------------
    def cancel_inverse_transposes(self, graph: onnx.GraphProto) -> None:
        """Remove each Transpose the bridge added together with the model's own Transpose next to it
        when the two perms compose to the identity, and the tensor between them has no other reader
        and is no graph output: the readers of the pair's output read its input instead. Where the
        pair's output is a graph output (a ConvNeXt block's closing Transpose at the end of a backbone),
        its input takes that name, when it is a node's output and no graph output itself. The run
        counts one Transpose fewer added and one of the model's removed."""
        producer, readers = producers(graph), consumers(graph)
        outputs = {o.name for o in graph.output}
        gone: set[int] = set()
        for out, run in self._transposes.items():
            added = producer.get(out)
            pair = None if added is None or id(added) in gone else self._inverse_pair(added, producer, readers, outputs)
            if pair is None:
                continue
            first, second = pair
            source, result = first.input[0], second.output[0]
            moved = readers.pop(result, [])
            for reader in moved:
                rename_input(reader, result, source)
            readers[source] = [r for r in readers[source] if r is not first] + moved
            if result in outputs:
                self._rename(source, result, producer, readers)
            gone.update((id(first), id(second)))
            report = self._reports[self._find(run)]
            report.transposes_added -= 1
            report.transposes_removed += 1
        if gone:
            kept = [n for n in graph.node if id(n) not in gone]
            del graph.node[:]
            graph.node.extend(kept)

    def _inverse_pair(self, added: onnx.NodeProto, producer: dict[str, onnx.NodeProto],
                      readers: dict[str, list[onnx.NodeProto]], outputs: set[str]
                      ) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
        """(first, second): ``added`` and the model's Transpose just before or after it that undoes it."""
        before = producer.get(added.input[0])
        after = readers.get(added.output[0], [])
        candidates = []
        if before is not None and [r is added for r in readers[added.input[0]]] == [True]:
            candidates.append((before, added))
        if len(after) == 1:
            candidates.append((added, after[0]))
        for first, second in candidates:
            model_own = second if first is added else first
            source, result = first.input[0], second.output[0]
            named = result not in outputs or (source in producer and source not in outputs)
            if (is_onnx_op(model_own, "Transpose") and model_own.output[0] not in self._transposes
                    and first.output[0] not in outputs and named and _undo(first, second)):
                return first, second
        return None

    @staticmethod
    def _rename(old: str, new: str, producer: dict[str, onnx.NodeProto],
                readers: dict[str, list[onnx.NodeProto]]) -> None:
        """Tensor ``old`` is called ``new`` by the node that writes it and by its readers."""
        node = producer.pop(old)
        node.output[list(node.output).index(old)] = new
        producer[new] = node
        readers[new] = readers.pop(old, [])
        for reader in readers[new]:
            rename_input(reader, old, new)

    # ---- report --------------------------------------------------------------------------------
    def reports(self) -> list[RunReport]:
        return [r for i, r in enumerate(self._reports) if self._parent[i] == i]

    @property
    def entered(self) -> list[tuple[str, str]]:
        """(tensor, layout name) of every tensor put into a layout."""
        return list(self._entered)

    def _count(self, run: int, nodes: list[onnx.NodeProto]) -> None:
        report = self._reports[run]
        self._transposes.update((n.output[0], run) for n in nodes if n.op_type == "Transpose")
        report.transposes_added += sum(n.op_type == "Transpose" for n in nodes)
        report.unsqueezes_added += sum(n.op_type == "Unsqueeze" for n in nodes)
        report.squeezes_added += sum(n.op_type == "Squeeze" for n in nodes)

    def _find(self, run: int) -> int:
        while self._parent[run] != run:
            run = self._parent[run]
        return run


def _undo(first: onnx.NodeProto, second: onnx.NodeProto) -> bool:
    """Whether Transpose ``second`` after Transpose ``first`` gives back ``first``'s input: output axis
    ``i`` of the pair is input axis ``p1[p2[i]]`` (no perm: the axes reversed)."""
    p1, p2 = attr(first, "perm"), attr(second, "perm")
    if p1 is None and p2 is None:
        return True  # reversed twice
    rank = len(p1 if p1 is not None else p2)
    p1 = list(p1) if p1 is not None else list(range(rank))[::-1]
    p2 = list(p2) if p2 is not None else list(range(rank))[::-1]
    return len(p1) == len(p2) and all(p1[p2[i]] == i for i in range(rank))
