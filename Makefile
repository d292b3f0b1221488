# Two commands on a fresh machine (see README):
#   make run    -> creates .venv, installs pudm_bench[fid-offline], runs the default sweep (digits, CPU, minutes)
#   make test   -> creates .venv, installs pudm_bench[test,fid-offline,sd], runs the whole test suite
# Re-running is cheap: the install step is skipped while pyproject.toml is unchanged.

PYTHON ?= python3
VENV ?= .venv
# torch/torchvision pair installed first, so pip does not pick a multi-GB build on its own.
# Override on machines where another pair is wanted, e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pudm-installed
# The test suite also needs the [sd] extra (transformers, peft: the latent path's tests). make run leaves it out:
# once installed, diffusers imports both in every process that builds a UNet (about 1.5 s each).
TEST_STAMP := $(VENV)/.pudm-test-installed
PYTEST_ARGS ?=
# make test runs the fast tests, then the slow end-to-end ones (Ray sweeps), each tier on two pytest-xdist workers
# (module scopes; one torch thread per worker: tests/conftest.py). Fast tier first: its failures show in ~3 minutes.
# Measured on 2 cores in docs/performance.md, "9. Test suite time". Exit status 5 (PYTEST_ARGS selected no test of
# a tier) is not a failure.
PYTEST_WORKERS ?= 2

.PHONY: install run test test-fast clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[fid-offline]'
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,fid-offline,sd]'
	touch $(TEST_STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m pudm_bench.sweep

test: $(TEST_STAMP)
	$(PY) -m pytest -m "not slow" -n $(PYTEST_WORKERS) --dist loadscope $(PYTEST_ARGS) || test $$? -eq 5
	$(PY) -m pytest -m slow -n $(PYTEST_WORKERS) --dist loadscope $(PYTEST_ARGS) || test $$? -eq 5

test-fast: $(TEST_STAMP)
	$(PY) -m pytest -m "not slow" -n $(PYTEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
