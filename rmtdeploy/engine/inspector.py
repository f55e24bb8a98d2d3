"""What a built engine will run, read from TensorRT's engine inspector JSON (pure: tested without TensorRT).

``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`` on an engine built with
``ProfilingVerbosity.DETAILED`` gives ``{"Layers": [...]}``; each layer names its ``LayerType``, its
``Inputs``/``Outputs`` and the kernel it picked (``TacticName``). What a layer's output precision looks
like depends on the layer and on the version:

* TensorRT 10, ordinary layers: one ``Format/Datatype`` string in long form, ``Row major linear FP32``,
  ``Channel major FP16 format where channel % 8 == 0``, ``Thirty-two wide channel vectorized row major
  Int8 format``, ``Channel major INT8 format where channel % 16 == 0`` (the cases vary);
* TensorRT 10, Myelin layers (transformer blocks, ``LayerType`` ``kgen``/``gemm``): the short names
  ``Float``, ``Half``, ``Int8``, ``BFloat16``, ``Int32``, ... (NVIDIA's trt-engine-explorer maps both
  families, ``trex/activations.py``; Polygraphy's ``dtype_from_fmt_dtype`` matches upper-cased
  substrings);
* TensorRT 11 splits the field: ``DataType`` (short names, ``Float``) and ``Format`` (``Row major linear
  FP32 format (kLINEAR)``), per NVIDIA's 10.x-to-11.x IEngineInspector migration page.

:func:`output_precision` reads ``DataType`` first, then ``Format/Datatype``, then ``Format``, by whole
words and case-insensitively (``UInt8`` is not ``Int8``, ``BFloat16`` is not ``Float``); anything else
is ``unknown``, never guessed.

Fused attention is counted by the kernel a layer runs, not by its name: a fused MHA layer is a Myelin
``kgen`` layer whose ``TacticName`` is a ``mha`` kernel (``_gemm_mha_v2_0x…``, NVIDIA/TensorRT#4397),
while the names of unfused layers carry the ONNX names (``…[scaled_dot_product_attention]…``,
NVIDIA/TensorRT#3665). That form is documented for TensorRT 10 only; on 11 the count is reported with
``fused_attention_verified: false``.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

# Whole words of a format/data-type string -> precision. Checked in this order, first match wins.
_PRECISION_WORDS = (
    ("bf16", "bf16"), ("bfloat16", "bf16"),
    ("fp8", "fp8"), ("e4m3", "fp8"), ("fp4", "fp4"), ("int4", "int4"),
    ("uint8", "uint8"), ("int8", "int8"),
    ("fp16", "fp16"), ("half", "fp16"), ("float16", "fp16"),
    ("fp32", "fp32"), ("float", "fp32"), ("float32", "fp32"),
    ("int32", "int32"), ("int64", "int64"), ("bool", "bool"),
)  # fmt: skip
_FIELDS = ("DataType", "Format/Datatype", "Format")  # TensorRT 11 first, then 10, then 11's format alone
_MHA_KERNEL_WORDS = {"mha", "fmha"}
ATTENTION_RULE = "a layer whose kernel (TacticName) is a fused MHA kernel (mha/fmha), not its name"


def output_precision(tensor: dict[str, Any]) -> str:
    """The precision of one inspector tensor entry (``{"Name", "Dimensions", "Format/Datatype"}`` on 10,
    ``{"DataType", "Format", ...}`` on 11), or ``unknown``."""
    for field in _FIELDS:
        text = tensor.get(field)
        if isinstance(text, str) and text.strip():
            found = precision_of(text)
            if found != "unknown":
                return found
    return "unknown"


def precision_of(text: str) -> str:
    """``fp32``/``fp16``/``int8``/... from a format or data-type string, by whole words, any case."""
    words = set(re.findall(r"[a-z0-9]+", text.lower()))
    for word, precision in _PRECISION_WORDS:
        if word in words:
            return precision
    return "unknown"


def is_fused_attention(layer: dict[str, Any]) -> bool:
    """Whether the layer runs a fused multi-head-attention kernel (its ``TacticName`` says so)."""
    tactic = str(layer.get("TacticName") or "").lower()
    return bool(_MHA_KERNEL_WORDS & set(re.split(r"[^a-z0-9]+", tactic)))


def layer_facts(info: dict[str, Any], tensorrt_version: str | None = None) -> dict[str, Any]:
    """From the inspector's JSON: layers per output precision, the fused attention layers, and how far
    each count can be trusted."""
    precisions: Counter[str] = Counter()
    attention, detailed = [], 0
    for layer in info.get("Layers", []):
        if not isinstance(layer, dict):  # verbosity below DETAILED: names only
            precisions["unknown"] += 1
            continue
        detailed += "TacticName" in layer or "TacticValue" in layer
        outputs = [o for o in layer.get("Outputs") or [] if isinstance(o, dict)]
        precisions[output_precision(outputs[0]) if outputs else "unknown"] += 1
        if is_fused_attention(layer):
            attention.append(str(layer.get("Name", "?")))
    eleven = tensorrt_version is not None and _major(tensorrt_version) >= 11
    verified = detailed > 0 and not eleven
    why = (
        "the inspector gave no kernel names (not built with detailed profiling verbosity)"
        if detailed == 0
        else "the fused-MHA kernel naming is documented for TensorRT 10 only"
        if eleven
        else "TensorRT 10 inspector output"
    )
    return {
        "layers": sum(precisions.values()),
        "precisions": dict(sorted(precisions.items())),
        "fused_attention_layers": len(attention),
        "attention_examples": attention[:5],
        "fused_attention_rule": ATTENTION_RULE,
        "fused_attention_verified": verified,
        "fused_attention_evidence": why,
    }


def _major(version: str) -> int:
    match = re.match(r"\d+", str(version))
    return int(match.group()) if match else 0
