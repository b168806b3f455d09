"""The simulator's building blocks without a server: Go JSON, Go error texts, the tokenizer, the step-time model.

Composed replies have their own tests in test_simulator_replies.py."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from clawdbot.simulator import gojson
from clawdbot.simulator.goerrors import parse_duration, syntax_error
from clawdbot.simulator.profiles import PROFILES
from clawdbot.simulator.replies import count_tokens, tokenize
from clawdbot.simulator.wire import ChatEmitter, GenerateEmitter, OpenAIEmitter, Result, openai_error

RFC3339NANO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z")


# ---- gojson -------------------------------------------------------------------------------------------------------
def test_dumps_escapes_html_and_line_separators_but_keeps_utf8_raw() -> None:
    value = {"b": "<think>a & b</think>", "a": "中文 😀 \u2028\u2029", "c": '\n\t\x01"\\'}
    assert (
        gojson.dumps(value)
        == (
            '{"b":"\\u003cthink\\u003ea \\u0026 b\\u003c/think\\u003e",'
            '"a":"中文 😀 \\u2028\\u2029",'
            '"c":"\\n\\t\\u0001\\"\\\\"}'
        ).encode()
    )


def test_dumps_is_compact_keeps_key_order_and_has_no_newline() -> None:
    encoded = gojson.dumps({"z": 1, "a": [1, 2], "m": {"y": None, "b": True}})
    assert encoded == b'{"z":1,"a":[1,2],"m":{"y":null,"b":true}}'
    assert gojson.encode_line({"z": 1}) == b'{"z":1}\n'


def test_encode_string_is_one_escaped_literal() -> None:
    assert gojson.encode_string("x<y>&z") == b'"x\\u003cy\\u003e\\u0026z"'
    assert json.loads(gojson.encode_string("x<y>&z\u2028")) == "x<y>&z\u2028"


@pytest.mark.parametrize(
    ("ns", "expected"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1_500_000_000, "1970-01-01T00:00:01.5Z"),
        (1_000_000_001, "1970-01-01T00:00:01.000000001Z"),
        (123_456_789_000, "1970-01-01T00:02:03.456789Z"),
        (1_760_954_400_120_000_000, "2025-10-20T10:00:00.12Z"),
        (1_760_954_400_000_000_000, "2025-10-20T10:00:00Z"),
    ],
)
def test_rfc3339nano_trims_trailing_zeros(ns: int, expected: str) -> None:
    assert gojson.rfc3339nano(ns) == expected


def test_rfc3339nano_now_is_utc() -> None:
    stamp = gojson.rfc3339nano()
    assert RFC3339NANO.fullmatch(stamp)
    whole = datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    assert abs((whole - datetime.now(UTC)).total_seconds()) < 2


@pytest.fixture
def zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run under a POSIX TZ for the server-local times of /api/tags and /api/ps."""
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        ("UTC0", "2025-05-10T08:06:48.6397Z"),
        ("<-07>7", "2025-05-10T01:06:48.6397-07:00"),
        ("<+0530>-5:30", "2025-05-10T13:36:48.6397+05:30"),
    ],
)
def test_local_rfc3339nano_uses_the_server_offset(
    zone: None, monkeypatch: pytest.MonkeyPatch, tz: str, expected: str
) -> None:
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    moment = datetime(2025, 5, 10, 8, 6, 48, 639700, tzinfo=UTC)
    assert gojson.local_rfc3339nano(moment) == expected
    assert gojson.local_rfc3339nano(moment.replace(microsecond=0)) == expected.replace(".6397", "")


# ---- goerrors -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{bad", "invalid character 'b' looking for beginning of object key string"),
        ('{"a":1,}', "invalid character '}' looking for beginning of object key string"),
        ('{"a" 1}', "invalid character '1' after object key"),
        ('{"a":1 "b":2}', "invalid character '\"' after object key:value pair"),
        ("[1 2]", "invalid character '2' after array element"),
        ('{"a":tru}', "invalid character '}' in literal true (expecting 'e')"),
        ("nul", "unexpected EOF"),
        ("nope", "invalid character 'o' in literal null (expecting 'u')"),
        ('{"a":-x}', "invalid character 'x' in numeric literal"),
        ('{"a":1.}', "invalid character '}' after decimal point in numeric literal"),
        ('{"a":1e}', "invalid character '}' in exponent of numeric literal"),
        ('{"a":01}', "invalid character '1' after object key:value pair"),
        ('{"a":"\\q"}', "invalid character 'q' in string escape code"),
        ('{"a":"\\u12x4"}', "invalid character 'x' in \\u hexadecimal character escape"),
        ('{"a":"line\nbreak"}', "invalid character '\\n' in string literal"),
        ("x", "invalid character 'x' looking for beginning of value"),
        ("'single'", "invalid character '\\'' looking for beginning of value"),
        ('{"model":"qwen3:32b"', "unexpected EOF"),
        ('{"a":[1,2', "unexpected EOF"),
        ('{"a":"unterminated', "unexpected EOF"),
    ],
)
def test_syntax_error_matches_go_decoder(text: str, message: str) -> None:
    assert syntax_error(text) == message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("5.s", 5.0),
        ("300ms", 0.3),
        ("250us", 250e-6),
        ("250µs", 250e-6),
        ("2h45m30.5s", 9930.5),
        ("-1s", -1.0),
        ("+2m", 120.0),
        ("0", 0.0),
        ("-0", 0.0),
        ("10ns", 10e-9),
    ],
)
def test_parse_duration_accepts_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", 'time: invalid duration "abc"'),
        ("", 'time: invalid duration ""'),
        ("-", 'time: invalid duration "-"'),
        (".s", 'time: invalid duration ".s"'),
        ("m", 'time: invalid duration "m"'),
        # A bare number is the usual mistake ("-1" meant "forever"); Go names the missing unit.
        ("-1", 'time: missing unit in duration "-1"'),
        ("300", 'time: missing unit in duration "300"'),
        ("1h30", 'time: missing unit in duration "1h30"'),
        ("1..5s", 'time: missing unit in duration "1..5s"'),
        ("5x", 'time: unknown unit "x" in duration "5x"'),
        ("10 minutes", 'time: unknown unit " minutes" in duration "10 minutes"'),
        ("5mx", 'time: unknown unit "mx" in duration "5mx"'),
        ("5µx", 'time: unknown unit "\\xc2\\xb5x" in duration "5\\xc2\\xb5x"'),
    ],
)
def test_parse_duration_errors_are_gos(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_duration(text)


# ---- tokenizer and replies ----------------------------------------------------------------------------------------
TRICKY = [
    "Hello, world! 👋🏽 family: 👨‍👩‍👧 done.",
    "中文混合English和数字12345，还有标点。",
    "```python\ndef f(x):\n\treturn x << 2 & 0xFF  # <ok>\n```\n\n\n",
    "  leading spaces\r\n\ttabs\t\tand trailing  ",
    "e\u0301 combining, \u2028 separators \u2029, nul \x00 and bell \x07",
    "a" * 500 + " " + "b" * 3,
    "",
    "\n",
    "ĀĒĪŌŪ ñ ß ẞ Ω",
    "| a | b |\n|---|---|\n| 1 | 2 |",
]


@pytest.mark.parametrize("text", TRICKY)
def test_tokens_join_back_to_the_exact_text(text: str) -> None:
    tokens = tokenize(text)
    assert "".join(tokens) == text
    assert all(tokens)
    assert count_tokens(text) == len(tokens)


def test_tokenizer_cuts_like_a_bpe() -> None:
    assert tokenize("Hello big world") == ["Hello", " big", " world"]
    assert tokenize("2025") == ["2", "0", "2", "5"]
    assert tokenize("中文混合") == ["中文", "混合"]
    assert tokenize("a\n\n\nb") == ["a", "\n\n\n", "b"]


# ---- profiles -----------------------------------------------------------------------------------------------------
def test_step_seconds_grows_with_batch_and_context() -> None:
    p = PROFILES["4090"]
    steps = [p.step_seconds(n, 0) for n in (1, 2, 4, 8, 16, 64, 512)]
    assert steps == sorted(steps)
    assert len(set(steps)) == len(steps)
    assert p.step_seconds(1, 0) == pytest.approx(1 / 36 + 0.001)
    # ~34 tok/s alone, ~23 tok/s per stream at 8 (calibration §2.3)
    assert 1 / p.step_seconds(8, 8 * 1000) == pytest.approx(23, abs=2)
    assert p.step_seconds(1, 32_000) > p.step_seconds(1, 0) + 0.01
    # a full num_batch of prompt is compute-bound: ~512/60 single steps
    assert p.step_seconds(512, 0) == pytest.approx(512 / 60 / 36 + 0.001)


def test_instant_profile_takes_no_time() -> None:
    assert PROFILES["instant"].step_seconds(512, 100_000) == 0.0
    assert PROFILES["instant"].load_seconds == 0.0


# ---- wire ---------------------------------------------------------------------------------------------------------
def _without_created_at(line: bytes) -> bytes:
    return re.sub(rb'"created_at":"[^"]+"', b'"created_at":"T"', line)


def test_chat_final_chunk_omits_zero_metrics() -> None:
    result = Result("stop", eval_count=5, eval_duration=100, total_duration=300, load_duration=0)
    line = ChatEmitter("qwen3:32b").done(result)
    assert _without_created_at(line) == (
        b'{"model":"qwen3:32b","created_at":"T","message":{"role":"assistant","content":""},'
        b'"done":true,"done_reason":"stop","total_duration":300,"eval_count":5,"eval_duration":100}\n'
    )


def test_chat_chunks_have_go_key_order() -> None:
    emitter = ChatEmitter("qwen3:32b")
    assert _without_created_at(emitter.thinking("<x>")) == (
        b'{"model":"qwen3:32b","created_at":"T","message":{"role":"assistant","content":"",'
        b'"thinking":"\\u003cx\\u003e"},"done":false}\n'
    )
    assert _without_created_at(emitter.content("&")) == (
        b'{"model":"qwen3:32b","created_at":"T","message":{"role":"assistant","content":"\\u0026"},"done":false}\n'
    )
    content_type, body = emitter.whole(Result("length", thinking="t", content="c", eval_count=2))
    assert content_type == "application/json; charset=utf-8"
    assert _without_created_at(body) == (
        b'{"model":"qwen3:32b","created_at":"T","message":{"role":"assistant","content":"c","thinking":"t"},'
        b'"done":true,"done_reason":"length","eval_count":2}'
    )


def test_generate_final_chunk_carries_context_before_metrics() -> None:
    line = GenerateEmitter("qwen3:32b").done(Result("stop", prompt_eval_count=2, eval_count=1, context=[7, 8, 9]))
    assert _without_created_at(line) == (
        b'{"model":"qwen3:32b","created_at":"T","response":"","done":true,"done_reason":"stop",'
        b'"context":[7,8,9],"prompt_eval_count":2,"eval_count":1}\n'
    )


def test_openai_error_types_follow_the_status() -> None:
    assert json.loads(openai_error(400, "bad")) == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}
    }
    assert json.loads(openai_error(404, "x"))["error"]["type"] == "not_found_error"
    assert json.loads(openai_error(503, "x"))["error"]["type"] == "api_error"
    assert openai_error(500, "x").endswith(b"}}\n")


def _events(data: bytes) -> list[dict[str, object] | str]:
    assert data.endswith(b"\n\n")
    out: list[dict[str, object] | str] = []
    for event in data[:-2].split(b"\n\n"):
        assert event.startswith(b"data: ")
        payload = event[len(b"data: ") :]
        out.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return out


def test_openai_current_format_sends_role_once_and_finish_alone() -> None:
    emitter = OpenAIEmitter("qwen3:32b", legacy=False, include_usage=True)
    data = (
        emitter.thinking("hm") + emitter.content("Hi") + emitter.done(Result("stop", prompt_eval_count=3, eval_count=4))
    )
    events = _events(data)
    deltas = [e["choices"][0]["delta"] for e in events[:3]]  # type: ignore[index]
    assert deltas == [{"role": "assistant", "content": "", "reasoning": "hm"}, {"content": "Hi"}, {}]
    assert events[2]["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]
    assert events[3]["choices"] == []  # type: ignore[index]
    assert events[3]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}  # type: ignore[index]
    assert events[4] == "[DONE]"


def test_openai_legacy_format_repeats_role_and_finishes_on_content_chunk() -> None:
    emitter = OpenAIEmitter("qwen3:32b", legacy=True, include_usage=False)
    events = _events(emitter.content("Hi") + emitter.done(Result("stop")))
    assert [e["choices"][0]["delta"] for e in events[:2]] == [  # type: ignore[index]
        {"role": "assistant", "content": "Hi"},
        {"role": "assistant", "content": ""},
    ]
    assert [e["choices"][0]["finish_reason"] for e in events[:2]] == [None, "stop"]  # type: ignore[index]
    assert events[2:] == ["[DONE]"]
