"""What the simulated qwen3 thinks before it answers: the same reading of the question as the answer, in the
question's language, noting the formats it will use, longer when the answer will be."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .ask import Ask
from .configs import NAMES


@dataclass(frozen=True, slots=True)
class Thoughts:
    openings: dict[str, str]  # by Ask.form, and "none"
    notes: dict[str, str]  # by what the answer will hold
    middle: list[str]
    closings: list[str]


_EN = Thoughts(
    openings={
        "how": "Okay, the user wants to know how to {topic}.",
        "make": "Alright, the user wants {topic}.",
        "about": "Okay, the user is asking about {topic}.",
        "other": "Okay, the user asks: “{topic}”.",
        "none": "Okay, let me think about what the user needs here.",
    },
    notes={
        "greeting": "The user just said hello. A friendly greeting and an offer to help is enough.",
        "thanks": "The user is thanking me. A short, warm reply is enough.",
        "story": "It's a creative request, so the answer is prose, not a list. Set the scene fast and end on a hook.",
        "brief": "They want it short, so a sentence or two should do.",
        "detailed": "They want a detailed explanation: background first, then how it works, then the trade-offs.",
        "table": "They asked for a table, so the comparison goes into one.",
        "pair": "I should put {a} and {b} side by side and be fair to both.",
        "code": "They want {lang} code, so I'll write a small example that actually runs.",
        "bullets": "A list was requested, so I'll keep each point short.",
        "numbered": "I'll number the steps so they are easy to follow.",
    },
    middle=[
        "First, I should recall the main points and check whether there are any common pitfalls.",
        "They might also care about performance, so a note on cost would help.",
        "Wait, I should double-check the details before answering, especially the defaults.",
        "The answer should be structured: a short summary, then the details, then a note on trade-offs.",
        "Maybe a concrete example would make this clearer.",
        "I shouldn't assume too much about their setup; I'll say where it depends.",
        "Hmm, there is a common misconception here that is worth correcting.",
        "Let me make sure the terminology stays consistent throughout.",
    ],
    closings=[
        "I think that covers it. Let me write the answer.",
        "Okay, that's the plan. Time to write it out.",
        "Good, I have enough to answer clearly.",
    ],
)

_ZH = Thoughts(
    openings={
        "how": "好的，用户想知道如何{topic}。",
        "make": "用户想要{topic}。",
        "about": "好的，用户在问“{topic}”。",
        "other": "好的，用户在问“{topic}”。",
        "none": "好的，我先想想用户真正需要什么。",
    },
    notes={
        "greeting": "用户只是打个招呼，友好地回应并表示可以帮忙就好。",
        "thanks": "用户在道谢，简单回应即可。",
        "story": "这是创作类请求，应该写成连贯的段落，而不是列表。开头要快速营造氛围，结尾留个悬念。",
        "brief": "用户要简短的回答，一两句话就够了。",
        "detailed": "用户希望讲得详细一些：先讲背景，再讲原理，最后讲权衡。",
        "table": "用户要求用表格，所以把对比放进表格里。",
        "pair": "要把 {a} 和 {b} 放在一起比较，两边都要讲公道。",
        "code": "需要给出 {lang} 代码，写一个能直接运行的小例子。",
        "bullets": "用户要列表，每一点都要简短。",
        "numbered": "按步骤编号，方便照着做。",
    },
    middle=[
        "首先，回忆一下要点，并检查有没有常见的误区。",
        "用户可能也关心性能，可以顺便提一下成本和延迟。",
        "等一下，默认值这些细节要再确认一下。",
        "回答的结构应该是：先给结论，再讲细节，最后说明取舍。",
        "举一个具体的例子会更清楚。",
        "不要对用户的环境做太多假设，要说明哪些地方视情况而定。",
        "这里有一个常见的误解，值得纠正。",
    ],
    closings=["差不多了，开始写回答。", "好，思路清楚了，开始组织答案。", "嗯，这样回答应该比较清楚。"],
)

_MIDDLE = {"greeting": (0, 0), "brief": (0, 1), "short": (1, 2), "normal": (2, 4), "detailed": (5, 8)}


def think(rng: random.Random, ask: Ask) -> str:
    words = _ZH if ask.chinese else _EN
    topic = ask.topic if ask.topic else ""
    greeting = ask.length == "greeting"
    sentences = [] if greeting else [words.openings[ask.form if topic else "none"].format(topic=topic)]
    sentences += [words.notes[note].format(**_values(ask)) for note in _notes(ask)]
    low, high = _MIDDLE[ask.length]
    count = min(rng.randint(low, high), len(words.middle))
    sentences += rng.sample(words.middle, count)
    if not greeting:
        sentences.append(rng.choice(words.closings))
    return ("" if ask.chinese else " ").join(sentences)


def _notes(ask: Ask) -> list[str]:
    if ask.length == "greeting":
        return ["thanks" if ask.thanks else "greeting"]
    if ask.story:
        return ["story"]
    notes: list[str] = [ask.length] if ask.length in ("brief", "detailed") else []
    notes += ["table"] if ask.table else []
    notes += ["pair"] if ask.pair else []
    notes += ["code"] if ask.code_asked else []
    notes += [ask.listing] if ask.listing else []
    return notes


def _values(ask: Ask) -> dict[str, str]:
    a, b = ask.pair or ("", "")
    return {"a": a, "b": b, "lang": " / ".join(NAMES[fence] for fence in ask.code)}
