"""Report stage: measurements turned into diagnostics and human-readable tables.

``diagnostics`` explains a measured speedup (layer widths off the channel multiple, attention head
shapes, MACs per block, ONNX op counts); ``speedup`` sums up dense-vs-pruned timing passes into a
report row; ``speedup_markdown`` renders the pruning-speedup report, with the small table helpers of
``markdown``. Each takes plain data in and gives plain data or text out.
"""

from rmtdeploy.report.diagnostics import (
    LAYOUT_OPS,
    attention_shapes,
    block_breakdown,
    export_summary,
    onnx_op_counts,
    scope_macs,
    structure_diagnostics,
)
from rmtdeploy.report.speedup import quietest_pass, speedup_summary, threads_check_row
from rmtdeploy.report.speedup_markdown import render_speedup_markdown

__all__ = [
    "LAYOUT_OPS",
    "attention_shapes",
    "block_breakdown",
    "export_summary",
    "onnx_op_counts",
    "quietest_pass",
    "render_speedup_markdown",
    "scope_macs",
    "speedup_summary",
    "structure_diagnostics",
    "threads_check_row",
]
