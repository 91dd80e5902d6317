"""Every table that holds account or user data, and what privacy does with its rows.

``tests/privacy/test_registry.py`` lists every table in the migrated database that has an
account or user column (``ACCOUNT_COLUMNS``) and fails if one is missing here: a domain
that adds such a table must say how its rows are found for an account, whether they are
exported, and whether deletion erases or pseudonymizes them.

Conditions are SQL over the table's own columns with two bound parameters: ``:account``
(the account id) and ``:users`` (a JSON array of the user ids being erased, or the one
user an export is for). They never contain user input.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Column names that tie a row to an account or a person.
ACCOUNT_COLUMNS = frozenset(
    {
        "account_id",
        "user_id",
        "email",
        "uploaded_by",
        "created_by",
        "invited_by",
        "requested_by",
        "notify_email",
        "account_ref",
        "actor_ref",
    }
)

ERASE = "erase"  # rows deleted when the account is erased
PSEUDONYMIZE = "pseudonymize"  # kept for the tax period without anything identifying
TOMBSTONE = "tombstone"  # the row stays, every identifying value overwritten
DERIVED = "derived"  # an index of another table's rows, erased with them (FTS, vectors)
KEEP = "keep"  # no content; the record of the erasure itself (receipts)

_USERS = "(select value from json_each(:users))"


@dataclass(frozen=True)
class Table:
    """How one table's rows are found, exported and deleted.

    Attributes:
        account: condition selecting the account's rows (``None``: not by account).
        user: condition selecting one person's own rows, for a member's export and for
            erasing the people who leave with the account.
        on_delete: ``ERASE``, ``PSEUDONYMIZE``, ``TOMBSTONE``, ``DERIVED`` or ``KEEP``.
        export: whether its rows go into the export ZIP.
        hidden: columns never exported (secret hashes).
        eraser: name of a function in ``privacy.erasure`` that erases the rows (and their
            files, index rows) instead of a plain batched delete.
        personal: the rows belong to the person ``user`` selects, not to the team (their
            conversations, their exports): only that person's export holds them; an
            owner's export counts the other members' rows (docs/privacy.md).
        contributed: the rows are what a person gave a team (documents they uploaded,
            prompts they wrote). Erasing that person's own account leaves the ones in
            other teams' accounts there, attributed to nobody (the column is set null
            with the user row): erasure takes ``user`` rows only from other tables.
    """

    name: str
    account: str | None
    user: str | None
    on_delete: str
    export: bool
    hidden: tuple[str, ...] = ()
    eraser: str | None = None
    note: str = ""
    personal: bool = False
    contributed: bool = False


#: In erasure order: children before parents, content before the people.
TABLES: tuple[Table, ...] = (
    Table(
        "messages",
        "account_id = :account",
        f"conversation_id in (select id from conversations where user_id in {_USERS})",  # noqa: S608
        ERASE,
        True,
        note="chat; its FTS rows follow by trigger",
        personal=True,
    ),
    Table(
        "conversations",
        "account_id = :account",
        f"user_id in {_USERS}",
        ERASE,
        True,
        personal=True,
    ),
    Table("chunks", "account_id = :account", None, DERIVED, False, note="erased with documents"),
    Table("chunk_vectors", "account_id = :account", None, DERIVED, False, note="with documents"),
    Table(
        "documents",
        "account_id = :account",
        f"uploaded_by in {_USERS}",
        ERASE,
        True,
        eraser="erase_documents",
        note="originals on disk, chunks, FTS rows and vectors",
        contributed=True,
    ),
    Table("voice_excerpts", "account_id = :account", None, DERIVED, False),
    Table(
        "voice_samples",
        "account_id = :account",
        None,
        ERASE,
        True,
        eraser="erase_voice_samples",
        note="files on disk",
    ),
    Table(
        "system_prompts",
        "account_id = :account",
        f"created_by in {_USERS}",
        ERASE,
        True,
        contributed=True,
    ),
    Table("egress_log", "account_id = :account", None, ERASE, True),
    Table("profiles", "account_id = :account", None, ERASE, True, note="onboarding answers"),
    Table("invites", "account_id = :account", None, ERASE, True),
    Table(
        "exports",
        "account_id = :account",
        f"user_id in {_USERS}",
        ERASE,
        True,
        eraser="erase_exports",
        note="ZIP files on disk",
        personal=True,
    ),
    Table("instances", "account_id = :account", None, ERASE, True),
    Table(
        "api_keys",
        "account_id = :account",
        f"user_id in {_USERS}",
        ERASE,
        True,
        hidden=("key_hash",),
        note="metadata only in exports",
    ),
    Table(
        "sessions",
        "account_id = :account",
        f"user_id in {_USERS}",
        ERASE,
        False,
        hidden=("id_hash",),
    ),
    Table(
        "otp_codes",
        None,
        f"email in (select email from users where id in {_USERS})",  # noqa: S608
        ERASE,
        False,
        hidden=("attempt_hash", "code_mac"),
    ),
    Table(
        "setup_claims",
        None,
        f"email in (select email from users where id in {_USERS})",  # noqa: S608
        ERASE,
        True,
    ),
    Table("policy_acceptances", None, f"user_id in {_USERS}", ERASE, True),
    Table(
        "memberships",
        "account_id = :account",
        f"user_id in {_USERS}",
        ERASE,
        True,
    ),
    Table("users", None, f"id in {_USERS}", ERASE, True, note="people with no other account"),
    Table("accounts", "id = :account", None, TOMBSTONE, True, note="name overwritten"),
    Table(
        "account_deletions",
        "account_id = :account",
        None,
        KEEP,
        False,
        note="the erasure request; its email is cleared once the confirmation is sent",
    ),
    Table("deletion_receipts", "account_id = :account", None, KEEP, True, note="no content"),
)


def _billing_tables() -> tuple[Table, ...]:
    """Billing's tables (``billing.billing_tables()``): pseudonymized by billing's own
    ``pseudonymize_account`` when the account is locked, kept for the tax period."""
    from appliance.billing import service as billing

    return tuple(
        Table(
            name,
            f"{ref} = :account",
            "requested_by in " + _USERS if name == "billing_topups" else None,
            PSEUDONYMIZE,
            True,
            note="account reference replaced, card details and actors cleared",
        )
        for name, (ref, _) in billing.billing_tables().items()
    )


TABLES = TABLES + _billing_tables()


def by_name() -> dict[str, Table]:
    return {table.name: table for table in TABLES}
