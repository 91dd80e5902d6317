"""Rules for accounts, members, roles, invites and the onboarding profile.

Every function takes the database and the acting user's role where it matters, and
raises ``appliance.errors`` only. Objects of another account are ``NotFound``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Literal

from sqlite_utils import Database

from appliance.accounts.models import MANAGERS, ROLES, Account, Invite, Member, Offer, Profile, User
from appliance.accounts.store import AccountStore
from appliance.clock import iso
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import Conflict, InvalidInput, NotAllowed, NotFound
from appliance.ids import new_id

EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s.]{2,63}$")
INVITE_DAYS = 14
PROFILE_FIELDS = ("business_name", "intended_use", "tone", "formality", "length", "language")
PROFILE_LIMIT = 500
#: The name an erased account keeps.
DELETED_NAME = "deleted account"


class Forbidden(NotFound):
    """The actor may not do this. Shown as 404 so it confirms nothing about the object."""


def normalise_email(email: str) -> str:
    email = (email or "").strip().lower()
    if len(email) > 254 or not EMAIL_RE.match(email):
        raise InvalidInput("Please enter a valid email address.")
    return email


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f"The role must be one of {', '.join(ROLES)}.")
    return role


def _clean_name(name: str) -> str:
    name = (name or "").strip() if isinstance(name, str) else ""
    if not name or len(name) > 100:
        raise InvalidInput("The team name must be 1 to 100 characters.")
    return name


def create_account(db: Database, name: str, now: datetime) -> Account:
    account = Account(new_id("acc"), _clean_name(name), "active", iso(now))
    with write_transaction(db):
        AccountStore(db).insert_account(account)
    return account


def ensure_user(db: Database, email: str, now: datetime, *, operator: bool = False) -> User:
    """The user with this email, created if new; ``operator`` is only ever switched on."""
    email = normalise_email(email)
    store = AccountStore(db)
    with write_transaction(db):
        user = store.user_by_email(email)
        if user is None:
            user = User(new_id("usr"), email, operator, iso(now), None)
            store.insert_user(user)
        elif operator and not user.operator:
            store.set_user(user.id, operator=1)
            user = replace(user, operator=True)
    return user


def add_member(db: Database, account_id: str, user_id: str, role: str, now: datetime) -> None:
    with write_transaction(db):
        AccountStore(db).upsert_membership(account_id, user_id, _check_role(role), iso(now))


def create_user(
    db: Database,
    email: str,
    now: datetime,
    *,
    account_name: str | None = None,
    role: str = "owner",
    operator: bool = False,
) -> tuple[User, Account]:
    """A user and their membership, creating the account when no account has that name."""
    _check_role(role)
    with write_transaction(db):
        user = ensure_user(db, email, now, operator=operator)
        name = account_name or f"{user.email.split('@', 1)[0]}'s team"
        account = AccountStore(db).account_by_name(name) if account_name else None
        if account is None:
            account = create_account(db, name, now)
        add_member(db, account.id, user.id, role, now)
    return user, account


def user(db: Database, user_id: str) -> User:
    found = AccountStore(db).user(user_id)
    if found is None:
        raise NotFound("No such user.")
    return found


def user_by_email(db: Database, email: str) -> User | None:
    try:
        return AccountStore(db).user_by_email(normalise_email(email))
    except InvalidInput:
        return None


def users(db: Database) -> list[User]:
    return AccountStore(db).users()


def accounts(db: Database) -> list[Account]:
    return AccountStore(db).accounts()


def account(db: Database, account_id: str) -> Account:
    found = AccountStore(db).account(account_id)
    if found is None or found.status == "deleted":
        raise NotFound("No such account.")
    return found


def set_status(
    db: Database, account_id: str, wanted: Literal["active", "suspended", "deleted"]
) -> Account:
    """Suspend an active account or reactivate a suspended one (operators only), or mark it
    ``deleted`` (its erasure was requested).

    A suspended or deleted account refuses its members' sessions, API keys and sign-ins on
    every request (``role_in`` only answers for active accounts).

    Raises:
        NotFound: no such account, or it is deleted.
        Conflict: it is already in that state.
    """
    with write_transaction(db):
        found = account(db, account_id)  # NotFound when missing or deleted
        if found.status == wanted:
            raise Conflict(f"The account is already {wanted}.")
        AccountStore(db).set_account(found.id, status=wanted)
    return replace(found, status=wanted)


def accounts_of(db: Database, user_id: str) -> list[tuple[Account, str]]:
    """The active accounts the user belongs to, with their role in each."""
    return AccountStore(db).accounts_of(user_id)


def membership(db: Database, account_id: str, user_id: str) -> tuple[Account, str] | None:
    """The account, if it is *active* and the user is in it, and the user's role there."""
    return next(iter(AccountStore(db).accounts_of(user_id, account_id)), None)


def role_in(db: Database, account_id: str, user_id: str) -> str | None:
    """The user's role in an *active* account, or None."""
    found = membership(db, account_id, user_id)
    return found[1] if found else None


def tombstone(db: Database, account_id: str) -> None:
    """Overwrite the name of an erased account (the row stays, naming nobody)."""
    with write_transaction(db):
        AccountStore(db).set_account(account_id, name=DELETED_NAME)


def member_elsewhere(db: Database, user_id: str, account_id: str) -> bool:
    """Whether the user belongs to another account that is not deleted."""
    return AccountStore(db).member_elsewhere(user_id, account_id)


def emails(db: Database, user_ids: list[str]) -> list[str]:
    """The addresses of those of ``user_ids`` that still exist."""
    store = AccountStore(db)
    return [found.email for found in map(store.user, user_ids) if found]


def active_people(db: Database) -> list[str]:
    """The email of every user who belongs to an active account or runs the appliance."""
    return AccountStore(db).active_people()


def may_sign_in(db: Database, settings: Settings, email: str, now: datetime) -> bool:
    """Whether a code should be sent: a member, an invitee, or open sign-up."""
    store = AccountStore(db)
    found = store.user_by_email(email)
    member = bool(found and (store.accounts_of(found.id) or found.operator))
    return member or bool(store.offers_for(email, iso(now))) or settings.auth.signup == "open"


def complete_sign_in(
    db: Database, settings: Settings, email: str, now: datetime
) -> tuple[User, Account | None]:
    """After a correct code: create the user if new and pick the account to land in.

    Open invites are left for the person to accept or decline (``accept_invite``,
    ``decline_invite``): signing in never makes anyone a member. The account is the one
    the user used last, else the newest they joined; None when they belong to none yet
    (only open invites). With ``auth.signup = "open"``, someone with neither gets an
    account of their own.

    Raises:
        NotFound: the address may not sign in (no account, no invite, sign-up closed).
    """
    if not may_sign_in(db, settings, email, now):
        raise NotFound("This address cannot sign in here.")
    store = AccountStore(db)
    with write_transaction(db):
        member = ensure_user(db, email, now)
        joined = store.accounts_of(member.id)
        if not joined and settings.auth.signup == "open" and not invited(db, member, now):
            create_user(db, member.email, now, role="owner")
            joined = store.accounts_of(member.id)
        store.set_user(member.id, last_sign_in_at=iso(now))
    last = next((a for a, _ in joined if a.id == member.last_account_id), None)
    return member, last or (joined[-1][0] if joined else None)


def used_account(db: Database, user_id: str, account_id: str) -> None:
    """Remember the account the user works in now (sign-in lands there next time)."""
    with write_transaction(db):
        AccountStore(db).set_user(user_id, last_account_id=account_id)


# -- invites, as the invited person sees them -------------------------------------------


def invited(db: Database, member: User, now: datetime) -> list[Offer]:
    """The person's open invites (unexpired, to active accounts), oldest first."""
    return AccountStore(db).offers_for(member.email, iso(now))


def _offer(db: Database, member: User, invite_id: str, now: datetime) -> Offer:
    found = next((o for o in invited(db, member, now) if o.id == invite_id), None)
    if found is None:
        raise NotFound("No such invitation (it may have been withdrawn or have expired).")
    return found


def accept_invite(db: Database, user_id: str, invite_id: str, now: datetime) -> Account:
    """Join the account of one of the person's open invites, with its role (someone who
    is a member already keeps their role); returns the account.

    Raises:
        NotFound: not an open invite of this person.
    """
    store = AccountStore(db)
    with write_transaction(db):
        member = user(db, user_id)
        offer = _offer(db, member, invite_id, now)
        if store.role(offer.account_id, member.id) is None:
            store.upsert_membership(offer.account_id, member.id, offer.role, iso(now))
        store.mark_invite(offer.id, "accepted_at", iso(now))
        store.set_user(member.id, last_account_id=offer.account_id)
    return account(db, offer.account_id)


def decline_invite(db: Database, user_id: str, invite_id: str, now: datetime) -> None:
    """Say no to one of the person's open invites (the inviting account sees it no more).

    Raises:
        NotFound: not an open invite of this person.
    """
    store = AccountStore(db)
    with write_transaction(db):
        offer = _offer(db, user(db, user_id), invite_id, now)
        store.mark_invite(offer.id, "declined_at", iso(now))


def rename_account(db: Database, account_id: str, actor_role: str, name: str) -> Account:
    """Rename the team (owners only: else ``NotAllowed``); invites carry the new name."""
    if actor_role != "owner":
        raise NotAllowed("Only an owner can rename the team.")
    name = _clean_name(name)
    with write_transaction(db):
        AccountStore(db).set_account(account_id, name=name)
    return account(db, account_id)


# -- members ----------------------------------------------------------------------------


def members(db: Database, account_id: str) -> list[Member]:
    return AccountStore(db).members(account_id)


def _require_manager(actor_role: str) -> None:
    if actor_role not in MANAGERS:
        raise Forbidden("Only owners and admins can manage members.")


def _member_role(store: AccountStore, account_id: str, user_id: str) -> str:
    role = store.role(account_id, user_id)
    if role is None:
        raise NotFound("No such member.")
    return role


def set_role(db: Database, account_id: str, actor_role: str, user_id: str, role: str) -> Member:
    _require_manager(actor_role)
    _check_role(role)
    store = AccountStore(db)
    with write_transaction(db):
        current = _member_role(store, account_id, user_id)
        if "owner" in (role, current) and actor_role != "owner":
            raise InvalidInput("Only an owner can make or unmake owners.")
        if current == "owner" and role != "owner" and store.count_owners(account_id) <= 1:
            raise Conflict("The account needs at least one owner: make someone else owner first.")
        store.upsert_membership(account_id, user_id, role, "")
    return next(m for m in store.members(account_id) if m.user_id == user_id)


def remove_member(
    db: Database, account_id: str, actor_role: str, actor_id: str, user_id: str
) -> None:
    """Remove a member (or leave, when ``user_id`` is the actor)."""
    if user_id != actor_id:
        _require_manager(actor_role)
    store = AccountStore(db)
    with write_transaction(db):
        current = _member_role(store, account_id, user_id)
        if current == "owner" and actor_role != "owner":
            raise InvalidInput("Only an owner can remove an owner.")
        if current == "owner" and store.count_owners(account_id) <= 1:
            raise Conflict("The last owner cannot be removed.")
        store.delete_membership(account_id, user_id)


# -- invites ----------------------------------------------------------------------------


def invite(
    db: Database,
    account_id: str,
    actor_role: str,
    actor_id: str,
    email: str,
    role: str,
    now: datetime,
) -> Invite:
    _require_manager(actor_role)
    email = normalise_email(email)
    _check_role(role)
    if role == "owner" and actor_role != "owner":
        raise InvalidInput("Only an owner can invite an owner.")
    store = AccountStore(db)
    existing = store.user_by_email(email)
    if existing and store.role(account_id, existing.id):
        raise Conflict("This person is already a member.")
    expires = iso(now + timedelta(days=INVITE_DAYS))
    created = Invite(new_id("inv"), account_id, email, role, iso(now), expires)
    with write_transaction(db):
        store.insert_invite(created, actor_id)
    return created


def invites(db: Database, account_id: str) -> list[Invite]:
    return AccountStore(db).invites(account_id)


def revoke_invite(
    db: Database, account_id: str, actor_role: str, invite_id: str, now: datetime
) -> None:
    _require_manager(actor_role)
    store = AccountStore(db)
    with write_transaction(db):
        found = store.invite(account_id, invite_id)
        if found is None or found.accepted_at or found.revoked_at:
            raise NotFound("No such invite.")
        store.mark_invite(invite_id, "revoked_at", iso(now))


# -- onboarding profile -----------------------------------------------------------------


def profile(db: Database, account_id: str, now: datetime) -> Profile:
    found = AccountStore(db).profile(account_id)
    if found:
        return found
    return Profile(account_id, "", "", "", "", "", "", False, None, None, iso(now))


def save_profile(
    db: Database,
    settings: Settings,
    account_id: str,
    actor_role: str,
    answers: dict,
    now: datetime,
) -> Profile:
    """Record the onboarding answers (owners and admins).

    Raises:
        InvalidInput: a field is too long, unknown, or the minimum age is not confirmed.
    """
    _require_manager(actor_role)
    unknown = sorted(set(answers) - {*PROFILE_FIELDS, "age_confirmed"})
    if unknown:
        raise InvalidInput(f"Unknown profile field: {unknown[0]}.")
    clean = {}
    for name in PROFILE_FIELDS:
        value = answers.get(name, "")
        if not isinstance(value, str) or len(value) > PROFILE_LIMIT:
            raise InvalidInput(f"'{name}' must be text of at most {PROFILE_LIMIT} characters.")
        clean[name] = value.strip()
    if answers.get("age_confirmed") not in (True, "on", "true", "1", 1):
        raise InvalidInput(
            f"Please confirm that everyone using this account is at least "
            f"{settings.privacy.minimum_age} years old."
        )
    current = profile(db, account_id, now)
    completed = current.completed_at or iso(now)
    saved = replace(
        current, **clean, age_confirmed=True, completed_at=completed, updated_at=iso(now)
    )
    store = AccountStore(db)
    with write_transaction(db):
        store.save_profile(saved)
        if saved.business_name and saved.business_name != current.business_name:
            # The team is called what onboarding was told (a later rename stands until
            # the business name changes again).
            store.set_account(account_id, name=saved.business_name[:100])
    return saved


def skip_onboarding(db: Database, account_id: str, actor_role: str, now: datetime) -> Profile:
    _require_manager(actor_role)
    current = profile(db, account_id, now)
    skipped = replace(current, skipped_at=current.skipped_at or iso(now), updated_at=iso(now))
    with write_transaction(db):
        AccountStore(db).save_profile(skipped)
    return skipped


def profile_summary(found: Profile) -> str:
    """The short text the owner wrote, as it may be sent to generate a system prompt."""
    labels = ("Business", "Intended use", "Tone", "Formality", "Answer length", "Language")
    values = [getattr(found, name) for name in PROFILE_FIELDS]
    lines = zip(labels, values, strict=True)
    return "\n".join(f"{label}: {value}" for label, value in lines if value)
