"""What the simulated qwen3 says: an answer shaped by the question, the same for the same seed and question.

`compose` answers the last user message in its language, with the table, list and code (in the languages it
names) that it asks for, at a length that follows the question: a line for a greeting, a paragraph when asked to be
brief, sections with headings when asked to explain in detail. `reply_seed` picks the seed per request the way
Ollama's sampler does: the request's own `seed`, one fixed seed for greedy decoding (`temperature` 0), or else a
fresh draw, so that asking twice gives two different answers.

The tokenizer cuts text roughly as Qwen's BPE does (a word with its leading space, one digit, one or two CJK
characters, a run of newlines) and the tokens always join back to the text.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any, Literal, TypeGuard

from .ask import Ask, read
from .configs import NAMES, SNIPPETS
from .phrases import EN, Phrases
from .phrases_zh import ZH
from .thoughts import think as thoughts

_TOKEN = re.compile(
    r" ?[A-Za-z]+|[0-9]|[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]{1,2}|\n+|[ \t]+|.",
    re.DOTALL,
)


def tokenize(text: str, limit: int | None = None) -> list[str]:
    """Qwen-like tokens of `text`; with `limit`, only the first ones (a capped reply need not be cut whole)."""
    if limit is None:
        return _TOKEN.findall(text)
    return [match.group() for match in islice(_TOKEN.finditer(text), max(limit, 0))]


def count_tokens(text: str) -> int:
    return sum(1 for _ in _TOKEN.finditer(text))


@dataclass(frozen=True, slots=True)
class Reply:
    thinking: str
    content: str


GREEDY = -1  # the seed of temperature-0 replies; a request's own seed is never negative here


def reply_seed(options: Mapping[str, Any], draw: random.Random) -> int:
    """The seed to compose a reply with. Ollama samples with `options.seed` when it is set (a negative seed means
    none), decodes greedily at temperature 0 (the same text whatever the seed), and otherwise samples anew."""
    temperature, seed = options.get("temperature"), options.get("seed")
    if _number(temperature) and temperature <= 0:
        return GREEDY
    if _number(seed) and seed >= 0:
        return int(seed)
    return draw.getrandbits(63)


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def compose(seed: int, prompt: str, *, think: bool) -> Reply:
    """The reply to `prompt` (the last user message); its text does not depend on `think`."""
    ask = read(prompt)
    content = _answer(random.Random(f"{seed}\x00{prompt}"), ask, prompt)
    thinking = thoughts(random.Random(f"{seed}\x00think\x00{prompt}"), ask) if think else ""
    return Reply(thinking=thinking, content=content)


_PARAGRAPHS = {"brief": (1, 1), "short": (2, 3), "normal": (2, 4), "detailed": (8, 11)}
_CLOSING = {"brief": 0.5, "short": 0.5, "normal": 0.8, "detailed": 1.0}
_STORY = {"brief": 1, "short": 2, "normal": 2, "detailed": 3}
_DETERMINERS = {"the", "a", "an", "my", "our", "your", "this", "that", "these", "those", "some", "any", "how", "why"}


def _answer(rng: random.Random, ask: Ask, prompt: str) -> str:
    words = ZH if ask.chinese else EN
    if ask.length == "greeting":
        said = [rng.choice(words.thanks if ask.thanks else words.greetings)]
        said += [rng.choice(words.asides)] if rng.random() < 0.5 else []
        return ("" if ask.chinese else " ").join([*said, rng.choice(words.offers)])
    if ask.story:
        count = _STORY[ask.length]
        start = rng.randrange(len(words.stories) - count + 1)
        return "\n\n".join(words.stories[start : start + count])
    prose = _prose(rng, words, ask, prompt)
    if ask.length == "brief":  # a brief answer says as much of its paragraph as it likes: not the same every time
        prose = [_sentences(rng, paragraph) for paragraph in prose]
    extras = _extras(rng, words, ask, prompt)
    blocks = [_opening(rng, words, ask)]
    if ask.length == "detailed":
        if ask.topic and ask.form != "other":
            blocks.insert(0, f"## {_capitalised(ask.topic)}")
        blocks += _sections(rng, words, prose, extras)
    else:
        blocks += _interleaved(rng, prose, extras)
    if rng.random() < _CLOSING[ask.length]:
        blocks.append(rng.choice(words.closings))
    return "\n\n".join(blocks)


def _sentences(rng: random.Random, paragraph: str) -> str:
    parts = re.split(r"(?<=[.!?。！？])\s*", paragraph.strip())
    parts = [part for part in parts if part]
    return ("" if _CJK_END.search(paragraph) else " ").join(parts[: rng.randint(1, len(parts))])


_CJK_END = re.compile(r"[。！？]")


def _opening(rng: random.Random, words: Phrases, ask: Ask) -> str:
    template = rng.choice(words.openings[ask.form if ask.topic else "none"])
    return template.format(topic=_mid_sentence(ask.topic))


def _prose(rng: random.Random, words: Phrases, ask: Ask, prompt: str) -> list[str]:
    """Paragraphs on the question's subject first (when it has one the phrases know), then general ones."""
    low, high = _PARAGRAPHS[ask.length]
    on_topic = [paragraph for keys, paragraph in words.domain if _mentions(prompt, keys)]
    rng.shuffle(on_topic)
    general = rng.sample(words.paragraphs, len(words.paragraphs))
    return (on_topic + general)[: rng.randint(low, high)]


def _extras(rng: random.Random, words: Phrases, ask: Ask, prompt: str) -> list[str]:
    """The table, code and list the question asks for, and some it implies (a comparison, a how-to)."""
    fuller = ask.length in ("normal", "detailed")
    blocks = []
    implied_table = (fuller and ask.pair is not None and rng.random() < 0.7) or (
        ask.length == "detailed" and rng.random() < 0.4
    )
    if ask.table or implied_table:
        blocks.append(_lead(rng, words.table_leads) + _table(rng, words, ask, prompt))
    if ask.code_asked or fuller:
        for fence in ask.code:
            blocks.append(_lead(rng, words.code_leads, NAMES[fence]) + _code(rng, fence, prompt))
    listing = ask.listing or _implied_listing(rng, ask)
    if listing is not None:
        leads = words.step_leads if listing == "numbered" else words.list_leads
        blocks.append(_lead(rng, leads) + _listing(rng, words, ask, listing))
    if not (ask.table or ask.code_asked or ask.listing):
        rng.shuffle(blocks)  # nothing asked for, nothing to keep in the question's order
    return blocks


def _implied_listing(rng: random.Random, ask: Ask) -> Literal["bullets", "numbered"] | None:
    if ask.items:
        return "numbered"
    if ask.length not in ("normal", "detailed"):
        return None
    if ask.form == "how" and rng.random() < 0.6:
        return "numbered"
    return "bullets" if rng.random() < (0.6 if ask.length == "detailed" else 0.3) else None


def _lead(rng: random.Random, leads: list[str], lang: str = "") -> str:
    """The sentence before a block: always before code (it names the language), before most tables and lists."""
    if lang or rng.random() < 0.7:
        return rng.choice(leads).format(lang=lang) + "\n\n"
    return ""


def _table(rng: random.Random, words: Phrases, ask: Ask, prompt: str) -> str:
    for keys, table in words.domain_tables:
        # A known table answers the question when it covers both sides of the comparison, if there is one.
        if _mentions(prompt, keys) and all(side.lower() in table.lower() for side in ask.pair or ()):
            return table
    if ask.pair is not None:
        header = (words.aspect, *(side.replace("|", "/") for side in ask.pair))
        aspects = rng.sample(words.pair_aspects, rng.randint(3, 5))
        rows = [(aspect, *rng.sample(words.pair_cells, 2)) for aspect in aspects]
    else:
        header = words.table_header
        rows = [words.table_rows[i] for i in sorted(rng.sample(range(len(words.table_rows)), rng.randint(3, 4)))]
    lines = [header, ("---",) * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def _code(rng: random.Random, fence: str, prompt: str) -> str:
    snippets = SNIPPETS[fence]
    chosen = next((s for s in snippets if s.keywords and _mentions(prompt, s.keywords)), None)
    if chosen is None:
        chosen = rng.choice([s for s in snippets if not s.keywords] or snippets)
    return f"```{fence}\n{chosen.code}\n```"


def _listing(rng: random.Random, words: Phrases, ask: Ask, kind: str) -> str:
    pool = words.steps if kind == "numbered" else words.bullets
    wanted = ask.items or rng.randint(3, 7 if ask.length == "detailed" else 5)
    items = [pool[i] for i in sorted(rng.sample(range(len(pool)), min(wanted, len(pool))))]
    marks = [f"{n}." if kind == "numbered" else "-" for n in range(1, len(items) + 1)]
    return "\n".join(f"{mark} {item}" for mark, item in zip(marks, items, strict=True))


def _interleaved(rng: random.Random, prose: list[str], extras: list[str]) -> list[str]:
    blocks, rest = prose[:1], prose[1:]
    for extra in extras:
        blocks.append(extra)
        if rest and rng.random() < 0.6:
            blocks.append(rest.pop(0))
    return blocks + rest


def _sections(rng: random.Random, words: Phrases, prose: list[str], extras: list[str]) -> list[str]:
    count = rng.randint(3, 5)
    headings = [words.headings[i] for i in sorted(rng.sample(range(len(words.headings)), count))]
    sections = [[f"### {heading}"] for heading in headings]
    for i, paragraph in enumerate(prose):
        sections[i % count].append(paragraph)
    for block in extras:
        rng.choice(sections).append(block)
    return [block for section in sections for block in section] + [f"### {words.summary}"]


_KEYWORD_FLAGS = re.IGNORECASE | re.ASCII  # ASCII word boundaries: \btcp\b matches in "比较TCP和UDP"


def _mentions(prompt: str, keywords: str) -> bool:
    return re.search(keywords, prompt, _KEYWORD_FLAGS) is not None


def _mid_sentence(topic: str) -> str:
    first = topic.split(" ", 1)[0]
    return topic[:1].lower() + topic[1:] if first.lower() in _DETERMINERS else topic


def _capitalised(topic: str) -> str:
    return topic[:1].upper() + topic[1:]
