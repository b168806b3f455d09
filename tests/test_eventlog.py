"""The reply event log on its own: numbering, replay from any point, the caps on events and bytes (older events
folded into a snapshot), followers that miss nothing, and how long finished replies are kept."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest

from clawdbot.chat.eventlog import Job, MemoryLog
from clawdbot.store.records import new_message


class Collected:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def push(self, data: bytes) -> None:
        self.events.append(orjson.loads(data))


def reply(log: MemoryLog, reply_id: str = "r1") -> None:
    message = replace(new_message("c1", "assistant", status="waiting"), id=reply_id)
    log.register(Job(reply_id, "c1", "someone", message))
    log.append(reply_id, {"type": "reply.start", "id": reply_id, "message": message})


def write(log: MemoryLog, *pieces: str, reply_id: str = "r1") -> None:
    for piece in pieces:
        log.append(reply_id, {"type": "reply.delta", "id": reply_id, "content": piece})


def rebuilt(events: list[dict[str, Any]]) -> tuple[str, list[int]]:
    """The text and the sequence numbers a client gets from a replay."""
    text, numbers = "", []
    for event in events:
        if event["type"] == "reply.snapshot":
            text, numbers = event["content"], [event["seq"]]
        else:
            text += event.get("content", "")
            numbers.append(event["seq"])
    return text, numbers


async def replayed(log: MemoryLog, start: int) -> list[dict[str, Any]]:
    return [orjson.loads(data) for data in await log.replay("r1", start) or []]


@pytest.mark.asyncio
async def test_events_are_numbered_from_one_and_replay_from_any_point() -> None:
    log = MemoryLog()
    reply(log)
    write(log, "a", "b", "c")
    assert [e["seq"] for e in await replayed(log, 1)] == [1, 2, 3, 4]
    assert rebuilt(await replayed(log, 3)) == ("bc", [3, 4])
    assert await replayed(log, 5) == []
    assert await log.replay("unknown", 1) is None


@pytest.mark.asyncio
async def test_past_the_caps_old_events_fold_into_a_snapshot_and_a_replay_stays_whole() -> None:
    log = MemoryLog(max_events=4, max_bytes=1 << 20)
    reply(log)
    pieces = [f"{i} " for i in range(20)]
    write(log, *pieces)
    job = await log.job("r1")
    assert job is not None
    assert len(job.events) == 4
    assert job.base_seq == 21 - 4
    text, numbers = rebuilt(await replayed(log, 1))  # from before the base: a snapshot of it, then the rest
    assert text == "".join(pieces)
    assert numbers == [17, 18, 19, 20, 21]
    assert rebuilt(await replayed(log, 19)) == ("".join(pieces[17:]), [19, 20, 21])  # still kept: exact events

    small = MemoryLog(max_events=10_000, max_bytes=600)
    reply(small)
    write(small, *pieces)
    kept = await small.job("r1")
    assert kept is not None
    assert kept.size <= 600
    assert rebuilt([orjson.loads(d) for d in await small.replay("r1", 1) or []])[0] == "".join(pieces)
    assert small.held_bytes() == kept.size


@pytest.mark.asyncio
async def test_a_follower_gets_the_replay_then_every_new_event_once() -> None:
    log = MemoryLog()
    reply(log)
    write(log, "a", "b")
    follower = Collected()
    assert await log.follow("r1", 2, follower)
    write(log, "c")
    log.unfollow("r1", follower)
    write(log, "d")
    assert [e["seq"] for e in follower.events] == [2, 3, 4]
    assert not await log.follow("unknown", 1, follower)


@pytest.mark.asyncio
async def test_a_subscriber_brought_up_to_date_gets_no_event_twice_and_none_out_of_order() -> None:
    """Live events that come while a subscriber's replay is read wait for it, and those the replay held already
    are dropped: as when the replay comes from Redis and the writer goes on meanwhile."""
    log = MemoryLog()
    reply(log)
    write(log, "a", "b")  # seq 2, 3
    subscriber = Collected()

    async def replay_while_the_reply_goes_on() -> list[bytes]:
        first = await log.replay("r1", 2) or []
        write(log, "c")  # seq 4: after the replay was read, before it reached the subscriber
        log.publish("c1", {"type": "conversation.title", "title": "t"})
        return first

    await log.subscribe("c1", subscriber, replay_while_the_reply_goes_on)
    write(log, "d")
    assert [(e["type"], e.get("seq")) for e in subscriber.events] == [
        ("reply.delta", 2),
        ("reply.delta", 3),
        ("reply.delta", 4),
        ("conversation.title", None),
        ("reply.delta", 5),
    ]

    again = Collected()  # a replay that already holds what came meanwhile: those are not sent twice

    async def replay_after_the_reply_went_on() -> list[bytes]:
        write(log, "e")  # seq 6, held
        return await log.replay("r1", 5) or []  # 5 and 6

    await log.subscribe("c1", again, replay_after_the_reply_went_on)
    write(log, "f")
    assert [e["seq"] for e in again.events] == [5, 6, 7]


@pytest.mark.asyncio
async def test_finished_replies_are_kept_a_while_then_left_to_the_database() -> None:
    log = MemoryLog(retain=60, max_finished=2)
    for reply_id in ("r1", "r2", "r3"):
        reply(log, reply_id)
        log.finish(reply_id)
    assert await log.job("r1") is None  # the oldest beyond max_finished
    assert await log.job("r3") is not None
    assert (await log.job("r3")).finished  # type: ignore[union-attr]
    expired = MemoryLog(retain=0)
    reply(expired)
    expired.finish("r1")
    assert await expired.job("r1") is None
