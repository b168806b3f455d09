"""What a question asks for: its language, its subject, the formats it names and how long an answer it wants.

The reading is keyword-based and deliberately simple: it shapes a plausible reply, it does not understand the
question. Chinese is recognised by Han characters outweighing English function words; any other language
(Japanese, Korean, Russian, …) is answered in English. Patterns use ASCII word boundaries so that "用python写"
names Python as "in Python" does.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

from .configs import SNIPPETS

Length = Literal["greeting", "brief", "short", "normal", "detailed"]
Form = Literal["how", "make", "about", "other"]


@dataclass(frozen=True, slots=True)
class Ask:
    chinese: bool
    topic: str  # the subject without request words ("configure nginx for WebSockets"); "" when none is left
    form: Form  # how the topic reads: an action (how), a thing to produce (make), a subject (about), other
    pair: tuple[str, str] | None  # the two things a comparison names
    table: bool
    listing: Literal["bullets", "numbered"] | None
    items: int | None  # how many list items were asked for
    code: tuple[str, ...]  # fence languages, in the order the question names them
    code_asked: bool  # code was asked for, not only a language named
    story: bool
    thanks: bool
    length: Length


def _re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE | re.ASCII)


_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA_HANGUL = re.compile(r"[\u3040-\u30ff\u1100-\u11ff\uac00-\ud7af]")
_EN_FUNCTION = _re(
    r"\b(?:the|a|an|is|are|was|what|how|why|does|do|to|of|in|on|and|or|for|with|mean|means|can|you|i|it|this|that)\b"
)

_LANGUAGES: list[tuple[str, re.Pattern[str]]] = [
    ("python", _re(r"\bpython\d?\b|\bpy\b")),
    ("typescript", _re(r"\btypescript\b|\bts\b|\btsx\b")),
    ("javascript", _re(r"\bjavascript\b|\bjs\b|\bnode(?:\.?js)?\b")),
    ("go", _re(r"\bgolang\b|\b(?:in|with|用) ?go\b|\bgo (?:code|program|function|snippet|example|module|routines?)\b")),
    ("rust", _re(r"\brust\b")),
    ("java", _re(r"\bjava\b")),
    ("cpp", _re(r"c\+\+|\bcpp\b")),
    ("c", _re(r"\b(?:in|ansi|plain) c\b|\bc (?:code|program|function|snippet|example|language)\b|\bc\s*语言")),
    ("sql", _re(r"\bsql\b|\bpostgres(?:ql)?\b|\bmysql\b|\bsqlite\b")),
    ("bash", _re(r"\bbash\b|\bshell\b|\bzsh\b|\bsh\b|\bcommand line\b|\bcurl\b|命令行")),
    ("json", _re(r"\bjson\b")),
    ("yaml", _re(r"\bya?ml\b|\bdocker[- ]compose\b|\bkubernetes\b|\bk8s\b|\bgithub actions\b")),
    ("html", _re(r"\bhtml\d?\b")),
    ("css", _re(r"\bcss\d?\b|\bstylesheet\b")),
    ("dockerfile", _re(r"\bdockerfile\b|\bdocker image\b|\bcontaineri[sz]e\b")),
    ("diff", _re(r"\bdiff\b|\bpatch\b")),
    ("nginx", _re(r"\bnginx\b")),
]
assert {fence for fence, _ in _LANGUAGES} == set(SNIPPETS)
# Frameworks and tools that imply a language, counted only when the question names none itself.
_HINTS: list[tuple[str, re.Pattern[str]]] = [
    ("python", _re(r"\bdjango\b|\bflask\b|\bfastapi\b|\basyncio\b|\bpandas\b|\bpip\b")),
    ("javascript", _re(r"\breact\b|\bvue\b|\bnpm\b|\bexpress\b")),
    ("go", _re(r"\bgo (?:web|http|api|service|server|app)\b|\bgoroutines?\b")),
    ("rust", _re(r"\bcargo\b|\btokio\b")),
    ("java", _re(r"\bspring boot\b|\bjvm\b")),
]

_CODE_WORDS = _re(
    r"\bcode\b|\bsnippet|\bprogram\b|\bscript\b|\bfunction\b|\bimplement|\bquery\b|\bcommands?\b|\bregex"
    r"|代码|脚本|函数|程序|实现|命令|查询语句"
)
_WRITE = _re(r"\bwrite\b|\bshow\b|\bgive me\b|\bcreate\b|\bgenerate\b|\bas an? \w+$|写|给我")
_TABLE = _re(r"(?<!sql )(?<!hash )(?<!database )\btables?\b|\btabular\b|表格|对比表")
_NUMBERED = _re(r"\bnumbered\b|\bordered list\b|\bsteps\b|\bstep[- ]by[- ]step\b|步骤|分步|第一步")
_BULLETS = _re(
    r"\bbullet|\bchecklist\b|\bkey points\b|\b(?:a|as|in|into|the|bulleted|short) list\b|^list\b"
    r"|\blist (?:the|all|some|a few|me|\d+)\b|\b(?:tips|ideas|reasons|pros and cons)\b|要点|列表|列出|清单|几点"
)
_COUNT = _re(
    r"\b(\d{1,2}|two|three|four|five|six|seven|eight|nine|ten) (?:\w+ )?"
    r"(?:tips|ways|reasons|things|steps|points|ideas|items|examples|bullet points)\b|(\d{1,2}) ?[个条点步]"
)
_WORD_NUMBERS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
_DETAILED = _re(
    r"\bin (?:great |more |full )?detail\b|\bdetailed\b|\bin[- ]depth\b|\bthorough(?:ly)?\b|\bcomprehensive\b"
    r"|\bdeep dive\b|\bwalk me through\b|\bcomplete guide\b|详细|深入|全面|详尽|展开讲"
)
_BRIEF = _re(
    r"\bbrief(?:ly)?\b|\bshort(?:er)?\b|\bone (?:sentence|line|paragraph)\b|\btl;?dr\b|\bin a nutshell\b"
    r"|\bconcise(?:ly)?\b|\bin (?:a few|two|2) (?:words|sentences)\b|简短|简单说|一句话|简要|简洁|概括|简单地?讲"
)
_STORY = _re(r"\bstory\b|\bpoem\b|\bfairy tale\b|\bnovel\b|小说|故事|诗|散文")
_GREETING = _re(
    r"^\W*(?:hi|hello|hey|yo|hiya|good (?:morning|afternoon|evening)|how are you|thanks|thank you|thx"
    r"|你好|您好|嗨|哈喽|早上好|晚上好|谢谢|多谢)(?: there| again| so much| a lot)?[\W\s]*$"
)
_THANKS = _re(r"\bthank|\bthx\b|谢")
_PAIR_EN = _re(
    r"(?:compare|comparing|between|difference between|differences between)\s+(.+?)\s+(?:and|vs\.?|versus|with|to)\s+"
    r"(.+?)(?=[?.,;:!]|\s+(?:for|in|when|on|as|using|with)\b|$)|(\S+)\s+(?:vs\.?|versus)\s+(\S+)"
)
_PAIR_ZH = re.compile(
    r"([\w.()+#-]+?)\s*(?:和|与|跟|同|对比|vs\.?)\s*([\w.()+#-]+?)\s*(?:的|有什么|之间|区别|哪个|比较|$)"
)


def read(prompt: str) -> Ask:
    """What the last user message asks for. Short questions are read once, as they come again (Regenerate, the
    benchmarks' prompts); a long one is not kept."""
    return _read_cached(prompt) if len(prompt) <= 2000 else _read(prompt)


def _read(prompt: str) -> Ask:
    text = prompt.strip()
    code = _languages(text, _LANGUAGES) or _languages(text, _HINTS)
    story = bool(_STORY.search(text))
    code_asked = bool(_CODE_WORDS.search(text)) or bool(code and _WRITE.search(text) and not story)
    if code_asked and not code:
        code = (_default_language(text),)
    listing: Literal["bullets", "numbered"] | None = (
        "numbered" if _NUMBERED.search(text) else "bullets" if _BULLETS.search(text) else None
    )
    table = bool(_TABLE.search(text))
    topic, form = _topic_of(text)
    return Ask(
        chinese=is_chinese(text),
        topic=topic,
        form=form,
        pair=_pair(text),
        table=table,
        listing=listing,
        items=_count(text),
        code=code,
        code_asked=code_asked,
        story=story and not code_asked,
        thanks=bool(_THANKS.search(text)),
        length=_length(text, asked=table or listing is not None or code_asked),
    )


_read_cached = functools.lru_cache(maxsize=512)(_read)


def is_chinese(text: str) -> bool:
    if _KANA_HANGUL.search(text):
        return False
    han = len(_HAN.findall(text))
    return han > 0 and han > 3 * len(_EN_FUNCTION.findall(text))


def _languages(text: str, patterns: list[tuple[str, re.Pattern[str]]]) -> tuple[str, ...]:
    found = [(match.start(), fence) for fence, pattern in patterns if (match := pattern.search(text))]
    if any(fence == "cpp" for _, fence in found):  # "C/C++" names both; "C++" alone must not add C
        found = [hit for hit in found if hit[1] != "c" or re.search(r"\bc\s*/", text, re.I | re.A)]
    return tuple(fence for _, fence in sorted(found))[:3]


def _default_language(text: str) -> str:
    if re.search(r"script|command|脚本|命令", text, re.IGNORECASE):
        return "bash"
    if re.search(r"query|查询", text, re.IGNORECASE):
        return "sql"
    return "python"


def _count(text: str) -> int | None:
    match = _COUNT.search(text)
    if match is None:
        return None
    word = (match.group(1) or match.group(2)).lower()
    number = _WORD_NUMBERS.get(word) or int(word)
    return min(max(number, 1), 10)


def _length(text: str, *, asked: bool) -> Length:
    if _GREETING.match(text):
        return "greeting"
    if _DETAILED.search(text):
        return "detailed"
    if _BRIEF.search(text):
        return "brief"
    size = len(_HAN.findall(text)) / 2 + len(re.findall(r"[A-Za-z0-9]+", text))
    return "short" if size <= 6 and not asked else "normal"


def _pair(text: str) -> tuple[str, str] | None:
    match = _PAIR_EN.search(text) or _PAIR_ZH.search(text)
    if match is None:
        return None
    first, second = (group for group in match.groups() if group)
    first, second = _clean_item(first), _clean_item(second)
    return (first, second) if first and second and first.lower() != second.lower() else None


def _clean_item(item: str) -> str:
    item = re.sub(r"^.*(?:比较|对比|区分|解释|介绍|说说)|^(?:the|a|an|using)\s+", "", item.strip(), flags=re.IGNORECASE)
    return item.strip(" \"'“”「」`")[:40]


_EN_LEAD = _re(
    r"^(?:(?:hi|hello|hey|ok(?:ay)?|so|well|quick question)[,!.:]?\s+)?(?:(?:please|pls|kindly)\s+)?"
    r"(?:(?:can|could|would|will) you(?: please)?\s+)?(?:(?:i (?:want|need|would like)|i'd like)(?: you)? to\s+)?"
)
_EN_FORMS: list[tuple[Form, re.Pattern[str]]] = [
    ("how", _re(r"^how (?:do|can|should|would|could|might|to) (?:i |we |you |one )?(?:best )?(.+)")),
    ("how", _re(r"^(?:help me|show me how to|tell me how to|teach me how to)\s+(.+)")),
    ("how", _re(r"^(?:list|give me|show me|what are) (?:the |a few |some )?(?:steps|ways) (?:to|for) (.+)")),
    ("make", _re(r"^(?:write|create|make|generate|build|give me|show(?: me)?|draft|implement|design|produce)\s+(.+)")),
    ("about", _re(r"^(?:explain|describe|summari[sz]e|define|compare|introduce|discuss|outline)\s+(?:to me\s+)?(.+)")),
    ("about", _re(r"^(?:tell me|teach me|talk) about\s+(.+)|^what(?:'s| is| are| does| do)\s+(.+)")),
]
_EN_TAIL = _re(
    r"[,;]?\s+(?:with|and|in|as|using|including|plus|also|then)\s+(?:me\s+)?(?:a|an|the|some|one)?\s*(?:\w+\s+){0,2}?"
    r"(?:table|list|bullet points|code blocks?|code|snippet|examples?|steps)\b.*$"
    r"|\s+(?:in detail|in depth|briefly|step by step|in (?:one|a single|two) (?:sentence|paragraph|line)s?|for me)\b.*$"
)
_MANNER = _re(
    r"\b(?:in (?:great |more |full )?detail|in[- ]depth|briefly|thoroughly|concisely|step by step)\b,?"
    r"|(?:详细|深入|全面|简单|简要)地?(?=解释|介绍|说|讲|分析|总结|聊)"
)
_PRONOUNS = {"that", "this", "it", "these", "those", "them"}
_ZH_LEAD = re.compile(r"^(?:请问?|麻烦|帮我|帮忙|给我|能不能|能否|可以|你能|你可以|我想(?:知道|了解)?|想问一下|一下)+")
_ZH_FORMS: list[tuple[Form, re.Pattern[str]]] = [
    ("how", re.compile(r"^(?:怎么|如何|怎样)(.+)")),
    ("make", re.compile(r"^(?:用\s*[\w+#]+\s*)?(?:写一段|写一个|写一篇|写个|写|生成|做一个|实现一个|实现)(.+)")),
    ("make", re.compile(r"^((?:一个|一段|一份|一篇|一张).+)")),
    ("about", re.compile(r"^(?:解释|介绍|说说|讲讲|讲|说明|分析|总结|比较|对比|列出|整理)(?:一下)?(.+)")),
]
_ZH_EARLIER = re.compile(r"^(?:能|可以)?(?:再|把?上面|把?这个|那个|刚才|之前|它)")
_ZH_FORMAT = re.compile(r"(?:用|以)?(?:一个|一张)?(?:表格|要点列表|列表|代码块?)(?:的形式)?(?:来)?")
_ZH_TAIL = re.compile(r"(?:是什么|是怎样的|有什么区别|的区别|有哪些|吗|呢|怎么办|怎么做)$")


def _topic_of(text: str) -> tuple[str, Form]:
    """The subject of the question and how it reads, in the question's own words."""
    sentence = _MANNER.sub("", text.strip()).strip(" ,，")
    sentence = re.split(r"[?!。？！\n]|\.(?:\s|$)", sentence, maxsplit=1)[0].strip()
    if is_chinese(text):
        return _topic_zh(sentence)
    rest = _EN_LEAD.sub("", sentence, count=1)
    form: Form = "other"
    for name, pattern in _EN_FORMS:
        match = pattern.match(rest)
        if match:
            form, rest = name, next(group for group in match.groups() if group)
            break
    rest = _EN_TAIL.sub("", rest if form != "other" else sentence).strip(" ,;:-")
    if rest.split(" ", 1)[0].lower() in _PRONOUNS:  # "make that shorter": the subject is in an earlier turn
        return "", form
    return _shorten(rest, 100), form


def _topic_zh(sentence: str) -> tuple[str, Form]:
    rest = _ZH_FORMAT.sub("", _ZH_LEAD.sub("", sentence.split("，")[0].split(",")[0]))
    form: Form = "about"
    for name, pattern in _ZH_FORMS:
        match = pattern.match(rest)
        if match:
            form, rest = name, match.group(1)
            break
    rest = _ZH_TAIL.sub("", _ZH_LEAD.sub("", rest.strip())).strip()
    if _ZH_EARLIER.match(rest):  # "把上面的内容…": the subject is in an earlier turn
        return "", form
    return _shorten(rest, 40), form


def _shorten(text: str, limit: int) -> str:
    text = re.sub(r"\s+", " ", text.replace("`", "")).strip()
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut.rsplit(" ", 1)[0] if " " in cut else cut
