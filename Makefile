UV ?= scripts/uv

.PHONY: install demo test lint typecheck fmt check bench-overhead bench-chat-db screenshots real-ollama

install:
	$(UV) sync --locked

demo:
	$(UV) run --locked clawdbot --demo

test:
	$(UV) run --locked pytest

lint:
	$(UV) run --locked ruff check src tests scripts benchmarks hatch_build.py scripts/uv scripts/test clawdbot
	$(UV) run --locked ruff format --check src tests scripts benchmarks hatch_build.py scripts/uv scripts/test clawdbot

typecheck:
	$(UV) run --locked mypy
	$(UV) run --locked lint-imports

fmt:
	$(UV) run --locked ruff format src tests scripts benchmarks hatch_build.py scripts/uv scripts/test clawdbot
	$(UV) run --locked ruff check --fix src tests scripts benchmarks hatch_build.py scripts/uv scripts/test clawdbot

check: lint typecheck test

bench-overhead:
	$(UV) run --locked python benchmarks/gateway_overhead.py

bench-chat-db:
	$(UV) run --locked python benchmarks/chat_database.py --conversations 500 --turns 3

screenshots:
	$(UV) run --locked python scripts/screenshots.py

real-ollama:
	python3 scripts/real_ollama.py serve --port 11434

.PHONY: bench-durability bench-fairness

bench-durability:
	$(UV) run --locked python benchmarks/durability.py --users 200 --turns 3

bench-fairness:
	$(UV) run --locked python benchmarks/fairness.py
