"""The adapter registry: adapters register themselves, and variants an adapter cannot prune are refused
up front with the reason (before any graph is traced)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import timm
import torch

import rmtdeploy.adapters as adapters
from rmtdeploy.adapters import ADAPTERS, find_adapter, get_adapter
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.pruning import load_pruned, prune_model, save_pruned

pytestmark = pytest.mark.usefixtures("single_torch_thread")
PLUG_INS = {
    "byobnet",
    "convnext",
    "edgenext",
    "eva",
    "fastvit",
    "generic",
    "hiera",
    "levit",
    "metaformer",
    "resnet",
    "swin",
    "swin_v2",
    "tiny_vit",
    "vit",
}
CNN_AT_64 = {"pretrained_cfg_overlay": {"input_size": (3, 64, 64)}}


@pytest.mark.parametrize("module", ["registry", "base"])
def test_registry_and_base_import_no_adapter(module):
    tree = ast.parse((Path(adapters.__file__).parent / f"{module}.py").read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    } | {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {f"rmtdeploy.adapters.{name}" for name in PLUG_INS} & imported
    assert "rmtdeploy.adapters" not in imported


def test_every_family_is_served_by_an_adapter_module():
    assert sorted(ADAPTERS) == [
        "byobnet", "convnext", "deit", "edgenext", "eva", "fastvit", "hiera", "levit", "metaformer", "mobilevit",
        "resnet", "swin", "swin_transformer_v2", "tiny_vit", "vit",
    ]  # fmt: skip
    # Every other timm family: the generic adapter, registered as the fallback.
    assert {cls.__module__.rsplit(".", 1)[-1] for cls in ADAPTERS.values()} == PLUG_INS - {"generic"}


@pytest.mark.parametrize(
    ("name", "kwargs", "reason"),
    [
        ("skresnet18", {}, "selective-kernel convolutions that split their input"),
        ("ecaresnet26t", {}, "efficient channel attention"),
        ("resnetblur18", {}, "blur-pool anti-aliasing"),
        ("resnet50_gn", {}, "GroupNorm"),
        ("vit_tiny_r_s16_p8_224", {}, r"hybrid ViT: a CNN backbone \(HybridEmbed\)"),
        ("vit_small_r26_s32_224", {"img_size": 64}, "hybrid ViT"),
        ("test_vit3", {}, "attention pooling head"),
    ],
)
def test_a_variant_the_adapter_cannot_prune_is_refused_with_the_reason(name, kwargs, reason):
    model = timm.create_model(name, pretrained=False, **kwargs)
    with pytest.raises(RmtdeployError, match=f"cannot prune {name} .*family\\): {reason}"):
        get_adapter(model)
    with pytest.raises(RmtdeployError, match=reason):
        prune_model(model, keep_macs=0.5)  # refused before the graph is traced
    assert find_adapter(model) is not None  # stages that only read the family's common parts still work


@pytest.mark.parametrize("name", ["skresnext50_32x4d", "resnet18d", "seresnet18", "deit3_small_patch16_224"])
def test_variants_that_prune_correctly_are_not_refused(name):
    get_adapter(timm.create_model(name, pretrained=False))


@pytest.mark.slow
def test_selective_kernels_over_the_whole_input_prune_and_reload(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("skresnext50_32x4d", pretrained=False, **CNN_AT_64).eval()
    result = prune_model(model, keep_macs=0.5)
    assert abs(result.macs_kept - 0.5) <= 0.03 * 0.5
    save_pruned(tmp_path / "pruned", result)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(load_pruned(tmp_path / "pruned").model(images), result.model.eval()(images))


def test_a_strategy_refuses_an_unsupported_variant_before_fitting_any_spectrum(monkeypatch):
    from rmtdeploy.scores import get_strategy
    from rmtdeploy.scores.rmt import RmtStrategy

    def never(self, model, keep):
        raise AssertionError("spectra were fitted before the adapter refused the model")

    monkeypatch.setattr(RmtStrategy, "settings", never)
    with pytest.raises(RmtdeployError, match="selective-kernel"):
        get_strategy("rmt").prune(timm.create_model("skresnet18", pretrained=False), keep_macs=0.5)
