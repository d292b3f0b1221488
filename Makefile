# Two commands on a fresh machine (see README):
#   make run    -> creates .venv, installs pudm_bench, runs the default sweep (digits, CPU, minutes)
#   make test   -> creates .venv, installs pudm_bench[test,fid-offline,sd], runs the whole test suite
# Re-running is cheap: the install step is skipped while pyproject.toml is unchanged.

PYTHON ?= python3
VENV ?= .venv
# torch/torchvision pair installed first, so pip does not pick a multi-GB build on its own.
# Override on machines where another pair is wanted, e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pudm-installed
PYTEST_ARGS ?=

.PHONY: install run test test-fast clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test,fid-offline,sd]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m pudm_bench.sweep

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
