"""What virtual users say: opening questions and follow-ups, in Chinese and English, like the seed's users.

A conversation sends its whole history every turn (the reply's answer text, never its thinking), so the
prompt grows turn by turn as a real multi-turn chat does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

OPENINGS = [
    "Python 异步编程中 asyncio.gather() 和 asyncio.create_task() 有什么区别？",
    "写一段武侠小说开头，主角是位左手使剑的盲女，要求：1）用白描手法 2）环境是雨夜古寺 3）结尾留悬念",
    "How do I configure nginx to proxy WebSocket connections to a local service?",
    "帮我解释一下 KV cache 是什么，为什么上下文越长显存占用越大？",
    "Write a Python function that retries an HTTP request with exponential backoff.",
    "我们团队想在内网部署大模型，需要注意哪些安全问题？",
    "Compare PostgreSQL and SQLite for a small internal web service.",
    "用一个表格比较 TCP 和 UDP 的主要区别。",
    "What is the difference between latency and throughput? Give an example.",
    "给我一个 bash 脚本，统计某个目录下每种文件扩展名的数量。",
]
FOLLOW_UPS = [
    "能再举一个具体的例子吗？",
    "Can you make that shorter?",
    "这个方案在高并发下会有什么问题？",
    "What would you change for production use?",
    "请把上面的内容整理成要点列表。",
    "Explain the trade-offs in one paragraph.",
    "有没有更简单的写法？",
    "How would I test this?",
]


@dataclass(slots=True)
class Conversation:
    rng: random.Random
    openings: list[str]
    system: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)

    def next_turn(self) -> list[dict[str, str]]:
        """The history to send for the next turn, ending with a new user message."""
        if not self.messages and self.system:
            self.messages.append({"role": "system", "content": self.system})
        turn_text = self.rng.choice(self.openings if len(self.messages) <= 1 else FOLLOW_UPS)
        self.messages.append({"role": "user", "content": turn_text})
        return list(self.messages)

    def answered(self, reply: str) -> None:
        self.messages.append({"role": "assistant", "content": reply})


def load_openings(path: Path | None) -> list[str]:
    if path is None:
        return OPENINGS
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} has no prompts (one per line)")
    return lines
