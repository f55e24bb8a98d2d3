"""rmtdeploy.pruning.graph: torch-pruning's LayerNorm pruner, mended in place, keeps the channels it keeps in
order, through a dependency graph and through TP's own names (which adapters call and importances compare)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from rmtdeploy.adapters.base import ArchitectureAdapter
from rmtdeploy.pruning.graph import build_dependency_graph

WIDTH, KEPT = 192, list(range(0, 192, 8))  # 24 of 192: TP 1.6 kept 0, 128, 8, 136, ... (a set's order)


class _NormedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(8, WIDTH), nn.LayerNorm(WIDTH), nn.Linear(WIDTH, 4)

    def forward(self, x):
        return self.fc2(F.gelu(self.norm(self.fc1(x))))


def test_a_layernorm_that_keeps_few_channels_keeps_them_in_order_through_the_graph():
    torch.manual_seed(0)
    model = _NormedHead().eval()
    with torch.no_grad():  # a fresh LayerNorm's γ = 1, β = 0 would hide a permutation
        model.norm.weight.normal_()
        model.norm.bias.normal_()
    dense, x = copy.deepcopy(model), torch.randn(5, 8)
    graph = build_dependency_graph(model, ArchitectureAdapter(), x)
    removed = [i for i in range(WIDTH) if i not in KEPT]
    graph.get_pruning_group(model.fc1, tp.prune_linear_out_channels, removed).prune()

    assert torch.equal(model.norm.weight, dense.norm.weight[KEPT])
    assert torch.equal(model.norm.bias, dense.norm.bias[KEPT])
    with torch.no_grad():  # the dense model with the removed channels gone, computed by hand
        hidden = dense.fc1(x)[:, KEPT]
        hidden = F.layer_norm(hidden, (len(KEPT),), dense.norm.weight[KEPT], dense.norm.bias[KEPT])
        expected = F.linear(F.gelu(hidden), dense.fc2.weight[:, KEPT], dense.fc2.bias)
        assert torch.allclose(model(x), expected, atol=1e-6)


def test_torch_prunings_own_layernorm_names_are_the_mended_pruner():
    removed = [i for i in range(WIDTH) if i not in KEPT]
    for prune in (tp.prune_layernorm_out_channels, tp.pruner.function.prune_layernorm_in_channels):
        norm = nn.LayerNorm(WIDTH)
        with torch.no_grad():
            norm.weight.copy_(torch.arange(WIDTH, dtype=torch.float))
        prune(norm, removed)
        assert norm.weight.tolist() == [float(i) for i in KEPT] and norm.normalized_shape == (len(KEPT),)
    pruner = tp.pruner.function.PrunerBox[tp.ops.OPTYPE.LN]
    assert tp.prune_layernorm_out_channels == pruner.prune_out_channels  # what TP's importances compare
