# The two quick-start commands are `make demo` and `make test`; both set everything up first.
PY := .venv/bin/python
MASKTUNE := .venv/bin/masktune
PORT ?= 8501

.PHONY: setup demo run app test test-fast lint format bench reproduce suite

setup:
	@bash scripts/setup.sh

## demo: run the default experiment (biased-digits, small-cnn), then open the dashboard on it
demo: setup
	$(MASKTUNE) run --name demo
	$(MASKTUNE) studio --port $(PORT)

## run: the default experiment only, on the command line
run: setup
	$(MASKTUNE) run

app: setup
	$(MASKTUNE) studio --port $(PORT)

## test: the whole suite, browser tests included
test: setup
	$(PY) -m pytest -q

## test-fast: leaves out the browser tests and every test that trains a model (the `slow` marker)
test-fast: setup
	@echo "test-fast leaves out: browser tests (Playwright + chromium) and slow tests (a trained run)"
	$(PY) -m pytest -q -m "not browser and not slow"

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

bench: setup
	$(PY) bench/masks.py --quick && $(PY) bench/pipeline.py && $(PY) bench/selective.py && $(PY) bench/dashboard.py

reproduce: setup
	OMP_NUM_THREADS=1 $(PY) -m bench.reproduce --workers 2

# The spurious-correlation suite: datasets in suite-data/, runs in suite-runs/, the page in docs/suite.md.
# The defaults and every method variant, 4 seeds each: about 2.5 hours on 2 cores (finished runs are reused).
SUITE_VARIANTS = default,one-round,start-last,start-both,one-epoch-black,finetune-lr-1e-4,topk,dilate-2,gradcam
suite: setup
	OMP_NUM_THREADS=1 $(PY) -m bench.suite all --data suite-data --runs suite-runs \
		--tuning-seeds 0,10,11,12 --held-out-seeds 13,14,15 --workers 2 --variants $(SUITE_VARIANTS)
