"""Audit 2026-12, finding 1: an owner's data export held every member's conversations.

A member's conversations belong to that member: they are in the member's export, and in
the owner's only as counts.
"""

import json

from conftest import stored_exchange
from litestar.testing import TestClient
from people import export_zip
from signin_support import sign_in

from appliance.accounts import service as accounts
from appliance.instances import service as instances

CANARY = "memberchatcanary5170"


def everything(archive) -> str:
    return "\n".join(archive.read(name).decode(errors="replace") for name in archive.namelist())


def test_owner_export_holds_member_chats_only_as_counts(settings, db, clock, app):
    owner, team = accounts.create_user(db, "owner@example.com", clock(), account_name="Team")
    member, _ = accounts.create_user(
        db, "member@example.com", clock(), account_name="Team", role="member"
    )
    instance = instances.create(
        db, team.id, "owner", {"name": "main"}, models=["tiny"], max_tokens_cap=64, now=clock()
    )
    own = stored_exchange(
        db, team.id, owner.id, instance, "the owner's own question", "An answer.", clock()
    )
    private = stored_exchange(
        db, team.id, member.id, instance, f"my private {CANARY}", f"About {CANARY}.", clock()
    )

    with TestClient(app) as owner_client, TestClient(app) as member_client:
        sign_in(owner_client, settings, "owner@example.com")
        sign_in(member_client, settings, "member@example.com")
        owners = export_zip(owner_client)
        members = export_zip(member_client)

    assert CANARY not in everything(owners)
    assert f"conversations/{private}.md" not in owners.namelist()
    assert f"conversations/{own}.md" in owners.namelist()
    manifest = json.loads(owners.read("manifest.json"))
    others = manifest["other_members"]
    assert (others["conversations"], others["messages"]) == (1, 2)

    assert CANARY in members.read(f"conversations/{private}.md").decode()
    assert CANARY in members.read("data/messages.json").decode()
    assert "the owner's own question" not in everything(members)
