# The README's commands. `make run` and `make test` set everything up first.
.PHONY: setup run test lint demo bench

VENV := .venv/bin

setup:
	@scripts/setup

run: setup
	@scripts/run

test: setup
	$(VENV)/ruff check gateway tests
	$(VENV)/python -m mypy
	$(VENV)/python -m pytest -q -n 2 --dist loadfile tests

lint: setup
	$(VENV)/ruff check gateway tests
	$(VENV)/python -m mypy

demo: setup
	$(VENV)/gateway demo

bench: setup
	$(VENV)/python tests/bench/throughput.py $(BENCH_ARGS)
