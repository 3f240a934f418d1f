"""onnx-fc2conv: rewrite the fully-connected layers of ONNX models into convolutions, and prove it.

>>> import onnx_fc2conv
>>> result = onnx_fc2conv.convert("model.onnx", "model_fcn.onnx")   # doctest: +SKIP
>>> print(result.report.render_text())                              # doctest: +SKIP
>>> print(onnx_fc2conv.inspect("model.onnx").render_text())          # doctest: +SKIP
"""
from .errors import (
                     CouldNotVerify,
                     Fc2ConvError,
                     InvalidModelError,
                     OutputError,
                     OutputStrideError,
                     UnsafeModelError,
                     UsageError,
                     VerificationFailed,
)
from .geometry import AxisGeometry, Geometry, cell_box, cells_containing, cells_within, crop_box, tensor_geometry
from .inspection import Inspection, inspect
from .metadata import read_geometry
from .options import Options
from .pipeline import ConversionResult, convert
from .report import ConversionReport, VerificationResult
from .rules import REASONS, RULE_NAMES
from .verify import verify
from .version import __version__

__all__ = [
    "convert", "inspect", "verify", "Options", "ConversionResult", "Inspection", "ConversionReport",
    "VerificationResult", "REASONS", "RULE_NAMES",
    "Geometry", "AxisGeometry", "read_geometry", "tensor_geometry", "cell_box", "crop_box", "cells_containing",
    "cells_within",
    "Fc2ConvError", "InvalidModelError", "UnsafeModelError", "OutputError", "OutputStrideError", "UsageError",
    "VerificationFailed", "CouldNotVerify", "__version__",
]
