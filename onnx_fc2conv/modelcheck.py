"""The model checks and shape inference: one wrapper each around ``onnx.checker`` and
``onnx.shape_inference``, used by every other module.

Shape inference is a best effort everywhere it runs (a rule skips what stays unknown, ONNX Runtime
infers shapes itself), so its failures are not errors: :func:`infer_shapes` logs what it swallowed,
and why that is safe, on the ``onnx_fc2conv`` logger at debug level.
"""
from __future__ import annotations

import logging

import onnx

from .errors import Fc2ConvError, InvalidModelError, first_line
from .graph import Dim, skeleton, value_dims
from .safety import check_graph

log = logging.getLogger("onnx_fc2conv")

ValueTypes = dict[str, tuple[int, tuple[Dim, ...] | None]]


def infer_shapes(model: onnx.ModelProto, why_optional: str) -> onnx.ModelProto | None:
    """``onnx.shape_inference`` (not strict, with data propagation) on ``model``, which should be a
    :func:`~onnx_fc2conv.graph.skeleton`; None where it fails, logged with ``why_optional``: the
    reason the caller can do without it."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - inference raises several types; each caller copes without it
        log.debug("shape inference failed (%s; %s): %s", why_optional, type(exc).__name__, first_line(exc))
        return None


def infer_value_types(model: onnx.ModelProto, input_shapes=None) -> ValueTypes:
    """Element type and shape of every top-level tensor that shape inference can type."""
    sk = skeleton(model, input_shapes)
    g = (infer_shapes(sk, "rules skip the layers whose shapes stay unknown") or sk).graph
    types: ValueTypes = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        elem, dims = value_dims(vi)
        if vi.name not in types or (types[vi.name][1] is None and dims is not None):
            types[vi.name] = (elem, dims)
    for init in g.initializer:
        types[init.name] = (init.data_type, tuple(init.dims))
    return types


def check_input_model(model: onnx.ModelProto, label: str = "the input") -> bool:
    """Raise if the input is not a valid model; return whether it also passes ``full_check``
    (some exporters write models that only the strict shape check rejects)."""
    try:
        check_graph(model)
    except InvalidModelError as exc:
        raise InvalidModelError(f"{label}: {exc}") from None
    sk = _checkable(model)
    try:
        onnx.checker.check_model(sk, full_check=True)
        return True
    except Exception:  # noqa: BLE001 - shape-inference errors come in several types
        pass  # the structural check alone tells an invalid model from a strict-shape complaint
    try:
        onnx.checker.check_model(sk)
    except onnx.checker.ValidationError as exc:
        raise InvalidModelError(f"{label} is not a valid ONNX model: {first_line(exc)}") from None
    return False


def check_output_model(model: onnx.ModelProto, strict: bool) -> None:
    """``onnx.checker`` with ``full_check`` (strict shape inference) when the input passed it too."""
    try:
        onnx.checker.check_model(_checkable(model), full_check=strict)
    except onnx.checker.ValidationError as exc:
        raise Fc2ConvError(f"internal error: the rewritten model fails onnx.checker: "
                           f"{first_line(exc)}") from None


def _checkable(model: onnx.ModelProto) -> onnx.ModelProto:
    """The skeleton the checker sees. A graph output declared with a type but no shape (Polygraphy's
    test models) fails even the basic check; ONNX Runtime runs such models, so it gets its inferred
    shape here, and the model itself is left as it is."""
    sk = skeleton(model)
    missing = [o for o in sk.graph.output
               if o.type.HasField("tensor_type") and not o.type.tensor_type.HasField("shape")]
    if missing:
        inferred = infer_shapes(sk, "the checker then judges the output as declared")
        shapes = {vi.name: vi for vi in inferred.graph.output} if inferred is not None else {}
        for out in missing:
            if out.name in shapes and shapes[out.name].type.tensor_type.HasField("shape"):
                out.type.tensor_type.shape.CopyFrom(shapes[out.name].type.tensor_type.shape)
    return sk


def symbolic_shape_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's symbolic shape inference, keeping what it inferred even where it stops.

    ``SymbolicShapeInference.infer_shapes`` runs these same steps, but when a shape stays unknown it
    writes ``sym_shape_infer_temp.onnx`` (and weight files) into the current folder and raises: a
    library must not leave files in its caller's folder, and the partial result is what we want.
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inference = SymbolicShapeInference(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess_output_rank, verbose
    inference._preprocess(model)
    while inference.run_:
        inference._infer_impl()
    inference._update_output_from_vi()
    return inference.out_mp_
