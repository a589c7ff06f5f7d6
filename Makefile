# Two commands for a fresh machine:
#   make run    create .venv (once), install the requirements (once), run every lesson in order
#   make test   the same setup, then the test suite
# Without make (e.g. Windows), see README.md for the plain venv/pip commands.

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
# Written after a successful install; reinstalls only when requirements.txt changes.
STAMP  := $(VENV)/.requirements-installed

.PHONY: run test bench clean setup

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -r requirements.txt
	touch $(STAMP)

run: $(STAMP)
	@for lesson in [0-9][0-9]_*.py; do \
		echo ">>> $(VPY) $$lesson"; \
		MPLBACKEND=Agg $(VPY) $$lesson || exit 1; \
	done

test: $(STAMP)
	$(VPY) -m pytest -n 2

bench: $(STAMP)
	$(VPY) bench/run_benchmarks.py
	$(VPY) bench/bench_training.py
	$(VPY) bench/bench_threads.py

clean:
	rm -rf $(VENV) .pytest_cache __pycache__ */__pycache__
