# Two commands matter: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
DATA   ?= ../shared/data

.PHONY: install demo test bench clean

install: $(VENV)/.installed

# torch is installed first and pinned: an unpinned torch pulls several GB of CUDA packages.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(BIN)/outerloop demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/run_all.py --data-dir $(DATA)

clean:
	rm -rf $(VENV) runs artifacts reports .pytest_cache
