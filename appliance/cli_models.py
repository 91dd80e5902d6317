"""``appliance models ...``: the installed models, the catalog, pulls and recommendations."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

from appliance.cli_parser import Group
from appliance.config import Settings

if TYPE_CHECKING:
    from appliance.inference.models import Model

PULL_HELP = """\
SPEC is one of:
  NAME                          a model of the catalog (`appliance models list --catalog`),
                                downloaded from the Hugging Face hub at the pinned revision
  hf:OWNER/REPO/FILE.gguf[@REV] any GGUF file on the hub (REV: a branch, tag or commit;
                                default main)
  https://.../FILE.gguf         any other URL, with --sha256

Hub downloads are verified against the SHA-256 the hub publishes for the file (and the
catalog's); a mismatch deletes the download. huggingface_hub reads HF_ENDPOINT (a mirror)
and HF_TOKEN (gated models) from the environment.

the catalog (name, kind, size, license):
{catalog}

examples:
  appliance models pull qwen2.5-7b-instruct-q4_k_m --default
  appliance models pull hf:bartowski/Llama-3.2-3B-Instruct-GGUF/Llama-3.2-3B-Instruct-Q4_K_M.gguf
  appliance models pull https://example.org/m.gguf --sha256 HEX --id my-model
"""


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """The ``models`` command and its actions, on the top-level subparsers ``sub``."""
    action = Group(sub, common, "models", "Manage installed models.").action
    p = action("list", cmd_list, "List installed models (or the catalog).")
    p.add_argument("--catalog", action="store_true", help="list the catalog instead")
    action("install-defaults", cmd_defaults, "Install the bundled models (offline).")
    p = action(
        "set-default",
        cmd_set_default,
        "Make a model the default of its kind, after it passed the self-test in a child process.",
    )
    p.add_argument("model_id")
    action(
        "self-test",
        cmd_self_test,
        "Run the default models in a child process; non-zero exit if they fail or crash.",
    )
    p = action("remove", cmd_remove, "Remove a model and its file.")
    p.add_argument("model_id")
    p = action(
        "pull",
        cmd_pull,
        "Download a GGUF model (needs internet): a catalog name, hf:OWNER/REPO/FILE.gguf or a URL.",
        epilog=PULL_HELP.format(catalog=_catalog_lines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "spec", metavar="SPEC", help="catalog name, hf:OWNER/REPO/FILE.gguf[@REV] or URL"
    )
    p.add_argument("--sha256", default="", help="expected SHA-256 (required for a URL)")
    p.add_argument("--id", dest="model_id", help="model id (default: the catalog name or file)")
    p.add_argument(
        "--kind",
        choices=("chat", "embedding", "reranker"),
        help="default: chat (or the catalog's)",
    )
    p.add_argument("--license", help="license note (default: the catalog's or the model card)")
    p.add_argument("--default", action="store_true", help="make it the default of its kind")
    p = action(
        "recommend",
        cmd_recommend,
        "The largest catalog chat model that fits this machine's GPU (or RAM and CPU), and why.",
    )
    p.add_argument("--name-only", action="store_true", help="print only the name (for scripts)")


def _catalog_lines() -> str:
    from appliance.inference import catalog

    return "\n".join(
        f"  {e.name:<32} {e.kind:<9} {e.size_bytes / 1e9:5.2f} GB  {e.license}"
        for e in catalog.read_bundled().values()
    )


def cmd_list(settings: Settings, args: argparse.Namespace) -> None:
    from appliance.inference import catalog, models

    if args.catalog:
        rows = [asdict(entry) for entry in catalog.load(settings).values()]
    else:
        registry = models.load_registry(settings)
        defaults = (registry.default_chat, registry.default_embedding)
        rows = [{**asdict(m), "default": m.id in defaults} for m in registry.models.values()]
    print(json.dumps(rows, indent=2))


def cmd_defaults(settings: Settings, args: argparse.Namespace) -> None:
    from appliance.inference import models

    settings.paths.models.mkdir(parents=True, exist_ok=True)
    installed = models.install_defaults(settings)
    if not installed:
        print("the bundled models are already installed")
    for model in installed:
        print(f"installed {model.kind} model {model.id} ({model.file})")


def cmd_set_default(settings: Settings, args: argparse.Namespace) -> int | None:
    from appliance.inference import models

    model = models.load_registry(settings).get(args.model_id)
    if not _self_test(settings, model):
        return 1
    model = models.set_default(settings, model.id)
    print(f"{model.id} is now the default {model.kind} model.")
    pinned = getattr(settings.inference, f"{model.kind}_model")
    if pinned and pinned != model.id:
        print(
            f"Note: the setting inference.{model.kind}_model = '{pinned}' wins over the "
            "registry's default: clear it for this change to take effect."
        )
    print(
        "Restart the inference service to load it (systemd: sudo systemctl restart "
        "appliance-inference; `appliance up`: stop and start it). Nothing else needs a "
        "restart: inference is the only process that loads a model, and the web reads the "
        "registry each time it lists models."
    )
    if model.kind == "chat":
        print(
            "Existing instances keep the model id they were created with (it names their "
            "prices in billing.model_prices and labels their answers): change it on each "
            "instance's settings if that should follow."
        )
    else:
        _explain_reindex(settings, model.id)


def _explain_reindex(settings: Settings, model_id: str) -> None:
    from appliance.db import open_db
    from appliance.knowledge import service as knowledge

    with open_db(settings) as db:
        state = knowledge.index_state(db)
    built_with = state["embedding_model"]
    if not state["documents"] or not built_with:
        print("The knowledge index holds no embedded document yet: nothing to re-embed.")
        return
    if built_with == model_id:
        print(f"The knowledge index was built with {model_id}: nothing to re-embed.")
        return
    print(
        f"The knowledge index holds {state['documents']} document(s) embedded with "
        f"'{built_with}' ({state['dimension']} dimensions). Vectors of two models cannot be "
        "mixed (they are not comparable, and may differ in dimension), so every document "
        "is embedded again, after the restart:\n"
        "  appliance kb reindex --wait\n"
        "Until it has run, new uploads fail (with a message asking for it) and search "
        "results are unreliable: run it right after the restart."
    )


def cmd_remove(settings: Settings, args: argparse.Namespace) -> None:
    from appliance.inference import models

    model = models.remove(settings, args.model_id)
    print(f"removed {model.id}")


def cmd_pull(settings: Settings, args: argparse.Namespace) -> int | None:
    from appliance.inference import models, pull

    model = pull.install(
        settings,
        args.spec,
        sha256=args.sha256,
        model_id=args.model_id,
        kind=args.kind,
        license=args.license,
    )
    print(f"installed {model.kind} model {model.id} ({model.file}, sha256 {model.sha256})")
    if args.default:
        if not _self_test(settings, model):
            return 1
        models.set_default(settings, model.id)
        print(f"{model.id} is the default {model.kind} model: restart inference to load it")


def cmd_self_test(settings: Settings, args: argparse.Namespace) -> int:
    return 0 if _self_test(settings) else 1


def _self_test(settings: Settings, candidate: Model | None = None) -> bool:
    """Run the self-test (appliance/inference/selftest.py), with ``candidate`` (a model to make
    the default) in place of its kind's default, and print its verdict."""
    from appliance.inference import selftest

    instead = {f"{candidate.kind}_model": candidate.id} if candidate else {}
    verdict, why = selftest.check(settings, **instead)
    if verdict.crashed:
        print(f"self-test FAILED: {selftest.crash_message(verdict)}", file=sys.stderr)
    elif not verdict.ok:
        print(f"self-test FAILED ({verdict.outcome}): {verdict.detail}", file=sys.stderr)
    else:
        print(
            f"self-test passed: {verdict.chat_model} and {verdict.embedding_model}: "
            f"{verdict.detail} ({verdict.seconds:.1f} s); "
            f"CPU repacking {'on' if verdict.repack else 'off'} ({why})"
        )
    if candidate and not verdict.ok:
        print(f"{candidate.id} was NOT made the default", file=sys.stderr)
    return verdict.ok


def cmd_recommend(settings: Settings, args: argparse.Namespace) -> int | None:
    from appliance.inference import catalog

    choice, reason = catalog.recommend(catalog.load(settings), catalog.this_machine())
    if args.name_only:
        if choice is not None:
            print(choice.name)
        return 0 if choice is not None else 1
    if choice is None:
        print(f"recommended: none (keep the bundled model)\nwhy: {reason}")
        return 1
    print(f"recommended: {choice.name}\nwhy: {reason}")
    print(f"install it with: appliance models pull {choice.name} --default")
