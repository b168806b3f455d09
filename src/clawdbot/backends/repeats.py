"""Ollama's guard against a model caught in a loop, counted as Ollama counts it."""

from __future__ import annotations


class Repeats:
    """Ollama ends a reply with no final chunk and no error once one token's trimmed text has come 31 times in a row
    (its runner's guard against a model caught in a loop; both 0.5 and 0.32 do it). Counting the same here tells
    that end from a connection that dropped."""

    LIMIT = 30  # repeats after the first: the 31st identical chunk is the last one Ollama sends

    def __init__(self) -> None:
        self.last: str | None = None
        self.count = 0

    def saw(self, text: str) -> None:
        text = text.strip()
        if text == self.last:
            self.count += 1
        else:
            self.last, self.count = text, 0

    @property
    def hit(self) -> bool:
        return self.count >= self.LIMIT
