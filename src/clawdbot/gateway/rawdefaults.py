"""What the relay adds to a raw /api request that leaves it out: the model's context size, and a cap on its output.

Ollama reloads a model whenever num_ctx changes, and the chat page sends the model's size (store/limits.py) on every
turn, so a raw request without one would reload the model under the page (and the page's next turn reload it back). A
request to /api/chat, /api/generate, /api/embed or /api/embeddings whose options lack num_ctx gets the model's size;
one to /api/chat or /api/generate whose options lack num_predict, to a model whose Modelfile sets none, gets the most
any reply may write (--max-num-predict), so that a base model cannot hold a slot for ever and Ollama itself ends the
reply, with done_reason "length" and its counts, as the client expects. A request that sets either keeps its own; a
model's own PARAMETER num_ctx is its size unless an admin set one (store/limits.py).

The client's bytes are kept: without an `options` object the defaults are appended at the end of the body, which
is otherwise passed on as sent; only a body whose `options` lacks something is written anew (its keys in their
order). /v1 requests are never changed: OpenAI's API has no num_ctx (docs/deployment.md says what to do instead).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..store.limits import Limits

CONTEXT_ROUTES = frozenset({"/api/chat", "/api/generate", "/api/embed", "/api/embeddings"})
_OUTPUT_ROUTES = frozenset({"/api/chat", "/api/generate"})


def parse(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object; None for anything else (Ollama answers that with its own error)."""
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def with_defaults(path: str, body: bytes, parsed: dict[str, Any] | None, limits: Limits) -> bytes:
    """The body to forward: `body` itself unless it lacks a default that `path` gets."""
    if path not in CONTEXT_ROUTES or parsed is None:
        return body
    # Ollama reads JSON with Go's encoding/json, which takes "Options" or "OPTIONS" for "options" (and "Model"…).
    key = next((k for k in parsed if k.lower() == "options"), None)
    options = parsed[key] if key is not None else None
    if options is not None and not isinstance(options, dict):
        return body  # not options Ollama can read: its error, not ours
    given = options or {}
    model = next((v for k, v in parsed.items() if k.lower() == "model"), None)
    missing: dict[str, int] = {}
    if "num_ctx" not in given:
        missing["num_ctx"] = limits.num_ctx(model)
    if path in _OUTPUT_ROUTES and "num_predict" not in given and limits.own_num_predict(model) is None:
        missing["num_predict"] = limits.max_num_predict  # a model with a cap of its own keeps it
    if not missing:
        return body
    if key is None:
        end = _before_space(body, len(body)) - 1  # the object's closing brace: the defaults go before it
        comma = b"" if body[_before_space(body, end) - 1] == ord("{") else b","
        return b"".join((memoryview(body)[:end], comma, b'"options":', orjson.dumps(missing), b"}"))  # one copy
    parsed[key] = {**given, **missing}
    return orjson.dumps(parsed)


def _before_space(body: bytes, end: int) -> int:
    """Where the JSON whitespace before `end` begins."""
    while end > 0 and body[end - 1] in _SPACE:
        end -= 1
    return end


_SPACE = frozenset(b" \t\r\n")
