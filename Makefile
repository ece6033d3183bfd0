# Two commands do everything on a fresh machine:
#   make demo   set up .venv, generate synthetic Criteo rows, build a store, train LR and DeepFM (torch, tf)
#   make test   set up .venv, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ctrkit-installed
DEMO   := demo
ROWS   ?= 1000000

.PHONY: setup demo test bench-peers clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[torch,tf,export,serve,report,test]'
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

# the peer libraries for benchmarks/bench_models.py, in their own virtualenv (torch pinned to the
# CPU build so that pip does not pull a CUDA one)
PEERS := benchmarks/.peers-venv
# FuxiCTR's model zoo (DCNv2, FiBiNET, ONN) is not in its wheel: the repository at this commit (2.3.10)
FUXICTR_ZOO_COMMIT = 0245987fdc1d43c36164ea496a02324885a8557a

bench-peers: $(PEERS)/.installed
$(PEERS)/.installed:
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q torch==2.13.0 deepctr-torch==0.3.0 torch-rechub==0.9.0 requests
	$(PEERS)/bin/python -m pip install -q tensorflow-cpu==2.21.0 tf-keras==2.21.0 deepctr==0.9.4
	$(PEERS)/bin/python -m pip install -q fuxictr==2.3.10 torch==2.13.0
	rm -rf $(PEERS)/FuxiCTR && git init -q $(PEERS)/FuxiCTR
	git -C $(PEERS)/FuxiCTR fetch -q --depth 1 https://github.com/reczoo/FuxiCTR $(FUXICTR_ZOO_COMMIT)
	git -C $(PEERS)/FuxiCTR checkout -q FETCH_HEAD -- model_zoo
	touch $@

clean:
	rm -rf $(DEMO) benchmarks/out
