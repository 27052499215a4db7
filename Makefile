# The two commands that do everything on a fresh machine:
#   make demo   - create .venv, install, pull the default assets, run the main job
#   make test   - the same install, then the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kinject-installed

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	# torch first, from the pinned CPU build: an unpinned torch pulls GBs of CUDA packages.
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/kinject assets pull smollm2-135m minilm-l6 mmlu sciq
	$(BIN)/kinject doctor --model smollm2-135m --embedder minilm-l6
	# SciQ's support passages as a knowledge base, embedded into a FAISS index:
	$(BIN)/kinject corpus build --source sciq --out runs/demo/kb-sciq
	$(BIN)/kinject index build --corpus runs/demo/kb-sciq --out runs/demo/index-sciq
	# Closed-book SciQ with K = 0, 1, 3 retrieved chunks (recall@K beside accuracy), the
	# lm-eval passage-in-the-prompt upper bound, and the paper's MMLU subjects (cloze):
	$(BIN)/kinject eval --model smollm2-135m --task sciq --rag runs/demo/index-sciq --k 0,1,3 \
		--limit 100 --out runs/demo/eval-rag-$$(date +%Y%m%d-%H%M%S)
	$(BIN)/kinject eval --model smollm2-135m --task sciq:support --limit 100 \
		--out runs/demo/eval-support-$$(date +%Y%m%d-%H%M%S)
	$(BIN)/kinject eval --model smollm2-135m --task mmlu:paper@cloze --limit 20 \
		--out runs/demo/eval-mmlu-$$(date +%Y%m%d-%H%M%S)

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/python benchmarks/load_speed.py
	$(BIN)/python benchmarks/scoring_speed.py
	$(BIN)/python benchmarks/lm_eval_parity.py --limit 50

clean:
	rm -rf $(VENV) .pytest_cache
