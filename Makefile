# The README's two commands (`make demo`, `make test`) and their set-up. Needs only python3 (3.10+) and pip.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp
THREADS ?= 2

.PHONY: demo test test-slow benchmarks install clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,cbs,xtb,dask]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) $(BIN)/pimlip demo

test: $(STAMP)
	OMP_NUM_THREADS=1 PIMLIP_TEST_THREADS=1 $(BIN)/python -m pytest -q

test-slow: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) demo_output .pytest_cache
