"""The outbox every WebSocket and event stream writes through (web/outbox.py): an event is written in the pusher's own
step when nothing is ahead of it, and whatever a slow client holds up comes out after it, in order, with nothing
lost, doubled or unbounded. The send here is a stand-in for aiohttp's: it writes at once, or waits for the client
to read (as a paused transport makes send_frame wait) when told to."""

from __future__ import annotations

import asyncio

import pytest

from clawdbot.identity import Actor
from clawdbot.web.outbox import Outbox


class Client:
    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.slow: asyncio.Future[None] | None = None  # while set, a write waits for it (the client reads slowly)
        self.waits = 0
        self.broken = False

    async def send(self, data: bytes) -> None:
        if self.broken:
            raise ConnectionResetError("Cannot write to closing transport")
        self.got.append(data)
        if self.slow is not None:
            self.waits += 1
            await self.slow


def actor() -> Actor:
    return Actor("u1", "ana", "user", "session", queue="u1")


async def started(client: Client) -> tuple[Outbox, asyncio.Task[None]]:
    outbox = Outbox(client.send, actor())
    drain = asyncio.create_task(outbox.drain())
    await asyncio.sleep(0)  # the drain task waits for work
    return outbox, drain


@pytest.mark.asyncio
async def test_an_event_with_nothing_ahead_of_it_is_written_in_the_pushers_step() -> None:
    client = Client()
    outbox, drain = await started(client)
    outbox.push(b"1")
    outbox.push(b"2")
    assert client.got == [b"1", b"2"]  # no await in between: written before the pusher went on
    drain.cancel()


@pytest.mark.asyncio
async def test_events_wait_until_the_drain_starts() -> None:
    client = Client()
    outbox = Outbox(client.send, actor())
    outbox.push(b"hello")  # an event stream's hello waits for its subscription
    assert client.got == []
    drain = asyncio.create_task(outbox.drain())
    await outbox.flush()
    assert client.got == [b"hello"]
    drain.cancel()


@pytest.mark.asyncio
async def test_a_slow_client_gets_everything_in_order_once_it_reads() -> None:
    client = Client()
    outbox, drain = await started(client)
    client.slow = asyncio.get_running_loop().create_future()
    for n in range(50):
        outbox.push(str(n).encode())
    assert client.got == [b"0"]  # the first write waits for the client; the rest queue behind it
    assert len(outbox.pending) == 49
    client.slow.set_result(None)
    client.slow = None
    await outbox.flush()
    assert client.got == [str(n).encode() for n in range(50)]
    outbox.push(b"next")  # caught up: written at once again
    assert client.got[-1] == b"next"
    drain.cancel()


@pytest.mark.asyncio
async def test_a_client_too_far_behind_is_disconnected_not_buffered_without_bound() -> None:
    client = Client()
    outbox, drain = await started(client)
    client.slow = asyncio.get_running_loop().create_future()
    for n in range(10_000):
        outbox.push(str(n).encode())
    assert outbox.closing.is_set()
    assert len(outbox.pending) <= 4096
    drain.cancel()


@pytest.mark.asyncio
async def test_a_failed_write_closes_the_connection_and_the_pusher_goes_on() -> None:
    client = Client()
    outbox, drain = await started(client)
    client.broken = True
    outbox.push(b"lost")  # raises nothing into the reply that pushed it
    assert outbox.closing.is_set()
    drain.cancel()


@pytest.mark.asyncio
async def test_a_write_cut_off_by_closing_the_connection_ends_cleanly() -> None:
    client = Client()
    outbox, drain = await started(client)
    client.slow = asyncio.get_running_loop().create_future()
    outbox.push(b"1")
    writing = outbox.writing
    assert writing is not None
    drain.cancel()
    writing.cancel()
    await asyncio.gather(drain, writing, return_exceptions=True)
    assert outbox.writing is None


@pytest.mark.asyncio
async def test_a_connection_that_writes_at_once_gets_events_by_plain_call_and_waits_through_send() -> None:
    """The WebSocket's `write` takes an event in a plain call while its socket keeps up; once it says the socket must
    wait, that event goes through the async send, and what comes after it queues behind it, in order."""
    client, plain = Client(), []
    waiting = False

    def write(data: bytes) -> bool:
        if waiting:
            return False
        plain.append(data)
        return True

    outbox = Outbox(client.send, actor(), write)
    drain = asyncio.create_task(outbox.drain())
    await asyncio.sleep(0)
    outbox.push(b"1")
    outbox.push(b"2")
    assert (plain, client.got) == ([b"1", b"2"], [])  # written in the pusher's step, no coroutine
    waiting, client.slow = True, asyncio.get_running_loop().create_future()
    outbox.push(b"3")  # the socket is backed up: aiohttp's writer, which waits for the client
    waiting = False
    outbox.push(b"4")  # queues behind 3, though the socket would take it now: order first
    assert (plain, client.got) == ([b"1", b"2"], [b"3"])
    client.slow.set_result(None)
    client.slow = None
    await outbox.flush()
    assert client.got == [b"3", b"4"]
    outbox.push(b"5")  # nothing queued any more: the plain write again
    assert plain == [b"1", b"2", b"5"]
    drain.cancel()
