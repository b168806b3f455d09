"""The error texts Go's encoding/json and time packages produce, which Ollama returns verbatim in 400s."""

from __future__ import annotations

import re

_LITERALS = {"t": "true", "f": "false", "n": "null"}
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_NUMBER = re.compile(r"[0-9]*(?:\.[0-9]*)?")
_DURATION_UNIT = re.compile(r"[^0-9.]*")  # Go takes every character up to the next digit or dot


def quote_char(c: str) -> str:
    """encoding/json's quoteChar: 'x', with ' and \" special-cased, control characters escaped."""
    if c == "'":
        return "'\\''"
    if c == '"':
        return "'\"'"
    if c.isprintable():
        return f"'{c}'"
    escapes = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return "'" + escapes.get(c, f"\\x{ord(c):02x}" if ord(c) < 0x80 else f"\\u{ord(c):04x}") + "'"


class GoSyntaxError(ValueError):
    """A body json.Decoder.Decode rejects; the message is Go's."""


def first_value_end(text: str) -> int:
    """Where the first JSON value in `text` ends: json.Decoder reads one value and never looks past it."""
    scanner = _Scanner(text)
    try:
        scanner.value()
    except _Found as found:
        raise GoSyntaxError(str(found)) from None
    return scanner.i


def syntax_error(text: str) -> str:
    """The message json.Decoder.Decode gives for the first syntax error in `text` (one value is read)."""
    try:
        first_value_end(text)
    except GoSyntaxError as error:
        return str(error)
    return "unexpected EOF"


class _Found(Exception):
    pass


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def peek(self) -> str:
        while self.i < len(self.text) and self.text[self.i] in " \t\r\n":
            self.i += 1
        if self.i >= len(self.text):
            raise _Found("unexpected EOF")
        return self.text[self.i]

    def fail(self, context: str) -> None:
        raise _Found(f"invalid character {quote_char(self.text[self.i])} {context}")

    def value(self) -> None:
        c = self.peek()
        if c == "{":
            self.obj()
        elif c == "[":
            self.arr()
        elif c == '"':
            self.string()
        elif c == "-" or c.isdigit():
            self.number()
        elif c in _LITERALS:
            self.literal(_LITERALS[c])
        else:
            self.fail("looking for beginning of value")

    def obj(self) -> None:
        self.i += 1
        if self.peek() == "}":
            self.i += 1
            return
        while True:
            if self.peek() != '"':
                self.fail("looking for beginning of object key string")
            self.string()
            if self.peek() != ":":
                self.fail("after object key")
            self.i += 1
            self.value()
            c = self.peek()
            self.i += 1
            if c == "}":
                return
            if c != ",":
                self.i -= 1
                self.fail("after object key:value pair")

    def arr(self) -> None:
        self.i += 1
        if self.peek() == "]":
            self.i += 1
            return
        while True:
            self.value()
            c = self.peek()
            self.i += 1
            if c == "]":
                return
            if c != ",":
                self.i -= 1
                self.fail("after array element")

    def string(self) -> None:
        self.i += 1
        while True:
            if self.i >= len(self.text):
                raise _Found("unexpected EOF")
            c = self.text[self.i]
            if c == '"':
                self.i += 1
                return
            if c < " ":
                self.fail("in string literal")
            if c == "\\":
                self.i += 1
                if self.i >= len(self.text):
                    raise _Found("unexpected EOF")
                if self.text[self.i] == "u":
                    for _ in range(4):
                        self.i += 1
                        if self.i >= len(self.text):
                            raise _Found("unexpected EOF")
                        if self.text[self.i] not in "0123456789abcdefABCDEF":
                            self.fail("in \\u hexadecimal character escape")
                elif self.text[self.i] not in '"\\/bfnrt':
                    self.fail("in string escape code")
            self.i += 1

    def number(self) -> None:
        if self.text[self.i] == "-":
            self.i += 1
            self.digit_or_fail("in numeric literal")
        if self.text[self.i] == "0":
            self.i += 1
        else:
            self.digits()
        if self.at("."):
            self.i += 1
            self.digit_or_fail("after decimal point in numeric literal")
            self.digits()
        if self.at("eE"):
            self.i += 1
            if self.at("+-"):
                self.i += 1
            self.digit_or_fail("in exponent of numeric literal")
            self.digits()

    def at(self, chars: str) -> bool:
        return self.i < len(self.text) and self.text[self.i] in chars

    def digits(self) -> None:
        while self.at("0123456789"):
            self.i += 1

    def digit_or_fail(self, context: str) -> None:
        if self.i >= len(self.text):
            raise _Found("unexpected EOF")
        if not self.text[self.i].isdigit():
            self.fail(context)

    def literal(self, word: str) -> None:
        for expected in word:
            if self.i >= len(self.text):
                raise _Found("unexpected EOF")
            if self.text[self.i] != expected:
                self.fail(f"in literal {word} (expecting {quote_char(expected)})")
            self.i += 1


def parse_duration(text: str) -> float:
    """time.ParseDuration, in seconds. Raises ValueError with Go's message, which Ollama returns in a 400."""
    quoted = _go_quote(text)
    invalid = ValueError(f"time: invalid duration {quoted}")
    body, sign = text, 1.0
    if body[:1] in ("+", "-"):
        sign, body = (-1.0 if body[0] == "-" else 1.0), body[1:]
    if body == "0":
        return 0.0
    if not body:
        raise invalid
    total, pos = 0.0, 0
    while pos < len(body):
        number = _DURATION_NUMBER.match(body, pos)
        assert number is not None  # the pattern matches the empty string
        if number.group() in ("", "."):
            raise invalid
        unit = _DURATION_UNIT.match(body, number.end())
        assert unit is not None
        if not unit.group():  # "-1", "300": the common mistake of a bare number in a string
            raise ValueError(f"time: missing unit in duration {quoted}")
        if unit.group() not in _DURATION_UNITS:
            raise ValueError(f"time: unknown unit {_go_quote(unit.group())} in duration {quoted}")
        total += float(number.group()) * _DURATION_UNITS[unit.group()]
        pos = unit.end()
    if total >= 2**63 / 1e9:
        raise invalid
    return sign * total


def _go_quote(text: str) -> str:
    """The time package's own quote(): non-ASCII and control bytes as \\xNN, `"` and `\\` escaped."""
    out = []
    for char in text:
        if " " <= char < "\x80":
            out.append("\\" + char if char in '"\\' else char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode("utf-8", "surrogateescape"))
    return '"' + "".join(out) + '"'
