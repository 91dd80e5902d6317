"""What the chat domain holds about people (``appliance.personal``): conversations belong
to the person who had them."""

from __future__ import annotations

import sqlite_utils

from appliance import personal
from appliance.chat import service
from appliance.chat.store import ChatStore
from appliance.config import Settings
from appliance.personal import ERASE, USERS, Table

TABLES = (
    Table(
        "messages",
        "account_id = :account",
        "conversation_id in (select id from conversations "
        "where user_id in (select value from json_each(:users)))",
        ERASE,
        True,
        note="chat; its FTS rows follow by trigger",
        personal=True,
    ),
    Table(
        "conversations",
        "account_id = :account",
        f"user_id in {USERS}",
        ERASE,
        True,
        personal=True,
    ),
)
PURGES: dict[str, personal.Purge] = {}


def export(db: sqlite_utils.Database, settings: Settings, scope: personal.Scope) -> personal.Held:
    """The rows, and each of the person's conversations as Markdown."""
    held = personal.held(db, TABLES, scope)
    for row in personal.rows(db, TABLES[1], scope):
        held.texts.append((f"conversations/{row['id']}.md", _markdown(db, scope, row["id"])))
    return held


def _markdown(db: sqlite_utils.Database, scope: personal.Scope, conversation_id: str):
    def text() -> str:
        found = service.get(db, scope.account_id, scope.user_id, conversation_id)
        return conversation_markdown(found, ChatStore(db).messages(conversation_id))

    return text


def conversation_markdown(
    conversation: service.Conversation, every: list[service.Message] | None = None
) -> str:
    """The current line, then the earlier versions (regenerated answers, edited questions
    and what followed them) that ``every`` holds besides it."""
    lines = [f"# {conversation.title or 'Conversation'}", "", f"- id: {conversation.id}"]
    lines += [f"- created: {conversation.created_at}", ""]
    for message in conversation.messages:
        lines += _message_lines(message, "##")
    shown = {m.id for m in conversation.messages}
    others = [m for m in every or [] if m.id not in shown]
    if others:
        lines += ["## Earlier versions", ""]
        for message in others:
            lines += _message_lines(message, "###")
    return "\n".join(lines)


def _message_lines(message: service.Message, level: str) -> list[str]:
    who = "You" if message.role == "user" else "Assistant"
    return [f"{level} {who} ({message.created_at}, id {message.id})", "", message.content, ""]


def erase(db: sqlite_utils.Database, settings: Settings, job: personal.Erasure) -> bool:
    return personal.erase_tables(db, TABLES, job)
