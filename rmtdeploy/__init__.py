"""rmtdeploy: Random-Matrix-Theory guided structured pruning and deployment of timm vision models.

The package follows the pipeline a model flows through:
spectra → scores → pruning plan → pruned model → fine-tune → export → engine → benchmark → report.
Each stage is one library call with a typed result (``to_dict()``), imported lazily so that
``import rmtdeploy`` stays cheap:

* ``rmtdeploy.analyze(model, out) -> Analysis`` (:mod:`rmtdeploy.spectra.outputs`)
* ``rmtdeploy.prune(model, out, keep_macs=0.5) -> PruneRun`` (:mod:`rmtdeploy.pruning.stage`)
* ``rmtdeploy.load_pruned(directory) -> PruneResult`` (:mod:`rmtdeploy.pruning.plan`)
* ``rmtdeploy.finetune(pruned_dir, data, out, epochs=3) -> FinetuneRun`` (:mod:`rmtdeploy.finetuning.stage`)
* ``rmtdeploy.export(pruned_dir_or_model, "model.onnx", target=...) -> ExportRun`` (:mod:`rmtdeploy.exporting.stage`)
* ``rmtdeploy.bench(pruned_dir, out) -> BenchRun`` (:mod:`rmtdeploy.benchmark.stage`)
* ``rmtdeploy.compress(out, recipe=..., model=...) -> CompressRun``: all of them into one run folder
  (:mod:`rmtdeploy.pipeline.stage`)

See docs/architecture.md.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_STAGES = {
    "analyze": "rmtdeploy.spectra.outputs",
    "prune": "rmtdeploy.pruning.stage",
    "load_pruned": "rmtdeploy.pruning.plan",
    "finetune": "rmtdeploy.finetuning.stage",
    "export": "rmtdeploy.exporting.stage",
    "bench": "rmtdeploy.benchmark.stage",
    "compress": "rmtdeploy.pipeline.stage",
}

__all__ = ["__version__", *_STAGES]


def __getattr__(name: str):
    if name in _STAGES:
        return getattr(importlib.import_module(_STAGES[name]), name)
    raise AttributeError(f"module 'rmtdeploy' has no attribute '{name}'")
