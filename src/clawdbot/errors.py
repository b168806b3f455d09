"""The gateway's exceptions. Each carries its HTTP status and a stable code; web.py renders them as JSON.

Upstream (aiohttp client) failures are mapped to these in exactly one place: backends.classify().
"""

from __future__ import annotations


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


class BackendError(ClawdbotError):
    """The backend could not be reached or failed; `kind` is the metrics label, `backend` its URL."""

    status = 502
    code = "backend_error"

    def __init__(self, message: str, *, backend: str, kind: str) -> None:
        super().__init__(message)
        self.backend = backend
        self.kind = kind


class BackendUnreachable(BackendError):
    code = "backend_unreachable"


class BackendTimeout(BackendError):
    status = 504
    code = "backend_timeout"
