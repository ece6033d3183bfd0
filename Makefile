# Two commands do everything on a fresh machine:
#   make demo   set up .venv, generate synthetic Criteo rows, build a store, train LR and DeepFM
#   make test   set up .venv, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ctrkit-installed
DEMO   := demo
ROWS   ?= 1000000

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[torch,test]'
	touch $(STAMP)

$(DEMO)/criteo_synth.tsv: | $(STAMP)
	mkdir -p $(DEMO)
	$(BIN)/ctrkit synth criteo $@ --rows $(ROWS) --seed 0

$(DEMO)/criteo.lmdb: $(DEMO)/criteo_synth.tsv
	$(BIN)/ctrkit preprocess criteo $< --out $@ --overwrite

demo: $(DEMO)/criteo.lmdb
	$(BIN)/ctrkit inspect $(DEMO)/criteo.lmdb
	$(BIN)/python scripts/demo.py --store $(DEMO)/criteo.lmdb --raw $(DEMO)/criteo_synth.tsv --out $(DEMO)/runs

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(DEMO) benchmarks/out
