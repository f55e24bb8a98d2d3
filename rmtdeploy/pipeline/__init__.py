"""``rmtdeploy compress``: every stage as one product, into one run folder.

* :mod:`~rmtdeploy.pipeline.recipe` — YAML recipes (shipped under ``recipes/compress/``), checked, with
  command-line overrides;
* :mod:`~rmtdeploy.pipeline.run_folder` — the run folder: manifest, per-stage fingerprints, resume, lock;
* :mod:`~rmtdeploy.pipeline.budget` — the keep ratio that meets a latency budget, measured;
* :mod:`~rmtdeploy.pipeline.stage` — ``compress()``: the recipe resolved and checked, the run folder;
* :mod:`~rmtdeploy.pipeline.steps` — the stage calls in order, each recorded in the run folder.

The report it ends with is :mod:`rmtdeploy.report.run`.
"""

from rmtdeploy.pipeline.recipe import CompressRecipe, list_recipes, resolve_recipe
from rmtdeploy.pipeline.stage import CompressRun, compress

__all__ = ["CompressRecipe", "CompressRun", "compress", "list_recipes", "resolve_recipe"]
