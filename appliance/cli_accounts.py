"""``appliance users|accounts|admin|keys|billing ...``: people, teams, keys and credit."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from appliance.accounts import service as accounts
from appliance.cli_parser import Group
from appliance.clock import utcnow
from appliance.config import Settings
from appliance.datadir import open_initialised
from appliance.errors import InvalidInput, NotFound


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    """The commands and their actions, on the top-level subparsers ``sub``."""

    users = Group(sub, common, "users", "Manage users.")
    p = users.action("create", cmd_users_create, "Create a user (and the account when new).")
    p.add_argument("email")
    p.add_argument("--account", help="account name (created when no account has it)")
    p.add_argument("--role", choices=("owner", "admin", "member"), default="owner")
    p.add_argument("--operator", action="store_true", help="make the user a server operator")
    users.action("list", cmd_users_list, "List users.")

    accounts_cmd = Group(sub, common, "accounts", "Manage accounts.")
    accounts_cmd.action("list", cmd_accounts_list, "List accounts and their members.")
    for action, text in (
        ("suspend", "Suspend an account: its sessions end, its members and keys are refused."),
        ("unsuspend", "Reactivate a suspended account."),
    ):
        p = accounts_cmd.action(action, cmd_accounts_suspend, text)
        p.add_argument("account_id")
        p.set_defaults(suspend=action == "suspend")

    p = accounts_cmd.action(
        "delete",
        cmd_accounts_delete,
        "Delete an account (an emailed deletion request): locked now, erased by the "
        "next purge, the owners emailed when it is done.",
    )
    p.add_argument("account_id")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    p = Group(sub, common, "admin", "What the operator page shows.").action(
        "status",
        cmd_admin_status,
        "Accounts, inference and GPU, worker, purges, disk, recent errors, policy.",
    )
    p.add_argument("--json", action="store_true", help="the whole overview as JSON")

    p = Group(sub, common, "keys", "Manage API keys.").action(
        "create", cmd_keys_create, "Create an API key (printed once)."
    )
    p.add_argument("--email", required=True, help="the user the key acts as")
    p.add_argument("--account", required=True, help="account id")
    p.add_argument(
        "--scope",
        choices=("inference", "manage", "admin"),
        required=True,
        help="admin: the operator API (/api/admin) only, for server operators",
    )
    p.add_argument("--instance", help="instance id the key is bound to")
    p.add_argument("--name", default="cli", help="a name to recognise the key by")

    billing_cmd = Group(sub, common, "billing", "Prepaid credit: balances and adjustments.")
    p = billing_cmd.action("show", cmd_billing_show, "An account's balance and latest entries.")
    p.add_argument("--account", required=True, help="account id")
    p.add_argument("--limit", type=int, default=20, help="ledger entries to show")
    p = billing_cmd.action(
        "adjust",
        cmd_billing_adjust,
        "Credit (or debit, down to zero at most) an account, with a reason.",
    )
    p.add_argument("--account", required=True, help="account id")
    p.add_argument("--amount", required=True, help="USD, e.g. 10 or -2.50")
    p.add_argument("--reason", required=True, help="why (kept in the ledger)")


def cmd_users_create(settings: Settings, args: argparse.Namespace) -> None:
    with open_initialised(settings) as db:
        user, account = accounts.create_user(
            db,
            args.email,
            utcnow(),
            account_name=args.account,
            role=args.role,
            operator=args.operator,
        )
    print(json.dumps({"user_id": user.id, "email": user.email, "account_id": account.id}))


def cmd_users_list(settings: Settings, args: argparse.Namespace) -> None:
    with open_initialised(settings) as db:
        rows = [
            {
                **asdict(user),
                "accounts": [
                    {"id": account.id, "name": account.name, "role": role}
                    for account, role in accounts.accounts_of(db, user.id)
                ],
            }
            for user in accounts.users(db)
        ]
    print(json.dumps(rows, indent=2))


def cmd_accounts_list(settings: Settings, args: argparse.Namespace) -> None:
    with open_initialised(settings) as db:
        rows = [
            {
                **asdict(account),
                "members": [asdict(m) for m in accounts.members(db, account.id)],
            }
            for account in accounts.accounts(db)
        ]
    print(json.dumps(rows, indent=2))


def cmd_accounts_suspend(settings: Settings, args: argparse.Namespace) -> None:
    from appliance.ops import overview

    with open_initialised(settings) as db:
        if args.suspend:
            row = overview.suspend(db, args.account_id, utcnow())
        else:
            row = overview.unsuspend(db, args.account_id)
    print(f"account {row.id} ({row.name}) is now {row.status}")


def cmd_admin_status(settings: Settings, args: argparse.Namespace) -> None:
    from appliance.ops import overview

    with open_initialised(settings) as db:
        data = overview.overview(db, settings, utcnow())
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for line in overview.summary_lines(data):
            print(line)


def cmd_keys_create(settings: Settings, args: argparse.Namespace) -> None:
    from appliance.auth import service as auth

    with open_initialised(settings) as db:
        user = accounts.user_by_email(db, args.email)
        if user is None or accounts.role_in(db, args.account, user.id) is None:
            raise NotFound(f"{args.email} is not a member of account {args.account}")
        key_of = {"user_id": user.id, "account_id": args.account, "name": args.name}
        if args.scope == auth.ADMIN_SCOPE:
            if not user.operator:
                raise InvalidInput(f"{args.email} is not a server operator")
            key, secret = auth.create_admin_key(db, **key_of, now=utcnow())
        else:
            key, secret = auth.create_key(
                db, **key_of, scope=args.scope, now=utcnow(), instance_id=args.instance
            )
    shown = {"id": key.id, "key": secret, "scope": key.scope, "account_id": key.account_id}
    print(json.dumps(shown))


def cmd_billing_show(settings: Settings, args: argparse.Namespace) -> None:
    from appliance.billing import ledger

    with open_initialised(settings) as db:
        accounts.account(db, args.account)
        balance = ledger.balance(db, args.account)
        held = ledger.held(db, args.account)
        entries = ledger.entries(db, args.account, limit=args.limit)
    print(f"balance {ledger.usd(balance)} USD ({balance} micro-USD), reserved {held} micro-USD")
    for entry in entries:
        print(
            f"{entry.created_at}  {entry.kind:<13} {ledger.usd_precise(entry.amount_microusd):>12}"
            f"  {entry.reason or entry.model or ''}"
        )


def cmd_billing_adjust(settings: Settings, args: argparse.Namespace) -> None:
    from appliance.billing import ledger
    from appliance.billing import service as billing

    with open_initialised(settings) as db:
        accounts.account(db, args.account)
        entry = billing.adjust(db, args.account, args.amount, args.reason, utcnow(), actor="cli")
    print(
        f"adjusted by {ledger.usd_precise(entry.amount_microusd)} USD; "
        f"balance {ledger.usd(entry.balance_microusd)} USD"
    )


def cmd_accounts_delete(settings: Settings, args: argparse.Namespace) -> int | None:
    from appliance.ops import overview

    with open_initialised(settings) as db:
        account = accounts.account(db, args.account_id)
        if not args.yes:
            answer = input(f"Delete account {account.id} and erase all its data? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return 1
        found = overview.delete(db, settings, account.id, utcnow(), "operator via CLI")
    print(
        f"account {found['account_id']} is locked; its data is erased by the next purge "
        f"(by {found['due_at'][:10]} at the latest; `appliance purge --now` to do it now)"
    )
