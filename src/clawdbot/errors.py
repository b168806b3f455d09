"""The gateway's exceptions. Each carries its HTTP status and a stable code; web/app.py renders them as JSON.

Upstream (aiohttp client) failures are mapped to these in exactly one place: the backend's classify()
(backends/http.py, shared by every kind of backend).
"""

from __future__ import annotations


def openai_error(message: str, *, status: int, code: str) -> dict[str, object]:
    """An error in OpenAI's shape, which its client libraries read (under /v1, and in a /v1 stream cut short)."""
    kind = "api_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class ClawdbotError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ClawdbotError):
    status = 400
    code = "bad_request"


class Conflict(ClawdbotError):
    """The request clashes with work in progress; `details` says where to look instead."""

    status = 409
    code = "conflict"

    def __init__(self, message: str, **details: str) -> None:
        super().__init__(message)
        self.details = details


class Unauthenticated(ClawdbotError):
    """No user: sign in, or send an API key."""

    status = 401
    code = "unauthenticated"


class Forbidden(ClawdbotError):
    """A known user who may not do this; `code` says why (forbidden, csrf, bad_origin, model_not_allowed, …)."""

    status = 403
    code = "forbidden"

    def __init__(self, message: str, code: str = "forbidden") -> None:
        super().__init__(message)
        self.code = code


class NotFound(ClawdbotError):
    status = 404
    code = "not_found"


class PayloadTooLarge(ClawdbotError):
    status = 413
    code = "payload_too_large"


class Overloaded(ClawdbotError):
    """No room (a full queue, a rate limit, a throttle); `retry_after` is the advice in seconds (also sent as the
    Retry-After header)."""

    status = 503
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int, status: int = 503, code: str = "overloaded") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status, self.code = status, code


class BackendError(ClawdbotError):
    """The backend could not be reached or failed; `kind` is the metrics label, `backend` its URL."""

    status = 502
    code = "backend_error"

    def __init__(self, message: str, *, backend: str, kind: str) -> None:
        super().__init__(message)
        self.backend = backend
        self.kind = kind

    def explain(self) -> str:
        """What the user reads under a failed reply: what happened, in words they can act on."""
        kind, detail = self.kind, self.message.split(": ", 1)[-1]
        if kind in _EXPLAINED:
            return _EXPLAINED[kind]
        if kind.startswith("http_5"):
            return f"The model server failed (HTTP {kind[5:]}): {detail}"
        if kind.startswith("http_4"):
            return f"The model server refused the request (HTTP {kind[5:]}): {detail}"
        if kind == "error_line":
            return f"The model stopped with an error: {self.message.removeprefix('the model failed: ')}"
        return f"The model server failed: {self.message}"


_KEPT = "; the text so far is kept."
_EXPLAINED = {
    "connect_refused": "The model server could not be reached (connection refused). It may be down or restarting.",
    "connect_timeout": "The model server did not accept a connection in time. It may be overloaded or unreachable.",
    "first_byte_timeout": "The model server did not start answering in time (--first-byte-timeout).",
    "idle_timeout": "The model server stopped sending in the middle of the reply (--idle-timeout)" + _KEPT,
    "reset": "The model server closed the connection before answering.",
    "reset_mid_stream": "The model server closed the connection in the middle of the reply" + _KEPT,
    "incomplete_stream": "The model server closed the connection in the middle of the reply" + _KEPT,
    "repeat_limit": "The model kept repeating the same word, so the model server stopped the reply (Ollama ends a "
    "reply once one token comes 31 times in a row)" + _KEPT + " Regenerate, or a higher temperature, helps.",
    "http_503": "The model server is busy (its queue is full). Try again in a few seconds.",
    "bad_response": "The model server's answer was not valid HTTP: is the URL a model server's?",
    "malformed": "The model server sent something that is not Ollama's streaming format" + _KEPT,
}


class BackendUnreachable(BackendError):
    code = "backend_unreachable"


class BackendTimeout(BackendError):
    status = 504
    code = "backend_timeout"


class RedisUnavailable(ClawdbotError):
    """The live state several gateway processes share (--redis-url) cannot be reached; what is stored is safe."""

    status = 503
    code = "redis_unavailable"
