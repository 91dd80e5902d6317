"""The ``appliance`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import appliance
from appliance import cli_accounts, cli_kb, cli_models, cli_parser
from appliance.cli_parser import Group
from appliance.clock import utcnow
from appliance.config import Settings
from appliance.datadir import initialise, open_initialised
from appliance.errors import ApplianceError


def main(argv: Sequence[str] | None = None) -> int:
    from appliance import permissions
    from appliance.privacy import logs  # every record of the process, redacted, as JSON

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
        logs.configure(settings.logging.level, sys.stdout if service else sys.stderr)
        return args.handler(settings, args) or 0
    except ApplianceError as exc:
        print(f"appliance: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def load_settings(args: argparse.Namespace) -> Settings:
    flags = {f"web.{name}": getattr(args, name, None) for name in ("host", "port")}
    return Settings.load(
        data_dir=getattr(args, "data_dir", None),
        config_file=getattr(args, "config", None),
        overrides={key: value for key, value in flags.items() if value},
    )


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
        return cli_parser.command(sub, name, handler, help, parents)

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
    cli_accounts.add_parsers(sub, common)

    p = command("purge", cmd_purge, "Run the retention purges (the worker runs them hourly).")
    p.add_argument("--now", action="store_true", required=True, help="run every purge now")

    policy_cmd = Group(sub, common, "policy", "The privacy policy.")
    p = policy_cmd.action(
        "publish",
        cmd_policy_publish,
        "Publish the current text as a new version and email every user about it.",
    )
    p.add_argument(
        "--effective", help="date it takes effect (default: today + privacy.policy_notice_days)"
    )
    p.add_argument("--summary", default="", help="one or two sentences on what changed")
    policy_cmd.action("show", cmd_policy_show, "List the published versions.")

    Group(sub, common, "privacy", "Privacy records.").action(
        "verify-receipts",
        cmd_privacy_verify,
        "Check the hash chain of deletion receipts (exit 1 if one is missing or edited).",
    )

    cli_kb.add_parser(sub, common)
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


def cmd_purge(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.tasks import create_queue, run_purges

    initialise(settings)
    results = run_purges(settings, create_queue(settings).send_mail)
    for result in results:
        done = "done" if result.complete else "to be continued"
        state = f"FAILED ({result.error})" if result.error else done
        print(f"{result.job:<18} {result.deleted:>8} deleted  {state}")
    return 1 if any(r.error for r in results) else 0


def cmd_policy_publish(settings: Settings, args: argparse.Namespace) -> None:
    from appliance.privacy import policy
    from appliance.privacy.cli import parse_since
    from appliance.tasks import create_queue

    now = utcnow()
    effective = parse_since(args.effective, now) if args.effective else None
    with open_initialised(settings) as db:
        version = policy.publish(db, settings, now, effective_at=effective, summary=args.summary)
        emailed = policy.announce(db, version, create_queue(settings).send_mail)
    print(
        f"published version {version.version} (sha256 {version.text_sha256[:12]}), in effect "
        f"from {version.effective_at[:10]}; {emailed} user(s) will be emailed"
    )


def cmd_policy_show(settings: Settings, args: argparse.Namespace) -> None:
    from appliance.privacy import policy

    with open_initialised(settings) as db:
        rows = [asdict(v) for v in policy.versions(db)]
    print(json.dumps(rows, indent=2))


def cmd_privacy_verify(settings: Settings, args: argparse.Namespace) -> int:
    from appliance import receipts

    with open_initialised(settings) as db:
        problems = receipts.verify(db)
        count = len(receipts.receipts(db))
    for problem in problems:
        print(problem)
    print(f"deletion receipts: {count}, " + ("chain intact" if not problems else "CHAIN BROKEN"))
    return 1 if problems else 0


def cmd_logs(settings: Settings, args: argparse.Namespace) -> None:
    from appliance.privacy import requestlog
    from appliance.privacy.cli import parse_since

    with open_initialised(settings) as db:
        rows = requestlog.entries(
            db,
            since=parse_since(args.since, utcnow()) if args.since else None,
            status=args.status,
            path=args.path,
            limit=args.limit,
        )
    for row in rows:
        if args.json:
            print(json.dumps(asdict(row)))
        else:
            extra = "  ".join(x for x in (row.instance_id or "", row.error or "") if x)
            print(
                f"{row.at}  {row.method:<6} {row.status}  {row.duration_ms:8.1f} ms  "
                f"{row.path}  {extra}".rstrip()
            )


def cmd_backup(settings: Settings, args: argparse.Namespace) -> int | None:
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


def cmd_restore(settings: Settings, args: argparse.Namespace) -> None:
    from appliance.ops import backup

    manifest = backup.restore(settings, Path(args.src), replace=args.replace)
    initialise(settings)  # migrations of this version; recreates any missing dirs
    print(
        f"restored the backup of {manifest['created_at']} "
        f"({len(manifest['files'])} files) into {settings.paths.data_dir}"
    )


def cmd_version(settings: Settings, args: argparse.Namespace) -> None:
    print(appliance.__version__)


def cmd_init(settings: Settings, args: argparse.Namespace) -> None:
    initialise(settings)
    print(f"data dir: {settings.paths.data_dir}")
    print_setup_link(settings)


def print_setup_link(settings: Settings) -> None:
    from appliance import firstrun
    from appliance.db import open_db

    with open_db(settings) as db:
        token = firstrun.setup_token(settings, db)
    if token:
        print("This appliance has not been set up yet. Open this one-time link to claim it:")
        print(f"  {firstrun.setup_url(settings, token)}")


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.ops.services import SERVICES, state_path
    from appliance.supervisor import supervise

    initialise(settings)
    env = {
        **os.environ,
        "APPLIANCE_DATA_DIR": str(settings.paths.data_dir),
        "APPLIANCE_WEB__HOST": settings.web.host,
        "APPLIANCE_WEB__PORT": str(settings.web.port),
        "PYTHONUNBUFFERED": "1",
    }
    if settings.config_file:
        env["APPLIANCE_CONFIG"] = str(settings.config_file)
    services = [(name, [sys.executable, "-m", "appliance", name]) for name in SERVICES]

    def started() -> None:
        print(f"appliance {appliance.__version__} is starting at {settings.public_url}")
        print_setup_link(settings)
        sys.stdout.flush()

    return supervise(services, env=env, started=started, state_file=state_path(settings))


def cmd_web(settings: Settings, args: argparse.Namespace) -> None:
    from appliance.web.serve import serve

    serve(settings)


def cmd_inference(settings: Settings, args: argparse.Namespace) -> None:
    from appliance.inference.server import run_server

    run_server(settings)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> None:
    from appliance.worker import run_worker

    run_worker(settings)


def cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.doctor import run_checks

    checks = run_checks(settings)
    width = max(len(c.name) for c in checks)
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    for check in checks:
        print(f"{marks[check.status]}  {check.name:<{width}}  {check.detail}")
    failed = [c for c in checks if c.status == "fail"]
    passed = f"{len(checks) - len(failed)} of {len(checks)} checks passed"
    print(f"\n{passed}" + (f"; {len(failed)} failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
