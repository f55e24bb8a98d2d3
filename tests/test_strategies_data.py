"""``data-rmt``: spectral scores of the weights as calibration images see them (W·Σ½) and as the loss reads
them (Γ½·W·Σ½, ``fisher``)."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.scores import get_strategy
from rmtdeploy.scores.channel_spectra import channel_spectra_by_module
from rmtdeploy.scores.data_spectra import (
    DataSpectraConfig,
    data_channel_spectra_by_module,
    input_second_moments,
    output_gradient_moments,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")
PLANTED_BLOCK = 5
PLANTED_ROWS = torch.arange(0, 768, 12)  # 64 of the 768 hidden channels
MARKER = 1000.0


def test_second_moments_are_those_of_the_inputs_as_each_layer_reads_them():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    batches = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    moments, first = input_second_moments(
        model, batches, {"0", "2"}, DataSpectraConfig(max_rows=10_000, centred=False)
    )
    images = torch.cat(batches)
    patches = F.unfold(images, 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 27).double()
    flat = model[1](model[0](images)).double()
    torch.testing.assert_close(moments["0"], patches.T @ patches / len(patches))
    torch.testing.assert_close(moments["2"], flat.T @ flat / len(flat), rtol=1e-5, atol=1e-6)
    assert torch.equal(first, batches[0][:1])
    centred, _ = input_second_moments(model, batches, {"2"}, DataSpectraConfig(centred=True))
    torch.testing.assert_close(centred["2"], torch.cov(flat.T, correction=0), rtol=1e-5, atol=1e-6)


def test_a_layer_is_judged_on_the_directions_its_data_uses():
    """Inputs 32–63 never carry data: their huge weights count for nothing; every output's energy is what
    the data puts through it."""
    torch.manual_seed(0)
    layer = nn.Linear(64, 48, bias=False)
    with torch.no_grad():
        layer.weight[:, 32:] *= 100
    mixing = torch.randn(32, 32)
    batches = [F.pad(torch.randn(256, 32) @ mixing, (0, 32)) for _ in range(4)]
    spectra = data_channel_spectra_by_module(
        nn.Sequential(layer), batches, data_config=DataSpectraConfig(centred=False)
    )["0"]
    assert spectra.fitted and spectra.spikes >= 1
    assert float(spectra.col_energy[32:].abs().max()) == 0.0
    assert float(spectra.col_energy[:32].min()) > 0
    outputs = layer(torch.cat(batches)).double()
    torch.testing.assert_close(spectra.row_energy.double(), outputs.pow(2).mean(0), rtol=1e-4, atol=0)
    weights_only = channel_spectra_by_module(nn.Sequential(layer))
    assert not weights_only or float(weights_only["0"].col_energy[32:].min()) > 0


@pytest.fixture(scope="module")
def silent_channels_vit():
    """vit_tiny whose blocks.5 MLP has 64 hidden channels with 3× the weight norm of the others, pointing
    along the direction its inputs vary least in: magnitude ranks them first, the data hardly drives them.
    Their fc1 biases carry markers (biases take no part in the scores) so survivors can be counted."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64).eval()
    images = [torch.randn(16, 3, 64, 64) for _ in range(2)]
    block = model.blocks[PLANTED_BLOCK]
    seen = []
    handle = block.mlp.fc1.register_forward_hook(lambda _m, args, _o: seen.append(args[0].reshape(-1, 192)))
    with torch.no_grad():
        model(torch.cat(images))
    handle.remove()
    inputs = torch.cat(seen).double()
    quietest = torch.linalg.eigh(inputs.T @ inputs).eigenvectors[:, 0].float()
    with torch.no_grad():
        fc1 = block.mlp.fc1
        fc1.weight[PLANTED_ROWS] = 3 * fc1.weight.norm(dim=1).mean() * quietest
        fc1.bias.zero_()
        fc1.bias[PLANTED_ROWS] = MARKER
    return model, images


def _surviving(result) -> int:
    return int((result.model.blocks[PLANTED_BLOCK].mlp.fc1.bias >= MARKER).sum())


def test_data_rmt_drops_channels_the_data_does_not_drive_where_magnitude_keeps_them(silent_channels_vit):
    model, images = silent_channels_vit
    by_magnitude = get_strategy("magnitude").prune(model, keep_macs=0.5)
    # The data view alone: the markers are no longer neutral once the loss reads the outputs (a bias of 1000
    # is what the block's output is made of), so the loss-weighted default would rightly keep them.
    by_data = get_strategy("data-rmt", fisher="off").prune(model, keep_macs=0.5, calibration_batches=images)
    assert _surviving(by_magnitude) == len(PLANTED_ROWS)
    assert _surviving(by_data) == 0
    assert abs(by_data.macs_kept - 0.5) <= 0.03 * 0.5
    out = by_data.model(images[0][:2])
    assert out.shape == (2, 1000) and torch.isfinite(out).all()


def test_data_rmt_without_calibration_images_is_refused():
    with pytest.raises(
        RmtdeployError, match="scores channels from calibration images: give calibration_batches"
    ):
        get_strategy("data-rmt").prune(nn.Linear(4, 4), keep_macs=0.5)
    with pytest.raises(RmtdeployError, match="knob rank_tolerance=2.0"):
        get_strategy("data-rmt", rank_tolerance=2.0)
    with pytest.raises(RmtdeployError, match="knob fisher='hessian'"):
        get_strategy("data-rmt", fisher="hessian")


def _labelled_batches(count: int = 3, size: int = 64, inputs: int = 12, classes: int = 4) -> list:
    torch.manual_seed(1)
    teacher = torch.randn(inputs, classes)
    batches = []
    for _ in range(count):
        images = torch.randn(size, inputs)
        batches.append((images, (images @ teacher).argmax(1)))
    return batches


def test_the_loss_gradient_moments_are_those_at_each_layer_output_and_leave_the_weights_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 4))
    batches = _labelled_batches()
    moments = output_gradient_moments(model, batches, {"0", "2"}, DataSpectraConfig(fisher="labels"))
    assert all(p.grad is None for p in model.parameters())
    images, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    hidden = model[0](images)
    hidden.retain_grad()
    logits = model[2](model[1](hidden))
    logits.retain_grad()
    F.cross_entropy(logits, labels, reduction="sum").backward()
    for name, grad in (("0", hidden.grad), ("2", logits.grad)):
        torch.testing.assert_close(moments[name], (grad.T @ grad).double() / len(grad), rtol=1e-5, atol=1e-9)
    # The fit's energies are the loss-weighted ones: output j carries Γ_jj · E[(W x)_j²] (biases take no part).
    spectra = data_channel_spectra_by_module(
        model, batches, data_config=DataSpectraConfig(centred=False, fisher="labels")
    )["0"]
    expected = moments["0"].diagonal() * (images @ model[0].weight.T).detach().double().pow(2).mean(0)
    torch.testing.assert_close(spectra.row_energy.double(), expected, rtol=1e-4, atol=1e-9)
    with pytest.raises(RmtdeployError, match="carry none: give \\(images, labels\\) batches"):
        output_gradient_moments(model, [b[0] for b in batches], {"0"}, DataSpectraConfig(fisher="labels"))
    sampled = output_gradient_moments(
        model, [b[0] for b in batches], {"0"}, DataSpectraConfig(fisher="sampled")
    )
    assert sampled["0"].shape == (6, 6) and float(sampled["0"].trace()) > 0


def test_fisher_drops_channels_the_loss_cannot_see_where_the_data_view_keeps_them():
    """ConvNeXt-Atto's pre-logits hidden channels 0–7 are the loudest and move every logit by the same
    amount: cross-entropy is blind to that shift, so the loss-weighted spectra give them nothing, while the
    data view ranks them first. Survivors are told by their classifier column (all 3.0)."""
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=32, head_hidden_size=96).eval()
    planted = torch.arange(8)
    hidden = model.head.pre_logits.fc
    with torch.no_grad():
        hidden.weight[planted] *= 5
        model.head.fc.weight[:, planted] = 3.0  # the same for every class
    batches = [(torch.randn(64, 3, 32, 32), torch.randint(0, 32, (64,))) for _ in range(2)]

    def surviving(fisher: str) -> int:
        result = get_strategy("data-rmt", fisher=fisher).prune(
            model, keep_params=0.5, calibration_batches=batches, example_inputs=torch.zeros(1, 3, 32, 32)
        )
        classifier = result.model.head.fc.weight
        assert classifier.shape[1] < 96 and torch.isfinite(result.model(batches[0][0][:2])).all()
        return int((classifier == 3.0).all(dim=0).sum())

    assert surviving("off") == len(planted)
    assert surviving("labels") == 0
    assert surviving("sampled") == 0
