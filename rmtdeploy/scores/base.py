"""Strategies: importance plug-ins, keyed by their CLI name in ``rmtdeploy.scores.registry``.

A strategy turns a model and a budget into what the shared pruner needs — an importance (scores per
channel group, torch-pruning's ``Importance`` protocol), optionally per-layer ratios and global ranking —
and runs the pruner. Adding a strategy is one new module with one ``@register_strategy`` line, imported by
``rmtdeploy/scores/__init__.py``.
"""

from __future__ import annotations

import dataclasses
import time
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.scores.channel_spectra import ChannelSpectra
from rmtdeploy.scores.knobs import coerce_knob


@dataclass
class PrunerSettings:
    """What a strategy hands the shared pruner (``rmtdeploy.pruning.prune_model``)."""

    importance: tp.importance.Importance
    global_pruning: bool = False
    pruning_ratio_dict: dict[nn.Module, float] | None = None
    min_keep_dict: dict[nn.Module, float] | None = None  # per layer, the fraction of channels that stays


@dataclass
class Strategy:
    """Base: one pruning pass with the settings from :meth:`settings`.

    Knobs are the dataclass fields a caller may set (``init`` fields; internal state is ``init=False``).
    Their annotations are their types: values are converted to them when the strategy is built, then
    :meth:`check_knobs` checks their ranges, so a bad knob fails before any model is loaded.

    What a strategy supports is declared here, so callers never switch on its name:
    ``takes_finetune_hook`` — ``prune`` runs between pruning steps and accepts ``finetune=`` (a callable
    that fine-tunes the model after each step) and ``evaluate=`` (a callable giving top-1 in %);
    ``steps`` — how many pruning passes ``prune`` makes (1 for a one-shot strategy);
    ``reads_calibration`` — its scores read calibration images: ``prune`` needs ``calibration_batches``
    and hands them to :meth:`settings` as ``calibration_batches=``;
    ``reads_labels`` — its scores also read the images' labels ((images, labels) batches).
    """

    name: ClassVar[str] = "base"
    takes_finetune_hook: ClassVar[bool] = False
    reads_calibration: ClassVar[bool] = False
    reads_labels: ClassVar[bool] = False

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for knob in self.knob_names():
            setattr(self, knob, coerce_knob(self.name, knob, getattr(self, knob), hints[knob]))
        self.check_knobs()

    def check_knobs(self) -> None:
        """Range checks of the (already typed) knob values; raise through :meth:`require`."""

    def require(self, holds: bool, knob: str, expected: str) -> None:
        """A knob check: when ``holds`` is false, a user error naming the strategy, the knob and its value."""
        if not holds:
            raise RmtdeployError(f"strategy '{self.name}' knob {knob}={getattr(self, knob)!r}: {expected}")

    def check_calibration(self, given: bool, param: str, hint: str = "") -> None:
        """Refuse a strategy that reads calibration images when none are ``given``; ``param`` names where
        they go (``calibration_batches`` here, the prune stage's ``calibration``, compress's ``data``)."""
        if self.reads_calibration and not given:
            raise RmtdeployError(
                f"strategy '{self.name}' scores channels from calibration images: give {{param}}{hint}",
                param=param,
            )

    def check_labels(self, labelled: bool, param: str) -> None:
        """Refuse a strategy whose scores read labels when the images at ``param`` come without them (the
        stages stream a folder's images alone: its class folders need not be the model's classes)."""
        if self.reads_labels and not labelled:
            raise RmtdeployError(
                f"strategy '{self.name}' weighs its scores by the loss on the images' labels, "
                "and {param} gives images without them (a folder's classes need not be the model's): use "
                "knob fisher=sampled, labels the model draws from its own predictions",
                param=param,
            )

    @classmethod
    def knob_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.init]

    @property
    def steps(self) -> int:
        """Pruning passes :meth:`prune` makes: 1 for a one-shot strategy (progressive ones override it)."""
        return 1

    def settings(self, model: nn.Module, keep: float) -> PrunerSettings:
        raise NotImplementedError

    def knobs(self) -> dict[str, Any]:
        return {knob: getattr(self, knob) for knob in self.knob_names()}

    def ranks_across_layers(self, model: nn.Module) -> bool:
        """Whether it ranks ``model``'s channels in one list across layers (``global_pruning``) rather than
        giving each unit its width: an allocation that chooses widths (a latency table, the latency-aware
        tilts) cannot follow it."""
        return False

    def prune(
        self,
        model: nn.Module,
        *,
        keep_macs: float | None = None,
        keep_params: float | None = None,
        calibration_batches=None,
        **pruner_options: Any,
    ):
        """Prune a copy of ``model`` to the budget; BatchNorm is recalibrated when batches are given."""
        from rmtdeploy.adapters import get_adapter
        from rmtdeploy.pruning import prune_model, recalibrate_batchnorm

        self.check_calibration(calibration_batches is not None, "calibration_batches")
        data = {"calibration_batches": calibration_batches} if self.reads_calibration else {}
        get_adapter(model)  # a model its family's adapter cannot prune is refused before any spectrum fit

        keep = keep_macs if keep_macs is not None else keep_params
        started = time.perf_counter()
        settings = self.settings(model, 1.0 if keep is None else keep, **data)
        spectra_s = time.perf_counter() - started
        result = prune_model(
            model,
            importance=settings.importance,
            keep_macs=keep_macs,
            keep_params=keep_params,
            global_pruning=settings.global_pruning,
            pruning_ratio_dict=settings.pruning_ratio_dict,
            min_keep_dict=settings.min_keep_dict,
            strategy={"name": self.name, "knobs": self.knobs()},
            **pruner_options,
        )
        result.timings["spectra_s"] = spectra_s
        if calibration_batches is not None:
            recalibrate_batchnorm(result.model, calibration_batches)
        return result


_OUT_FNS = (function.prune_conv_out_channels, function.prune_linear_out_channels)
_IN_FNS = (function.prune_conv_in_channels, function.prune_linear_in_channels)


class SpectralGroupImportance(tp.importance.GroupMagnitudeImportance):
    """Scores a channel group from the spectra of the Linear/Conv layers in it.

    Every layer of the group that had an MP fit contributes its per-channel value (output rows for the
    layers whose outputs go, input columns for the layers that consume them); contributions are averaged
    over the group by torch-pruning's own reduction. Layers without a fit (depthwise, tiny) do not vote;
    a group where nobody votes falls back to ``fallback(group)``.
    """

    def __init__(self, channel_spectra: dict[str, ChannelSpectra]):
        super().__init__(p=2, group_reduction="mean", normalizer=None)
        self.channel_spectra = channel_spectra

    def channel_values(self, spectra: ChannelSpectra, outputs: bool) -> torch.Tensor:
        raise NotImplementedError

    def fallback(self, group) -> torch.Tensor | None:
        return super().__call__(group)

    def fitted_layers(self, group):
        """(spectra, outputs?, idxs, root_idxs) for each Linear/Conv of ``group`` that had an MP fit and
        loses output rows (outputs) or input columns of a non-grouped layer (not outputs)."""
        for position, (dep, idxs) in enumerate(group):
            layer, fn = dep.layer, dep.pruning_fn
            spectra = self.channel_spectra.get(getattr(dep.target, "_name", None))
            if spectra is None or not spectra.fitted or not isinstance(layer, (nn.Linear, nn.Conv2d)):
                continue
            if fn in _OUT_FNS:
                yield spectra, True, idxs, group[position].root_idxs
            elif fn in _IN_FNS and getattr(layer, "groups", 1) == 1:
                yield spectra, False, idxs, group[position].root_idxs

    @torch.no_grad()
    def spectral_scores(self, group) -> torch.Tensor | None:
        values, root_indices = [], []
        for spectra, outputs, idxs, root_idxs in self.fitted_layers(group):
            values.append(self.channel_values(spectra, outputs=outputs)[idxs])
            root_indices.append(root_idxs)
        if not values:
            return None
        return self.mean_over_layers(values, root_indices, group)

    @staticmethod
    def mean_over_layers(values: list, root_indices: list, group) -> torch.Tensor:
        """Per root channel, the mean of the layers' values mapped onto it (torch-pruning's "mean" reduction,
        sized by the group's root: a fused qkv layer's rows map three to one head-dim channel)."""
        total = torch.zeros(len(group[0].root_idxs))
        used = 0
        for value, roots in zip(values, root_indices, strict=True):
            if any(r is None for r in roots):
                continue
            total.scatter_add_(0, torch.tensor(roots), value.float())
            used += 1
        return total / max(used, 1)

    def __call__(self, group):
        scores = self.spectral_scores(group)
        return self.fallback(group) if scores is None else scores
