"""All SQL for conversations and messages (``messages_fts`` follows by trigger)."""

from __future__ import annotations

import json
from dataclasses import asdict, fields

import sqlite_utils

from appliance.chat.models import Conversation, Message

_MESSAGE = [f.name for f in fields(Message)]
_CONVERSATION = [f.name for f in fields(Conversation) if f.name not in ("messages", "versions")]


def _message(row: dict) -> Message:
    return Message(
        **{k: row[k] for k in _MESSAGE} | {"sources": json.loads(row["sources"] or "[]")}
    )


def _conversation(row: dict) -> Conversation:
    return Conversation(**{k: row[k] for k in _CONVERSATION})


class ChatStore:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    # conversations
    def insert_conversation(self, conversation: Conversation) -> None:
        row = asdict(conversation)
        del row["messages"], row["versions"]
        self.db["conversations"].insert(row)

    def conversation(self, account_id: str, user_id: str, conversation_id: str):
        """The user's own conversation (without its messages), or None."""
        rows = self.db["conversations"].rows_where(
            "id = ? and account_id = ? and user_id = ?", [conversation_id, account_id, user_id]
        )
        row = next(rows, None)
        return _conversation(row) if row else None

    def recent(self, account_id: str, user_id: str, limit: int) -> list[Conversation]:
        where = "account_id = ? and user_id = ?"
        rows = self.db["conversations"].rows_where(
            where, [account_id, user_id], order_by="updated_at desc", limit=limit
        )
        return [_conversation(row) for row in rows]

    def search(self, account_id: str, user_id: str, match: str) -> list[tuple[Conversation, str]]:
        """The user's conversations whose messages match (best match first, one entry per
        matching message), each with a snippet."""
        rows = self.db.query(
            """select c.*, snippet(messages_fts, 0, '', '', '…', 12) as snippet
               from messages_fts f
               join messages m on m.seq = f.rowid
               join conversations c on c.id = m.conversation_id
               where messages_fts match :match and c.account_id = :account
               and c.user_id = :user
               order by f.rank""",
            {"match": match, "account": account_id, "user": user_id},
        )
        return [(_conversation(row), row["snippet"]) for row in rows]

    def set_conversation(self, conversation_id: str, **changes: str | None) -> None:
        self.db["conversations"].update(conversation_id, changes)

    def end_generating(self, conversation_id: str, updated_at: str | None = None) -> bool:
        """Free the conversation for its next turn; False when it no longer exists."""
        return bool(
            self.db.execute(
                "update conversations set generating_since = null, "
                "updated_at = coalesce(:at, updated_at) where id = :id",
                {"at": updated_at, "id": conversation_id},
            ).rowcount
        )

    def delete_conversation(self, conversation_id: str) -> None:
        self.db["conversations"].delete(conversation_id)  # its messages by cascade

    def delete_for_instance(self, account_id: str, instance_id: str) -> int:
        return self.db.execute(
            "delete from conversations where account_id = :account and instance_id = :instance",
            {"account": account_id, "instance": instance_id},
        ).rowcount

    # messages
    def messages(self, conversation_id: str) -> list[Message]:
        """Every message of the conversation, all versions, in the order they were written."""
        rows = self.db["messages"].rows_where(
            "conversation_id = ?", [conversation_id], order_by="position, seq"
        )
        return [_message(row) for row in rows]

    def count_messages(self, conversation_id: str) -> int:
        return self.db["messages"].count_where("conversation_id = ?", [conversation_id])

    def insert_message(self, account_id: str, message: Message) -> None:
        """Store ``message`` as the selected version among its siblings."""
        self.select(message.conversation_id, message.parent_id, None)
        row = {**asdict(message), "sources": json.dumps(message.sources), "selected": 1}
        self.db["messages"].insert({"account_id": account_id, **row})

    def select(self, conversation_id: str, parent_id: str | None, message_id: str | None) -> None:
        """Make ``message_id`` the selected one of the messages that follow ``parent_id``
        (None: none of them)."""
        self.db.execute(
            "update messages set selected = (id is :id) where conversation_id = :conversation "
            "and parent_id is :parent",
            {"id": message_id, "conversation": conversation_id, "parent": parent_id},
        )
