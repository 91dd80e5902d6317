"""Helpers for the privacy tests: an account that touches every feature, and scanners
that look for a string in every place data can live.

Imported by the test modules beside it (pytest puts this folder on ``sys.path``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from conftest import stored_exchange

from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.billing import ledger
from appliance.clock import iso
from appliance.ids import new_id
from appliance.instances import service as instances
from appliance.knowledge import collections
from appliance.knowledge import service as knowledge
from appliance.persona import service as persona
from appliance.persona import voice
from appliance.persona.models import EgressEntry
from appliance.persona.store import PersonaStore
from appliance.privacy import erasure


@dataclass
class World:
    owner: object
    member: object
    account: object
    instance: object
    document_id: str
    sample_id: str
    conversation_id: str | None
    owner_key: str


def populate(db, settings, now, canary: str, *, owner_email="owner@example.com") -> World:
    """An account with one of everything, ``canary`` in every kind of content."""
    owner, account = accounts.create_user(db, owner_email, now, account_name="Canary team")
    member, _ = accounts.create_user(
        db, "member@example.com", now, account_name="Canary team", role="member"
    )
    accounts.save_profile(
        db,
        settings,
        account.id,
        "owner",
        {
            "business_name": f"Bakery {canary}",
            "intended_use": f"Answering about {canary}",
            "tone": "warm",
            "age_confirmed": True,
        },
        now,
    )
    persona.use_local(db, settings, account.id, "owner", owner.id, now)
    PersonaStore(db).insert_egress(
        EgressEntry(
            id=new_id("egr"),
            account_id=account.id,
            at=iso(now),
            service="anthropic",
            purpose="system prompt",
            data_categories="onboarding summary",
            bytes_sent=120,
            outcome="ok",
        )
    )
    sample = voice.add_sample(
        db,
        settings,
        account.id,
        "owner",
        "voice.txt",
        (
            f"Dear customer, thank you for writing to us about {canary}. We bake every "
            "morning before dawn and we are happy to help with your order today.\n\n"
            f"Warm regards from the whole team, and {canary} again, of course."
        ).encode(),
        now,
    )
    upload = knowledge.add_document(
        db,
        settings,
        account.id,
        owner.id,
        "notes.md",
        io.BytesIO(f"# Notes\n\nThe secret ingredient is {canary} in every loaf.\n".encode()),
        now,
    )
    shelf = collections.create(db, account.id, "owner", f"Recipes {canary}", now)
    collections.file_document(db, account.id, owner.id, "owner", upload.document.id, [shelf.id])
    instance = instances.create(
        db, account.id, "owner", {"name": "main"}, models=["tiny"], max_tokens_cap=256, now=now
    )
    _, owner_key = auth.create_key(
        db, user_id=owner.id, account_id=account.id, name="script", scope="manage", now=now
    )
    accounts.invite(db, account.id, "owner", owner.id, "invitee@example.com", "member", now)
    conversation_id = stored_exchange(
        db,
        account.id,
        owner.id,
        instance,
        f"What is {canary}?",
        f"{canary} is the secret ingredient.",
        now,
    )
    with db.atomic():
        ledger.post(db, account.id, "topup", 10_000_000, now)
    return World(
        owner, member, account, instance, upload.document.id, sample.id, conversation_id, owner_key
    )


def files_containing(root: Path, needle: str) -> list[Path]:
    """Every file under ``root`` whose bytes contain ``needle`` (UTF-8 or UTF-16)."""
    patterns = [needle.encode(), needle.encode("utf-16-le")]
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(p in data for p in patterns):
                hits.append(path)
    return hits


def request_erasure(db, settings, account_id: str, now):
    """The operator asks for the account's erasure (no notice email); the request."""
    return erasure.request_deletion(
        db,
        settings,
        account_id,
        requested_by="operator",
        request="test",
        notify_email=None,
        now=now,
    )
