"""Schemathesis against src/clawdbot/openapi.json: no 5xx from the gateway, and no answer the document does not
describe (status code, content type, body).

A real gateway (a subprocess on a free port) in front of the instant simulator, both on 127.0.0.1. Every documented
operation gets a fixed number of generated requests, valid and invalid ones, from a fixed seed (derandomized, no
example database), so a run is repeatable. An id in a path is sometimes a conversation or reply that exists, so the
routes behind the 404 are reached too.

No operation is excluded; the ones that stream are bounded instead:
- /api/chat, /api/generate, /api/pull and /v1/chat/completions with "stream": true end on their own: the instant
  simulator writes a whole reply at once. Every request has a 10 s limit all the same.
- A conversation's event stream (/chat/api/conversations/{id}/events) never ends by design: with 0.2 s heartbeats
  its first 3 events are read and the stream is cut (CONFIG).
- One reply's event stream (/chat/api/generations/{id}/events) must end after reply.done: read in full, 2 s limit.
- /chat/api/ws is asked without an Upgrade, so it answers 400 and nothing hangs.

The gateway runs with accounts on, and every request carries an admin's API key, as /api/* and /v1/* require.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from accounts_support import accounts_gateway, bearer, close_clients, new_key, sign_in
from conftest import Server, start_gateway, start_simulator

# Accounts on (--auth), every request with an admin's API key; False runs the gateway with --no-auth instead.
WITH_API_KEY = True

SPEC = json.loads(resources.files("clawdbot").joinpath("openapi.json").read_text(encoding="utf-8"))
EXAMPLES = 25  # per operation and phase; the coverage phase adds its own boundary cases
# Short heartbeats, so a conversation's event stream (endless by design) shows its events within the read limit.
GATEWAY_ARGS = ("--heartbeat", "0.2")
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20251125,
        "suppress-health-check": ["too_slow"],  # a busy machine makes generation slow, not the API wrong
        "generation": {
            "max-examples": EXAMPLES,
            "deterministic": True,  # derandomized: the same cases every run
            "database": "none",  # and no examples remembered from an earlier run
            "with-security-parameters": False,  # credentials are the test's, not generated
        },
        "phases": {"stateful": {"enabled": False}},  # the document has no links to follow
        "request-timeout": 10,
        "operations": [
            {
                # The backend's own 500 (Ollama answers 500 to an option of the wrong type, or a pull of a model
                # its registry does not have) is passed through as the document says; the gateway's own crash
                # is still caught, by not_a_gateway_crash.
                "include-path-regex": "^/(api|v1)/",
                "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "500"]}},
            },
            {
                # A conversation's event stream never ends (a page keeps it open): read its first events, not more.
                "include-path": "/chat/api/conversations/{id}/events",
                "max-stream-events": 3,
                "request-timeout": 2,
            },
            {
                # One reply's event stream ends after reply.done (reply_stream_ends checks that it does): read it
                # whole (schemathesis stops at 20 events unless told), but give up after 2 s.
                "include-path": "/chat/api/generations/{id}/events",
                "max-stream-events": 100_000,
                "request-timeout": 2,
            },
        ],
    }
)

schema = schemathesis.openapi.from_dict(SPEC, config=CONFIG)
EXISTING: dict[str, str] = {}  # ids the gateway fixture made: "conversation", its "reply", and one to delete


@schema.hook
def flatmap_path_parameters(context: schemathesis.HookContext, path_parameters: dict[str, Any]) -> Any:
    """An id path parameter is either the generated one (most likely a 404) or one that exists."""
    operation = context.operation
    if operation is None or not path_parameters or "id" not in path_parameters or not EXISTING:
        return st.just(path_parameters)  # also while pytest collects, before the gateway fixture made them
    if operation.label == "DELETE /chat/api/conversations/{id}":
        kind = "doomed"  # not the one the other operations use
    elif operation.path.startswith("/chat/api/conversations/{id}"):
        kind = "conversation"
    elif operation.path.startswith("/chat/api/generations/{id}"):
        kind = "reply"
    else:
        return st.just(path_parameters)
    return st.sampled_from([path_parameters, {**path_parameters, "id": EXISTING[kind]}])


@dataclass
class Gateway:
    server: Server
    headers: dict[str, str]  # sent with every request: the API key, when there is one

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    simulator = start_simulator("--profile", "instant", "--num-parallel", "8")
    if WITH_API_KEY:
        accounts = accounts_gateway(simulator.url, *GATEWAY_ARGS)
        accounts.add_user("schemathesis", admin=True)
        running = Gateway(accounts.server, bearer(new_key(sign_in(accounts.url, "schemathesis"))))
        close_clients()
    else:
        running = Gateway(start_gateway(simulator.url, *GATEWAY_ARGS), {})
    try:
        with httpx.Client(base_url=running.url, headers=running.headers, timeout=30) as client:
            assert client.get("/chat/api/session").json()["via"] == ("key" if WITH_API_KEY else "none")
            for kind in ("conversation", "doomed"):
                made = client.post("/chat/api/conversations", json={"title": kind})
                EXISTING[kind] = made.json()["conversation"]["id"]
            sent = client.post(f"/chat/api/conversations/{EXISTING['conversation']}/messages", json={"content": "hi"})
            EXISTING["reply"] = sent.json()["reply"]["id"]
        yield running
    finally:
        EXISTING.clear()
        running.server.stop()
        simulator.stop()


def not_a_gateway_crash(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """A 500 passed through from the backend is allowed on /api and /v1; the gateway's own (internal_error) never."""
    if response.status_code >= 500:
        try:
            body = json.loads(response.content)
        except ValueError:
            return  # not the gateway's: its errors are JSON (and content_type_conformance judges the rest)
        error = body.get("error") if isinstance(body, dict) else None
        code = error.get("code") if isinstance(error, dict) else body.get("code") if isinstance(body, dict) else None
        assert code != "internal_error", f"the gateway failed: {response.content[:300]!r}"


def credentials_accepted(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Every request names its user (or needs none): a 401 is only for a sign-in with a generated password."""
    if response.status_code == 401 and case.operation.label != "POST /chat/api/session":
        raise AssertionError(f"the gateway refused the test's credentials: {response.content[:300]!r}")


def reply_stream_ends(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """One reply's event stream ends, and its last event is reply.done (docs/chat-protocol.md, Resuming)."""
    if case.operation.path != "/chat/api/generations/{id}/events" or response.status_code != 200:
        return
    events = [line[6:] for line in response.content.decode().splitlines() if line.startswith("data: ")]
    last = json.loads(events[-1]).get("type") if events else None
    assert last == "reply.done", f"the stream did not end with reply.done (it was cut after {len(events)} events)"


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    not_a_gateway_crash,
    credentials_accepted,
    reply_stream_ends,
]


def _call(case: schemathesis.Case, gateway: Gateway) -> None:
    case.call_and_validate(base_url=gateway.url, headers=gateway.headers, checks=CHECKS)


@schema.parametrize()
def test_the_gateway_keeps_to_its_document(case: schemathesis.Case, gateway: Gateway) -> None:
    _call(case, gateway)
