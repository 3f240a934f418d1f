"""The layouts a converted tensor ("map") can be in, and the nodes that take a tensor into and out of one.

A map is the channels-first tensor a Conv reads and writes. Where the original model held

* ``[N, F]`` after a flattened feature map: ``flat``, ``[N, F, *S]`` (the head's window grid);
* ``[N, D]`` in a plain MLP: ``vector``, ``[N, D, 1, 1]``;
* ``[B, T, D]`` tokens: ``conv1d``, ``[B, D, T]``, or ``conv2d``, ``[B, D, 1, T]`` (tokens on the last
  axis: Qualcomm HTP runs a height-1 conv far faster than a width-1 one, pytorch/executorch#13091);
* ``[N, H, W, C]`` channels-last maps (ConvNeXt's MLP): ``channels_last``, the ``[N, C, H, W]`` map.

Each layout is a list of steps from the original tensor into the map, and the steps back, in the
plainest ops that do the job, since downstream compilers pattern-match what we write: ``Unsqueeze`` /
``Squeeze`` for a size-1 axis (never a ``Reshape``), ``Transpose`` only where axes really move, and no
intermediate of a higher rank than the map. (OpenVINO 2026.4's ShuffleChannelsFusion threw "Cannot get
length of dynamic dimension" on torch's encoder layer with a dynamic T when conv2d restored the tokens
with ``Transpose(0,3,2,1)`` + ``Reshape``; with ``Squeeze`` + ``Transpose`` it compiles.) So conv2d is
conv1d's ``Transpose(0,2,1)`` and an ``Unsqueeze(2)``. The same steps, applied with numpy, turn a
constant operand that broadcast against the original tensor into one that broadcasts against the
map, so a bias ``[D]`` (``[D,1]`` for conv1d tokens), a ``[1,1,D]`` scale or a ``[T,D]`` position
table (``[D,T]``) all follow the tokens exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .index import GraphIndex

Step = tuple[str, tuple[int, ...]]  # ("transpose", perm) | ("unsqueeze", axes) | ("squeeze", axes) | ("flatten", ())


@dataclass(frozen=True)
class Layout:
    name: str
    original_rank: int  # rank of the tensor the map stands for
    spatial_rank: int  # rank of the map minus 2
    into: tuple[Step, ...]
    back: tuple[Step, ...]

    @property
    def keeps_channel_axis(self) -> bool:
        """Whether axis 1 of the original tensor is axis 1 of the map (not so for tokens)."""
        return self.original_rank == 2

    def constant(self, value: np.ndarray) -> np.ndarray | None:
        """``value``, which broadcast against the original tensor, as one that broadcasts against the
        map; None when it differs per sample (it has a batch axis) or has a higher rank."""
        if value.ndim == 0 or (value.size == 1 and value.ndim <= self.original_rank):
            return value
        if value.ndim > self.original_rank:
            return None
        aligned = value.reshape((1,) * (self.original_rank - value.ndim) + value.shape)
        if aligned.shape[0] != 1:
            return None
        for kind, arg in self.into:
            if kind == "transpose":
                aligned = aligned.transpose(arg)
            else:  # "unsqueeze": into steps only insert axes
                aligned = np.expand_dims(aligned, arg)
        added = self.original_rank - value.ndim  # leading 1s the alignment added: drop them again
        while added and aligned.ndim > 1 and aligned.shape[0] == 1:
            aligned, added = aligned[0], added - 1
        return aligned

    def enter(self, index: GraphIndex, name: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
        """Nodes (and their shape constants) that put tensor ``name`` into this layout; the map's name."""
        return _steps(index, name, self.into, f"{name}_{self.name}")

    def restore(self, index: GraphIndex, name: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
        """Nodes that give map ``name`` its original layout again; the restored tensor's name."""
        return _steps(index, name, self.back, f"{name}_{'flat' if self.name == 'flat' else 'restored'}")


def flat(spatial_rank: int) -> Layout:
    """A head's map: its Flatten is what the original tensor was."""
    return Layout("flat", 2, spatial_rank, (("unsqueeze", tuple(range(2, 2 + spatial_rank))),), (("flatten", ()),))


VECTOR = Layout("vector", 2, 2, (("unsqueeze", (2, 3)),), (("squeeze", (2, 3)),))
TOKEN_LAYOUTS = {
    "conv1d": Layout("conv1d", 3, 1, (("transpose", (0, 2, 1)),), (("transpose", (0, 2, 1)),)),
    "conv2d": Layout("conv2d", 3, 2, (("transpose", (0, 2, 1)), ("unsqueeze", (2,))),
                     (("squeeze", (2,)), ("transpose", (0, 2, 1)))),
}

CHANNELS_LAST = Layout("channels_last", 4, 2, (("transpose", (0, 3, 1, 2)),), (("transpose", (0, 2, 3, 1)),))


def _steps(index: GraphIndex, name: str, steps: tuple[Step, ...], base: str):
    nodes, inits, current = [], [], name
    for kind, arg in steps:
        out = index.fresh_name(base)
        node_name = index.fresh_name(f"{base}_{kind}")
        if kind == "transpose":
            nodes.append(helper.make_node("Transpose", [current], [out], name=node_name, perm=list(arg)))
        elif kind == "flatten":
            nodes.append(helper.make_node("Flatten", [current], [out], name=node_name, axis=1))
        else:
            node, axes_inits = unit_axes_node(index, kind.capitalize(), current, out, arg, node_name)
            nodes.append(node)
            inits.extend(axes_inits)
        current = out
    return nodes, inits, current


def unit_axes_node(index: GraphIndex, op: str, x: str, out: str, axes, name: str
                   ) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """An Unsqueeze or Squeeze of size-1 ``axes`` at the model's opset, and its axes constant: the
    axes are an attribute before opset 13 and an input from 13."""
    if index.opset < 13:
        return helper.make_node(op, [x], [out], name=name, axes=list(axes)), []
    axes_name = index.fresh_name(f"{name}_axes")
    return (helper.make_node(op, [x, axes_name], [out], name=name),
            [numpy_helper.from_array(np.array(axes, dtype=np.int64), axes_name)])
