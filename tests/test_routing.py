"""Where a generation runs among several backends: slots per backend, the model, conversation affinity and its
threshold, the loaded model, failover's reroute, and each backend's circuit breaker (docs/backends.md)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import cast

import pytest

from clawdbot.backends.admission import MemoryAdmission
from clawdbot.backends.base import Backend, BackendStatus
from clawdbot.backends.fleet import TRIAL_PROBES, TRIP_AFTER, Fleet, Member
from clawdbot.backends.routing import Place, choose
from clawdbot.errors import BackendError


def places(*sizes: int) -> list[Place]:
    return [Place(name, size) for name, size in zip("abc", sizes, strict=False)]


def admission(*pool: Place) -> MemoryAdmission:
    return MemoryAdmission(list(pool), max_queue=100, max_queue_per_user=100)


@pytest.mark.asyncio
async def test_slots_are_counted_per_backend_and_the_queue_is_one() -> None:
    a, b = places(2, 1)
    gate = admission(a, b)
    tickets = [await gate.enter(f"u{i}") for i in range(4)]
    assert [t.running for t in tickets] == [True, True, True, False]
    assert (a.running, b.running, gate.queued) == (2, 1, 1)
    on_b = next(t for t in tickets if t.place is b)
    gate.release(on_b)  # b's slot frees: the waiting one takes it
    assert tickets[3].running
    assert tickets[3].place is b


def test_the_most_free_share_wins_then_the_configured_order() -> None:
    a, b = places(4, 2)
    assert choose([a, b], None).place is a  # both empty: the first configured
    a.running = 3  # a: 1 of 4 free; b: 2 of 2
    assert choose([a, b], None).place is b


def test_a_loaded_model_beats_a_freer_backend() -> None:
    a, b = places(4, 4)
    a.running, b.loaded = 0, frozenset({"qwen3:32b"})
    b.running = 3
    assert choose([a, b], "qwen3:32b").place is b
    assert choose([a, b], "qwen3:8b").place is a


def test_requests_go_only_to_backends_that_serve_their_model() -> None:
    a, b = places(1, 1)
    a.models, a.listed, b.listed = frozenset({"x:latest"}), frozenset({"x:latest", "y:latest"}), frozenset({"y:latest"})
    assert choose([a, b], "x").place is a
    b.running = 1
    assert choose([a, b], "Y") is None  # a lists y, but may not serve it: wait for b (Ollama's spelling: case, :latest)
    b.running, a.running = 0, 1
    assert choose([a, b], "x") is None  # b does not list x: wait for a
    assert choose([a, b], "z").place is b  # listed nowhere: any that may serve it answers for itself


def test_affinity_holds_while_its_backend_has_a_free_slot_and_gives_way_when_it_has_none() -> None:
    a, b = places(4, 4)
    a.running = 3  # b is emptier, yet a keeps its conversation
    choice = choose([a, b], None, prefer="a")
    assert (choice.place, choice.affinity) == (a, True)
    a.running = 4
    choice = choose([a, b], None, prefer="a")
    assert (choice.place, choice.affinity) == (b, False)
    assert choose([a, b], None).affinity is None  # no preference: neither hit nor miss


def test_comparison_policies_ignore_affinity() -> None:
    a, b = places(4, 4)
    a.running = 1
    assert choose([a, b], None, prefer="a", policy="least_busy").place is b
    assert {choose([a, b], None, prefer="a", policy="random").place.name for _ in range(200)} == {"a", "b"}


@pytest.mark.asyncio
async def test_a_queued_request_for_a_busy_model_lets_another_model_by() -> None:
    a, b = places(1, 1)
    a.models, b.models = frozenset({"x:latest"}), frozenset({"y:latest"})
    gate = admission(a, b)
    first = await gate.enter("ana", model="x")
    blocked = await gate.enter("bo", model="x")
    other = await gate.enter("cy", model="y")
    assert (first.running, blocked.running, other.running) == (True, False, True)
    assert gate.waiting_for() == {"a": 1}


@pytest.mark.asyncio
async def test_reroute_moves_a_failed_generation_to_another_backend_first_in_line() -> None:
    a, b = places(1, 1)
    gate = admission(a, b)
    failed = await gate.enter("ana")
    busy = await gate.enter("bo")
    waiting = await gate.enter("cy")
    assert (failed.place, busy.place, waiting.running) == (a, b, False)
    gate.reroute(failed)  # a failed it: a's slot goes to cy, the failed one waits for b, ahead of everyone
    assert waiting.running
    assert waiting.place is a
    assert not failed.running
    later = await gate.enter("dee")
    gate.release(busy)
    assert failed.running
    assert failed.place is b
    assert not later.running
    await asyncio.wait_for(gate.wait(failed), 1)


@pytest.mark.asyncio
async def test_reroute_on_a_lone_backend_tries_it_again() -> None:
    (a,) = places(1)
    gate = admission(a)
    ticket = await gate.enter("ana")
    gate.reroute(ticket)
    assert ticket.running
    assert ticket.place is a
    assert a.running == 1


@pytest.mark.asyncio
async def test_a_barred_backend_is_never_chosen_not_even_when_the_others_are_out() -> None:
    a, b = places(1, 1)  # b speaks another API than the request's (an /api/* generation and an OpenAI server)
    a.up = False
    gate = admission(a, b)
    ticket = await gate.enter("ana", barred=frozenset({"b"}))
    assert ticket.place is a  # the last try goes to a, out of rotation or not, and fails with its own error
    gate.reroute(ticket)
    assert ticket.place is a
    assert gate.waiting_for() == {}


# ---- the circuit breaker ------------------------------------------------------------------------------------
def member(name: str) -> Member:
    status = BackendStatus(reachable=True, error=None, models=[{"name": "qwen3:32b"}])
    backend = SimpleNamespace(url=f"http://{name}", simulated=False, status=status, reported_slots=None)
    return Member(name, "ollama", cast(Backend, backend), Place(name, 2), 2)


def failure(kind: str) -> BackendError:
    return BackendError("it failed", backend="x", kind=kind)


def test_a_refused_connection_takes_a_backend_out_at_once_other_failures_after_several() -> None:
    a, b = member("a"), member("b")
    fleet = Fleet([a, b], 10.0)
    fleet.failed(a, failure("connect_refused"))
    assert a.state == "out"
    for _ in range(TRIP_AFTER - 1):
        fleet.failed(b, failure("http_5xx"))
    assert b.state == "healthy"
    fleet.succeeded(b)  # a success in between: the count starts again
    for _ in range(TRIP_AFTER - 1):
        fleet.failed(b, failure("reset_mid_stream"))
    assert b.state == "healthy"
    fleet.failed(b, failure("idle_timeout"))
    assert b.state == "out"
    assert b.failed["reset_mid_stream"] == TRIP_AFTER - 1


def test_the_requests_own_faults_say_nothing_about_the_backend() -> None:
    a = member("a")
    fleet = Fleet([a], 10.0)
    for kind in ("http_400", "http_404", "time_limit", "repeat_limit", "error_line") * TRIP_AFTER:
        fleet.failed(a, failure(kind))
    assert a.state == "healthy"


@pytest.mark.asyncio
async def test_a_backend_out_of_rotation_comes_back_half_open_and_closes_at_its_first_success() -> None:
    a, b = member("a"), member("b")
    fleet = Fleet([a, b], 10.0)
    woken: list[str] = []
    fleet.wake = lambda: woken.append("wake")

    async def probe() -> BackendStatus:
        return a.backend.status

    a.backend.probe = probe  # type: ignore[method-assign]
    fleet.failed(a, failure("connect_refused"))
    assert choose(fleet.places, None).place is b.place
    await fleet.check(a)  # the probe passes: half-open, one generation at a time
    assert a.state == "half_open"
    assert a.place.free == 1
    a.place.running = 1
    assert a.place.free == 0
    fleet.failed(a, failure("http_5xx"))  # a failure while half-open: out again at once
    assert a.state == "out"
    a.place.running = 0
    await fleet.check(a)
    fleet.succeeded(a)
    assert a.state == "healthy"
    assert a.place.free == 2
    assert woken  # admission was told each time the places changed


def test_a_drained_backend_gets_no_new_work_and_comes_back() -> None:
    a, b = member("a"), member("b")
    fleet = Fleet([a, b], 10.0)
    fleet.drain("a", True)
    assert a.state == "draining"
    assert choose(fleet.places, None, prefer="a").place is b.place
    fleet.drain("a", False)
    assert choose(fleet.places, None, prefer="a").place is a.place


def test_with_no_backend_in_rotation_a_request_still_goes_to_one_and_gets_its_error() -> None:
    a, b = member("a"), member("b")
    fleet = Fleet([a, b], 10.0)
    fleet.failed(a, failure("connect_refused"))
    fleet.failed(b, failure("connect_refused"))
    choice = choose(fleet.places, "qwen3:32b")
    assert choice is not None
    fleet.drain("a", True)
    fleet.drain("b", True)
    assert choose(fleet.places, "qwen3:32b") is None  # drained backends get nothing, not even a last try


def test_the_merged_status_lists_each_model_once_and_keeps_a_down_backends_models_for_the_page() -> None:
    a, b = member("a"), member("b")
    b.backend.status.models = [{"name": "qwen3:32b"}, {"name": "gemma3:270m"}]
    fleet = Fleet([a, b], 10.0)
    fleet.learned(a)
    fleet.learned(b)
    assert fleet.status.model_names() == ["qwen3:32b", "gemma3:270m"]
    b.backend.status = BackendStatus(reachable=False, error="refused")
    fleet.failed(b, failure("connect_refused"))
    assert fleet.status.model_names() == ["qwen3:32b"]
    assert dict((m["name"], where) for m, where in fleet.catalog()) == {"qwen3:32b": ["a"], "gemma3:270m": []}


@pytest.mark.asyncio
async def test_a_half_open_backend_no_generation_tries_is_closed_by_its_probes() -> None:
    a = member("a")
    fleet = Fleet([a], 10.0)

    async def probe() -> BackendStatus:
        return a.backend.status

    a.backend.probe = probe  # type: ignore[method-assign]
    fleet.failed(a, failure("connect_refused"))
    await fleet.check(a)
    assert a.state == "half_open"
    for _ in range(TRIAL_PROBES - 1):
        await fleet.check(a)
    assert a.state == "half_open"
    await fleet.check(a)
    assert a.state == "healthy"
