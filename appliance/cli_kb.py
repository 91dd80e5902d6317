"""``appliance kb ...``: knowledge base maintenance (audit, re-embedding, bulk import)."""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from appliance.cli_parser import Group
from appliance.clock import utcnow
from appliance.config import Settings
from appliance.datadir import open_initialised
from appliance.errors import Conflict, InvalidInput, NotFound, TooLarge, Unavailable


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """The ``kb`` command and its actions, on the top-level subparsers ``sub``."""

    kb = Group(sub, common, "kb", "Knowledge base maintenance.")
    kb.action("audit", cmd_kb_audit, "Report orphaned chunks, vectors and files (exit 1 if any).")
    p = kb.action(
        "reindex", cmd_kb_reindex, "Re-embed every document (after changing the embedding model)."
    )
    p.add_argument("--wait", action="store_true", help="show progress until the worker is done")
    p = kb.action(
        "import",
        cmd_kb_import,
        "Add every document in a folder (and the ZIP archives in it) to an account's "
        "knowledge base; the worker indexes them.",
    )
    p.add_argument("directory", type=pathlib.Path, help="folder to read, subfolders included")
    p.add_argument("--account", required=True, help="account id")


def cmd_kb_audit(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.knowledge import service as knowledge

    with open_initialised(settings) as db:
        problems = knowledge.audit(db, settings)
    for problem in problems:
        print(problem)
    print("knowledge base: " + ("clean" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


def cmd_kb_reindex(settings: Settings, args: argparse.Namespace) -> None:
    from appliance.knowledge import service as knowledge
    from appliance.tasks import create_queue

    _check_embedding_model_served(settings)
    with open_initialised(settings) as db:
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


def _check_embedding_model_served(settings: Settings) -> None:
    """Refuse to re-embed while inference still serves another model than the registry's
    default (the worker would embed everything with the old one again)."""
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
    from appliance.knowledge import service as knowledge
    from appliance.tasks import create_queue

    if not args.directory.is_dir():
        print(f"{args.directory} is not a folder", file=sys.stderr)
        return 2
    added = duplicates = 0
    refused: list[tuple[str, str]] = []
    with open_initialised(settings) as db:
        queue = create_queue(settings)
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
    for name, error in refused:
        print(f"not added: {name}: {error}", file=sys.stderr)
    print(
        f"queued {added} document(s) for indexing ({duplicates} already there, "
        f"{len(refused)} not added); the worker does the rest"
    )
    return 1 if refused else 0
