"""The privacy policy page, policy acceptance, and Settings → My data (export, deletion)."""

from __future__ import annotations

import msgspec
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, URLEncodedBody
from litestar.response import File, Redirect, Template
from litestar.status_codes import HTTP_202_ACCEPTED

from appliance.auth import service as auth
from appliance.errors import InvalidInput, NotFound
from appliance.privacy import erasure, export, policy
from appliance.web.deps import Ctx, Deps, Form, Json, Member, SignedIn
from appliance.web.errors import form_error
from appliance.web.identity import Identity, client_address, local_path
from appliance.web.signin import clear_session_cookie


class Acceptance(msgspec.Struct):
    """The acceptance form: the policy version shown, and where to go next."""

    version: int
    next: str = "/"


class PrivacyPages(Controller):
    include_in_schema = False

    @get("/privacy", sync_to_thread=True)
    def privacy(self, ctx: Deps, identity: NamedDependency[Identity | None]) -> Template:
        """The privacy policy, public, with this install's values filled in."""
        db, now = ctx.db, ctx.now()
        text = policy.shown_text(db, ctx.settings, now)
        updated, version = policy.last_updated(db, now), policy.current(db, now)
        return _policy_page(text, updated, version, policy.upcoming(db, now))

    @get("/privacy/versions/{version:int}", sync_to_thread=True)
    def privacy_version(self, version: FromPath[int], ctx: Deps) -> Template:
        """A published version's exact text (the one coming, or an earlier one)."""
        db = ctx.db
        found = next((v for v in policy.versions(db) if v.version == version), None)
        if found is None:
            raise NotFound("No such policy version.")
        return _policy_page(policy.text_of(db, version), found.effective_at[:10], found)

    @get("/privacy/accept", sync_to_thread=True)
    def accept_form(self, person: SignedIn, ctx: Deps, next: FromQuery[str] = "/") -> Response:
        """What changed in the policy now in effect, and a button to accept it."""
        version = policy.pending(ctx.db, person.user.id, ctx.now())
        if version is None:
            return Redirect(local_path(next))
        return Template(
            "privacy_accept.html",
            context={
                "person": person,
                "policy_version": version,
                "next": local_path(next),
                "blocks": policy.blocks(policy.text_of(ctx.db, version.version)),
            },
        )

    @post("/privacy/accept", sync_to_thread=True)
    def accept(self, data: URLEncodedBody[Acceptance], person: SignedIn, ctx: Deps) -> Redirect:
        """Record acceptance of the version in effect (400 when ``version`` is no number)."""
        policy.accept(ctx.db, person.user.id, data.version, ctx.now())
        return Redirect(local_path(data.next))


def _policy_page(text: str, updated: str, version, upcoming=None) -> Template:
    return Template(
        "privacy.html",
        context={
            "blocks": policy.blocks(text),
            "updated": updated,
            "policy_version": version,
            "upcoming": upcoming,
        },
    )


def provide_owner(me: Member) -> Identity:
    """The caller, an owner of the account: only owners delete it (404 for anyone else)."""
    if not me.is_owner:
        raise NotFound("Only an owner can delete the account.")
    return me


OWNER = {"owner": Provide(provide_owner, sync_to_thread=False)}


def send_deletion_code(ctx: Ctx, me: Identity) -> str:
    """Email the owner a fresh one-time code that confirms deleting the account."""
    address = client_address(ctx.request)
    attempt = auth.request_code(ctx.db, ctx.settings, me.user.email, address, ctx.now())
    mail = {"code": attempt.code, "minutes": ctx.settings.auth.code_ttl_minutes}
    ctx.queue.send_mail("deletion_code", me.user.email, mail)
    return attempt.attempt_id


def delete_account(ctx: Ctx, me: Identity, attempt_id: str, code: str) -> erasure.Deletion:
    """Check the code, then lock the account (erased by the next purge)."""
    db, settings, now = ctx.db, ctx.settings, ctx.now()
    auth.verify_code(
        db, settings, attempt_id, me.user.email, code, client_address(ctx.request), now
    )
    return erasure.request_deletion(
        db,
        settings,
        me.account.id,
        requested_by=me.user.id,
        request="owner via Settings → My data",
        notify_email=me.user.email,
        now=now,
    )


def start_export(ctx: Ctx, me: Identity) -> export.Export:
    job = export.start(ctx.db, ctx.settings, me.account.id, me.user.id, ctx.now())
    ctx.queue.build_export(job.id)
    return export.get(ctx.db, me.account.id, me.user.id, job.id)


class PrivacyApi(Controller):
    path = "/api/me"
    tags = ["privacy"]
    dependencies = OWNER

    @post("/export", status_code=HTTP_202_ACCEPTED, sync_to_thread=True)
    def create_export(self, me: Member, ctx: Deps) -> dict:
        """Start building a ZIP of everything held about you (and the account, for an
        owner). Poll ``GET /api/me/export`` for progress and the download link."""
        return start_export(ctx, me).public()

    @get("/export", sync_to_thread=True)
    def latest_export(self, me: Member, ctx: Deps) -> dict:
        """Your latest export: status, progress, and the download link once ready."""
        found = export.latest(ctx.db, me.account.id, me.user.id)
        if found is None:
            raise NotFound("No export yet: POST /api/me/export to start one.")
        return found.public()

    @get("/export/{export_id:str}", sync_to_thread=True)
    def export_status(self, export_id: FromPath[str], me: Member, ctx: Deps) -> dict:
        return export.get(ctx.db, me.account.id, me.user.id, export_id).public()

    @get("/export/{export_id:str}/download", sync_to_thread=True)
    def download_export(self, export_id: FromPath[str], me: Member, ctx: Deps) -> File:
        """The ZIP (until it expires: ``privacy.export_ttl_hours``)."""
        ids = (me.account.id, me.user.id, export_id)
        return File(
            path=export.download_path(ctx.db, ctx.settings, *ids, ctx.now()),
            filename=f"my-data-{export_id}.zip",
            media_type="application/zip",
            headers={"Cache-Control": "no-store"},
        )

    @post("/policy/accept", status_code=200, sync_to_thread=True)
    def accept_policy(self, data: Json, me: Member, ctx: Deps) -> dict:
        """Record that you accepted the policy version now in effect."""
        version = data.get("version")
        if not isinstance(version, int):
            raise InvalidInput('Send {"version": N}.')
        policy.accept(ctx.db, me.user.id, version, ctx.now())
        return {"accepted": version}

    @get("/policy", sync_to_thread=True)
    def policy_state(self, me: Member, ctx: Deps) -> dict:
        """The policy version in effect and whether you still need to accept it."""
        current = policy.current(ctx.db, ctx.now())
        pending = policy.pending(ctx.db, me.user.id, ctx.now())
        return {
            "version": current.version if current else None,
            "effective_at": current.effective_at if current else None,
            "acceptance_required": pending is not None,
            "url": "/privacy",
        }

    @post("/deletion-code", status_code=HTTP_202_ACCEPTED, sync_to_thread=True)
    def deletion_code(self, owner: Member, ctx: Deps) -> dict:
        """Email the owner a one-time code; send it with ``POST /api/me/deletion``."""
        attempt_id = send_deletion_code(ctx, owner)
        return {"attempt_id": attempt_id, "minutes": ctx.settings.auth.code_ttl_minutes}

    @post("/deletion", status_code=200, sync_to_thread=True)
    def delete_account(self, data: Json, owner: Member, ctx: Deps) -> Response:
        """Delete the account (owner; ``{"attempt_id", "code"}`` from the emailed code).
        It is locked at once; its data is erased by the next purge."""
        attempt_id, code = str(data.get("attempt_id", "")), str(data.get("code", ""))
        found = delete_account(ctx, owner, attempt_id, code)
        response = Response(
            {"status": "deleted", "erase_by": found.due_at, "account_id": found.account_id}
        )
        return clear_session_cookie(response, ctx.settings)


class MyDataPages(Controller):
    include_in_schema = False
    dependencies = OWNER

    @get("/settings/data", sync_to_thread=True)
    def page(self, me: Member, ctx: Deps) -> Template:
        return Template("my_data.html", context=_my_data(ctx, me))

    @post("/settings/data/export", sync_to_thread=True)
    def export_form(self, me: Member, ctx: Deps) -> Redirect:
        start_export(ctx, me)
        return ctx.redirect("/settings/data#export", "Export started.")

    @post("/settings/data/delete/code", sync_to_thread=True)
    def delete_code_form(self, owner: Member, ctx: Deps) -> Redirect:
        attempt_id = send_deletion_code(ctx, owner)
        message = f"We emailed a one-time code to {owner.user.email}."
        return ctx.redirect("/settings/data#delete", message, attempt_id=attempt_id)

    @post("/settings/data/delete", sync_to_thread=True)
    def delete_form(self, data: Form, owner: Member, ctx: Deps) -> Response:
        attempt_id = data.get("attempt_id", "")
        try:
            found = delete_account(ctx, owner, attempt_id, data.get("code", ""))
        except auth.InvalidCode as exc:
            return form_error("my_data.html", _my_data(ctx, owner, attempt_id), exc)
        response = Template("account_deleted.html", context={"erase_by": found.due_at[:10]})
        return clear_session_cookie(response, ctx.settings)


def _my_data(ctx: Ctx, me: Identity, attempt_id: str | None = None) -> dict:
    return {
        "me": me,
        "export": export.latest(ctx.db, me.account.id, me.user.id),
        "erase_days": ctx.settings.privacy.erase_window_days,
        "ttl_hours": ctx.settings.privacy.export_ttl_hours,
        "attempt_id": attempt_id,
        "flashes": [],
    }
