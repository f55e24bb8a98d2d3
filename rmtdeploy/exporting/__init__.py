"""Export: a (pruned) PyTorch model -> a verified ONNX file an app or TensorRT can take as is.

Modules: ``graph`` (:func:`export_onnx`: exporter, export forms per backend, the atomic verified write;
:func:`export_for_timing`, the unverified static batch-1 ONNX Runtime graph a timing run needs),
``settings`` (what one export runs with: arguments, target, the model's input size), ``onnx_file``
(simplification, metadata entries, checked save, the graph's precision), ``parity`` (ONNX Runtime against
PyTorch on random and real inputs), ``metadata`` (what an app needs, in ``metadata_props``), ``int8``
(Q/DQ), ``fp16`` (the fp16 graph with its fp32 block list), ``deployment`` (the checks before the model
loads and the export with metadata and INT8, shared by the export stage and the bundle), ``stage``
(:func:`export`, the stage call behind ``rmtdeploy export``). docs/export.md has the measurements behind
the choices.
"""

from rmtdeploy.exporting.graph import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    EXPORTERS,
    MIN_OPSET,
    ExportResult,
    export_for_timing,
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
    "export_for_timing",
    "export_onnx",
    "read_metadata",
]
