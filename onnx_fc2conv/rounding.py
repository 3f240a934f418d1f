"""How far rounding alone may move an output of the converted model: the allowance of the proof.

A converted layer computes the products of the FC layer it replaces, but ONNX Runtime's Conv kernels
add them up in another order than its Gemm and MatMul kernels. Floating-point addition is not
associative, so the sums differ in their last bits, and the layers after pass the difference on::

    original   y = x0*w0 + x1*w1 + ... + x(K-1)*w(K-1)      (Gemm: one order)
    converted  y = x0*w0 + x8*w8 + ... + x(K-1)*w(K-1)      (Conv: another)

Two causes, each measured in units in the last place (ulps) of the output's largest value:

* **the sum itself**: K products added in another order differ by about sqrt(K) ulps of the
  accumulator (the rounding errors of the additions are a random walk; Higham's deterministic bound
  is K ulps). ONNX Runtime's CPU kernels accumulate float16 and bfloat16 in float32, whose ulps are
  2**13 and 2**16 times finer: there this term is negligible;
* **the rounding of each layer's output** to its type: up to ROUNDING_ULPS ulps (an fp16 head whose
  outputs reach 7.6 differs by 0.0078 at 0.43, found by `make fuzz`; a bf16 one by 0.5 at 35).

Over the converted layers on the way to an output (n in series, K1 + K2 + ... products summed in
another order along that way) independent differences add in quadrature, so an output may differ by

    sqrt(ROUNDING_ULPS**2 * n + (K1 + K2 + ...) * (accumulator ulp / output ulp)**2)   ulps

of its largest value, and by nothing where no converted layer lies before it. Measured with the
proof's own inputs (ONNX Runtime 1.32 CPU): a float32 Llama-style decoder of 8 blocks at hidden 512
(benchmarks/models.py; 33 layers in series, 24,064 products) differs by up to 2.5e-5 on its logits,
a third of the 7.5e-5 allowed, where float32's fixed atol of 1e-5 fails; one of its down projections
1e-4 off moves them by 3.2e-4, and fails (tests/test_rounding.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

ROUNDING_ULPS = 4
MANTISSA_BITS = {"bfloat16": 7, "float16": 10, "float32": 23, "float64": 52}
# The type ONNX Runtime's CPU kernels add products up in, by the type of the values.
ACCUMULATOR = {"bfloat16": "float32", "float16": "float32", "float32": "float32", "float64": "float64"}
# The ops the rules write that sum products: a node of these the original does not have (by op and
# output name: a rewrite keeps the FC layer's output name) is a converted layer.
SUMMING_OPS = frozenset({"Conv", "MatMul", "Gemm"})


@dataclass(frozen=True)
class Reordering:
    """What lies between the inputs and one output of the converted model: ``layers`` converted
    layers in series (the most on any path), ``products`` products per output value summed in
    another order than the original's along that way (the most on any path)."""

    layers: int = 0
    products: int = 0

    def then(self, other: Reordering) -> Reordering:
        return Reordering(self.layers + other.layers, self.products + other.products)

    def widest(self, other: Reordering) -> Reordering:
        return Reordering(max(self.layers, other.layers), max(self.products, other.products))

    def ulps(self, precision: str) -> float:
        """The allowance in ulps of the largest value, for values of ``precision`` (see the module)."""
        if self.layers == 0 or precision not in MANTISSA_BITS:
            return 0.0
        finer = MANTISSA_BITS[ACCUMULATOR[precision]] - MANTISSA_BITS[precision]
        return math.sqrt(ROUNDING_ULPS ** 2 * self.layers + self.products * 4.0 ** -finer)


def reorderings(original: onnx.ModelProto, converted: onnx.ModelProto) -> dict[str, Reordering]:
    """The :class:`Reordering` before each graph output of ``converted``, walked in graph order
    (a model's nodes are topologically sorted). Only the top-level graph: a converted layer in a
    subgraph is not counted, so the allowance there is the tighter one."""
    before = {(n.op_type, n.output[0]) for n in original.graph.node if n.output}
    dims = {t.name: list(t.dims) for t in converted.graph.initializer}
    reached: dict[str, Reordering] = {}
    for node in converted.graph.node:
        inputs = [reached[name] for name in node.input if name in reached]
        upstream = Reordering()
        for one in inputs:
            upstream = upstream.widest(one)
        if node.op_type in SUMMING_OPS and node.output and (node.op_type, node.output[0]) not in before:
            upstream = upstream.then(Reordering(1, _products(node, dims)))
        if upstream.layers:
            reached.update((name, upstream) for name in node.output if name)
    return {o.name: reached.get(o.name, Reordering()) for o in converted.graph.output}


def _products(node: onnx.NodeProto, dims: dict[str, list[int]]) -> int:
    """The products summed into one output value of a converted layer (its reduction length): a Conv
    kernel's [C/group, *kernel] (the FC layer's K), a MatMul's or Gemm's shared dim; 1 where unknown."""
    weight = dims.get(node.input[1]) if len(node.input) > 1 else None
    if not weight:
        return 1
    if node.op_type == "Conv":
        return max(int(np.prod(weight[1:])), 1)
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return weight[-1] if trans_b else weight[0] if len(weight) == 1 else weight[-2]


def rounding_atol(largest: float, precision: str, reordering: Reordering) -> float:
    """The absolute difference rounding alone may make on values of ``precision`` whose largest
    magnitude is ``largest`` (the original's): ``reordering.ulps`` units in the last place of it."""
    ulps = reordering.ulps(precision)
    if largest == 0.0 or ulps == 0.0 or not math.isfinite(largest):
        return 0.0
    return ulps * 2.0 ** (math.floor(math.log2(largest)) - MANTISSA_BITS[precision])


def rounding_note(largest: float, precision: str, reordering: Reordering) -> str:
    """The check's note when the rounding allowance sets its atol: how many ulps, of what, and why."""
    layers = f"{reordering.layers} converted layer{'s' * (reordering.layers != 1)} in series"
    return (f"atol {rounding_atol(largest, precision, reordering):.3g} here: {reordering.ulps(precision):.3g} units "
            f"in the last place of {largest:.3g}, for {layers} summing {reordering.products:,} products in another "
            f"order (onnx_fc2conv.rounding), in {precision}")
