# evit_mm: the two commands a newcomer runs are `make demo` and `make test` (see README.md).
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup test test-fast demo benchmark clean-env

setup:  ## create/reuse the shared environment, build mmcv once, install evit_mm (editable)
	bash scripts/setup.sh

test: setup  ## setup + the whole test suite (slow end-to-end tests included)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup  ## setup + the tests that are not marked slow
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: setup  ## setup + the main job on built-in demo data
	$(PY) tools/demo.py

benchmark: setup  ## backbone speed against timm (results: docs/benchmarks.md)
	$(PY) tools/benchmark_backbone.py --arch m4 --threads 2 --repeats 30
