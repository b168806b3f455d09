UV ?= python3 -m uv

.PHONY: install demo test lint typecheck fmt check bench-overhead bench-chat-db screenshots

install:
	$(UV) sync --locked

demo:
	$(UV) run --locked clawdbot --demo

test:
	$(UV) run --locked pytest

lint:
	$(UV) run --locked ruff check src tests
	$(UV) run --locked ruff format --check src tests

typecheck:
	$(UV) run --locked mypy

fmt:
	$(UV) run --locked ruff format src tests
	$(UV) run --locked ruff check --fix src tests

check: lint typecheck test

bench-overhead:
	$(UV) run --locked python benchmarks/gateway_overhead.py

bench-chat-db:
	$(UV) run --locked python benchmarks/chat_database.py --conversations 500 --turns 3

screenshots:
	$(UV) run --locked python scripts/screenshots.py

.PHONY: bench-durability bench-fairness

bench-durability:
	$(UV) run --locked python benchmarks/durability.py --users 200 --turns 3

bench-fairness:
	$(UV) run --locked python benchmarks/fairness.py
