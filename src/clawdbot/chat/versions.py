"""Versions of messages, as ChatGPT keeps them: Regenerate adds a version of a reply, Edit a version of a user
message, and the user picks which version is shown (`‹ 2/3 ›` on the page).

The messages of a conversation form a tree (migration 0004). A message's `parent_id` is the message it follows: a
reply's is the user message it answers, a user message's the reply before it (none for a first message). The
versions of a message are the messages with the same parent, oldest first; each user-message version keeps the
replies that answered it, and so its own thread. In each group of versions one is `chosen`: the one shown whenever
its branch is, so a branch comes back as it was left. What is shown (and sent to the model) is the path of chosen
versions from the first message down; `superseded` marks every message off that path, so that readers of the
shown messages (the model's context, search, exports) need no tree walk. Writes keep both in step: a turn in
Store.record_turn, a switch here, each in one transaction, and never while a reply is being written.

Continue is not a version: it goes on with the same answer. The reply it went on from gets `continued_by` and
leaves the tree (never shown, never counted), and the new reply takes its place among the versions.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from ..store.conversations import Store
from ..store.records import Message
from ..store.tables import messages
from .results import Shown, Versions


@dataclass(slots=True)
class _Node:
    """A message in the tree, without its text; `chosen` is changed in place while a switch works out the path."""

    id: str
    parent_id: str | None
    chosen: bool
    superseded: bool


_OUTLINE = (messages.c.id, messages.c.parent_id, messages.c.chosen, messages.c.superseded)


async def annotate(store: Store, conversation_id: str, rows: list[Message]) -> Versions:
    """The versions of those of `rows` that have more than one (the page draws `‹ n/m ›` under them)."""
    groups = _groups(await store.read(lambda conn: _outline(conn, conversation_id)))
    return _versions(groups, rows)


async def show(store: Store, conversation_id: str, message_id: str) -> Shown | None:
    """Show `message_id` (any version of any message of the conversation): it and every message before it become
    the chosen versions, and the thread below it is the one it had when it was last shown. The messages that left
    the shown path (`hidden`), those that joined it (`messages`, in order) and the versions of the latter; None
    for an id that is no version in this conversation."""
    return await store.write(lambda conn: _show(conn, conversation_id, message_id))


def _show(conn: Connection, conversation_id: str, message_id: str) -> Shown | None:
    outline = _outline(conn, conversation_id)
    by_id = {node.id: node for node in outline}
    if message_id not in by_id:
        return None
    groups = _groups(outline)
    chosen_before = {node.id for node in outline if node.chosen}
    node: _Node | None = by_id[message_id]
    while node is not None:
        for version in groups[node.parent_id]:
            version.chosen = version is node
        node = by_id.get(node.parent_id or "")
    path = _path(groups)
    on_path = set(path)
    hidden = [node.id for node in outline if not node.superseded and node.id not in on_path]
    joined = [node_id for node_id in path if by_id[node_id].superseded]
    chosen = {node.id for node in outline if node.chosen}
    for ids, values in (
        (chosen - chosen_before, {"chosen": True}),
        (chosen_before - chosen, {"chosen": False}),
        (hidden, {"superseded": True}),
        (joined, {"superseded": False}),
    ):
        if ids:
            conn.execute(update(messages).where(messages.c.id.in_(list(ids))).values(**values))
    rows = [Message(*row) for row in conn.execute(select(messages).where(messages.c.id.in_(joined)))]
    rows.sort(key=lambda row: path.index(row.id))
    return Shown(message_id, hidden, rows, _versions(groups, rows))


def _outline(conn: Connection, conversation_id: str) -> list[_Node]:
    """The tree of a conversation, without the text: every version, in the order it was made."""
    versions = (messages.c.conversation_id == conversation_id) & messages.c.continued_by.is_(None)
    query = select(*_OUTLINE).where(versions).order_by(messages.c.created_at, messages.c.id)
    return [_Node(*row) for row in conn.execute(query)]


def _groups(outline: list[_Node]) -> dict[str | None, list[_Node]]:
    """Versions by the message they follow (None: the first message's)."""
    groups: dict[str | None, list[_Node]] = {}
    for node in outline:
        groups.setdefault(node.parent_id, []).append(node)
    return groups


def _path(groups: dict[str | None, list[_Node]]) -> list[str]:
    """The ids of the shown messages: the chosen version of each message, from the first message down."""
    path: list[str] = []
    parent: str | None = None
    while parent in groups:
        group = groups[parent]
        parent = next((node for node in group if node.chosen), group[-1]).id
        path.append(parent)
    return path


def _versions(groups: dict[str | None, list[_Node]], rows: list[Message]) -> Versions:
    found: Versions = {}
    for row in rows:
        group = groups.get(row.parent_id, [])
        if len(group) > 1:
            found[row.id] = [version.id for version in group]
    return found
