"""The privacy policy page, policy acceptance, and Settings → My data (export, deletion)."""

from __future__ import annotations

from typing import Any

import msgspec
import sqlite_utils
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, URLEncodedBody
from litestar.response import File, Redirect, Template
from litestar.status_codes import HTTP_202_ACCEPTED

from appliance.auth import service as auth
from appliance.clock import Clock
from appliance.config import Settings
from appliance.errors import InvalidInput, NotFound
from appliance.privacy import erasure, export, policy
from appliance.tasks import TaskQueue
from appliance.web import flash
from appliance.web.identity import Identity, Person, client_address, local_path
from appliance.web.signin import clear_session_cookie


class Acceptance(msgspec.Struct):
    """The acceptance form: the policy version shown, and where to go next."""

    version: int
    next: str = "/"


class PrivacyPages(Controller):
    include_in_schema = False

    @get("/privacy", sync_to_thread=True)
    def privacy(
        self,
        request: Request,
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
        identity: NamedDependency[Identity | None],
    ) -> Template:
        """The privacy policy, public, with this install's values filled in."""
        now = clock()
        return Template(
            "privacy.html",
            context={
                "blocks": policy.blocks(policy.shown_text(db, settings, now)),
                "updated": policy.last_updated(db, now),
                "policy_version": policy.current(db, now),
                "upcoming": policy.upcoming(db, now),
            },
        )

    @get("/privacy/versions/{version:int}", sync_to_thread=True)
    def privacy_version(
        self, version: FromPath[int], db: NamedDependency[sqlite_utils.Database]
    ) -> Template:
        """A published version's exact text (the one coming, or an earlier one)."""
        found = next((v for v in policy.versions(db) if v.version == version), None)
        if found is None:
            raise NotFound("No such policy version.")
        return Template(
            "privacy.html",
            context={
                "blocks": policy.blocks(policy.text_of(db, version)),
                "updated": found.effective_at[:10],
                "policy_version": found,
                "upcoming": None,
            },
        )

    @get("/privacy/accept", sync_to_thread=True)
    def accept_form(
        self,
        person: NamedDependency[Person],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
        next: FromQuery[str] = "/",
    ) -> Response:
        """What changed in the policy now in effect, and a button to accept it."""
        version = policy.pending(db, person.user.id, clock())
        if version is None:
            return Redirect(local_path(next))
        return Template(
            "privacy_accept.html",
            context={
                "person": person,
                "policy_version": version,
                "next": local_path(next),
                "blocks": policy.blocks(policy.text_of(db, version.version)),
            },
        )

    @post("/privacy/accept", sync_to_thread=True)
    def accept(
        self,
        data: URLEncodedBody[Acceptance],
        person: NamedDependency[Person],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> Redirect:
        """Record acceptance of the version in effect (400 when ``version`` is no number)."""
        policy.accept(db, person.user.id, data.version, clock())
        return Redirect(local_path(data.next))


def send_deletion_code(
    request: Request,
    me: Identity,
    db: sqlite_utils.Database,
    settings: Settings,
    queue: TaskQueue,
    now,
) -> str:
    """Email the owner a fresh one-time code that confirms deleting the account."""
    if not me.is_owner:
        raise NotFound("Only an owner can delete the account.")
    attempt = auth.request_code(db, settings, me.user.email, client_address(request), now)
    queue.send_mail(
        "deletion_code",
        me.user.email,
        {"code": attempt.code, "minutes": settings.auth.code_ttl_minutes},
    )
    return attempt.attempt_id


def delete_account(
    request: Request,
    me: Identity,
    db: sqlite_utils.Database,
    settings: Settings,
    attempt_id: str,
    code: str,
    now,
) -> erasure.Deletion:
    """Check the code, then lock the account (erased by the next purge)."""
    if not me.is_owner:
        raise NotFound("Only an owner can delete the account.")
    auth.verify_code(db, settings, attempt_id, me.user.email, code, client_address(request), now)
    return erasure.request_deletion(
        db,
        settings,
        me.account.id,
        requested_by=me.user.id,
        request="owner via Settings → My data",
        notify_email=me.user.email,
        now=now,
    )


def start_export(
    me: Identity, db: sqlite_utils.Database, settings: Settings, queue: TaskQueue, now
) -> export.Export:
    job = export.start(db, settings, me.account.id, me.user.id, now)
    queue.build_export(job.id)
    return export.get(db, me.account.id, me.user.id, job.id)


class PrivacyApi(Controller):
    path = "/api/me"
    tags = ["privacy"]

    @post("/export", status_code=HTTP_202_ACCEPTED, sync_to_thread=True)
    def create_export(
        self,
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        queue: NamedDependency[TaskQueue],
        clock: NamedDependency[Clock],
    ) -> dict:
        """Start building a ZIP of everything held about you (and the account, for an
        owner). Poll ``GET /api/me/export`` for progress and the download link."""
        return start_export(me, db, settings, queue, clock()).public()

    @get("/export", sync_to_thread=True)
    def latest_export(
        self,
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
    ) -> dict:
        """Your latest export: status, progress, and the download link once ready."""
        found = export.latest(db, me.account.id, me.user.id)
        if found is None:
            raise NotFound("No export yet: POST /api/me/export to start one.")
        return found.public()

    @get("/export/{export_id:str}", sync_to_thread=True)
    def export_status(
        self,
        export_id: FromPath[str],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
    ) -> dict:
        return export.get(db, me.account.id, me.user.id, export_id).public()

    @get("/export/{export_id:str}/download", sync_to_thread=True)
    def download_export(
        self,
        export_id: FromPath[str],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> File:
        """The ZIP (until it expires: ``privacy.export_ttl_hours``)."""
        path = export.download_path(db, settings, me.account.id, me.user.id, export_id, clock())
        return File(
            path=path,
            filename=f"my-data-{export_id}.zip",
            media_type="application/zip",
            headers={"Cache-Control": "no-store"},
        )

    @post("/policy/accept", status_code=200, sync_to_thread=True)
    def accept_policy(
        self,
        data: JSONBody[dict[str, Any]],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> dict:
        """Record that you accepted the policy version now in effect."""
        version = data.get("version") if isinstance(data, dict) else None
        if not isinstance(version, int):
            raise InvalidInput('Send {"version": N}.')
        policy.accept(db, me.user.id, version, clock())
        return {"accepted": version}

    @get("/policy", sync_to_thread=True)
    def policy_state(
        self,
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> dict:
        """The policy version in effect and whether you still need to accept it."""
        current = policy.current(db, clock())
        pending = policy.pending(db, me.user.id, clock())
        return {
            "version": current.version if current else None,
            "effective_at": current.effective_at if current else None,
            "acceptance_required": pending is not None,
            "url": "/privacy",
        }

    @post("/deletion-code", status_code=HTTP_202_ACCEPTED, sync_to_thread=True)
    def deletion_code(
        self,
        request: Request,
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        queue: NamedDependency[TaskQueue],
        clock: NamedDependency[Clock],
    ) -> dict:
        """Email the owner a one-time code; send it with ``POST /api/me/deletion``."""
        attempt_id = send_deletion_code(request, me, db, settings, queue, clock())
        return {"attempt_id": attempt_id, "minutes": settings.auth.code_ttl_minutes}

    @post("/deletion", status_code=200, sync_to_thread=True)
    def delete_account(
        self,
        request: Request,
        data: JSONBody[dict[str, Any]],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> Response:
        """Delete the account (owner; ``{"attempt_id", "code"}`` from the emailed code).
        It is locked at once; its data is erased by the next purge."""
        if not isinstance(data, dict):
            raise InvalidInput('Send {"attempt_id": "...", "code": "123456"}.')
        found = delete_account(
            request,
            me,
            db,
            settings,
            str(data.get("attempt_id", "")),
            str(data.get("code", "")),
            clock(),
        )
        response = Response(
            {"status": "deleted", "erase_by": found.due_at, "account_id": found.account_id}
        )
        return clear_session_cookie(response, settings)


class MyDataPages(Controller):
    include_in_schema = False

    def _page(self, me, db, settings, clock, **extra) -> Template:
        context = {
            "me": me,
            "export": export.latest(db, me.account.id, me.user.id),
            "erase_days": settings.privacy.erase_window_days,
            "ttl_hours": settings.privacy.export_ttl_hours,
            "attempt_id": None,
            "flashes": [],
        }
        context.update(extra)
        return Template("my_data.html", context=context, status_code=extra.pop("status", 200))

    @get("/settings/data", sync_to_thread=True)
    def page(
        self,
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> Template:
        return self._page(me, db, settings, clock)

    @post("/settings/data/export", sync_to_thread=True)
    def export_form(
        self,
        request: Request,
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        queue: NamedDependency[TaskQueue],
        clock: NamedDependency[Clock],
    ) -> Redirect:
        start_export(me, db, settings, queue, clock())
        return flash.redirect(request, "/settings/data#export", "Export started.")

    @post("/settings/data/delete/code", sync_to_thread=True)
    def delete_code_form(
        self,
        request: Request,
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        queue: NamedDependency[TaskQueue],
        clock: NamedDependency[Clock],
    ) -> Redirect:
        attempt_id = send_deletion_code(request, me, db, settings, queue, clock())
        message = f"We emailed a one-time code to {me.user.email}."
        return flash.redirect(request, "/settings/data#delete", message, attempt_id=attempt_id)

    @post("/settings/data/delete", sync_to_thread=True)
    def delete_form(
        self,
        request: Request,
        data: URLEncodedBody[dict[str, str]],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> Response:
        attempt_id = data.get("attempt_id", "")
        try:
            found = delete_account(
                request, me, db, settings, attempt_id, data.get("code", ""), clock()
            )
        except auth.InvalidCode as exc:
            return self._page(
                me,
                db,
                settings,
                clock,
                attempt_id=attempt_id,
                flashes=[("error", str(exc))],
                status=400,
            )
        response = Template("account_deleted.html", context={"erase_by": found.due_at[:10]})
        return clear_session_cookie(response, settings)
