"""Engine: TensorRT builds for a target, as an optional extra (``pip install rmtdeploy[tensorrt]``).

``versions`` (which TensorRT, what each version asks of a build, profiles, trtexec command lines,
timing-cache names), ``attention`` (will TensorRT fuse the pruned model's attention), ``inspector``
(what the built engine runs, from the engine inspector's JSON of TensorRT 10 and 11), ``build`` (the
TensorRT Python API build), ``stage`` (:func:`build_engine`, behind ``rmtdeploy engine``). Only
``build`` imports TensorRT; the rest is plain Python, tested on machines without it, and every TensorRT
name is checked against the real bindings (``tests/test_tensorrt_api.py``).
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
