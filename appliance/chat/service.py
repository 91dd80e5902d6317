"""Conversations and the turns of a conversation.

A conversation belongs to one user (teammates do not see each other's chats) and one
instance. Its messages are a single line: editing an earlier user message drops what
came after it and continues from there; regenerating replaces the last answer. A turn is
prepared (user message stored, prompt composed) before anything is generated, and
finished (answer stored with its checked citations and exact token usage) after, so a
failed or stopped generation never loses the question.

``compose`` is shared with ``/v1``: the instance's system prompt (or the account's persona
prompt and voice excerpts), retrieved passages, and as much history as fits the budget.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlite_utils

from appliance import receipts
from appliance.chat import prompt
from appliance.clock import iso, parse, utcnow
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import Conflict, InvalidInput, NotFound
from appliance.ids import new_id
from appliance.inference.client import InferenceClient
from appliance.instances import service as instances
from appliance.knowledge import search as kb_search
from appliance.persona import service as persona

MAX_MESSAGE_CHARS = 32_000
MAX_TITLE_CHARS = 120
#: A turn whose answer has not been stored after this long is taken to have died with
#: its process; the conversation accepts a new turn.
STALE_TURN = timedelta(minutes=15)
CITATION = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\](?!\()")


# -- prompt composition (shared with /v1) ---------------------------------------------


@dataclass(frozen=True)
class Composed:
    """What goes to the inference service, and what it was built from."""

    payload: dict[str, Any]
    passages: list[prompt.Passage]
    prompt_tokens: int
    dropped_messages: int


def system_prompt(db, settings: Settings, account_id: str, instance, now: datetime) -> str:
    if instance.system_prompt:
        return instance.system_prompt
    if instance.voice:
        return persona.prompt_for_account(db, settings, account_id, now)
    return persona.effective_prompt(db, account_id, now)


def retrieve(
    db, client: InferenceClient, account_id: str, query: str, k: int
) -> list[prompt.Passage]:
    """The account's best passages for ``query``, numbered from 1."""
    try:
        result = kb_search.search(db, client, account_id, query[: kb_search.MAX_QUERY_CHARS], k)
    except InvalidInput:
        return []
    return [
        prompt.Passage(
            number=i,
            document_id=hit.document_id,
            filename=hit.filename,
            text=hit.text,
            page=hit.page,
            heading=hit.heading,
            chunk_id=hit.chunk_id,
        )
        for i, hit in enumerate(result.hits, start=1)
    ]


def compose(
    db: sqlite_utils.Database,
    settings: Settings,
    client: InferenceClient,
    account_id: str,
    instance: instances.Instance,
    conversation: list[dict[str, str]],
    now: datetime,
    *,
    own_system: str | None = None,
    knowledge: bool = True,
    max_tokens: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> Composed:
    """Assemble the request for ``conversation`` (oldest first) on ``instance``."""
    system = (
        own_system
        if own_system is not None
        else system_prompt(db, settings, account_id, instance, now)
    )
    passages: list[prompt.Passage] = []
    last_user = next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")
    if instance.knowledge and knowledge and last_user:
        passages = retrieve(db, client, account_id, last_user, instance.top_k)
    max_tokens = instance.max_tokens if max_tokens is None else max_tokens
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidInput("'max_tokens' must be a positive integer.")
    budget = instance.context_budget - min(max_tokens, instance.context_budget // 2)

    def count(texts: list[str]) -> list[int]:
        counts = client.count_tokens(texts, model="chat")
        return counts if counts is not None else [max(1, len(t) // 4) for t in texts]

    assembled = prompt.assemble(system, passages, conversation, budget=budget, count=count)
    payload = {
        "messages": assembled.messages,
        "temperature": instance.temperature,
        "top_p": instance.top_p,
        **(overrides or {}),
        "max_tokens": max_tokens,
    }
    return Composed(payload, assembled.passages, assembled.tokens, assembled.dropped_messages)


# -- conversations --------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    id: str
    conversation_id: str
    position: int
    role: str
    content: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    sources: list[dict[str, Any]]
    model: str | None
    created_at: str

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "content": self.content,
            "finish_reason": self.finish_reason,
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "cached_tokens": self.cached_tokens,
            },
            "sources": self.sources,
            "model": self.model,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class Conversation:
    id: str
    account_id: str
    user_id: str
    instance_id: str
    title: str
    source: str
    generating_since: str | None
    created_at: str
    updated_at: str
    messages: list[Message] = field(default_factory=list)

    def public(self, *, with_messages: bool = False) -> dict[str, Any]:
        data = {
            "id": self.id,
            "instance_id": self.instance_id,
            "title": self.title,
            "source": self.source,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if with_messages:
            data["messages"] = [m.public() for m in self.messages]
        return data


_CONVERSATION_COLUMNS = (
    "id, account_id, user_id, instance_id, title, source, generating_since, created_at, updated_at"
)
_MESSAGE_COLUMNS = (
    "id, conversation_id, position, role, content, finish_reason, prompt_tokens, "
    "completion_tokens, cached_tokens, sources, model, created_at"
)


_INSERT_COLUMNS = f"account_id, {_MESSAGE_COLUMNS}"


def _message(row) -> Message:
    values = list(row)
    values[9] = json.loads(values[9] or "[]")
    return Message(*values)


def title_from(text: str) -> str:
    words = " ".join(text.split())
    if len(words) <= 60:
        return words or "New chat"
    return words[:60].rsplit(" ", 1)[0] + "…"


def _clean_title(title: Any) -> str:
    if not isinstance(title, str) or not title.strip():
        raise InvalidInput("'title' must be a non-empty string.")
    title = " ".join(title.split())
    if len(title) > MAX_TITLE_CHARS:
        raise InvalidInput(f"'title' may be at most {MAX_TITLE_CHARS} characters.")
    return title


def clean_content(content: Any) -> str:
    if not isinstance(content, str) or not content.strip():
        raise InvalidInput("Type a message first: 'content' must be a non-empty string.")
    if len(content) > MAX_MESSAGE_CHARS:
        raise InvalidInput(f"A message may be at most {MAX_MESSAGE_CHARS} characters.")
    return content.strip()


def create(
    db: sqlite_utils.Database,
    account_id: str,
    user_id: str,
    instance_id: str,
    now: datetime,
    *,
    title: str | None = None,
    source: str = "web",
) -> Conversation:
    instance = instances.get(db, account_id, instance_id)  # NotFound for other accounts
    if instance.state == "destroyed":
        raise NotFound("No such instance.")
    conversation_id = new_id("conv")
    stamp = iso(now)
    with write_transaction(db):
        db.execute(
            f"insert into conversations ({_CONVERSATION_COLUMNS}) "  # noqa: S608
            "values (?, ?, ?, ?, ?, ?, null, ?, ?)",
            [
                conversation_id,
                account_id,
                user_id,
                instance.id,
                _clean_title(title) if title is not None else "New chat",
                source,
                stamp,
                stamp,
            ],
        )
    return get(db, account_id, user_id, conversation_id)


def get(
    db: sqlite_utils.Database,
    account_id: str,
    user_id: str,
    conversation_id: str,
    *,
    with_messages: bool = True,
) -> Conversation:
    """The user's own conversation; anyone else's is ``NotFound``."""
    row = db.execute(
        f"select {_CONVERSATION_COLUMNS} from conversations "  # noqa: S608
        "where id = ? and account_id = ? and user_id = ?",
        [conversation_id, account_id, user_id],
    ).fetchone()
    if row is None:
        raise NotFound("No such conversation.")
    conversation = Conversation(*row)
    if not with_messages:
        return conversation
    rows = db.execute(
        f"select {_MESSAGE_COLUMNS} from messages where conversation_id = ? "  # noqa: S608
        "order by position",
        [conversation_id],
    ).fetchall()
    return Conversation(*row, messages=[_message(r) for r in rows])


def list_for_user(
    db: sqlite_utils.Database,
    account_id: str,
    user_id: str,
    *,
    query: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """The user's conversations, newest first; with ``query``, those whose messages match
    (full-text, each word quoted), with a snippet of the best match."""
    if query is not None and query.strip():
        match = kb_search.fts_query(query)
        if not match:
            return []
        rows = db.execute(
            f"""select {", ".join("c." + c.strip() for c in _CONVERSATION_COLUMNS.split(","))},
                   snippet(messages_fts, 0, '', '', '…', 12) as snippet
               from messages_fts f
               join messages m on m.seq = f.rowid
               join conversations c on c.id = m.conversation_id
               where messages_fts match ? and c.account_id = ? and c.user_id = ?
               order by f.rank""",  # noqa: S608
            [match, account_id, user_id],
        ).fetchall()
        seen: dict[str, dict[str, Any]] = {}
        for row in rows:
            if row[0] not in seen:
                seen[row[0]] = {**Conversation(*row[:-1]).public(), "snippet": row[-1]}
        return list(seen.values())[:limit]
    rows = db.execute(
        f"select {_CONVERSATION_COLUMNS} from conversations "  # noqa: S608
        "where account_id = ? and user_id = ? order by updated_at desc limit ?",
        [account_id, user_id, limit],
    ).fetchall()
    return [Conversation(*row).public() for row in rows]


def rename(
    db, account_id: str, user_id: str, conversation_id: str, title: Any, now
) -> Conversation:
    title = _clean_title(title)
    with write_transaction(db):
        get(db, account_id, user_id, conversation_id, with_messages=False)
        db.execute(
            "update conversations set title = ?, updated_at = ? where id = ?",
            [title, iso(now), conversation_id],
        )
    return get(db, account_id, user_id, conversation_id)


def delete(
    db, account_id: str, user_id: str, conversation_id: str, now: datetime | None = None
) -> None:
    """Delete the conversation and its messages (FTS rows go with them: triggers);
    ``secure_delete`` overwrites the freed pages; a deletion receipt (counts, no content)
    records it."""
    with write_transaction(db):
        get(db, account_id, user_id, conversation_id, with_messages=False)
        messages = db.execute(
            "select count(*) from messages where conversation_id = ?", [conversation_id]
        ).fetchone()[0]
        db.execute("delete from conversations where id = ?", [conversation_id])
        receipts.write(
            db,
            account_id,
            f"conversation {conversation_id} deleted by its user",
            {"conversations": 1, "messages": messages, "messages_fts": messages},
            [],
            now or utcnow(),
        )


def delete_for_instance(db, account_id: str, instance_id: str) -> int:
    """Delete every conversation held on an instance (when it is destroyed with them)."""
    with write_transaction(db):
        cursor = db.execute(
            "delete from conversations where account_id = ? and instance_id = ?",
            [account_id, instance_id],
        )
    return cursor.rowcount


# -- turns ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    """A prepared turn: the stored question and the request that answers it."""

    conversation: Conversation
    instance: instances.Instance
    user_message: Message
    position: int  # where the answer goes
    composed: Composed


def prepare_turn(
    db: sqlite_utils.Database,
    settings: Settings,
    client: InferenceClient,
    account_id: str,
    user_id: str,
    conversation_id: str,
    now: datetime,
    *,
    content: str | None = None,
    edit_message_id: str | None = None,
) -> Turn:
    """Store the question and compose the request.

    ``content`` alone appends a question; with ``edit_message_id`` it replaces that user
    message and drops everything after it; with neither, the last answer is regenerated
    (dropped, and the last question answered again).

    Raises:
        NotFound: not the user's conversation, or no such message.
        Conflict: the instance is stopped, or an answer is being generated right now.
        InvalidInput: empty or oversized message; nothing to regenerate.
    """
    if content is not None:
        content = clean_content(content)
    with write_transaction(db):
        conversation = get(db, account_id, user_id, conversation_id)
        instance = instances.get(db, account_id, conversation.instance_id)
        if instance.state != "running":
            raise Conflict(
                f"The instance '{instance.name}' is {instance.state}; "
                + ("start it to continue." if instance.state == "stopped" else "it cannot answer.")
            )
        if conversation.generating_since and now - parse(conversation.generating_since) < (
            STALE_TURN
        ):
            raise Conflict("An answer is still being written in this conversation.")
        messages = conversation.messages
        if edit_message_id is not None:
            target = next((m for m in messages if m.id == edit_message_id), None)
            if target is None or target.role != "user":
                raise NotFound("No such message to edit.")
            if content is None:
                raise InvalidInput("Type the new text of the message.")
            keep_below = target.position
        elif content is not None:
            keep_below = messages[-1].position + 1 if messages else 0
        else:
            last_user = next((m for m in reversed(messages) if m.role == "user"), None)
            if last_user is None:
                raise InvalidInput("There is no question to answer again.")
            keep_below = last_user.position + 1
        db.execute(
            "delete from messages where conversation_id = ? and position >= ?",
            [conversation_id, keep_below],
        )
        if content is not None:
            db.execute(
                f"insert into messages ({_INSERT_COLUMNS}) "  # noqa: S608
                "values (?, ?, ?, ?, 'user', ?, null, 0, 0, 0, '[]', null, ?)",
                [account_id, new_id("msg"), conversation_id, keep_below, content, iso(now)],
            )
            position = keep_below + 1
        else:
            position = keep_below
        fields_ = ["generating_since = ?", "updated_at = ?"]
        values: list[Any] = [iso(now), iso(now)]
        if conversation.title == "New chat" and content is not None and keep_below == 0:
            fields_.append("title = ?")
            values.append(title_from(content))
        db.execute(
            f"update conversations set {', '.join(fields_)} where id = ?",  # noqa: S608
            [*values, conversation_id],
        )
        conversation = get(db, account_id, user_id, conversation_id)
    history = [{"role": m.role, "content": m.content} for m in conversation.messages]
    try:
        composed = compose(db, settings, client, account_id, instance, history, now)
    except BaseException:
        end_turn(db, conversation_id)
        raise
    return Turn(conversation, instance, conversation.messages[-1], position, composed)


def end_turn(db: sqlite_utils.Database, conversation_id: str) -> None:
    """Mark the conversation free for its next turn (the answer failed or was stored)."""
    with write_transaction(db):
        db.execute(
            "update conversations set generating_since = null where id = ?", [conversation_id]
        )


def check_citations(text: str, numbers: set[int]) -> tuple[str, list[int]]:
    """Drop markers whose number was not retrieved; ``[1, 3]`` becomes ``[1][3]``.

    Returns the checked text and the cited numbers in order of first use.
    """
    cited: list[int] = []

    def fix(match: re.Match) -> str:
        kept = [int(n) for n in re.findall(r"\d+", match.group(1)) if int(n) in numbers]
        for n in kept:
            if n not in cited:
                cited.append(n)
        return "".join(f"[{n}]" for n in kept)

    checked = CITATION.sub(fix, text)
    checked = re.sub(r"[ \t]+([.,;:!?])", r"\1", checked) if checked != text else checked
    return checked, cited


def _sources(passages: list[prompt.Passage], cited: list[int]) -> list[dict[str, Any]]:
    """What an answer keeps of its passages: references, not their text (a deleted
    document's text must not live on in a conversation)."""
    return [
        {
            "number": p.number,
            "document_id": p.document_id,
            "chunk_id": p.chunk_id,
            "filename": p.filename,
            "page": p.page,
            "heading": p.heading,
            "cited": p.number in cited,
        }
        for p in passages
    ]


def usage_counts(usage: dict[str, Any] | None) -> dict[str, int]:
    """An OpenAI ``usage`` object as the counts a message stores."""
    usage = usage or {}
    return {
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "completion_tokens": usage.get("completion_tokens", 0),
        "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
    }


def finish_turn(
    db: sqlite_utils.Database,
    turn: Turn,
    text: str,
    now: datetime,
    *,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
) -> Message | None:
    """Store the answer (checked citations, exact usage); nothing when it is empty."""
    checked, cited = check_citations(text, {p.number for p in turn.composed.passages})
    sources = _sources(turn.composed.passages, cited)
    message_id = new_id("msg")
    with write_transaction(db):
        db.execute(
            "update conversations set generating_since = null, updated_at = ? where id = ?",
            [iso(now), turn.conversation.id],
        )
        if not checked.strip():
            return None
        exists = db.execute(
            "select 1 from conversations where id = ?", [turn.conversation.id]
        ).fetchone()
        if exists is None:  # deleted while the answer was being written
            return None
        db.execute(
            "delete from messages where conversation_id = ? and position >= ?",
            [turn.conversation.id, turn.position],
        )
        db.execute(
            f"insert into messages ({_INSERT_COLUMNS}) "  # noqa: S608
            "values (?, ?, ?, ?, 'assistant', ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                turn.conversation.account_id,
                message_id,
                turn.conversation.id,
                turn.position,
                checked,
                finish_reason,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
                json.dumps(sources),
                turn.instance.model,
                iso(now),
            ],
        )
    row = db.execute(
        f"select {_MESSAGE_COLUMNS} from messages where id = ?",  # noqa: S608
        [message_id],
    ).fetchone()
    return _message(row)


def store_exchange(
    db: sqlite_utils.Database,
    account_id: str,
    user_id: str,
    instance: instances.Instance,
    messages: list[dict[str, str]],
    answer: str,
    now: datetime,
    *,
    conversation_id: str | None,
    passages: list[prompt.Passage],
    usage: dict[str, int],
) -> str:
    """Keep a ``/v1`` exchange (``"appliance": {"store": true}``): a new conversation with
    the request's messages, or, given ``conversation_id``, its last user message appended.
    """
    if conversation_id is None:
        conversation = create(
            db, account_id, user_id, instance.id, now, source="api", title="New chat"
        )
        to_store = [m for m in messages if m["role"] in ("user", "assistant")]
    else:
        conversation = get(db, account_id, user_id, conversation_id, with_messages=False)
        if conversation.instance_id != instance.id:
            raise NotFound("No such conversation on this instance.")
        last_user = next((m for m in reversed(messages) if m["role"] == "user"), None)
        to_store = [last_user] if last_user else []
    _, cited = check_citations(answer, {p.number for p in passages})
    sources = _sources(passages, cited)
    stamp = iso(now)
    with write_transaction(db):
        top = db.execute(
            "select coalesce(max(position), -1) from messages where conversation_id = ?",
            [conversation.id],
        ).fetchone()[0]
        rows = [(m["role"], m["content"], None, {}, "[]") for m in to_store]
        rows.append(("assistant", answer, "stop", usage, json.dumps(sources)))
        for offset, (role, content, finish, counts, source_json) in enumerate(rows, start=1):
            db.execute(
                f"insert into messages ({_INSERT_COLUMNS}) "  # noqa: S608
                "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    account_id,
                    new_id("msg"),
                    conversation.id,
                    top + offset,
                    role,
                    content,
                    finish,
                    counts.get("prompt_tokens", 0),
                    counts.get("completion_tokens", 0),
                    counts.get("cached_tokens", 0),
                    source_json,
                    instance.model if role == "assistant" else None,
                    stamp,
                ],
            )
        title = conversation.title
        if title == "New chat" and to_store:
            title = title_from(next((m["content"] for m in to_store if m["role"] == "user"), ""))
        db.execute(
            "update conversations set title = ?, updated_at = ? where id = ?",
            [title, stamp, conversation.id],
        )
    return conversation.id
