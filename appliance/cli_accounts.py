"""``appliance users|accounts|admin|keys|billing ...``: people, teams, keys and credit."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict

from appliance.config import Settings
from appliance.datadir import open_initialised


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    """The commands and their actions, on the top-level subparsers ``sub``."""

    def command(name: str, handler: Callable | None, help: str):
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(handler=handler)
        return p

    users = command("users", None, "Manage users.")
    usub = users.add_subparsers(title="users commands", metavar="ACTION")
    users.set_defaults(handler=lambda s, a: users.print_help() or 2)
    p = usub.add_parser(
        "create", help="Create a user (and the account when new).", parents=[common]
    )
    p.add_argument("email")
    p.add_argument("--account", help="account name (created when no account has it)")
    p.add_argument("--role", choices=("owner", "admin", "member"), default="owner")
    p.add_argument("--operator", action="store_true", help="make the user a server operator")
    p.set_defaults(handler=cmd_users_create)
    p = usub.add_parser("list", help="List users.", parents=[common])
    p.set_defaults(handler=cmd_users_list)

    accounts_cmd = command("accounts", None, "Manage accounts.")
    asub = accounts_cmd.add_subparsers(title="accounts commands", metavar="ACTION")
    accounts_cmd.set_defaults(handler=lambda s, a: accounts_cmd.print_help() or 2)
    p = asub.add_parser("list", help="List accounts and their members.", parents=[common])
    p.set_defaults(handler=cmd_accounts_list)
    for action, text in (
        ("suspend", "Suspend an account: its sessions end, its members and keys are refused."),
        ("unsuspend", "Reactivate a suspended account."),
    ):
        p = asub.add_parser(action, help=text, description=text, parents=[common])
        p.add_argument("account_id")
        p.set_defaults(handler=cmd_accounts_suspend, suspend=action == "suspend")

    admin = command("admin", None, "What the operator page shows.")
    adsub = admin.add_subparsers(title="admin commands", metavar="ACTION")
    admin.set_defaults(handler=lambda s, a: admin.print_help() or 2)
    p = adsub.add_parser(
        "status",
        help="Accounts, inference and GPU, worker, purges, disk, recent errors, policy.",
        parents=[common],
    )
    p.add_argument("--json", action="store_true", help="the whole overview as JSON")
    p.set_defaults(handler=cmd_admin_status)
    p = asub.add_parser(
        "delete",
        help="Delete an account (an emailed deletion request): locked now, erased by the "
        "next purge, the owners emailed when it is done.",
        parents=[common],
    )
    p.add_argument("account_id")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(handler=cmd_accounts_delete)

    keys = command("keys", None, "Manage API keys.")
    ksub = keys.add_subparsers(title="keys commands", metavar="ACTION")
    keys.set_defaults(handler=lambda s, a: keys.print_help() or 2)
    p = ksub.add_parser("create", help="Create an API key (printed once).", parents=[common])
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
    p.set_defaults(handler=cmd_keys_create)

    billing_cmd = command("billing", None, "Prepaid credit: balances and adjustments.")
    bsub = billing_cmd.add_subparsers(title="billing commands", metavar="ACTION")
    billing_cmd.set_defaults(handler=lambda s, a: billing_cmd.print_help() or 2)
    p = bsub.add_parser("show", help="An account's balance and latest entries.", parents=[common])
    p.add_argument("--account", required=True, help="account id")
    p.add_argument("--limit", type=int, default=20, help="ledger entries to show")
    p.set_defaults(handler=cmd_billing_show)
    p = bsub.add_parser(
        "adjust",
        help="Credit (or debit, down to zero at most) an account, with a reason.",
        parents=[common],
    )
    p.add_argument("--account", required=True, help="account id")
    p.add_argument("--amount", required=True, help="USD, e.g. 10 or -2.50")
    p.add_argument("--reason", required=True, help="why (kept in the ledger)")
    p.set_defaults(handler=cmd_billing_adjust)


def cmd_users_create(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.accounts import service as accounts
    from appliance.clock import utcnow

    db = open_initialised(settings)
    try:
        user, account = accounts.create_user(
            db,
            args.email,
            utcnow(),
            account_name=args.account,
            role=args.role,
            operator=args.operator,
        )
    finally:
        db.close()
    print(json.dumps({"user_id": user.id, "email": user.email, "account_id": account.id}))
    return 0


def cmd_users_list(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.accounts import service as accounts

    db = open_initialised(settings)
    try:
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
    finally:
        db.close()
    print(json.dumps(rows, indent=2))
    return 0


def cmd_accounts_list(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.accounts import service as accounts

    db = open_initialised(settings)
    try:
        rows = [
            {
                **asdict(account),
                "members": [asdict(m) for m in accounts.members(db, account.id)],
            }
            for account in accounts.accounts(db)
        ]
    finally:
        db.close()
    print(json.dumps(rows, indent=2))
    return 0


def cmd_accounts_suspend(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.clock import utcnow
    from appliance.ops import overview

    db = open_initialised(settings)
    try:
        if args.suspend:
            row = overview.suspend(db, args.account_id, utcnow())
        else:
            row = overview.unsuspend(db, args.account_id)
    finally:
        db.close()
    print(f"account {row.id} ({row.name}) is now {row.status}")
    return 0


def cmd_admin_status(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.clock import utcnow
    from appliance.ops import overview

    db = open_initialised(settings)
    try:
        data = overview.overview(db, settings, utcnow())
    finally:
        db.close()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for line in overview.summary_lines(data):
        print(line)
    return 0


def cmd_keys_create(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.accounts import service as accounts
    from appliance.auth import service as auth
    from appliance.clock import utcnow
    from appliance.errors import InvalidInput, NotFound

    db = open_initialised(settings)
    try:
        user = accounts.user_by_email(db, args.email)
        if user is None or accounts.role_in(db, args.account, user.id) is None:
            raise NotFound(f"{args.email} is not a member of account {args.account}")
        if args.scope == auth.ADMIN_SCOPE:
            if not user.operator:
                raise InvalidInput(f"{args.email} is not a server operator")
            key, secret = auth.create_admin_key(
                db, user_id=user.id, account_id=args.account, name=args.name, now=utcnow()
            )
        else:
            key, secret = auth.create_key(
                db,
                user_id=user.id,
                account_id=args.account,
                name=args.name,
                scope=args.scope,
                now=utcnow(),
                instance_id=args.instance,
            )
    finally:
        db.close()
    print(
        json.dumps({"id": key.id, "key": secret, "scope": key.scope, "account_id": key.account_id})
    )
    return 0


def cmd_billing_show(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.accounts import service as accounts
    from appliance.billing import ledger

    db = open_initialised(settings)
    try:
        accounts.account(db, args.account)
        balance = ledger.balance(db, args.account)
        held = ledger.held(db, args.account)
        entries = ledger.entries(db, args.account, limit=args.limit)
    finally:
        db.close()
    print(f"balance {ledger.usd(balance)} USD ({balance} micro-USD), reserved {held} micro-USD")
    for entry in entries:
        print(
            f"{entry.created_at}  {entry.kind:<13} {ledger.usd_precise(entry.amount_microusd):>12}"
            f"  {entry.reason or entry.model or ''}"
        )
    return 0


def cmd_billing_adjust(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.accounts import service as accounts
    from appliance.billing import ledger
    from appliance.billing import service as billing
    from appliance.clock import utcnow

    db = open_initialised(settings)
    try:
        accounts.account(db, args.account)
        entry = billing.adjust(db, args.account, args.amount, args.reason, utcnow(), actor="cli")
    finally:
        db.close()
    print(
        f"adjusted by {ledger.usd_precise(entry.amount_microusd)} USD; "
        f"balance {ledger.usd(entry.balance_microusd)} USD"
    )
    return 0


def cmd_accounts_delete(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.accounts import service as accounts
    from appliance.clock import utcnow
    from appliance.privacy import erasure

    db = open_initialised(settings)
    try:
        account = accounts.account(db, args.account_id)
        if not args.yes:
            answer = input(f"Delete account {account.id} and erase all its data? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return 1
        owners = [m.email for m in accounts.members(db, account.id) if m.role == "owner"]
        found = erasure.request_deletion(
            db,
            settings,
            account.id,
            requested_by="operator",
            request="operator via CLI",
            notify_email=owners[0] if owners else None,
            now=utcnow(),
        )
    finally:
        db.close()
    print(
        f"account {found.account_id} is locked; its data is erased by the next purge "
        f"(by {found.due_at[:10]} at the latest; `appliance purge --now` to do it now)"
    )
    return 0
