# gpuload: the two set-up commands are `make demo` and `make test`; each creates
# .venv on first use and installs what it needs (Python 3.11 is all it asks for).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# A CPU wheel of exactly this torch lies on our machines' disk; a bare `torch`
# requirement would download a multi-GB CUDA build. GPU users: see environment.yml.
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= demo_out
# The 500 real BMMC cells of the shared reference folder (an .h5mu; any file gpuload reads works).
REAL_DATA ?= ../shared/data/bmmc_multiome_starter.h5mu

.PHONY: help venv install train dev demo demo-real test test-latest test-all test-cudasim test-dali test-gpu lint format annbatch-venv bench bench-scale clean

help:
	@echo "make demo      synthetic BMMC-shaped data, loader benchmark, short VAE training run"
	@echo "make demo-real the VAE trained on 500 real BMMC cells (REAL_DATA), with its report"
	@echo "make test      the test suite (CPU path, CUDA simulator, DALI CPU pipeline)"
	@echo "make test-all  the test suite including slow tests"
	@echo "make test-latest  the file-reading and scvi/Lightning tests on Python 3.12 + the newest releases"
	@echo "make lint      ruff check + format check, mypy over the package"
	@echo "make bench     the full loader comparison (benchmarks/)"
	@echo "make bench-scale  gpuload against dataset size and number of files, with annbatch (< 15 min)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-base: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e .
	touch $@

# The reference model's libraries (scikit-learn, umap-learn, matplotlib): `make demo` trains it.
$(VENV)/.installed-train: $(VENV)/.installed-base
	$(BIN)/python -m pip install -q -e ".[train]"
	touch $@

# The dev extra includes the train extra: the tests train and score the reference model.
$(VENV)/.installed-dev: $(VENV)/.installed-base
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed-base
train: $(VENV)/.installed-train
dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed-train
	$(BIN)/python -m gpuload.reference.demo --out $(DEMO_DIR)

demo-real: $(VENV)/.installed-base
	$(BIN)/python -m gpuload.reference.demo --real $(REAL_DATA) --out $(DEMO_DIR)/real

# NUMBA_ENABLE_CUDASIM must be set before numba.cuda is first imported, so the
# whole CPU test session runs with the simulator on; CPU twins are unaffected.
# pytest-xdist runs one worker per core, a test file per worker (module fixtures built once):
# many tests wait on subprocesses (torchrun, the CLI, the fuzz worker), so 2 cores finish the
# suite in about 60% of the serial time.
PYTEST_WORKERS ?= -n auto --dist loadfile
test: $(VENV)/.installed-dev
	NUMBA_ENABLE_CUDASIM=1 $(BIN)/python -m pytest -q $(PYTEST_WORKERS)

test-all: $(VENV)/.installed-dev
	NUMBA_ENABLE_CUDASIM=1 $(BIN)/python -m pytest -q $(PYTEST_WORKERS) -m "slow or not slow"

test-gpu: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -m gpu

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check gpuload tests benchmarks
	$(BIN)/ruff format --check gpuload tests benchmarks
	$(BIN)/mypy gpuload

format: $(VENV)/.installed-dev
	$(BIN)/ruff format gpuload tests benchmarks
	$(BIN)/ruff check --fix gpuload tests benchmarks

# annbatch (a peer) and the newest anndata, mudata and scvi-tools need Python >= 3.12.
PY312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python) $(shell command -v python3.12 2>/dev/null))

# The newest anndata, pandas, mudata, scvi-tools and Lightning on Python 3.12, in .venv-latest.
# Only the tests that go through those packages: reading h5ad/h5mu/10x files and their obs
# (store, sources, modality_files, tenx, real_layouts), the Lightning and scvi-tools integrations,
# and what `import gpuload` loads (import_weight) with the newest anndata and torch.
# The simulator-heavy rest (kernels, fuzz, reliability, streams, ...) tests gpuload's own code on
# numpy/numba and runs in `make test`. torch: no CPU wheel for 3.12 lies on our machines'
# disk, and PyPI's torch is a CUDA build; 2.14.1's CUDA libraries (nvidia-*) do lie on disk, so
# only torch itself and triton are downloaded (about 0.8 GB). See the README for a CPU torch.
LATEST_VENV ?= .venv-latest
LATEST_TORCH ?= torch==2.14.1
LATEST_PACKAGES = anndata pandas mudata scvi-tools lightning scanpy scikit-learn pytest pytest-timeout pytest-xdist hypothesis
LATEST_TESTS = tests/test_store.py tests/test_sources.py tests/test_modality_files.py tests/test_tenx.py \
	tests/test_real_layouts.py tests/test_lightning.py tests/test_lightning_datamodule.py tests/test_scvi.py \
	tests/test_import_weight.py

$(LATEST_VENV)/.installed: pyproject.toml
	@test -n "$(PY312)" || { echo "make test-latest needs Python 3.12 (python3.12 or pyenv)"; exit 1; }
	test -x $(LATEST_VENV)/bin/python || $(PY312) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install -q "$(LATEST_TORCH)"
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade -e . $(LATEST_PACKAGES)
	touch $@

test-latest: $(LATEST_VENV)/.installed
	$(LATEST_VENV)/bin/python -c "import sys; from importlib.metadata import version as v; print('Python', \
	sys.version.split()[0], *(f'{p} {v(p)}' for p in ('anndata', 'pandas', 'mudata', 'scvi-tools', 'lightning', 'torch')))"
	$(LATEST_VENV)/bin/python -m pytest -q $(PYTEST_WORKERS) $(LATEST_TESTS)
ANNBATCH_VENV = benchmarks/.venv-annbatch

# annbatch's venv, where Python 3.12 exists (without it the benchmarks report annbatch as skipped).
annbatch-venv:
	@if [ -n "$(PY312)" ] && [ ! -x $(ANNBATCH_VENV)/bin/python ]; then \
		$(PY312) -m venv $(ANNBATCH_VENV) && $(ANNBATCH_VENV)/bin/pip install -q "annbatch[zarrs]>=0.3"; \
	fi

bench: $(VENV)/.installed-dev annbatch-venv
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/compare.py --out bench_out

# gpuload against dataset size and number of files (benchmarks/scale.py); SCALE_ARGS adds options.
bench-scale: $(VENV)/.installed-dev annbatch-venv
	$(BIN)/python benchmarks/scale.py --out bench_out/scale $(SCALE_ARGS)

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(DEMO_DIR) bench_out .pytest_cache .ruff_cache .mypy_cache .hypothesis
