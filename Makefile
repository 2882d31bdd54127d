# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test test-all test-gpu bench bench-gpu clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/minicnn train --model simple_cnn --dataset digits --epochs 8 --out runs/demo

test: $(VENV)/.installed-test
	$(PY) -m pytest -q

test-all: $(VENV)/.installed-test
	$(PY) -m pytest -q -m "not gpu"

test-gpu: $(VENV)/.installed-test
	$(PY) -m pytest -q -m gpu

bench: $(VENV)/.installed-test
	$(PY) -m benchmarks

# On a machine with a CUDA GPU (install CuPy with `pip install -e .[gpu]`); says why and exits 0 elsewhere.
bench-gpu: $(VENV)/.installed-test
	$(PY) -m benchmarks.gpu

clean:
	rm -rf $(VENV) build *.egg-info runs .pytest_cache
