"""Conversations and the turns of a conversation.

A conversation belongs to one user (teammates do not see each other's chats) and one
instance. Its messages form a tree: editing an earlier question or regenerating an answer
adds a new version beside the old one (and what followed the old one stays with it); the
conversation shows its current line, the selected version at each step, and ``select``
switches. A question that cannot fit the instance's context budget is refused before it
is stored. A turn is prepared (user message stored, prompt composed) before anything is
generated, and finished (answer stored with its checked citations and exact token usage)
after, so a failed or stopped generation never loses the question.

The prompt is composed by ``compose.py`` (shared with ``/v1``); SQL is in ``store.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import sqlite_utils

from appliance import receipts
from appliance.chat import prompt
from appliance.chat.citations import CITATION as CITATION  # re-exported for callers
from appliance.chat.citations import check_citations, cited_sources
from appliance.chat.citations import usage_counts as usage_counts
from appliance.chat.compose import Composed, Room, byte_bounds, compose, room
from appliance.chat.models import USAGE, Conversation, Message
from appliance.chat.store import ChatStore
from appliance.clock import iso, parse, utcnow
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import Conflict, InvalidInput, NotFound, Unavailable
from appliance.ids import new_id
from appliance.inference.client import InferenceClient
from appliance.instances import service as instances
from appliance.knowledge import search as kb_search

#: A sanity limit on the request; what really bounds a message is the instance's context
#: budget (``measure``), checked before the message is stored.
MAX_MESSAGE_CHARS = 1_000_000
MAX_TITLE_CHARS = 120
#: A turn whose answer has not been stored after this long is taken to have died with
#: its process; the conversation accepts a new turn.
STALE_TURN = timedelta(minutes=15)


# -- conversations --------------------------------------------------------------------


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
        raise InvalidInput(f"A message may be at most {MAX_MESSAGE_CHARS:,} characters.")
    return content.strip()


def _new_message(
    conversation_id: str, position: int, role: str, content: str, now: datetime, **details: Any
) -> Message:
    """A message to store; ``details``: finish reason, token counts, sources, model."""
    empty = {"finish_reason": None, "model": None, "sources": []}
    counts = dict.fromkeys(USAGE, 0)
    fields_ = {**empty, **counts, **details, "created_at": iso(now)}
    return Message(new_id("msg"), conversation_id, position, role, content, **fields_)


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
    conversation = Conversation(
        id=new_id("conv"),
        account_id=account_id,
        user_id=user_id,
        instance_id=instance.id,
        title=_clean_title(title) if title is not None else "New chat",
        source=source,
        generating_since=None,
        created_at=iso(now),
        updated_at=iso(now),
    )
    with write_transaction(db):
        ChatStore(db).insert_conversation(conversation)
    return conversation


def start(
    db: sqlite_utils.Database,
    settings: Settings,
    client: InferenceClient,
    account_id: str,
    user_id: str,
    instance_id: str,
    content: Any,
    now: datetime,
    *,
    title: str | None = None,
) -> Conversation:
    """A new conversation for the first message ``content``, created only once the message
    is accepted: one that is empty or cannot fit the instance's context budget raises
    InvalidInput and leaves nothing behind. ``prepare_turn`` then asks it."""
    instance = instances.get(db, account_id, instance_id)  # NotFound for other accounts
    _check_fits(db, settings, client, account_id, instance, clean_content(content), now)
    return create(db, account_id, user_id, instance_id, now, title=title)


def get(
    db: sqlite_utils.Database,
    account_id: str,
    user_id: str,
    conversation_id: str,
    *,
    with_messages: bool = True,
) -> Conversation:
    """The user's own conversation; anyone else's is ``NotFound``."""
    store = ChatStore(db)
    conversation = store.conversation(account_id, user_id, conversation_id)
    if conversation is None:
        raise NotFound("No such conversation.")
    if not with_messages:
        return conversation
    line, versions = current_line(store.messages(conversation_id))
    return replace(conversation, messages=line, versions=versions)


def current_line(messages: list[Message]) -> tuple[list[Message], dict[str, list[str]]]:
    """From every message of a conversation (oldest first): its current line, and the
    versions of each message on it that has siblings."""
    children: dict[str | None, list[Message]] = {}
    for message in messages:
        children.setdefault(message.parent_id, []).append(message)
    line: list[Message] = []
    versions: dict[str, list[str]] = {}
    parent: str | None = None
    while kids := children.get(parent):
        chosen = next((m for m in reversed(kids) if m.selected), kids[-1])
        if len(kids) > 1:
            versions[chosen.id] = [m.id for m in kids]
        line.append(chosen)
        parent = chosen.id
    return line, versions


def select_version(
    db: sqlite_utils.Database,
    account_id: str,
    user_id: str,
    conversation_id: str,
    message_id: str,
    now: datetime,
) -> Conversation:
    """Show ``message_id`` (and the line that followed it) instead of its siblings."""
    store = ChatStore(db)
    with write_transaction(db):
        conversation = get(db, account_id, user_id, conversation_id, with_messages=False)
        _check_free(conversation, now)
        target = next((m for m in store.messages(conversation_id) if m.id == message_id), None)
        if target is None:
            raise NotFound("No such message.")
        store.select(conversation_id, target.parent_id, target.id)
    return get(db, account_id, user_id, conversation_id)


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
        seen: dict[str, dict[str, Any]] = {}
        for conversation, snippet in ChatStore(db).search(account_id, user_id, match):
            seen.setdefault(conversation.id, {**conversation.public(), "snippet": snippet})
        return list(seen.values())[:limit]
    return [c.public() for c in ChatStore(db).recent(account_id, user_id, limit)]


def rename(
    db, account_id: str, user_id: str, conversation_id: str, title: Any, now
) -> Conversation:
    title = _clean_title(title)
    with write_transaction(db):
        get(db, account_id, user_id, conversation_id, with_messages=False)
        ChatStore(db).set_conversation(conversation_id, title=title, updated_at=iso(now))
    return get(db, account_id, user_id, conversation_id)


def delete(
    db, account_id: str, user_id: str, conversation_id: str, now: datetime | None = None
) -> None:
    """Delete the conversation and its messages (FTS rows go with them: triggers);
    ``secure_delete`` overwrites the freed pages; a deletion receipt (counts, no content)
    records it."""
    store = ChatStore(db)
    with write_transaction(db):
        get(db, account_id, user_id, conversation_id, with_messages=False)
        messages = store.count_messages(conversation_id)
        store.delete_conversation(conversation_id)
        counts = {"conversations": 1, "messages": messages, "messages_fts": messages}
        what = f"conversation {conversation_id} deleted by its user"
        receipts.write(db, account_id, what, counts, [], now or utcnow())


def delete_for_instance(db, account_id: str, instance_id: str) -> int:
    """Delete every conversation held on an instance (when it is destroyed with them)."""
    with write_transaction(db):
        return ChatStore(db).delete_for_instance(account_id, instance_id)


# -- turns ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    """A prepared turn: the stored question and the request that answers it."""

    conversation: Conversation
    instance: instances.Instance
    user_message: Message  # the question the answer follows
    position: int  # where the answer goes
    composed: Composed


def _check_free(conversation: Conversation, now: datetime) -> None:
    if conversation.generating_since and now - parse(conversation.generating_since) < (STALE_TURN):
        raise Conflict("An answer is still being written in this conversation.")


def _check_fits(db, settings, client, account_id, instance, content: str, now) -> None:
    bounded = room(db, settings, client, account_id, instance, content, now, byte_bounds)
    if bounded.fits:
        return  # it would fit even if every byte were a token
    try:
        measured = room(db, settings, client, account_id, instance, content, now)
    except Unavailable:
        return  # no tokenizer now: the turn fails later, the question kept
    if not measured.fits:
        raise InvalidInput(measured.refusal())


def measure(
    db: sqlite_utils.Database,
    settings: Settings,
    client: InferenceClient,
    account_id: str,
    instance_id: str,
    content: str,
    now: datetime,
) -> Room:
    """How ``content`` measures against the instance's context budget (the page's counter)."""
    instance = instances.get(db, account_id, instance_id)
    return room(db, settings, client, account_id, instance, content.strip(), now)


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

    ``content`` alone asks after the current line's last message; with
    ``edit_message_id`` it becomes a new version of that question (the old one and what
    followed it are kept as the other version); with neither, the last question is
    answered again (a new version of its answer once that is written).

    Raises:
        NotFound: not the user's conversation, or no such message.
        Conflict: the instance is stopped, or an answer is being generated right now.
        InvalidInput: empty message, or one that cannot fit the instance's context budget
            (refused before it is stored); nothing to regenerate.
    """
    content = clean_content(content) if content is not None else None
    conversation = get(db, account_id, user_id, conversation_id)
    instance = instances.get(db, account_id, conversation.instance_id)
    if instance.state != "running":
        raise Conflict(
            f"The instance '{instance.name}' is {instance.state}; "
            + ("start it to continue." if instance.state == "stopped" else "it cannot answer.")
        )
    _check_free(conversation, now)
    line = conversation.messages
    if edit_message_id is not None:
        target = next((m for m in line if m.id == edit_message_id), None)
        if target is None or target.role != "user":
            raise NotFound("No such message to edit.")
        if content is None:
            raise InvalidInput("Type the new text of the message.")
        parent_id, position = target.parent_id, target.position
    elif content is not None:
        parent_id = line[-1].id if line else None
        position = line[-1].position + 1 if line else 0
    else:
        last_user = next((m for m in reversed(line) if m.role == "user"), None)
        if last_user is None:
            raise InvalidInput("There is no question to answer again.")
        parent_id, position = last_user.id, last_user.position + 1
    if content is not None:
        _check_fits(db, settings, client, account_id, instance, content, now)
    store = ChatStore(db)
    with write_transaction(db):
        conversation = get(db, account_id, user_id, conversation_id, with_messages=False)
        _check_free(conversation, now)
        if content is not None:
            question = _new_message(
                conversation_id, position, "user", content, now, parent_id=parent_id
            )
            store.insert_message(account_id, question)
            parent_id, position = question.id, position + 1
        changes = {"generating_since": iso(now), "updated_at": iso(now)}
        if conversation.title == "New chat" and content is not None and position == 1:
            changes["title"] = title_from(content)
        store.set_conversation(conversation_id, **changes)
        conversation = get(db, account_id, user_id, conversation_id)
    line = conversation.messages
    asked = next(i for i, m in enumerate(line) if m.id == parent_id)
    history = [{"role": m.role, "content": m.content} for m in line[: asked + 1]]
    try:
        composed = compose(db, settings, client, account_id, instance, history, now)
    except BaseException:
        end_turn(db, conversation_id)
        raise
    return Turn(conversation, instance, line[asked], position, composed)


def end_turn(db: sqlite_utils.Database, conversation_id: str) -> None:
    """Mark the conversation free for its next turn (the answer failed or was stored)."""
    with write_transaction(db):
        ChatStore(db).end_generating(conversation_id)


def finish_turn(
    db: sqlite_utils.Database,
    turn: Turn,
    text: str,
    now: datetime,
    *,
    finish_reason: str,
    **usage: int,
) -> Message | None:
    """Store the answer (checked citations, exact ``usage``: the counts ``USAGE`` names,
    0 where not given); nothing when it is empty."""
    checked, cited = check_citations(text, {p.number for p in turn.composed.passages})
    answer = _new_message(
        turn.conversation.id,
        turn.position,
        "assistant",
        checked,
        now,
        finish_reason=finish_reason,
        sources=cited_sources(turn.composed.passages, cited),
        model=turn.instance.model,
        parent_id=turn.user_message.id,
        **usage,
    )
    store = ChatStore(db)
    with write_transaction(db):
        exists = store.end_generating(turn.conversation.id, iso(now))
        if not checked.strip() or not exists:  # or deleted while the answer was written
            return None
        store.insert_message(turn.conversation.account_id, answer)
    return answer


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
        conversation = create(db, account_id, user_id, instance.id, now, source="api")
        to_store = [m for m in messages if m["role"] in ("user", "assistant")]
    else:
        conversation = get(db, account_id, user_id, conversation_id, with_messages=False)
        if conversation.instance_id != instance.id:
            raise NotFound("No such conversation on this instance.")
        last_user = next((m for m in reversed(messages) if m["role"] == "user"), None)
        to_store = [last_user] if last_user else []
    _, cited = check_citations(answer, {p.number for p in passages})
    counts = {k: usage.get(k, 0) for k in USAGE}
    reply = {"role": "assistant", "content": answer}
    sources = cited_sources(passages, cited)
    details = {"finish_reason": "stop", "sources": sources, "model": instance.model, **counts}
    store = ChatStore(db)
    with write_transaction(db):
        line, _ = current_line(store.messages(conversation.id))
        position, parent_id = (line[-1].position, line[-1].id) if line else (-1, None)
        for message in [*to_store, reply]:
            position += 1
            stored = _new_message(
                conversation.id,
                position,
                message["role"],
                message["content"],
                now,
                parent_id=parent_id,
                **(details if message is reply else {}),
            )
            store.insert_message(account_id, stored)
            parent_id = stored.id
        title = conversation.title
        if title == "New chat" and to_store:
            title = title_from(next((m["content"] for m in to_store if m["role"] == "user"), ""))
        store.set_conversation(conversation.id, title=title, updated_at=iso(now))
    return conversation.id
