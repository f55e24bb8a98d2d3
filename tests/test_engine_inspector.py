"""What engine.json says an engine runs, read from TensorRT's engine inspector JSON.

The fixtures are written from the documented formats: TensorRT 10's ``Format/Datatype`` strings (long
ones for ordinary layers, from NVIDIA's trt-engine-explorer format table and its example engines; the
short Myelin names from inspector dumps in NVIDIA/TensorRT#4397 and #3665, where #4397's fused MHA runs
the ``_gemm_mha_v2`` kernel and #3665's unfused attention keeps ``scaled_dot_product_attention`` in its
layer names), and TensorRT 11's split ``DataType`` / ``Format`` fields (NVIDIA's 10.x-to-11.x
IEngineInspector migration page).
"""

from __future__ import annotations

import pytest

from rmtdeploy.engine.inspector import layer_facts, output_precision


def _layer(name, kind, output, tactic=None, field="Format/Datatype"):
    layer = {"Name": name, "LayerType": kind, "Inputs": [],
             "Outputs": [{"Name": f"{name}_out", "Location": "Device", "Dimensions": [1, 8], field: output}]}  # fmt: skip
    layer["TacticName" if tactic else "TacticValue"] = tactic or "0x000000000000001a"
    return layer


TENSORRT_10 = {
    "Layers": [
        _layer(
            "/stem/Conv + /stem/Relu", "CaskConvolution", "Channel major FP16 format where channel % 8 == 0"
        ),
        _layer("Reformatting CopyNode for Input Tensor 0", "Reformat", "Row major linear FP32"),
        _layer("/layer1/Conv", "CaskConvolution", "Thirty-two wide channel vectorized row major Int8 format"),
        _layer("/layer2/Conv", "CaskConvolution", "Channel major INT8 format where channel % 16 == 0"),
        _layer("/pool/GlobalAveragePool", "CaskPooling", "Row major linear FP16 format"),
        _layer("_gemm_mha_v2_myl0_17", "kgen", "Half", "_gemm_mha_v2_0x957a2fe283f77dcf35c142c1390a3e6a"),
        _layer(
            "shuffle_output_[SHUFFLE]_[scaled_dot_product_attention]_[x11_qk]_first_transpose",
            "kgen",
            "Half",
            "__myl_bb1_4_Tra",
        ),  # fmt: skip
        _layer(
            "/blocks.0/attn/qkv/MatMul_myl0_16",
            "gemm",
            "Float",
            "sm80_xmma_gemm_f16f16_f16f16_f16_nn_n_tilesize32x32x64_stage6_warpsize2x2x1_tensor16x8x16",
        ),  # fmt: skip
        _layer("__myl_Quantize_myl0_3", "kgen", "Int8", "__myl_Qua_0x1b"),
        _layer("/Shape", "Shape", "Row major linear Int32"),
        _layer("/cast", "Cast", "UInt8"),
        _layer("/head/Gemm", "CaskGemmMatrixMultiply", "Row major linear BFloat16 format"),
    ]
}

TENSORRT_11 = {
    "Layers": [
        _layer("/stem/Conv", "CaskConvolution", "Half", field="DataType")
        | {"Outputs": [{"Name": "x", "DataType": "Half", "Format": "Channel major FP16 format where channel % 8 == 0 (kHWC8)"}]},
        _layer("/head/Gemm", "CaskGemmMatrixMultiply", "Float", field="DataType")
        | {"Outputs": [{"Name": "logits", "DataType": "Float", "Format": "Row major linear FP32 format (kLINEAR)"}]},
        _layer("/layer1/Conv", "CaskConvolution", "Row major INT8 format (kLINEAR)", field="Format"),
        _layer("_gemm_mha_v2_myl0_2", "kgen", "Half", "_gemm_mha_v2_0x1", field="DataType"),
    ]
}  # fmt: skip


def test_tensorrt_10_layers_count_by_their_real_precision_in_both_format_families():
    # Before: only Int8/Half/Float were matched, case-sensitively: the long formats fell into "other".
    facts = layer_facts(TENSORRT_10, "10.3.0")
    assert facts["layers"] == 12
    assert facts["precisions"] == {"bf16": 1, "fp16": 4, "fp32": 2, "int32": 1, "int8": 3, "uint8": 1}


def test_fused_attention_is_counted_by_the_kernel_not_by_attention_in_a_name():
    # Before: "attention" in a name counted the unfused Myelin layers of #3665 as fused.
    facts = layer_facts(TENSORRT_10, "10.3.0")
    assert facts["fused_attention_layers"] == 1 and facts["attention_examples"] == ["_gemm_mha_v2_myl0_17"]
    assert facts["fused_attention_verified"] is True and "TacticName" in facts["fused_attention_rule"]


def test_tensorrt_11_split_datatype_and_format_fields_are_read():
    facts = layer_facts(TENSORRT_11, "11.4.1")
    assert facts["precisions"] == {"fp16": 2, "fp32": 1, "int8": 1}
    assert facts["fused_attention_layers"] == 1 and facts["fused_attention_verified"] is False
    assert "TensorRT 10 only" in facts["fused_attention_evidence"]


def test_what_cannot_be_read_is_unknown_never_guessed():
    names_only = {"Layers": ["/stem/Conv", "/head/Gemm"]}  # built without detailed verbosity
    facts = layer_facts(names_only, "10.3.0")
    assert facts["precisions"] == {"unknown": 2} and facts["fused_attention_verified"] is False
    assert "no kernel names" in facts["fused_attention_evidence"]


@pytest.mark.parametrize(
    ("entry", "precision"),
    [({"Format/Datatype": "FloatComplex"}, "unknown"), ({"Format/Datatype": ""}, "unknown"), ({}, "unknown"),
     ({"Format/Datatype": "Channel major FP32 format where channel % 4 == 0"}, "fp32"),
     ({"DataType": "Half", "Format/Datatype": "Row major linear FP32"}, "fp16"),  # 11's own field first
     ({"Format/Datatype": "row major linear fp16 format"}, "fp16")],
)  # fmt: skip
def test_one_tensor_entry(entry, precision):
    assert output_precision(entry) == precision
