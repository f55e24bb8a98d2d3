"""Export: a (pruned) PyTorch model -> a verified ONNX file an app or TensorRT can take as is.

Modules: ``graph`` (:func:`export_onnx`: exporter, export forms per backend, simplification, the
atomic verified write), ``parity`` (ONNX Runtime against PyTorch on random and real inputs),
``metadata`` (what an app needs, in ``metadata_props``), ``stage`` (:func:`export`, the stage call
behind ``rmtdeploy export``). docs/export.md has the measurements behind the choices.
"""

from rmtdeploy.exporting.graph import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    EXPORTERS,
    MIN_OPSET,
    ExportResult,
    export_onnx,
)
from rmtdeploy.exporting.metadata import deployment_metadata, read_metadata
from rmtdeploy.exporting.parity import Parity

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "EXPORTERS",
    "MIN_OPSET",
    "ExportResult",
    "Parity",
    "deployment_metadata",
    "export_onnx",
    "read_metadata",
]
