"""All SQL for accounts, users, memberships, invites and profiles."""

from __future__ import annotations

from typing import Any

import sqlite_utils

from appliance.accounts.models import Account, Invite, Member, Offer, Profile, User


class AccountStore:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def _one(self, sql: str, params: list[Any]) -> dict | None:
        cursor = self.db.execute(sql, params)
        row = cursor.fetchone()
        if row is None:
            return None
        return dict(zip([c[0] for c in cursor.description], row, strict=True))

    def _all(self, sql: str, params: list[Any]) -> list[dict]:
        cursor = self.db.execute(sql, params)
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # accounts
    def insert_account(self, account: Account) -> None:
        self.db.execute(
            "insert into accounts (id, name, status, created_at) values (?, ?, ?, ?)",
            [account.id, account.name, account.status, account.created_at],
        )

    def account(self, account_id: str) -> Account | None:
        row = self._one("select * from accounts where id = ?", [account_id])
        return Account(**row) if row else None

    def accounts(self) -> list[Account]:
        return [Account(**r) for r in self._all("select * from accounts order by created_at", [])]

    def set_status(self, account_id: str, status: str) -> None:
        self.db.execute("update accounts set status = ? where id = ?", [status, account_id])

    def account_by_name(self, name: str) -> Account | None:
        row = self._one(
            "select * from accounts where name = ? and status != 'deleted' order by created_at",
            [name],
        )
        return Account(**row) if row else None

    # users
    def insert_user(self, user: User) -> None:
        self.db.execute(
            "insert into users (id, email, operator, created_at) values (?, ?, ?, ?)",
            [user.id, user.email, int(user.operator), user.created_at],
        )

    def user(self, user_id: str) -> User | None:
        row = self._one("select * from users where id = ?", [user_id])
        return _user(row) if row else None

    def user_by_email(self, email: str) -> User | None:
        row = self._one("select * from users where email = ?", [email])
        return _user(row) if row else None

    def users(self) -> list[User]:
        return [_user(r) for r in self._all("select * from users order by created_at", [])]

    def set_operator(self, user_id: str, operator: bool) -> None:
        self.db.execute("update users set operator = ? where id = ?", [int(operator), user_id])

    def touch_sign_in(self, user_id: str, at: str) -> None:
        self.db.execute("update users set last_sign_in_at = ? where id = ?", [at, user_id])

    def set_last_account(self, user_id: str, account_id: str) -> None:
        self.db.execute("update users set last_account_id = ? where id = ?", [account_id, user_id])

    # memberships
    def upsert_membership(self, account_id: str, user_id: str, role: str, at: str) -> None:
        self.db.execute(
            """insert into memberships (account_id, user_id, role, created_at)
               values (?, ?, ?, ?)
               on conflict (account_id, user_id) do update set role = excluded.role""",
            [account_id, user_id, role, at],
        )

    def role(self, account_id: str, user_id: str) -> str | None:
        row = self._one(
            "select role from memberships where account_id = ? and user_id = ?",
            [account_id, user_id],
        )
        return row["role"] if row else None

    def members(self, account_id: str) -> list[Member]:
        rows = self._all(
            """select u.id as user_id, u.email, m.role, m.created_at
               from memberships m join users u on u.id = m.user_id
               where m.account_id = ? order by m.created_at""",
            [account_id],
        )
        return [Member(**r) for r in rows]

    def count_owners(self, account_id: str) -> int:
        row = self._one(
            "select count(*) as n from memberships where account_id = ? and role = 'owner'",
            [account_id],
        )
        return row["n"]

    def delete_membership(self, account_id: str, user_id: str) -> None:
        self.db.execute(
            "delete from memberships where account_id = ? and user_id = ?", [account_id, user_id]
        )

    def accounts_of(self, user_id: str) -> list[tuple[Account, str]]:
        rows = self._all(
            """select a.*, m.role from memberships m join accounts a on a.id = m.account_id
               where m.user_id = ? and a.status = 'active' order by m.created_at""",
            [user_id],
        )
        return [(Account(**{k: r[k] for k in r if k != "role"}), r["role"]) for r in rows]

    # invites
    def insert_invite(self, invite: Invite, invited_by: str | None) -> None:
        self.db.execute(
            """insert into invites (id, account_id, email, role, invited_by, created_at,
                                    expires_at)
               values (?, ?, ?, ?, ?, ?, ?)""",
            [
                invite.id,
                invite.account_id,
                invite.email,
                invite.role,
                invited_by,
                invite.created_at,
                invite.expires_at,
            ],
        )

    def invite(self, account_id: str, invite_id: str) -> Invite | None:
        row = self._one(
            "select * from invites where id = ? and account_id = ?", [invite_id, account_id]
        )
        return _invite(row) if row else None

    def invites(self, account_id: str) -> list[Invite]:
        rows = self._all(
            """select * from invites where account_id = ? and accepted_at is null
               and revoked_at is null and declined_at is null order by created_at""",
            [account_id],
        )
        return [_invite(r) for r in rows]

    def open_invites_for(self, email: str, now: str) -> list[Invite]:
        rows = self._all(
            """select i.* from invites i join accounts a on a.id = i.account_id
               where i.email = ? and i.accepted_at is null and i.revoked_at is null
               and i.declined_at is null and i.expires_at > ? and a.status = 'active'
               order by i.created_at""",
            [email, now],
        )
        return [_invite(r) for r in rows]

    def offers_for(self, email: str, now: str) -> list[Offer]:
        """The open invites of ``email``, with the account's name and the inviter."""
        rows = self._all(
            """select i.id, i.account_id, a.name as account_name, i.role,
                      u.email as invited_by, i.expires_at
               from invites i join accounts a on a.id = i.account_id
               left join users u on u.id = i.invited_by
               where i.email = ? and i.accepted_at is null and i.revoked_at is null
               and i.declined_at is null and i.expires_at > ? and a.status = 'active'
               order by i.created_at""",
            [email, now],
        )
        return [Offer(**r) for r in rows]

    def mark_invite(self, invite_id: str, column: str, at: str) -> None:
        if column not in ("accepted_at", "revoked_at", "declined_at"):
            raise ValueError(column)
        self.db.execute(f"update invites set {column} = ? where id = ?", [at, invite_id])  # noqa: S608

    # profiles
    def profile(self, account_id: str) -> Profile | None:
        row = self._one("select * from profiles where account_id = ?", [account_id])
        if not row:
            return None
        row["age_confirmed"] = bool(row["age_confirmed"])
        return Profile(**row)

    def save_profile(self, profile: Profile) -> None:
        values = {**profile.__dict__, "age_confirmed": int(profile.age_confirmed)}
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        updates = ", ".join(f"{c} = excluded.{c}" for c in values if c != "account_id")
        self.db.execute(
            f"insert into profiles ({columns}) values ({marks}) "  # noqa: S608 - fixed names
            f"on conflict (account_id) do update set {updates}",
            list(values.values()),
        )


def _user(row: dict) -> User:
    return User(**{**row, "operator": bool(row["operator"])})


def _invite(row: dict) -> Invite:
    return Invite(**{k: v for k, v in row.items() if k != "invited_by"})
