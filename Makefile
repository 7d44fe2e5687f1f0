# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv, install the project, and keep any torch already there
# (GPU users: install your CUDA torch into .venv first, see README).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TORCH_VERSION ?= 2.13.0

.PHONY: demo test test-fast setup clean bench mutation

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || \
	  $(BIN)/pip install -q "torch==$(TORCH_VERSION)+cpu" 2>/dev/null || \
	  $(BIN)/pip install -q "torch==$(TORCH_VERSION)" --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# everyday work: the suite without the tests marked slow (pyproject.toml; docs/testing.md lists them)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

demo: $(STAMP)
	$(BIN)/python demo/run.py

bench: $(STAMP)
	$(BIN)/python benchmarks/analysis.py
	$(BIN)/python benchmarks/merge.py
	$(BIN)/python benchmarks/sweep.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/organ_train.py
	$(BIN)/python benchmarks/unplug.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

# Mutation testing (a benchmark of the suite, not a CI step; ~30 min on a loaded 2-core machine): docs/testing.md
mutation: $(STAMP)
	$(BIN)/python -c "import mutmut" 2>/dev/null || $(BIN)/pip install -q -e ".[mutation]"
	nice -n 10 $(BIN)/python benchmarks/mutation.py
