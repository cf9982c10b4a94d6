# Everything a fresh machine needs: `make demo` runs the main job, `make test` the test suite.
# TORCH_SPEC picks the torch build: the default pin is a CPU wheel on the CI image and the
# ordinary CUDA wheel on a GPU machine; set e.g. TORCH_SPEC='torch==2.14.1' to change it.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
PYTEST_ARGS ?=

.PHONY: setup test demo clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/tokcal demo

clean:
	rm -rf $(VENV) .pytest_cache tokcal-demo
