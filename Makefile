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
	$(BIN)/kinject assets pull smollm2-135m minilm-l6 mmlu sciq wiki-summaries tzdata-news django-releases
	# SmolLM2-135M on SciQ, the paper's MMLU subjects and newfacts: base / RAG / FT / FT+RAG,
	# cached per stage (a rerun takes seconds), ending with runs/demo/report/report.html.
	$(BIN)/kinject run configs/demo.yaml

test: install
	$(BIN)/python -m pytest -q -n 2

test-fast: install
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

# Full-size runs (minutes each; the same scripts run at smoke scale in tests/test_benchmarks.py).
bench: install
	$(BIN)/kinject assets pull smollm2-135m minilm-l6 mmlu sciq
	$(BIN)/python benchmarks/load_speed.py
	$(BIN)/python benchmarks/scoring_speed.py
	$(BIN)/python benchmarks/lm_eval_parity.py --limit 50
	$(BIN)/python benchmarks/embed_speed.py
	$(BIN)/python benchmarks/finetune_speed.py --steps 8 --rounds 3 --compile
	$(BIN)/python benchmarks/ask_quality.py --sciq 40
	$(BIN)/python benchmarks/serve_load.py

clean:
	rm -rf $(VENV) .pytest_cache
