"""The ``appliance`` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict

import appliance
from appliance import cli_models
from appliance.config import Settings
from appliance.errors import ApplianceError

log = logging.getLogger("appliance")


def main(argv: Sequence[str] | None = None) -> int:
    from appliance import permissions

    # Before anything is created: the web, worker and inference services and every
    # command run through here, and what they write is private to the service user.
    permissions.restrict_umask()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        settings = load_settings(args)
        service = args.handler in (cmd_up, cmd_web, cmd_inference, cmd_worker)
        # Services write JSON lines to stdout (journald); other commands keep stdout for
        # their output and log to stderr.
        configure_logging(settings.logging.level, sys.stdout if service else sys.stderr)
        return args.handler(settings, args) or 0
    except ApplianceError as exc:
        print(f"appliance: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def load_settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "host", None):
        overrides["web.host"] = args.host
    if getattr(args, "port", None):
        overrides["web.port"] = args.port
    return Settings.load(
        data_dir=getattr(args, "data_dir", None),
        config_file=getattr(args, "config", None),
        overrides=overrides,
    )


def configure_logging(level: str, stream=None) -> None:
    """Every record of the process, redacted, as one JSON line (privacy/logs.py)."""
    from appliance.privacy import logs

    logs.configure(level, stream or sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir", help="data directory (default: $APPLIANCE_DATA_DIR or ./data)"
    )
    common.add_argument("--config", help="config file (default: DATA_DIR/appliance.toml)")
    listen = argparse.ArgumentParser(add_help=False)
    listen.add_argument("--host", help="address of the web service (default 127.0.0.1)")
    listen.add_argument("--port", type=int, help="port of the web service (default 8000)")

    parser = argparse.ArgumentParser(
        prog="appliance", description="A self-hosted private AI appliance."
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, handler: Callable, help: str, parents=(common,)):
        p = sub.add_parser(name, help=help, description=help, parents=list(parents))
        p.set_defaults(handler=handler)
        return p

    command("init", cmd_init, "Create the data dir, secrets and database; print the setup link.")
    command(
        "up",
        cmd_up,
        "Run web, inference and worker in the foreground; a service that dies is restarted.",
        (common, listen),
    )
    command("web", cmd_web, "Run the web service.", (common, listen))
    command("inference", cmd_inference, "Run the inference service (loads the models).")
    command("worker", cmd_worker, "Run the task-queue worker.")
    command("doctor", cmd_doctor, "Check the install; non-zero exit if something is broken.")
    command("version", cmd_version, "Print the version.", ())

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

    p = command("purge", cmd_purge, "Run the retention purges (the worker runs them hourly).")
    p.add_argument("--now", action="store_true", required=True, help="run every purge now")

    policy_cmd = command("policy", None, "The privacy policy.")
    polsub = policy_cmd.add_subparsers(title="policy commands", metavar="ACTION")
    policy_cmd.set_defaults(handler=lambda s, a: policy_cmd.print_help() or 2)
    p = polsub.add_parser(
        "publish",
        help="Publish the current text as a new version and email every user about it.",
        parents=[common],
    )
    p.add_argument(
        "--effective", help="date it takes effect (default: today + privacy.policy_notice_days)"
    )
    p.add_argument("--summary", default="", help="one or two sentences on what changed")
    p.set_defaults(handler=cmd_policy_publish)
    p = polsub.add_parser("show", help="List the published versions.", parents=[common])
    p.set_defaults(handler=cmd_policy_show)

    privacy_cmd = command("privacy", None, "Privacy records.")
    prsub = privacy_cmd.add_subparsers(title="privacy commands", metavar="ACTION")
    privacy_cmd.set_defaults(handler=lambda s, a: privacy_cmd.print_help() or 2)
    p = prsub.add_parser(
        "verify-receipts",
        help="Check the hash chain of deletion receipts (exit 1 if one is missing or edited).",
        parents=[common],
    )
    p.set_defaults(handler=cmd_privacy_verify)

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

    kb = command("kb", None, "Knowledge base maintenance.")
    kbsub = kb.add_subparsers(title="kb commands", metavar="ACTION")
    kb.set_defaults(handler=lambda s, a: kb.print_help() or 2)
    p = kbsub.add_parser(
        "audit", help="Report orphaned chunks, vectors and files (exit 1 if any).", parents=[common]
    )
    p.set_defaults(handler=cmd_kb_audit)
    p = kbsub.add_parser(
        "reindex",
        help="Re-embed every document (after changing the embedding model).",
        parents=[common],
    )
    p.add_argument("--wait", action="store_true", help="show progress until the worker is done")
    p.set_defaults(handler=cmd_kb_reindex)
    p = kbsub.add_parser(
        "import",
        help="Add every document in a folder (and the ZIP archives in it) to an account's "
        "knowledge base; the worker indexes them.",
        parents=[common],
    )
    p.add_argument("directory", type=pathlib.Path, help="folder to read, subfolders included")
    p.add_argument("--account", required=True, help="account id")
    p.set_defaults(handler=cmd_kb_import)

    p = command("logs", cmd_logs, "Show the request log (newest first; content-free).")
    p.add_argument("--since", help="ISO date/time or a duration such as 2h, 30m, 7d")
    p.add_argument("--status", help="a status (404) or a class (5xx)")
    p.add_argument("--path", help="route template prefix, e.g. /api/knowledge")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = command(
        "backup",
        cmd_backup,
        "Back up the database, files and secrets to DEST (safe while serving), or with "
        "--prune DIR delete backups older than the privacy erase window.",
    )
    p.add_argument("dest", nargs="?", help="a directory, or a .tar.gz path")
    p.add_argument("--prune", metavar="DIR", help="delete expired backups in DIR")
    p = command(
        "restore",
        cmd_restore,
        "Restore a backup into this data dir (the services must be stopped).",
    )
    p.add_argument("src", help="a backup .tar.gz")
    p.add_argument("--replace", action="store_true", help="overwrite the existing database")

    cli_models.add_parser(sub, common)
    return parser


# -- commands ----------------------------------------------------------------------------


def _db(settings: Settings):
    from appliance.db import open_db

    initialise(settings)
    return open_db(settings)


def cmd_users_create(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.accounts import service as accounts
    from appliance.clock import utcnow

    db = _db(settings)
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

    db = _db(settings)
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

    db = _db(settings)
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

    db = _db(settings)
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

    db = _db(settings)
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

    db = _db(settings)
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

    db = _db(settings)
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

    db = _db(settings)
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


def cmd_kb_audit(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.knowledge import service as knowledge

    db = _db(settings)
    try:
        problems = knowledge.audit(db, settings)
    finally:
        db.close()
    for problem in problems:
        print(problem)
    print("knowledge base: " + ("clean" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


def cmd_kb_reindex(settings: Settings, args: argparse.Namespace) -> int:
    import time

    from appliance.knowledge import service as knowledge
    from appliance.tasks import create_queue

    _check_embedding_model_served(settings)
    db = _db(settings)
    try:
        ids = knowledge.reindex(db)
        queue = create_queue(settings)
        for document_id in ids:
            queue.ingest_document(document_id)
        print(f"queued {len(ids)} document(s) for re-embedding; the worker does the rest")
        last = None
        while args.wait and ids:
            counts = knowledge.status_counts(db)
            busy = sum(counts.get(s, 0) for s in ("queued", "extracting", "embedding"))
            line = (
                f"re-embedded {counts.get('ready', 0)} of {len(ids)} document(s), "
                f"{counts.get('failed', 0)} failed, {busy} to go"
            )
            if line != last:
                print(line, flush=True)
                last = line
            if not busy:
                break
            time.sleep(1)
    finally:
        db.close()
    return 0


def _check_embedding_model_served(settings: Settings) -> None:
    """Refuse to re-embed while inference still serves another model than the registry's
    default (the worker would embed everything with the old one again)."""
    from appliance.errors import Conflict, NotFound, Unavailable
    from appliance.inference import models
    from appliance.inference.client import InferenceClient

    try:
        wanted = models.load_registry(settings).resolve(
            "embedding", settings.inference.embedding_model
        )
        served = InferenceClient.from_settings(settings).health().get("embedding_model")
    except NotFound:
        return  # no local registry: an external inference server decides
    except Unavailable:
        print("note: inference is not answering; the worker re-embeds once it is up")
        return
    if served and served != wanted.id:
        raise Conflict(
            f"the inference service still serves the embedding model '{served}', not "
            f"'{wanted.id}': restart it first (sudo systemctl restart appliance-inference, "
            "or restart `appliance up`), then run this again"
        )


def cmd_kb_import(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.accounts import service as accounts
    from appliance.clock import utcnow
    from appliance.errors import InvalidInput, TooLarge
    from appliance.knowledge import service as knowledge
    from appliance.tasks import create_queue

    if not args.directory.is_dir():
        print(f"{args.directory} is not a folder", file=sys.stderr)
        return 2
    db = _db(settings)
    queue = create_queue(settings)
    added = duplicates = 0
    refused: list[tuple[str, str]] = []
    try:
        account = accounts.account(db, args.account)
        for path in sorted(args.directory.rglob("*")):
            relative = path.relative_to(args.directory)
            if not path.is_file() or any(part.startswith(".") for part in relative.parts):
                continue
            archive = knowledge.is_archive(path.name)
            add = knowledge.add_archive if archive else knowledge.add_document
            try:
                with path.open("rb") as stream:
                    outcome = add(db, settings, account.id, None, path.name, stream, utcnow())
            except (InvalidInput, TooLarge, OSError) as exc:
                refused.append((str(relative), str(exc)))
                continue
            for one in outcome if isinstance(outcome, list) else [outcome]:
                if isinstance(one, knowledge.Refusal):
                    refused.append((f"{relative}: {one.filename}", one.error))
                elif one.duplicate:
                    duplicates += 1
                else:
                    added += 1
                    queue.ingest_document(one.document.id)
    finally:
        db.close()
    for name, error in refused:
        print(f"not added: {name}: {error}", file=sys.stderr)
    print(
        f"queued {added} document(s) for indexing ({duplicates} already there, "
        f"{len(refused)} not added); the worker does the rest"
    )
    return 1 if refused else 0


def cmd_accounts_delete(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.accounts import service as accounts
    from appliance.clock import utcnow
    from appliance.privacy import erasure

    db = _db(settings)
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


def cmd_purge(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.tasks import create_queue, run_purges

    initialise(settings)
    queue = create_queue(settings)
    results = run_purges(settings, queue.send_mail)
    for result in results:
        state = f"FAILED ({result.error})" if result.error else "done"
        if not result.error and not result.complete:
            state = "to be continued"
        print(f"{result.job:<18} {result.deleted:>8} deleted  {state}")
    return 1 if any(r.error for r in results) else 0


def cmd_policy_publish(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.clock import utcnow
    from appliance.privacy import policy
    from appliance.privacy.cli import parse_since
    from appliance.tasks import create_queue

    now = utcnow()
    effective = parse_since(args.effective, now) if args.effective else None
    db = _db(settings)
    try:
        version = policy.publish(db, settings, now, effective_at=effective, summary=args.summary)
        recipients = policy.recipients(db)
    finally:
        db.close()
    queue = create_queue(settings)
    for email in recipients:
        queue.send_mail(
            "policy_changed",
            email,
            {
                "version": version.version,
                "effective": version.effective_at[:10],
                "summary": version.summary,
            },
        )
    print(
        f"published version {version.version} (sha256 {version.text_sha256[:12]}), in effect "
        f"from {version.effective_at[:10]}; {len(recipients)} user(s) will be emailed"
    )
    return 0


def cmd_policy_show(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.privacy import policy

    db = _db(settings)
    try:
        rows = [asdict(v) for v in policy.versions(db)]
    finally:
        db.close()
    print(json.dumps(rows, indent=2))
    return 0


def cmd_privacy_verify(settings: Settings, args: argparse.Namespace) -> int:
    from appliance import receipts

    db = _db(settings)
    try:
        problems = receipts.verify(db)
        count = len(receipts.receipts(db))
    finally:
        db.close()
    for problem in problems:
        print(problem)
    print(f"deletion receipts: {count}, " + ("chain intact" if not problems else "CHAIN BROKEN"))
    return 1 if problems else 0


def cmd_logs(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.clock import utcnow
    from appliance.privacy import requestlog
    from appliance.privacy.cli import parse_since

    db = _db(settings)
    try:
        rows = requestlog.entries(
            db,
            since=parse_since(args.since, utcnow()) if args.since else None,
            status=args.status,
            path=args.path,
            limit=args.limit,
        )
    finally:
        db.close()
    for row in rows:
        if args.json:
            print(json.dumps(asdict(row)))
        else:
            extra = "  ".join(x for x in (row.instance_id or "", row.error or "") if x)
            print(
                f"{row.at}  {row.method:<6} {row.status}  {row.duration_ms:8.1f} ms  "
                f"{row.path}  {extra}".rstrip()
            )
    return 0


def cmd_backup(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from appliance.clock import utcnow
    from appliance.ops import backup

    if bool(args.dest) == bool(args.prune):
        print("appliance backup: give either DEST or --prune DIR", file=sys.stderr)
        return 2
    if args.prune:
        removed = backup.prune(settings, Path(args.prune), utcnow())
        for path in removed:
            print(f"removed {path}")
        window = settings.privacy.erase_window_days
        print(f"{len(removed)} backup(s) older than {window} days removed")
        return 0
    initialise(settings)
    info = backup.backup(settings, Path(args.dest), utcnow())
    rows = sum(info.tables.values())
    print(f"backup written to {info.path} ({info.files} files, {info.bytes} bytes, {rows} rows)")
    return 0


def cmd_restore(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from appliance.ops import backup

    manifest = backup.restore(settings, Path(args.src), replace=args.replace)
    initialise(settings)  # migrations of this version; recreates any missing dirs
    print(
        f"restored the backup of {manifest['created_at']} "
        f"({len(manifest['files'])} files) into {settings.paths.data_dir}"
    )
    return 0


def cmd_version(settings: Settings, args: argparse.Namespace) -> int:
    print(appliance.__version__)
    return 0


def cmd_init(settings: Settings, args: argparse.Namespace) -> int:
    initialise(settings)
    print(f"data dir: {settings.paths.data_dir}")
    print_setup_link(settings)
    return 0


def initialise(settings: Settings) -> None:
    """Create the data dir layout, secrets and database, all private to this user. Safe to
    run again."""
    from appliance import permissions, vault
    from appliance.db import open_db
    from appliance.errors import ConfigError

    root = settings.paths.data_dir
    try:
        root.mkdir(parents=True, exist_ok=True)
        # Every directory a systemd unit names (ReadOnlyPaths=, InaccessiblePaths=) exists
        # before the services start, so the unit's restriction applies to it.
        paths = settings.paths
        for path in (paths.files, paths.models, paths.outbox, paths.exports):
            path.mkdir(exist_ok=True)
        probe = root / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"data dir {root} is not writable: {exc.strerror}") from None
    vault.ensure_secrets(settings)
    open_db(settings).close()
    # An install from before the data dir was private (0755 / 0644) becomes private here:
    # the installer runs init on every upgrade.
    permissions.make_private(root)


def print_setup_link(settings: Settings) -> None:
    from appliance import firstrun
    from appliance.db import open_db

    db = open_db(settings)
    try:
        token = firstrun.setup_token(settings, db)
    finally:
        db.close()
    if token:
        print("This appliance has not been set up yet. Open this one-time link to claim it:")
        print(f"  {firstrun.setup_url(settings, token)}")


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.ops.services import state_path
    from appliance.supervisor import supervise

    initialise(settings)
    env = dict(os.environ)
    env["APPLIANCE_DATA_DIR"] = str(settings.paths.data_dir)
    if settings.config_file:
        env["APPLIANCE_CONFIG"] = str(settings.config_file)
    env["APPLIANCE_WEB__HOST"] = settings.web.host
    env["APPLIANCE_WEB__PORT"] = str(settings.web.port)
    env["PYTHONUNBUFFERED"] = "1"
    python = [sys.executable, "-m", "appliance"]
    services = [
        ("inference", [*python, "inference"]),
        ("web", [*python, "web"]),
        ("worker", [*python, "worker"]),
    ]

    def started() -> None:
        print(f"appliance {appliance.__version__} is starting at {settings.public_url}")
        print_setup_link(settings)
        sys.stdout.flush()

    return supervise(services, env=env, started=started, state_file=state_path(settings))


def cmd_web(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.web.serve import serve

    serve(settings)
    return 0


def cmd_inference(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.inference.server import run_server

    run_server(settings)
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.worker import run_worker

    run_worker(settings)
    return 0


def cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.doctor import run_checks

    checks = run_checks(settings)
    width = max(len(c.name) for c in checks)
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    for check in checks:
        print(f"{marks[check.status]}  {check.name:<{width}}  {check.detail}")
    failed = [c for c in checks if c.status == "fail"]
    print(
        f"\n{len(checks) - len(failed)} of {len(checks)} checks passed"
        + ("" if not failed else f"; {len(failed)} failed")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
