"""Messages and conversations as the page and the API show them: an answer with its
sanitized HTML (``render.py``) and the current text of the passages it cites."""

from __future__ import annotations

from typing import Any

import sqlite_utils

from appliance.chat import render
from appliance.chat.models import Conversation, Message
from appliance.knowledge import service as knowledge


def message_view(
    db: sqlite_utils.Database, account_id: str, message: Message, versions: list[str] | None = None
) -> dict[str, Any]:
    """A message with, for an answer, its rendered ``html`` and each source's ``text``,
    and where it has other versions, ``{"index", "count", "previous", "next"}`` (ids to
    select)."""
    data = message.public()
    if versions:
        at = versions.index(message.id)
        data["versions"] = {
            "index": at + 1,
            "count": len(versions),
            "previous": versions[at - 1] if at > 0 else None,
            "next": versions[at + 1] if at + 1 < len(versions) else None,
        }
    if message.role == "assistant":
        texts = knowledge.passage_texts(
            db, account_id, [s["chunk_id"] for s in message.sources if s.get("chunk_id")]
        )
        data["html"] = render.render(
            message.content, message.sources, texts, prefix=f"{message.id}-src"
        )
        for source in data["sources"]:
            source["text"] = texts.get(source.get("chunk_id"))
    return data


def conversation_view(
    db: sqlite_utils.Database, account_id: str, conversation: Conversation
) -> dict[str, Any]:
    """A conversation with its current line of messages (``message_view``)."""
    data = conversation.public()
    data["messages"] = [
        message_view(db, account_id, m, conversation.versions.get(m.id))
        for m in conversation.messages
    ]
    return data
