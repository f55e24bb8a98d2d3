"""Per-channel spectra of the weights as the calibration data sees them: the MP fit of W·Σ½.

A weight matrix W (rows = output channels) acts on inputs x with second moment Σ = E[x xᵀ] (a conv's
input taken as its unfolded patches, so Σ is C_in·kh·kw square). The output's second moment is
E[y yᵀ] = W Σ Wᵀ = M Mᵀ with M = W·Σ½, so M's singular values are the output's energy per direction,
and the MP fit of M (the same fit as ``analyze`` makes of W) splits what the layer does to its data into
spikes, the directions the data drives and the layer amplifies, and a bulk, the directions it does not.

Per channel, with U_k the top-k left singular vectors of M (k spikes):

* output channel j: E[y_j²] carried by the spikes, Σ_k s_k² U_jk² (its total: (W Σ Wᵀ)_jj);
* input channel c: the energy its inputs put into the spike directions, Σ_t ‖U_kᵀ W_{:,(c,t)}‖² Σ_(c,t),
  summed over the kernel taps t (its total: Σ_t ‖W_{:,(c,t)}‖² Σ_(c,t)). Cross terms between inputs are
  left out: removing channel c removes exactly its own contribution, to first order.

With ``centred``, Σ is the inputs' covariance: a channel is then judged by how its inputs vary, not by
their constant part (which a consumer's bias or the next norm could absorb). Σ is accumulated over the
calibration images by forward hooks (a conv's patch positions subsampled to
``max_rows`` per batch). The data may span fewer directions than the layer has inputs (grey images in
three channels, a late stage that sees few positions): M is then fitted as the out × r matrix it is in
the r directions the data uses, so the MP fit describes the layer on its data, not a degenerate null space.
Layers wider than ``max_dim``
inputs (conv patches of very wide layers) use the diagonal of Σ only.

With ``fisher`` on, the fit is of Γ½·W·Σ½ instead, Γ the second moment of the loss gradient at the layer's
outputs (the output factor of the K-FAC Fisher approximation): ‖Γ½·ΔW·Σ½‖² is, to second order, what a
change ΔW of the weights costs the loss, so the spikes are then the directions the data drives *and* the
loss reads, and a channel scores the loss-weighted energy it carries in them (an output channel j:
Γ_jj · ‖(W·Σ½·V_k)_j‖², V_k the spikes' right singular vectors; an input channel: as above with Γ½·W for W).
The gradient is cross-entropy's, on the batches' labels (``"labels"``) or on labels drawn from the model's
own predictions (``"sampled"``: the true Fisher, no labels needed). The returned channel spectra have the
shape :mod:`rmtdeploy.scores.channel_spectra` gives for weights, so the same importances read them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.scores.channel_spectra import BlockTally, ChannelSpectra
from rmtdeploy.scores.norm_scales import norm_channel_scales
from rmtdeploy.spectra import SpectralFitConfig, WeightMatrix, weight_matrices
from rmtdeploy.spectra.analysis import analyze_singular_values


@dataclass(frozen=True)
class DataSpectraConfig:
    rank_tolerance: float = 1e-6  # input directions with less than this share of Σ's top energy are unused
    max_rows: int = 4096  # conv patch positions kept per batch and layer (strided subsample)
    max_dim: int = 2304  # inputs (C_in·kh·kw) above which only Σ's diagonal is used (eigh cost ~ d³)
    centred: bool = True  # Σ the inputs' covariance (their fluctuations); False: their second moment
    # "off": fit W·Σ½; "labels" / "sampled": fit Γ½·W·Σ½, Γ the loss gradient's second moment at the outputs
    # (cross-entropy on the batches' labels, or on labels drawn from the model's predictions)
    fisher: str = "off"


@torch.no_grad()
def input_second_moments(
    model: nn.Module, batches: Iterable, names: set[str], config: DataSpectraConfig
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``{module name: Σ}`` (float64) of the inputs of the named Linear/Conv2d modules over ``batches``
    (tensors, or tuples/lists whose first item is the input); a full matrix, or a vector (its diagonal) for
    layers wider than ``config.max_dim``. Also the first image, an example input of the model."""
    sums: dict[str, torch.Tensor] = {}
    firsts: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}

    def hook(name):
        def record(module, args, _output):
            x = _input_rows(module, args[0], config.max_rows)
            full = x.shape[1] <= config.max_dim
            moment = (x.T @ x if full else x.pow(2).sum(0)).double()  # float32 product per batch
            sums[name] = sums[name] + moment if name in sums else moment
            firsts[name] = firsts[name] + x.sum(0).double() if name in firsts else x.sum(0).double()
            rows[name] = rows.get(name, 0) + x.shape[0]

        return record

    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(hook(name)) for name in names]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    first = None
    try:
        for batch in batches:
            inputs = (batch[0] if isinstance(batch, (tuple, list)) else batch).to(device)
            model(inputs)
            first = inputs[:1] if first is None else first
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if first is None:
        raise RmtdeployError("data-aware spectra need at least one batch of calibration images")
    if config.centred:
        centred = {}
        for name, total in sums.items():
            mean, second = firsts[name] / rows[name], total / rows[name]
            centred[name] = second - (torch.outer(mean, mean) if second.ndim == 2 else mean.pow(2))
        return centred, first
    return {name: sums[name] / rows[name] for name in sums}, first


def _input_rows(module: nn.Module, x: torch.Tensor, max_rows: int) -> torch.Tensor:
    """The layer's inputs as rows of its weight's column space: [n, in] for a Linear, unfolded patches
    [n, C·kh·kw] (channel-major, as ``weight.reshape(out, -1)``) for a Conv2d."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).float()
    patches = F.unfold(
        x.float(), module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride
    )  # [B, C·kh·kw, L]
    patches = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    step = max(1, -(-patches.shape[0] // max_rows))
    return patches[::step]


def output_gradient_moments(
    model: nn.Module, batches: Iterable, names: set[str], config: DataSpectraConfig
) -> dict[str, torch.Tensor]:
    """``{module name: Γ}`` (float64, out × out; its diagonal for layers wider than ``config.max_dim``
    outputs): the second moment of the cross-entropy gradient at the named modules' outputs (a conv's
    output positions as rows, subsampled as its inputs are), per image
    (the loss summed over the batch), on the batches' labels or, with ``config.fisher == "sampled"``, on
    labels drawn from the model's own predictions. Parameters' ``.grad`` are left as they were: the
    gradient is taken with respect to the images only."""
    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}

    def record(name, module):
        def take(grad):
            flat = grad.reshape(-1, grad.shape[-1]) if isinstance(module, nn.Linear) else grad.movedim(1, -1)
            flat = flat.reshape(-1, flat.shape[-1]).float()
            flat = flat[:: max(1, -(-flat.shape[0] // config.max_rows))]
            moment = (flat.T @ flat if flat.shape[1] <= config.max_dim else flat.pow(2).sum(0)).double()
            sums[name] = sums[name] + moment if name in sums else moment
            rows[name] = rows.get(name, 0) + flat.shape[0]

        def hook(_module, _args, output):
            if output.requires_grad:
                output.register_hook(take)

        return hook

    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(record(name, modules[name])) for name in names]
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(0)
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            if not isinstance(batch, (tuple, list)) and config.fisher == "labels":
                raise RmtdeployError(
                    "fisher=labels weighs the spectra by the loss on the calibration images' labels, and "
                    "these batches carry none: give (images, labels) batches, or use fisher=sampled"
                )
            images = (batch[0] if isinstance(batch, (tuple, list)) else batch).to(device)
            images = images.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                logits = model(images)
                if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
                    raise RmtdeployError(
                        f"fisher={config.fisher} needs a classifier's logits (images × classes) to take the "
                        "loss gradient; this model returns something else: use fisher=off"
                    )
                if config.fisher == "sampled":
                    probabilities = logits.detach().float().softmax(-1).cpu()
                    labels = torch.multinomial(probabilities, 1, generator=generator)[:, 0].to(device)
                else:
                    labels = batch[1].to(device)
                loss = F.cross_entropy(logits, labels, reduction="sum")
                torch.autograd.grad(loss, images)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: sums[name] / rows[name] for name in sums}


def data_channel_spectra_by_module(
    model: nn.Module,
    batches: Iterable,
    config: SpectralFitConfig | None = None,
    data_config: DataSpectraConfig | None = None,
) -> dict[str, ChannelSpectra]:
    """The channel view of every (non-grouped) Linear/Conv2d of ``model``, fitted on W·Σ½ with Σ its
    inputs' covariance over ``batches`` (their second moment with ``data_config.centred`` off). Rows carry the norm scale applied after the layer (BatchNorm,
    layer scale): the data has not seen it yet. Columns carry none: the data has seen the norm before."""
    data_config = data_config or DataSpectraConfig()
    matrices = [m for m in weight_matrices(model) if m.kind != "depthwise_conv"]
    names = {m.module_name for m in matrices}
    moments, first = input_second_moments(model, batches, names, data_config)
    gammas = (
        {} if data_config.fisher == "off" else output_gradient_moments(model, batches, names, data_config)
    )
    scales = norm_channel_scales(model, first)
    modules = dict(model.named_modules())
    parts: dict[str, list[WeightMatrix]] = {}
    for item in matrices:
        parts.setdefault(item.module_name, []).append(item)
    return {
        name: _module_data_spectra(
            modules[name].weight.detach().float(),
            blocks,
            moments[name],
            config,
            data_config.rank_tolerance,
            scales.get(name, {}).get("rows"),
            gammas.get(name),
        )
        for name, blocks in parts.items()
        if name in moments
    }


def _data_rank(sigma: torch.Tensor, rank_tolerance: float) -> int:
    """How many input directions the data uses: eigenvalues of Σ above ``rank_tolerance`` × the largest."""
    eigenvalues = torch.linalg.eigvalsh(sigma) if sigma.ndim == 2 else sigma
    return int((eigenvalues > rank_tolerance * eigenvalues.max()).sum())


def _module_data_spectra(
    weight: torch.Tensor,
    blocks: list[WeightMatrix],
    sigma: torch.Tensor,
    config: SpectralFitConfig | None,
    rank_tolerance: float,
    row_scale: torch.Tensor | None,
    gamma: torch.Tensor | None = None,
) -> ChannelSpectra:
    """One module's channel view. M = W·Σ½ (Γ½·W·Σ½ with ``gamma``) is never formed: its singular values
    and left singular vectors are those of M Mᵀ (out × out), and its shape is out × r, r the directions the
    data uses."""
    in_channels = weight.shape[1]
    taps = weight[0].numel() // in_channels
    rank = _data_rank(sigma, rank_tolerance)
    diagonal = sigma.diagonal() if sigma.ndim == 2 else sigma
    row_signal, row_energy = [], []
    col_signal = torch.zeros(in_channels, dtype=torch.float64)
    col_energy = torch.zeros(in_channels, dtype=torch.float64)
    tally = BlockTally()
    for item in blocks:
        w = item.matrix.double()
        output_moment = (w @ sigma @ w.T) if sigma.ndim == 2 else (w * sigma) @ w.T  # W Σ Wᵀ
        if gamma is None:
            seen, whitened = w, output_moment  # M Mᵀ
        else:
            rows = slice(item.row_offset, item.row_offset + w.shape[0])
            block_gamma = gamma[rows, rows] if gamma.ndim == 2 else gamma[rows]
            root = _psd_sqrt(block_gamma)
            seen, whitened = root @ w, root @ output_moment @ root  # Γ½W; M Mᵀ = Γ½ W Σ Wᵀ Γ½
        eigenvalues, vectors = torch.linalg.eigh(whitened)
        eigenvalues = eigenvalues.clamp_min(0)
        shape = (w.shape[0], rank)
        spectrum = analyze_singular_values(
            eigenvalues.flip(0)[: min(shape)].sqrt().numpy(), shape, item.name, config,
            module=item.module_name, block=item.block, kind=item.kind,
        )  # fmt: skip
        k = tally.add(spectrum, float(eigenvalues.sum()))
        top, top_values = vectors[:, len(eigenvalues) - k :], eigenvalues[len(eigenvalues) - k :]
        if gamma is None:
            row_signal.append((top.pow(2) * top_values).sum(1))
            row_energy.append(output_moment.diagonal().clamp_min(0))
        else:
            # Row j of W·Σ½·V_k, V_k = Mᵀ U_k / s_k, is (W Σ Wᵀ Γ½ U_k)_j / s_k; its loss weight is Γ_jj.
            spike_rows = output_moment @ root @ top / top_values.clamp_min(1e-300).sqrt()
            loss_weight = (block_gamma.diagonal() if block_gamma.ndim == 2 else block_gamma).clamp_min(0)
            row_signal.append(loss_weight * spike_rows.pow(2).sum(1))
            row_energy.append(loss_weight * output_moment.diagonal().clamp_min(0))
        col_signal += ((top.T @ seen).pow(2).sum(0) * diagonal).reshape(in_channels, taps).sum(1)
        col_energy += (seen.pow(2).sum(0) * diagonal).reshape(in_channels, taps).sum(1)
    return ChannelSpectra(
        row_signal=torch.cat(row_signal).float(),
        row_energy=torch.cat(row_energy).float(),
        col_signal=col_signal.float(),
        col_energy=col_energy.float(),
        **tally.summary(),
        row_scale=row_scale,
        col_scale=None,
    )


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a positive semi-definite matrix (negative rounding clipped); of the
    diagonal matrix a vector holds, for a vector."""
    if matrix.ndim == 1:
        return torch.diag(matrix.clamp_min(0).sqrt())
    eigenvalues, vectors = torch.linalg.eigh(matrix)
    return (vectors * eigenvalues.clamp_min(0).sqrt()) @ vectors.T
