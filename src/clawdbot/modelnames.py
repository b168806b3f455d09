"""Model names as Ollama compares them."""

from __future__ import annotations


def model_key(name: str) -> str:
    """One model however a request spells it: Ollama ignores case, and a name without a tag means `:latest`."""
    name = name.strip().lower()
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"
