"""A search hit as one line of plain text: the message's Markdown flattened around the match, whitespace collapsed,
cut at a word boundary (a character one in scripts written without spaces), with where each match sits in it.

Offsets count Unicode code points, so they mean the same in every language (a JavaScript client splits the text
with Array.from). The page marks the matches itself, from these offsets, as text: no HTML is ever sent.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Display columns (a wide CJK character counts two). The sidebar shows two lines of about 45 columns, so the match
# starts within the first line however deep in the message it is, and the rest reads on after it.
BEFORE = 30
LENGTH = 160
WINDOW = 400  # characters of Markdown flattened on each side of the match: enough for LENGTH, and cheap
ELLIPSIS = "…"

_FENCE = re.compile(r"^ {0,3}(?:`{3,}|~{3,})", re.MULTILINE)
_RULE = re.compile(r"^ {0,3}([-*_])(?: *\1){2,} *$")  # --- *** ___
_TABLE_RULE = re.compile(r"^ *\|? *:?-+:? *(?:\| *:?-+:? *)*\|? *$")  # |---|:--:|
_PREFIX = re.compile(r"^\s*(?:(?:>|[-*+](?=\s)|\d{1,9}[.)](?=\s)|#{1,6}(?=\s|$)|\[[ xX]\](?=\s))\s*)+")
_INLINE = [
    (re.compile(r"!\[([^\]\n]*)\]\([^)\n]*\)"), r"\1"),  # an image: its alt text
    (re.compile(r"\[([^\]\n]+)\]\([^)\n]*\)"), r"\1"),  # a link: its text
    (re.compile(r"\[([^\]\n]+)\]\[[^\]\n]*\]"), r"\1"),  # a reference link
    (re.compile(r"<((?:https?|mailto):[^>\s]+)>"), r"\1"),  # an autolink
    (re.compile(r"`+"), ""),  # code spans keep their text
    (re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1"), r"\2"),
    (re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])"), r"\1"),
    (re.compile(r"(?<![\w_])_(?=[^\s_])(.+?)(?<=[^\s_])_(?![\w_])"), r"\1"),  # not snake_case's underscores
    (re.compile(r"~~(?=\S)(.+?)(?<=\S)~~"), r"\1"),
    (re.compile(r"\\([!-/:-@\[-`{-~])"), r"\1"),  # backslash escapes
]


@dataclass(frozen=True, slots=True)
class Snippet:
    text: str
    highlights: list[tuple[int, int]]  # [start, end) of each match in `text`, in code points


def snippet(content: str, needle: str) -> Snippet:
    """The text around the first match of `needle` (any case) in `content`, every match in it located."""
    hits = find_all(content, needle, limit=1)
    if not hits:  # the database matched in a way Python's lower() does not: show the start, unmarked
        return _cut(flatten(content[: 2 * WINDOW], in_code=False), 0, 0, needle)
    at, end = hits[0]
    low, high = _window(content, at, end)
    in_code = len(_FENCE.findall(content[:low])) % 2 == 1
    plain = flatten(content[low:high], in_code)
    expected = len(flatten(content[low:at], in_code))
    spans = find_all(plain, needle)
    if not spans:  # the match spans markup (a search for "**bold**"): the Markdown as written, unflattened
        plain = " ".join(content[low:high].split())
        expected, spans = len(" ".join(content[low:at].split())), find_all(plain, needle)
    if not spans:
        return _cut(plain, 0, 0, needle)
    start, stop = min(spans, key=lambda span: abs(span[0] - expected))
    return _cut(plain, start, stop, needle)


def flatten(markdown: str, in_code: bool) -> str:
    """Markdown as the reader sees it, on one line: no fences, rules, list or heading marks, link targets or
    emphasis markers; table cells separated by " · ". Raw HTML stays, as the page shows it as text."""
    lines: list[str] = []
    for line in markdown.split("\n"):
        if _FENCE.match(line):
            in_code = not in_code
            continue
        if not in_code:
            if _RULE.match(line) or _TABLE_RULE.match(line):
                continue
            line = _PREFIX.sub("", line)
            if line.lstrip().startswith("|"):
                line = " · ".join(cell.strip() for cell in line.strip().strip("|").split("|"))
            for pattern, replacement in _INLINE:
                line = pattern.sub(replacement, line)
        lines.append(line)
    return " ".join(" ".join(lines).split())


def find_all(text: str, needle: str, limit: int = 1000) -> list[tuple[int, int]]:
    """[start, end) of each match of `needle` in `text` in any case, as the search's lower() folds it, located in
    `text` itself even where lowering changes a length (İ lowers to two code points)."""
    target = needle.lower()
    lowered = text.lower()
    origin: list[int] | None = None
    if len(lowered) != len(text):
        pieces = [char.lower() for char in text]
        lowered = "".join(pieces)
        origin = [index for index, piece in enumerate(pieces) for _ in piece]
    spans: list[tuple[int, int]] = []
    found = lowered.find(target) if target else -1
    while found != -1 and len(spans) < limit:
        last = found + len(target) - 1
        spans.append((found, last + 1) if origin is None else (origin[found], origin[last] + 1))
        found = lowered.find(target, found + len(target))
    return spans


def _window(content: str, at: int, end: int) -> tuple[int, int]:
    """WINDOW characters each side of the match, trimmed to whole lines where a line ends within it, so that
    Markdown is not cut in the middle of a line's markup."""
    low, high = max(0, at - WINDOW), min(len(content), end + WINDOW)
    if low > 0 and (newline := content.find("\n", low, at)) != -1:
        low = newline + 1
    if high < len(content) and (newline := content.rfind("\n", end, high)) != -1:
        high = newline
    return low, high


def _cut(plain: str, start: int, stop: int, needle: str) -> Snippet:
    """About BEFORE columns before the match and LENGTH in all, cut after a space where there is one, with an
    ellipsis for each cut; the offsets of every match in what is kept."""
    begin = start
    columns = 0
    while begin > 0 and columns < BEFORE:
        begin -= 1
        columns += _width(plain[begin])
    if begin > 0 and (space := plain.find(" ", begin, start)) != -1:
        begin = space + 1
    while begin < start and _joins(plain[begin]):  # never open on a combining mark or a joiner
        begin += 1
    end, columns = begin, 0
    while end < len(plain) and (end < stop or columns < LENGTH):
        columns += _width(plain[end])
        end += 1
    if end < len(plain) and (space := plain.rfind(" ", stop, end)) != -1:
        end = space
    while end < len(plain) and _joins(plain[end]):
        end += 1
    head = ELLIPSIS if begin > 0 else ""
    kept = plain[begin:end]
    spans = [(a + len(head), b + len(head)) for a, b in find_all(kept, needle)] if stop > start else []
    return Snippet(head + kept + (ELLIPSIS if end < len(plain) else ""), spans)


def _width(char: str) -> int:
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def _joins(char: str) -> bool:
    """A code point that belongs to the one before it: a combining mark, a variation selector, a zero-width joiner."""
    return unicodedata.category(char) in ("Mn", "Me", "Mc") or char in "\u200d\ufe0e\ufe0f"
