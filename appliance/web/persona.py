"""The account's system prompt and voice-training samples: JSON API and Settings page.

Everything here is for owners and admins (``manager``); members and other accounts get
404. Generation sends only the onboarding summary to Claude, and only when
``persona.anthropic_api_key`` is set (see ``appliance.persona.service``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any

from litestar import Controller, Request, Response, delete, get, post, put
from litestar.datastructures import UploadFile
from litestar.exceptions import HTTPException
from litestar.params import FromPath, MultipartBody
from litestar.response import Redirect, Template

from appliance.accounts import service as accounts
from appliance.config import Settings
from appliance.errors import Conflict, InvalidInput, Unavailable
from appliance.persona import service as persona
from appliance.persona import voice
from appliance.persona.models import Generated, SystemPrompt, VoiceSample
from appliance.web import flash
from appliance.web.deps import Ctx, Deps, Form, Json, Member
from appliance.web.identity import Identity
from appliance.web.security import BODY_LIMIT, MULTIPART_OVERHEAD

PAGE = "/settings/persona"
Upload = MultipartBody[dict[str, Any]]


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


def public(row: Any) -> dict:
    """A stored row as the API shows it: without its account id."""
    return {k: v for k, v in asdict(row).items() if k != "account_id"}


def generated_json(generated: Generated) -> dict:
    return {
        **public(generated.prompt),
        "previous": generated.previous,
        "diff": [{"op": op, "line": line} for op, line in generated.diff],
    }


def sample_json(sample: VoiceSample, excerpts: list[str]) -> dict:
    return {**public(sample), "excerpts": excerpts}


def samples_with_excerpts(db, me: Identity) -> list[tuple[VoiceSample, list[str]]]:
    by_sample: dict[str, list[str]] = {}
    for excerpt in voice.excerpts(db, me.account.id):
        by_sample.setdefault(excerpt.sample_id, []).append(excerpt.text)
    return [(s, by_sample.get(s.id, [])) for s in voice.samples(db, me.account.id, me.role)]


class PersonaApi(Controller):
    path = "/api"
    tags = ["persona"]

    @get("/persona", sync_to_thread=True)
    def get_persona(self, manager: Member, ctx: Deps) -> dict:
        """The active system prompt and its history (owners and admins).

        Before the first version is stored, ``text`` is the local template and
        ``version`` is null.
        """
        db, account_id = ctx.db, manager.account.id
        active = persona.active_prompt(db, account_id)
        return {
            "text": persona.effective_prompt(db, account_id, ctx.now()),
            "version": active.version if active else None,
            "source": active.source if active else "local",
            "created_at": active.created_at if active else None,
            "claude_enabled": persona.claude_enabled(ctx.settings),
            "history": [public(p) for p in persona.history(db, account_id, manager.role)],
        }

    @put("/persona", sync_to_thread=True)
    def put_persona(self, data: Json, manager: Member, ctx: Deps) -> dict:
        """Save an edited system prompt as a new version (at most 8000 characters)."""
        return public(_save(ctx, manager, data.get("text")))

    @post("/persona/generate", status_code=201, sync_to_thread=True)
    def generate(self, manager: Member, ctx: Deps) -> dict:
        """Regenerate from the team profile: with Claude when a key is set, else locally.

        Claude receives only the onboarding summary; each call is in the egress log. If
        Claude fails, nothing is stored (503) and the local template remains available.
        """
        return generated_json(_write(persona.generate, ctx, manager))

    @post("/persona/local", status_code=201, sync_to_thread=True)
    def use_local(self, manager: Member, ctx: Deps) -> dict:
        """Store the local template (built from the team profile, no network) as a version."""
        return generated_json(_write(persona.use_local, ctx, manager))

    @get("/persona/egress", sync_to_thread=True)
    def egress(self, manager: Member, ctx: Deps) -> list[dict]:
        """Every outbound call made for this account: when, where, why, what and how much."""
        return [public(e) for e in persona.egress_log(ctx.db, manager.account.id, manager.role)]

    @get("/voice-samples", sync_to_thread=True)
    def list_samples(self, manager: Member, ctx: Deps) -> list[dict]:
        """Voice-training samples with the excerpts chosen from each."""
        return [sample_json(s, e) for s, e in samples_with_excerpts(ctx.db, manager)]

    @post("/voice-samples", status_code=201, sync_to_thread=True, opt={BODY_LIMIT: sample_limit})
    def upload_sample(self, data: Upload, manager: Member, ctx: Deps) -> dict:
        """Upload a writing sample (.txt, .md or .docx) in the multipart field ``file``.

        413 when larger than ``persona.max_sample_bytes``; 400 when the content is not
        what the extension says; 409 when the account already has ``persona.max_samples``.
        """
        sample = add_sample(ctx.db, ctx.settings, manager, data, ctx.now())
        excerpts = voice.excerpts(ctx.db, manager.account.id)
        return sample_json(sample, [e.text for e in excerpts if e.sample_id == sample.id])

    @delete("/voice-samples/{sample_id:str}", status_code=204, sync_to_thread=True)
    def delete_sample(self, sample_id: FromPath[str], manager: Member, ctx: Deps) -> None:
        """Delete a sample, its excerpts and its stored file."""
        voice.delete_sample(ctx.db, ctx.settings, manager.account.id, manager.role, sample_id)


def _save(ctx: Ctx, manager: Identity, text: Any) -> SystemPrompt:
    account, role, user = manager.account.id, manager.role, manager.user.id
    return persona.save_edit(ctx.db, account, role, user, text, ctx.now())


def _write(write: Callable[..., Generated], ctx: Ctx, manager: Identity) -> Generated:
    """``persona.generate`` or ``persona.use_local`` for the manager's account."""
    account, role, user = manager.account.id, manager.role, manager.user.id
    return write(ctx.db, ctx.settings, account, role, user, ctx.now())


def persona_context(ctx: Ctx, me: Identity) -> dict:
    db, settings, account_id, now = ctx.db, ctx.settings, me.account.id, ctx.now()
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


def page(ctx: Ctx, me: Identity, status: int = 200, error: str = "", **extra) -> Template:
    context = {**persona_context(ctx, me), **extra}
    if error:
        context["flashes"] = [("error", error)]
    return Template("persona.html", context=context, status_code=status)


class PersonaPages(Controller):
    include_in_schema = False

    @get(PAGE, sync_to_thread=True)
    def persona_page(self, request: Request, manager: Member, ctx: Deps) -> Template:
        """After a version was generated, the redirect's message names it and the page
        shows what it changed (once: a reload shows the page without it)."""
        version = flash.flash(request).get("generated")
        generated = (
            persona.changes(ctx.db, manager.account.id, manager.role, version, ctx.now())
            if isinstance(version, int)
            else None
        )
        return page(ctx, manager, generated=generated)

    @post(PAGE, sync_to_thread=True)
    def save_form(self, data: Form, manager: Member, ctx: Deps) -> Response:
        before = persona.active_prompt(ctx.db, manager.account.id)
        try:
            saved = _save(ctx, manager, data.get("text", ""))
        except InvalidInput as exc:
            return page(ctx, manager, 400, str(exc))
        message = "Saved as a new version."
        if before is not None and saved.id == before.id:
            message = "The text is unchanged, so no new version was made."
        return ctx.redirect(f"{PAGE}#prompt", message)

    @post(f"{PAGE}/generate", sync_to_thread=True)
    def generate_form(self, manager: Member, ctx: Deps) -> Response:
        try:
            generated = _write(persona.generate, ctx, manager)
        except (InvalidInput, Unavailable) as exc:
            status = 503 if isinstance(exc, Unavailable) else 400
            return page(ctx, manager, status, str(exc), offer_local=True)
        return _regenerated(ctx, generated)

    @post(f"{PAGE}/local", sync_to_thread=True)
    def local_form(self, manager: Member, ctx: Deps) -> Response:
        return _regenerated(ctx, _write(persona.use_local, ctx, manager))

    @post(f"{PAGE}/samples", sync_to_thread=True, opt={BODY_LIMIT: sample_limit})
    def upload_form(self, data: Upload, manager: Member, ctx: Deps) -> Response:
        try:
            add_sample(ctx.db, ctx.settings, manager, data, ctx.now())
        except HTTPException as exc:
            return page(ctx, manager, exc.status_code, exc.detail)
        except (InvalidInput, Conflict) as exc:
            return page(ctx, manager, 409 if isinstance(exc, Conflict) else 400, str(exc))
        return ctx.redirect(f"{PAGE}#voice", "Voice sample added.")

    @post(f"{PAGE}/samples/{{sample_id:str}}/delete", sync_to_thread=True)
    def delete_form(self, sample_id: FromPath[str], manager: Member, ctx: Deps) -> Redirect:
        voice.delete_sample(ctx.db, ctx.settings, manager.account.id, manager.role, sample_id)
        message = "Voice sample deleted, with its excerpts and its file."
        return ctx.redirect(f"{PAGE}#voice", message)


def _regenerated(ctx: Ctx, generated: Generated) -> Response:
    source = "Claude" if generated.prompt.source == "claude" else "the local template"
    message = f"Version {generated.prompt.version} written by {source}."
    return ctx.redirect(f"{PAGE}#changes", message, generated=generated.prompt.version)
