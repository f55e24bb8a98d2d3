"""Engine: TensorRT builds for a target, as an optional extra (``pip install rmtdeploy[tensorrt]``).

``versions`` (which TensorRT, what each version asks of a build, trtexec command lines, timing-cache
names), ``attention`` (will TensorRT fuse the pruned model's attention), ``build`` (the TensorRT
Python API build and its layer inspection), ``stage`` (:func:`build_engine`, behind ``rmtdeploy
engine``). Only ``build`` imports TensorRT; the rest is plain Python, tested on machines without it.
"""

from rmtdeploy.engine.attention import (
    attention_fusion_problems,
    attention_head_shapes,
    fused_attention_problem,
)
from rmtdeploy.engine.versions import (
    BuildSettings,
    build_settings,
    installed_tensorrt,
    timing_cache_name,
    trtexec_command,
)

__all__ = [
    "BuildSettings",
    "attention_fusion_problems",
    "attention_head_shapes",
    "build_settings",
    "fused_attention_problem",
    "installed_tensorrt",
    "timing_cache_name",
    "trtexec_command",
]
