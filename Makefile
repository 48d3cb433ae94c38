# One-command entry points. Everything runs inside .venv, which `make setup` creates.
PY := .venv/bin/python
RUN ?= demo

.PHONY: setup sync check-sync test test-slow test-all demo bench clean-run

setup:  ## create .venv with the pinned packages and the `uni_seg` Jupyter kernel
	@bash tools/setup_env.sh .venv

sync: setup  ## regenerate cell_instance_segmentation.py and uni_seg/ from the notebook
	@$(PY) tools/nbexport.py

check-sync: setup  ## fail if a generated file is stale
	@$(PY) tools/nbexport.py --check

test: setup  ## the default (fast) suite, as CI runs it
	@$(PY) -m pytest -m "not slow" -q

test-slow: setup  ## only the slow tests (SIGKILL resume soak, big benchmarks-as-tests)
	@$(PY) -m pytest -m slow -q

test-all: setup
	@$(PY) -m pytest -q

demo: setup  ## run the whole notebook headlessly on the demo profile (refused while uni_seg/ is stale: `make sync`), then the reports
	@bash tools/run_notebook.sh $(RUN) -p PROFILE demo

bench: setup  ## every benchmark in bench/ on this machine's CPU
	@for script in bench/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done
