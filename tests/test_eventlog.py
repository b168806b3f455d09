"""The reply event log on its own: numbering, replay from any point, the caps on events and bytes (older events
folded into a snapshot), followers that miss nothing, and how long finished replies are kept."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson

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


def replayed(log: MemoryLog, start: int) -> list[dict[str, Any]]:
    return [orjson.loads(data) for data in log.replay("r1", start) or []]


def test_events_are_numbered_from_one_and_replay_from_any_point() -> None:
    log = MemoryLog()
    reply(log)
    write(log, "a", "b", "c")
    assert [e["seq"] for e in replayed(log, 1)] == [1, 2, 3, 4]
    assert rebuilt(replayed(log, 3)) == ("bc", [3, 4])
    assert replayed(log, 5) == []
    assert log.replay("unknown", 1) is None


def test_past_the_caps_old_events_fold_into_a_snapshot_and_a_replay_stays_whole() -> None:
    log = MemoryLog(max_events=4, max_bytes=1 << 20)
    reply(log)
    pieces = [f"{i} " for i in range(20)]
    write(log, *pieces)
    job = log.job("r1")
    assert job is not None
    assert len(job.events) == 4
    assert job.base_seq == 21 - 4
    text, numbers = rebuilt(replayed(log, 1))  # from before the base: a snapshot of it, then the rest
    assert text == "".join(pieces)
    assert numbers == [17, 18, 19, 20, 21]
    assert rebuilt(replayed(log, 19)) == ("".join(pieces[17:]), [19, 20, 21])  # still kept: exact events

    small = MemoryLog(max_events=10_000, max_bytes=600)
    reply(small)
    write(small, *pieces)
    kept = small.job("r1")
    assert kept is not None
    assert kept.size <= 600
    assert rebuilt([orjson.loads(d) for d in small.replay("r1", 1) or []])[0] == "".join(pieces)
    assert small.held_bytes() == kept.size


def test_a_follower_gets_the_replay_then_every_new_event_once() -> None:
    log = MemoryLog()
    reply(log)
    write(log, "a", "b")
    follower = Collected()
    assert log.follow("r1", 2, follower)
    write(log, "c")
    log.unfollow("r1", follower)
    write(log, "d")
    assert [e["seq"] for e in follower.events] == [2, 3, 4]
    assert not log.follow("unknown", 1, follower)


def test_finished_replies_are_kept_a_while_then_left_to_the_database() -> None:
    log = MemoryLog(retain=60, max_finished=2)
    for reply_id in ("r1", "r2", "r3"):
        reply(log, reply_id)
        log.finish(reply_id)
    assert log.job("r1") is None  # the oldest beyond max_finished
    assert log.job("r3") is not None
    assert log.job("r3").finished  # type: ignore[union-attr]
    expired = MemoryLog(retain=0)
    reply(expired)
    expired.finish("r1")
    assert expired.job("r1") is None
