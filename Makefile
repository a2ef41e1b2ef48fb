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

# The browser tests need Debian's chromium, and `outerloop bench cluster` Debian's wrk: both
# installed here when missing (root, apt-get).
test: install
	$(BIN)/python tests/browser.py
	$(BIN)/python -m pytest -q

# The figures the issues ask for, each printed as one JSON object and kept in runs/bench/.
# Long: it trains the default ML-1M model first (20-40 min on 2 CPU cores); the first replay
# trains what the outer loop needs next to it once and caches it (three more transformers of the
# same shape, 20-40 min each, EASE, both rankers): about 3 hours on a 2-core machine from nothing.
ML1M := runs/ml1m
ML100K := runs/ml100k
MLSMALL := runs/ml-latest-small
STALENESS := 0,1,2,5,10
# the freshness bench replays the synthetic world, so it needs a model of that world
SYN := runs/synthetic
bench: install
	mkdir -p runs/bench
	test -f $(ML1M)/manifest.json || $(BIN)/outerloop train --dataset ml-1m --data-dir $(DATA)/ml-1m --out $(ML1M)
	$(BIN)/outerloop eval --artifacts $(ML1M) --json | tee runs/bench/eval.json
	$(BIN)/outerloop eval replay --dataset ml-1m --data-dir $(DATA) --artifacts $(ML1M) --users 0 --staleness $(STALENESS) --json --out runs/bench/replay_outer.json > /dev/null
	test -f $(ML100K)/manifest.json || $(BIN)/outerloop train --dataset ml-100k --data-dir $(DATA) --dataset-opt dislike_below=3 --out $(ML100K)
	$(BIN)/outerloop eval replay --replay inner-outer --dataset ml-100k --data-dir $(DATA) --dataset-opt dislike_below=3 --artifacts $(ML100K) --users 0 --staleness $(STALENESS) --json --out runs/bench/replay_outer_ml100k.json > /dev/null
	test -f $(MLSMALL)/manifest.json || $(BIN)/outerloop train --dataset ml-latest-small --data-dir $(DATA) --dataset-opt dislike_below=2.5 --out $(MLSMALL)
	$(BIN)/outerloop eval replay --replay inner-outer --dataset ml-latest-small --data-dir $(DATA) --dataset-opt dislike_below=2.5 --artifacts $(MLSMALL) --users 0 --staleness $(STALENESS) --json --out runs/bench/replay_outer_mlsmall.json > /dev/null
	$(BIN)/outerloop eval replay --dataset ml-100k --data-dir $(DATA) --json | tee runs/bench/replay_fresh_ml100k.json
	$(BIN)/outerloop bench model --encode-latency $(ML1M) | tee runs/bench/model_encode.json
	$(BIN)/outerloop bench serve --artifacts $(ML1M) --rate 200 --duration 30 --json | tee runs/bench/serve.json
	$(BIN)/outerloop bench serve --artifacts $(ML1M) --rate 200 --duration 30 --server-arg=--inline-ensemble --json | tee runs/bench/serve_inline_ensemble.json
	$(BIN)/outerloop bench loop --artifacts $(ML1M) --json | tee runs/bench/loop.json
	$(BIN)/outerloop bench budgets --json | tee runs/bench/budgets.json
	test -f $(SYN)/manifest.json || $(BIN)/outerloop train --dataset synthetic --out $(SYN) --max-minutes 2
	$(BIN)/outerloop bench freshness --artifacts $(SYN) --runner outerloop --rate 500 --duration 20 --crash --json | tee runs/bench/freshness.json
	$(BIN)/outerloop bench freshness --artifacts $(SYN) --runner rows --rate 500 --duration 60 --json | tee runs/bench/freshness_rows.json
	$(BIN)/outerloop bench cluster --artifacts $(SYN) --duration 30 --json | tee runs/bench/cluster.json
	$(BIN)/outerloop plan-capacity runs/bench/cluster.json | tee runs/bench/capacity.txt
	$(BIN)/outerloop report --out runs/bench/report --artifacts $(ML1M) --inputs runs/bench/*.json

clean:
	rm -rf $(VENV) runs artifacts reports .pytest_cache
