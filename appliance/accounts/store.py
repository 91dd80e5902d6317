"""All SQL for accounts, users, memberships, invites and profiles."""

from __future__ import annotations

from dataclasses import asdict

from sqlite_utils import Database

from appliance.accounts.models import Account, Invite, Member, Offer, Profile, User


class AccountStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _one(self, sql: str, params: dict) -> dict | None:
        return next(self.db.query(sql, params), None)

    # accounts
    def insert_account(self, account: Account) -> None:
        self.db["accounts"].insert(asdict(account))

    def account(self, account_id: str) -> Account | None:
        row = self._one("select * from accounts where id = :id", {"id": account_id})
        return Account(**row) if row else None

    def accounts(self) -> list[Account]:
        return [Account(**r) for r in self.db["accounts"].rows_where(order_by="created_at")]

    def set_account(self, account_id: str, **changes: str) -> None:
        self.db["accounts"].update(account_id, changes)

    def account_by_name(self, name: str) -> Account | None:
        row = self._one(
            "select * from accounts where name = :name and status != 'deleted' order by created_at",
            {"name": name},
        )
        return Account(**row) if row else None

    # users
    def insert_user(self, user: User) -> None:
        self.db["users"].insert({**asdict(user), "operator": int(user.operator)})

    def user(self, user_id: str) -> User | None:
        row = self._one("select * from users where id = :id", {"id": user_id})
        return _user(row) if row else None

    def user_by_email(self, email: str) -> User | None:
        row = self._one("select * from users where email = :email", {"email": email})
        return _user(row) if row else None

    def users(self) -> list[User]:
        return [_user(r) for r in self.db["users"].rows_where(order_by="created_at")]

    def set_user(self, user_id: str, **changes: str | int) -> None:
        self.db["users"].update(user_id, changes)

    # memberships
    def upsert_membership(self, account_id: str, user_id: str, role: str, at: str) -> None:
        self.db.execute(
            """insert into memberships (account_id, user_id, role, created_at)
               values (:account, :user, :role, :at)
               on conflict (account_id, user_id) do update set role = excluded.role""",
            {"account": account_id, "user": user_id, "role": role, "at": at},
        )

    def role(self, account_id: str, user_id: str) -> str | None:
        row = self._one(
            "select role from memberships where account_id = :account and user_id = :user",
            {"account": account_id, "user": user_id},
        )
        return row["role"] if row else None

    def members(self, account_id: str) -> list[Member]:
        rows = self.db.query(
            """select u.id as user_id, u.email, m.role, m.created_at
               from memberships m join users u on u.id = m.user_id
               where m.account_id = :account order by m.created_at""",
            {"account": account_id},
        )
        return [Member(**r) for r in rows]

    def count_owners(self, account_id: str) -> int:
        return self.db["memberships"].count_where("account_id = ? and role = 'owner'", [account_id])

    def delete_membership(self, account_id: str, user_id: str) -> None:
        self.db["memberships"].delete((account_id, user_id))

    def accounts_of(self, user_id: str, account_id: str | None = None) -> list[tuple[Account, str]]:
        """The user's active accounts (or only ``account_id``) and their role in each."""
        rows = self.db.query(
            """select a.*, m.role from memberships m join accounts a on a.id = m.account_id
               where m.user_id = :user and a.status = 'active'
                 and (:account is null or m.account_id = :account)
               order by m.created_at""",
            {"user": user_id, "account": account_id},
        )
        return [(Account(**{k: r[k] for k in r if k != "role"}), r["role"]) for r in rows]

    def member_elsewhere(self, user_id: str, account_id: str) -> bool:
        """A member of another account that is not deleted (active or suspended)."""
        found = self._one(
            """select 1 from memberships m join accounts a on a.id = m.account_id
               where m.user_id = :user and m.account_id != :account and a.status != 'deleted'""",
            {"user": user_id, "account": account_id},
        )
        return found is not None

    def active_people(self) -> list[str]:
        """The emails of every user of an active account, and of every operator."""
        rows = self.db.query(
            """select distinct u.email from users u
               left join memberships m on m.user_id = u.id
               left join accounts a on a.id = m.account_id
               where u.operator = 1 or a.status = 'active' order by u.email"""
        )
        return [row["email"] for row in rows]

    # invites
    def insert_invite(self, invite: Invite, invited_by: str | None) -> None:
        self.db["invites"].insert({**asdict(invite), "invited_by": invited_by})

    def invite(self, account_id: str, invite_id: str) -> Invite | None:
        row = self._one(
            "select * from invites where id = :id and account_id = :account",
            {"id": invite_id, "account": account_id},
        )
        return _invite(row) if row else None

    def invites(self, account_id: str) -> list[Invite]:
        rows = self.db.query(
            """select * from invites where account_id = :account and accepted_at is null
               and revoked_at is null and declined_at is null order by created_at""",
            {"account": account_id},
        )
        return [_invite(r) for r in rows]

    def offers_for(self, email: str, now: str) -> list[Offer]:
        """The open invites of ``email`` (unexpired, to active accounts), with the
        account's name and the inviter."""
        rows = self.db.query(
            """select i.id, i.account_id, a.name as account_name, i.role,
                      u.email as invited_by, i.expires_at
               from invites i join accounts a on a.id = i.account_id
               left join users u on u.id = i.invited_by
               where i.email = :email and i.accepted_at is null and i.revoked_at is null
               and i.declined_at is null and i.expires_at > :now and a.status = 'active'
               order by i.created_at""",
            {"email": email, "now": now},
        )
        return [Offer(**r) for r in rows]

    def mark_invite(self, invite_id: str, column: str, at: str) -> None:
        if column not in ("accepted_at", "revoked_at", "declined_at"):
            raise ValueError(column)
        self.db["invites"].update(invite_id, {column: at})

    # profiles
    def profile(self, account_id: str) -> Profile | None:
        row = self._one("select * from profiles where account_id = :id", {"id": account_id})
        return Profile(**{**row, "age_confirmed": bool(row["age_confirmed"])}) if row else None

    def save_profile(self, profile: Profile) -> None:
        values = {**asdict(profile), "age_confirmed": int(profile.age_confirmed)}
        self.db["profiles"].upsert(values, pk="account_id")


def _user(row: dict) -> User:
    return User(**{**row, "operator": bool(row["operator"])})


def _invite(row: dict) -> Invite:
    return Invite(**{k: v for k, v in row.items() if k != "invited_by"})
