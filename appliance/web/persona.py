"""The account's system prompt and voice-training samples: JSON API and Settings page.

Everything here is for owners and admins (``manager``); members and other accounts get
404. Generation sends only the onboarding summary to Claude, and only when
``persona.anthropic_api_key`` is set (see ``appliance.persona.service``).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

import sqlite_utils
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.params import FromPath, JSONBody, MultipartBody, URLEncodedBody
from litestar.response import Redirect, Template

from appliance.accounts import service as accounts
from appliance.clock import Clock
from appliance.config import Settings
from appliance.errors import Conflict, InvalidInput, Unavailable
from appliance.persona import service as persona
from appliance.persona import voice
from appliance.persona.models import Generated, SystemPrompt, VoiceSample
from appliance.web import flash
from appliance.web.identity import Identity
from appliance.web.security import BODY_LIMIT, MULTIPART_OVERHEAD

PAGE = "/settings/persona"


def sample_limit(settings: Settings) -> tuple[int, str]:
    """One voice-sample upload: the file + its multipart framing."""
    limit = settings.persona.max_sample_bytes
    return limit + MULTIPART_OVERHEAD, f"Voice samples can be at most {limit:,} bytes."


def read_upload(data: dict[str, Any], settings: Settings) -> tuple[str, bytes]:
    """The uploaded file's name and at most ``max_sample_bytes + 1`` of its bytes."""
    upload = data.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidInput("Send the file as multipart/form-data in a field named 'file'.")
    try:
        upload.file.seek(0)
        content = upload.file.read(settings.persona.max_sample_bytes + 1)
    finally:
        upload.file.close()
    return upload.filename or "", content


def add_sample(db, settings: Settings, me: Identity, data: dict, now: datetime) -> VoiceSample:
    filename, content = read_upload(data, settings)
    try:
        return voice.add_sample(db, settings, me.account.id, me.role, filename, content, now)
    except voice.TooLarge as exc:
        raise HTTPException(status_code=413, detail=str(exc)) from None


def prompt_json(prompt: SystemPrompt) -> dict:
    data = asdict(prompt)
    data.pop("account_id")
    return data


def generated_json(generated: Generated) -> dict:
    return {
        **prompt_json(generated.prompt),
        "previous": generated.previous,
        "diff": [{"op": op, "line": line} for op, line in generated.diff],
    }


def sample_json(sample: VoiceSample, excerpts: list[str]) -> dict:
    data = asdict(sample)
    data.pop("account_id")
    return {**data, "excerpts": excerpts}


def samples_with_excerpts(db, me: Identity) -> list[tuple[VoiceSample, list[str]]]:
    by_sample: dict[str, list[str]] = {}
    for excerpt in voice.excerpts(db, me.account.id):
        by_sample.setdefault(excerpt.sample_id, []).append(excerpt.text)
    return [(s, by_sample.get(s.id, [])) for s in voice.samples(db, me.account.id, me.role)]


class PersonaApi(Controller):
    path = "/api"
    tags = ["persona"]

    @get("/persona", sync_to_thread=True)
    def get_persona(
        self,
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> dict:
        """The active system prompt and its history (owners and admins).

        Before the first version is stored, ``text`` is the local template and
        ``version`` is null.
        """
        account_id = manager.account.id
        active = persona.active_prompt(db, account_id)
        return {
            "text": persona.effective_prompt(db, account_id, clock()),
            "version": active.version if active else None,
            "source": active.source if active else "local",
            "created_at": active.created_at if active else None,
            "claude_enabled": persona.claude_enabled(settings),
            "history": [prompt_json(p) for p in persona.history(db, account_id, manager.role)],
        }

    @put("/persona", sync_to_thread=True)
    def put_persona(
        self,
        data: JSONBody[dict[str, Any]],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> dict:
        """Save an edited system prompt as a new version (at most 8000 characters)."""
        prompt = persona.save_edit(
            db, manager.account.id, manager.role, manager.user.id, data.get("text"), clock()
        )
        return prompt_json(prompt)

    @post("/persona/generate", status_code=201, sync_to_thread=True)
    def generate(
        self,
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> dict:
        """Regenerate from the team profile: with Claude when a key is set, else locally.

        Claude receives only the onboarding summary; each call is in the egress log. If
        Claude fails, nothing is stored (503) and the local template remains available.
        """
        generated = persona.generate(
            db, settings, manager.account.id, manager.role, manager.user.id, clock()
        )
        return generated_json(generated)

    @post("/persona/local", status_code=201, sync_to_thread=True)
    def use_local(
        self,
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> dict:
        """Store the local template (built from the team profile, no network) as a version."""
        generated = persona.use_local(
            db, settings, manager.account.id, manager.role, manager.user.id, clock()
        )
        return generated_json(generated)

    @get("/persona/egress", sync_to_thread=True)
    def egress(
        self, manager: NamedDependency[Identity], db: NamedDependency[sqlite_utils.Database]
    ) -> list[dict]:
        """Every outbound call made for this account: when, where, why, what and how much."""
        entries = persona.egress_log(db, manager.account.id, manager.role)
        return [{k: v for k, v in asdict(e).items() if k != "account_id"} for e in entries]

    @get("/voice-samples", sync_to_thread=True)
    def list_samples(
        self, manager: NamedDependency[Identity], db: NamedDependency[sqlite_utils.Database]
    ) -> list[dict]:
        """Voice-training samples with the excerpts chosen from each."""
        return [sample_json(s, e) for s, e in samples_with_excerpts(db, manager)]

    @post(
        "/voice-samples",
        status_code=201,
        sync_to_thread=True,
        opt={BODY_LIMIT: sample_limit},
    )
    def upload_sample(
        self,
        data: MultipartBody[dict[str, Any]],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> dict:
        """Upload a writing sample (.txt, .md or .docx) in the multipart field ``file``.

        413 when larger than ``persona.max_sample_bytes``; 400 when the content is not
        what the extension says; 409 when the account already has ``persona.max_samples``.
        """
        sample = add_sample(db, settings, manager, data, clock())
        excerpts = [
            e.text for e in voice.excerpts(db, manager.account.id) if e.sample_id == sample.id
        ]
        return sample_json(sample, excerpts)

    @delete("/voice-samples/{sample_id:str}", status_code=204, sync_to_thread=True)
    def delete_sample(
        self,
        sample_id: FromPath[str],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
    ) -> None:
        """Delete a sample, its excerpts and its stored file."""
        voice.delete_sample(db, settings, manager.account.id, manager.role, sample_id)


def persona_context(db, settings: Settings, me: Identity, now: datetime) -> dict:
    account_id = me.account.id
    emails = {m.user_id: m.email for m in accounts.members(db, account_id)}
    return {
        "me": me,
        "active": persona.active_prompt(db, account_id),
        "text": persona.effective_prompt(db, account_id, now),
        "max_chars": persona.MAX_PROMPT_CHARS,
        "history": persona.history(db, account_id, me.role),
        "emails": emails,
        "claude_enabled": persona.claude_enabled(settings),
        "summary": persona.claude_summary(db, account_id, now),
        "egress": persona.egress_log(db, account_id, me.role),
        "samples": samples_with_excerpts(db, me),
        "max_samples": settings.persona.max_samples,
        "max_sample_bytes": settings.persona.max_sample_bytes,
        "voice_block": voice.voice_block(db, settings, account_id),
        "voice_token_budget": settings.persona.voice_token_budget,
        "flashes": [],
    }


def page(
    db, settings: Settings, me: Identity, now: datetime, status: int = 200, **extra
) -> Template:
    context = persona_context(db, settings, me, now)
    context.update(extra)
    return Template("persona.html", context=context, status_code=status)


class PersonaPages(Controller):
    include_in_schema = False

    @get(PAGE, sync_to_thread=True)
    def persona_page(
        self,
        request: Request,
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> Template:
        """After a version was generated, the redirect's message names it and the page
        shows what it changed (once: a reload shows the page without it)."""
        now = clock()
        version = flash.flash(request).get("generated")
        generated = (
            persona.changes(db, manager.account.id, manager.role, version, now)
            if isinstance(version, int)
            else None
        )
        return page(db, settings, manager, now, generated=generated)

    @post(PAGE, sync_to_thread=True)
    def save_form(
        self,
        request: Request,
        data: URLEncodedBody[dict[str, str]],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> Response:
        now = clock()
        before = persona.active_prompt(db, manager.account.id)
        try:
            saved = persona.save_edit(
                db, manager.account.id, manager.role, manager.user.id, data.get("text", ""), now
            )
        except InvalidInput as exc:
            return page(db, settings, manager, now, 400, flashes=[("error", str(exc))])
        unchanged = before is not None and saved.id == before.id
        message = (
            "The text is unchanged, so no new version was made."
            if unchanged
            else "Saved as a new version."
        )
        return flash.redirect(request, f"{PAGE}#prompt", message)

    @post(f"{PAGE}/generate", sync_to_thread=True)
    def generate_form(
        self,
        request: Request,
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> Response:
        now = clock()
        try:
            generated = persona.generate(
                db, settings, manager.account.id, manager.role, manager.user.id, now
            )
        except InvalidInput as exc:
            return page(
                db, settings, manager, now, 400, flashes=[("error", str(exc))], offer_local=True
            )
        except Unavailable as exc:
            return page(
                db, settings, manager, now, 503, flashes=[("error", str(exc))], offer_local=True
            )
        return _regenerated(request, generated)

    @post(f"{PAGE}/local", sync_to_thread=True)
    def local_form(
        self,
        request: Request,
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> Response:
        now = clock()
        generated = persona.use_local(
            db, settings, manager.account.id, manager.role, manager.user.id, now
        )
        return _regenerated(request, generated)

    @post(f"{PAGE}/samples", sync_to_thread=True, opt={BODY_LIMIT: sample_limit})
    def upload_form(
        self,
        request: Request,
        data: MultipartBody[dict[str, Any]],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> Response:
        now = clock()
        try:
            add_sample(db, settings, manager, data, now)
        except HTTPException as exc:
            return page(
                db, settings, manager, now, exc.status_code, flashes=[("error", exc.detail)]
            )
        except (InvalidInput, Conflict) as exc:
            status = 409 if isinstance(exc, Conflict) else 400
            return page(db, settings, manager, now, status, flashes=[("error", str(exc))])
        return flash.redirect(request, f"{PAGE}#voice", "Voice sample added.")

    @post(f"{PAGE}/samples/{{sample_id:str}}/delete", sync_to_thread=True)
    def delete_form(
        self,
        request: Request,
        sample_id: FromPath[str],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
    ) -> Redirect:
        voice.delete_sample(db, settings, manager.account.id, manager.role, sample_id)
        message = "Voice sample deleted, with its excerpts and its file."
        return flash.redirect(request, f"{PAGE}#voice", message)


def _regenerated(request: Request, generated: Generated) -> Response:
    source = "Claude" if generated.prompt.source == "claude" else "the local template"
    message = f"Version {generated.prompt.version} written by {source}."
    return flash.redirect(request, f"{PAGE}#changes", message, generated=generated.prompt.version)
