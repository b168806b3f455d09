"""What the simulated qwen3 says: deterministic for a seed and a prompt, shaped like real replies.

Replies mix Chinese and English prose with markdown lists, tables and fenced code, so a UI rendering them
meets every case it must handle. The tokenizer cuts text roughly as Qwen's BPE does (a word with its leading
space, one digit, one or two CJK characters, a run of newlines) and the tokens always join back to the text.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from itertools import islice

_TOKEN = re.compile(
    r" ?[A-Za-z]+|[0-9]|[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]{1,2}|\n+|[ \t]+|.",
    re.DOTALL,
)
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


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


_ZH_OPENINGS = [
    "好的，下面分几个方面来说明。",
    "这是一个很常见的问题，我们一步一步来看。",
    "简单来说，关键在于把问题拆开处理。",
    "可以，我先给出结论，再解释原因。",
    "明白了。下面是一个可以直接使用的方案。",
]
_EN_OPENINGS = [
    "Sure, here is a short overview before the details.",
    "Good question. Let me break it down step by step.",
    "In short, the answer depends on a few trade-offs.",
    "Here is a practical way to approach it.",
]
_ZH_PARAGRAPHS = [
    "在高并发场景下，最重要的是让每个请求都尽快拿到第一个 token。首字延迟（TTFT）主要由模型的 prompt 处理速度决定，"
    "而不是网关本身；因此代理层应当逐块转发，不做任何缓冲。",
    "长上下文对话需要注意 `num_ctx` 的设置。上下文越长，KV cache 占用的显存越多，每一步解码也会变慢。"
    "如果显存不够，Ollama 会把部分层放到 CPU 上，速度会明显下降。",
    "异步编程里，`asyncio.create_task()` 会立即调度协程，而 `asyncio.gather()` 等待所有任务完成并收集结果。"
    "两者经常配合使用：先创建任务，再统一等待。",
    "部署时建议在 Nginx 中关闭代理缓冲（`proxy_buffering off`），并把 `proxy_read_timeout` 调大，"
    "否则模型在思考时长时间没有输出，连接可能被提前断开。",
    "雨夜古寺，青苔漫过石阶。她左手执剑，侧耳听着檐角的水声，一步一步走进大殿。殿角铜铃，响了三声。",
    "数据完全留在内网，这是很多金融、医疗和法务团队选择本地部署的主要原因。所有对话都可以用 `curl` 直接检查原始 JSON。",
    "如果需要更高的吞吐量，可以适当增加 `OLLAMA_NUM_PARALLEL`，"
    "但要注意每个并行槽位都会额外占用 `num_ctx` 大小的 KV cache。",
]
_EN_PARAGRAPHS = [
    "A streaming proxy should relay each chunk the moment it arrives. Buffering even a few hundred "
    "milliseconds makes a fast model feel slow, and it hides where the latency really comes from.",
    "When many users share one GPU, requests beyond the parallel slots wait in a queue. Their time to first "
    "token grows with the queue, while the tokens per second of the running streams barely change.",
    "Keep the system prompt short and stable. It is evaluated on every turn unless the server can reuse "
    "its cache, and a stable prefix is what makes that reuse possible.",
    "For long conversations, drop the oldest turns first and always keep the system prompt. Count tokens "
    "with the numbers the server returned, not with a guess.",
    "Model output is untrusted input: render markdown, then sanitise the HTML, and only then highlight code.",
]
_ZH_BULLETS = [
    "使用流式输出，边生成边显示",
    "为每个请求设置合理的超时时间",
    "记录首字延迟和总耗时，便于排查问题",
    "把系统提示词放在对话最前面",
    "定期检查 `/metrics` 中的错误计数",
    "对长对话做上下文裁剪",
    "在 Nginx 中开启 WebSocket 升级",
]
_EN_BULLETS = [
    "Stream the reply and render it as it grows",
    "Set a timeout for the first byte and a shorter one between chunks",
    "Log the request id, never the message text",
    "Retry only before the first token was shown",
    "Watch the p99, not only the average",
    "Keep one HTTP session for all upstream requests",
]
_TABLES = [
    "| 指标 | 30 并发 | 87 并发 |\n|---|---|---|\n| 平均首字延迟 | 310 ms | 385 ms |\n"
    "| 平均全文耗时 | 1.92 s | 2.35 s |\n| 失败率 | 0% | 0.37% |",
    "| Option | Default | Meaning |\n|---|---|---|\n| `num_ctx` | 4096 | context window in tokens |\n"
    "| `num_predict` | -1 | maximum tokens to generate |\n| `temperature` | 0.8 | sampling temperature |",
    "| 方法 | 何时调度 | 返回值 |\n|---|---|---|\n| `create_task()` | 立即 | `Task` 对象 |\n"
    "| `gather()` | 等待全部完成 | 结果列表 |",
]
_CODE = [
    "```python\nimport asyncio\n\nasync def fetch(i: int) -> int:\n    await asyncio.sleep(0.1)\n"
    "    return i * 2\n\nasync def main() -> None:\n    tasks = [asyncio.create_task(fetch(i)) for i in range(3)]\n"
    "    print(await asyncio.gather(*tasks))\n\nasyncio.run(main())\n```",
    '```bash\ncurl -N http://127.0.0.1:18789/api/chat \\\n  -d \'{"model":"qwen3:32b","messages":'
    '[{"role":"user","content":"hi"}]}\'\n```',
    "```nginx\nlocation /chat {\n    proxy_pass http://127.0.0.1:18789;\n    proxy_http_version 1.1;\n"
    '    proxy_set_header Upgrade $http_upgrade;\n    proxy_set_header Connection "upgrade";\n'
    "    proxy_buffering off;\n}\n```",
    "```javascript\nconst res = await fetch('/api/chat', { method: 'POST', body: JSON.stringify(req) });\n"
    "const reader = res.body.getReader();\nfor (;;) {\n  const { done, value } = await reader.read();\n"
    "  if (done) break;\n  render(new TextDecoder().decode(value));\n}\n```",
    '```go\nfunc main() {\n\tfor i := 0; i < 3; i++ {\n\t\tfmt.Printf("token %d <ok> & done\\n", i)\n\t}\n}\n```',
]
_ZH_CLOSINGS = [
    "希望这些对你有帮助。",
    "如果还有具体的报错信息，可以贴出来，我们继续分析。",
    "总结一下：先测量，再优化。",
]
_EN_CLOSINGS = [
    "Hope this helps.",
    "Let me know if you want me to go deeper on any of these.",
    "Measure first, then tune.",
]
_THOUGHTS = [
    "Okay, the user is asking about {topic}. Let me think about what they really need here.",
    "First, I should recall the main points and check whether there are any common pitfalls.",
    "They might also care about performance, so I should mention latency and concurrency.",
    "Maybe a short example would make this clearer. A table could help compare the options.",
    "Wait, I should double-check the details before answering, especially the defaults.",
    "The answer should be structured: a short summary, then the steps, then a note on trade-offs.",
    "I think that covers it. Let me write the answer in the user's language.",
]


def _topic(prompt: str) -> str:
    words = prompt.strip().replace("\n", " ")
    return f"“{words[:40]}”" if words else "this"


def compose(seed: int, prompt: str, *, think: bool) -> Reply:
    rng = random.Random(f"{seed}\x00{prompt}")
    chinese = bool(_CJK.search(prompt)) if prompt else rng.random() < 0.5
    thinking = ""
    if think:
        count = rng.randint(2, len(_THOUGHTS))
        thinking = " ".join(t.format(topic=_topic(prompt)) for t in _THOUGHTS[:count])
    blocks = [rng.choice(_ZH_OPENINGS if chinese else _EN_OPENINGS)]
    for _ in range(rng.randint(2, 5)):
        blocks.append(_block(rng, chinese))
    blocks.append(rng.choice(_ZH_CLOSINGS if chinese else _EN_CLOSINGS))
    return Reply(thinking=thinking, content="\n\n".join(blocks))


def _block(rng: random.Random, chinese: bool) -> str:
    own = rng.random() < 0.75  # mostly the prompt's language, sometimes the other one
    zh = chinese if own else not chinese
    kind = rng.choices(["para", "bullets", "numbered", "table", "code"], weights=[4, 2, 1, 1, 1.5])[0]
    if kind == "para":
        return rng.choice(_ZH_PARAGRAPHS if zh else _EN_PARAGRAPHS)
    if kind in ("bullets", "numbered"):
        items = rng.sample(_ZH_BULLETS if zh else _EN_BULLETS, rng.randint(2, 4))
        marks = [f"{i}." if kind == "numbered" else "-" for i in range(1, len(items) + 1)]
        return "\n".join(f"{mark} {item}" for mark, item in zip(marks, items, strict=True))
    if kind == "table":
        return rng.choice(_TABLES)
    return rng.choice(_CODE)
