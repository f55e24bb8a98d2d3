"""Accuracy retention: how much top-1 each pruning criterion keeps on real images, at equal achieved MACs.

The library behind ``benchmarks/accuracy_retention.py`` (which keeps its command line, its driver and its
Markdown and plot):

* :mod:`.families` — one small model per family (and two edge models, asked for by name), trained from
  scratch by the trainer and in the cache that ``rmtdeploy compress --weights trained`` uses
  (:mod:`rmtdeploy.finetuning.scratch`);
* :mod:`.criteria` — rmtdeploy's strategies, torch-pruning's importances as peers, and ablations, all through
  the same pruner;
* :mod:`.evaluate` — every criterion at every keep on one dense model: top-1 after pruning, then after a
  short distillation or the default fine-tune;
* :mod:`.table` — mean ± std over seeds and the goal's status per family;
* :mod:`.settings` — what one run measures.
"""

from rmtdeploy.retention.criteria import ABLATIONS, CRITERIA, PEERS, SPECTRAL, STRATEGIES, prune_with
from rmtdeploy.retention.evaluate import recipe_conditions, run_family_seed, seeded_draw, val_image_count
from rmtdeploy.retention.families import (
    ALL_FAMILIES,
    EDGE_FAMILIES,
    FAMILIES,
    FamilyModel,
    family_macs,
    train_dense,
)
from rmtdeploy.retention.settings import Settings
from rmtdeploy.retention.table import summarise

__all__ = [
    "ABLATIONS",
    "ALL_FAMILIES",
    "CRITERIA",
    "EDGE_FAMILIES",
    "FAMILIES",
    "PEERS",
    "SPECTRAL",
    "STRATEGIES",
    "FamilyModel",
    "Settings",
    "family_macs",
    "prune_with",
    "recipe_conditions",
    "run_family_seed",
    "seeded_draw",
    "summarise",
    "train_dense",
    "val_image_count",
]
