"""Rules for the account's system prompt: versions, generation, edits and the egress log.

Every change is a new version (the active prompt is the latest one), made by owners and
admins only. ``prompt_for_account`` is what the chat feature puts in front of a
conversation: the active prompt (or the local template before there is one) and the
voice excerpts.

Egress: each HTTP request to Anthropic that reached a server gets one ``egress_log``
row with the body bytes the transport really sent, *including failed attempts*: a call
that errors after connecting may still have delivered the summary, so it is recorded
rather than hidden. Nothing else in this domain leaves the box.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime

import sqlite_utils

from appliance.accounts import service as accounts
from appliance.accounts.models import MANAGERS
from appliance.clock import iso, utcnow
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import InvalidInput, Unavailable
from appliance.ids import new_id
from appliance.persona import voice
from appliance.persona.claude import Call, ClaudeClient, ClaudeError
from appliance.persona.models import EgressEntry, Generated, SystemPrompt
from appliance.persona.store import PersonaStore
from appliance.persona.template import diff as diff  # re-exported for callers
from appliance.persona.template import local_prompt as local_prompt

MAX_PROMPT_CHARS = 8000
HISTORY_LIMIT = 50
EGRESS_LIMIT = 200
#: What each request to Claude is logged as (``log_egress``).
CLAUDE_EGRESS = {
    "service": "anthropic",
    "purpose": "system prompt generation",
    "data_categories": "onboarding summary",
}


def _require_manager(actor_role: str) -> None:
    if actor_role not in MANAGERS:
        raise accounts.Forbidden("Only owners and admins can manage the system prompt.")


def claude_enabled(settings: Settings) -> bool:
    return bool(settings.persona.anthropic_api_key)


def claude_summary(db: sqlite_utils.Database, account_id: str, now: datetime) -> str:
    """Exactly the text that generation sends to Claude: the onboarding summary."""
    return accounts.profile_summary(accounts.profile(db, account_id, now))


def active_prompt(db: sqlite_utils.Database, account_id: str) -> SystemPrompt | None:
    """The latest version, or None before the first one is stored."""
    return PersonaStore(db).latest_prompt(account_id)


def effective_prompt(db: sqlite_utils.Database, account_id: str, now: datetime) -> str:
    """The active prompt's text, or the local template while none is stored."""
    found = active_prompt(db, account_id)
    if found is not None:
        return found.text
    return local_prompt(accounts.profile(db, account_id, now))


def history(db: sqlite_utils.Database, account_id: str, actor_role: str) -> list[SystemPrompt]:
    """The most recent versions, newest first."""
    _require_manager(actor_role)
    return PersonaStore(db).prompts(account_id, HISTORY_LIMIT)


def changes(
    db: sqlite_utils.Database, account_id: str, actor_role: str, version: int, now: datetime
) -> Generated | None:
    """What version ``version`` changed, for the page shown after generating it."""
    _require_manager(actor_role)
    pair = PersonaStore(db).prompt_pair(account_id, version)
    if not pair or pair[0].version != version:
        return None
    before = pair[1].text if len(pair) > 1 else local_prompt(accounts.profile(db, account_id, now))
    return Generated(pair[0], before, diff(before, pair[0].text))


def egress_log(db: sqlite_utils.Database, account_id: str, actor_role: str) -> list[EgressEntry]:
    """What left the box for this account, newest first (owners and admins)."""
    _require_manager(actor_role)
    return PersonaStore(db).egress(account_id, EGRESS_LIMIT)


def _store_version(
    db: sqlite_utils.Database,
    account_id: str,
    text: str,
    source: str,
    actor_id: str | None,
    now: datetime,
) -> Generated:
    """Store ``text`` as the next version, with the text it replaces."""
    store = PersonaStore(db)
    with write_transaction(db):
        before = effective_prompt(db, account_id, now)
        prompt = SystemPrompt(
            id=new_id("spr"),
            account_id=account_id,
            version=store.next_version(account_id),
            text=text,
            source=source,
            created_at=iso(now),
            created_by=actor_id,
        )
        store.insert_prompt(prompt)
    return Generated(prompt, before, diff(before, prompt.text))


def log_egress(
    db: sqlite_utils.Database,
    account_id: str,
    *,
    service: str,
    purpose: str,
    data_categories: str,
    bytes_sent: int,
    outcome: str,
    now: datetime,
) -> None:
    """Record one request that carried the account's data out of the box (PRIVACY.md:
    every outbound connection that carries account data is listed, in the egress log)."""
    entry = EgressEntry(
        new_id("egr"), account_id, iso(now), service, purpose, data_categories, bytes_sent, outcome
    )
    with write_transaction(db):
        PersonaStore(db).insert_egress(entry)


def _record_egress(
    db: sqlite_utils.Database, account_id: str, calls: list[Call], now: datetime
) -> None:
    with write_transaction(db):
        for call in calls:
            log_egress(db, account_id, **CLAUDE_EGRESS, **asdict(call), now=now)


def generate(
    db: sqlite_utils.Database,
    settings: Settings,
    account_id: str,
    actor_role: str,
    actor_id: str | None,
    now: datetime,
    client: ClaudeClient | None = None,
) -> Generated:
    """A new version written by Claude when a key is configured, else the local template.

    Claude receives only the onboarding summary. The call happens outside any database
    transaction; its egress rows and the new version are then written together.

    Raises:
        Forbidden: the actor is not an owner or admin.
        InvalidInput: Claude is on but the team profile is empty (nothing to send).
        Unavailable: the call to Claude failed; nothing is stored but the egress rows of
            the attempts that reached a server.
    """
    _require_manager(actor_role)
    owned = client is None
    claude = ClaudeClient.from_settings(settings) if owned else client
    if claude is None:
        return use_local(db, settings, account_id, actor_role, actor_id, now)
    try:
        summary = claude_summary(db, account_id, now)
        if not summary:
            raise InvalidInput(
                "The team profile is empty, so there is nothing to send to Claude: fill it in "
                "first, or use the local template."
            )
        first = len(claude.calls)
        try:
            text = claude.write_system_prompt(summary)
        except ClaudeError as exc:
            _record_egress(db, account_id, claude.calls[first:], now)
            raise Unavailable(
                f"{exc} Nothing was changed; try again later or use the local template."
            ) from None
        text = _normalise(text)[:MAX_PROMPT_CHARS]
        with write_transaction(db):
            _record_egress(db, account_id, claude.calls[first:], now)
            return _store_version(db, account_id, text, "claude", actor_id, now)
    finally:
        if owned:
            claude.close()


def use_local(
    db: sqlite_utils.Database,
    settings: Settings,
    account_id: str,
    actor_role: str,
    actor_id: str | None,
    now: datetime,
) -> Generated:
    """A new version from the local template (no network)."""
    _require_manager(actor_role)
    text = local_prompt(accounts.profile(db, account_id, now))
    return _store_version(db, account_id, text, "local", actor_id, now)


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def save_edit(
    db: sqlite_utils.Database,
    account_id: str,
    actor_role: str,
    actor_id: str | None,
    text: object,
    now: datetime,
) -> SystemPrompt:
    """Store the owner's own text as a new version (unchanged text stores nothing).

    Raises:
        Forbidden: the actor is not an owner or admin.
        InvalidInput: empty, longer than 8000 characters, or not text.
    """
    _require_manager(actor_role)
    if not isinstance(text, str):
        raise InvalidInput("'text' must be a string.")
    text = _normalise(text)
    if not text:
        raise InvalidInput("The system prompt cannot be empty.")
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidInput(f"The system prompt can be at most {MAX_PROMPT_CHARS} characters.")
    if "\x00" in text:
        raise InvalidInput("The system prompt cannot contain NUL characters.")
    with write_transaction(db):
        current = active_prompt(db, account_id)
        if current is not None and current.text == text:
            return current
        return _store_version(db, account_id, text, "edited", actor_id, now).prompt


def prompt_for_account(
    db: sqlite_utils.Database,
    settings: Settings,
    account_id: str,
    now: datetime | None = None,
) -> str:
    """The system prompt chat should use: the active prompt plus the voice excerpts."""
    prompt = effective_prompt(db, account_id, now or utcnow())
    block = voice.voice_block(db, settings, account_id)
    return f"{prompt}\n\n{block}" if block else prompt
