"""Billing over HTTP: the JSON API, the Billing page and the Stripe webhook.

Members see the balance and the usage; owners and admins also top up, set spend caps and
see top-ups and the saved card (others get 404 for those, like every manager route).
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from litestar import Controller, Request, Response, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.response import Template

from appliance.auth import service as auth
from appliance.billing import ledger, payments, service, webhooks
from appliance.clock import Clock
from appliance.config import Settings
from appliance.db import pooled
from appliance.errors import ApplianceError, InvalidInput
from appliance.instances import service as instances
from appliance.web.deps import Ctx, Deps, Form, Json, Member
from appliance.web.errors import rerenders
from appliance.web.identity import Identity
from appliance.web.team import visible_keys

log = logging.getLogger(__name__)


def _check_subject(db, account_id: str, data: dict[str, Any]) -> tuple[str, str]:
    """The cap's subject, which must be one of the account's instances or keys (else 404)."""
    if isinstance(data.get("instance_id"), str):
        instances.get(db, account_id, data["instance_id"])
        return "instance", data["instance_id"]
    if isinstance(data.get("key_id"), str):
        auth.get_key(db, account_id, data["key_id"])
        return "key", data["key_id"]
    raise InvalidInput("Give 'instance_id' or 'key_id', and 'monthly_usd' (null removes it).")


class BillingApi(Controller):
    path = "/api/billing"
    tags = ["billing"]

    @get("/", sync_to_thread=True)
    def summary(self, me: Member, ctx: Deps) -> dict:
        """Balance (``balance_microusd``, ``balance_usd``), open holds, prices, top-up
        limits; for owners and admins also the saved card (brand and last four digits)."""
        return service.summary(ctx.db, ctx.settings, me.account.id, me.role)

    @post("/checkout", status_code=201, sync_to_thread=True)
    def checkout(self, data: Json, manager: Member, ctx: Deps) -> dict:
        """Start a top-up: ``{"amount_usd": 20}`` → ``{"url", "topup"}``; open ``url``
        (Stripe Checkout). The balance is credited when Stripe reports the payment."""
        topup, url = _checkout(ctx, manager, data.get("amount_usd"))
        return {"url": url, "topup": topup.public()}

    @get("/topups", sync_to_thread=True)
    def topups(self, manager: Member, ctx: Deps) -> list[dict]:
        """Top-ups, newest first."""
        return [t.public() for t in payments.topups(ctx.db, manager.account.id)]

    @get("/topups/{topup_id:str}", sync_to_thread=True)
    def topup(self, topup_id: FromPath[str], manager: Member, ctx: Deps) -> dict:
        """One top-up (its status: pending, paid or failed)."""
        return payments.topup(ctx.db, manager.account.id, topup_id).public()

    @get("/ledger", sync_to_thread=True)
    def ledger_entries(self, manager: Member, ctx: Deps) -> list[dict]:
        """The latest 200 ledger entries (top-ups, usage, instance time, refunds…)."""
        return service.history(ctx.db, manager.account.id)

    @get("/usage", sync_to_thread=True)
    def usage(self, me: Member, ctx: Deps, days: FromQuery[int] = service.USAGE_DAYS) -> dict:
        """Usage per day (``days``, default 90), per instance and per API key."""
        return service.usage(ctx.db, me.account.id, ctx.now(), days)

    @get("/usage.csv", sync_to_thread=True)
    def usage_csv(self, me: Member, ctx: Deps) -> Response:
        """Every ledger entry of the last 90 days as CSV."""
        return _csv(ctx, me)

    @get("/caps", sync_to_thread=True)
    def caps(self, manager: Member, ctx: Deps) -> list[dict]:
        """Monthly spend caps of instances and API keys, with this month's spending."""
        return service.caps(ctx.db, manager.account.id, ctx.now())

    @put("/caps", sync_to_thread=True)
    def set_cap(self, data: Json, manager: Member, ctx: Deps) -> list[dict]:
        """``{"instance_id" | "key_id", "monthly_usd": "25.00" | null}``: requests beyond
        it get 402 until the month ends (UTC)."""
        subject, subject_id = _check_subject(ctx.db, manager.account.id, data)
        account = manager.account.id
        service.set_cap(ctx.db, account, subject, subject_id, data.get("monthly_usd"), ctx.now())
        return service.caps(ctx.db, manager.account.id, ctx.now())


def _checkout(ctx: Ctx, manager: Identity, amount_usd: Any) -> tuple[payments.Topup, str]:
    return payments.start_checkout(
        ctx.db,
        ctx.settings,
        account_id=manager.account.id,
        user_id=manager.user.id,
        amount_usd=amount_usd,
        now=ctx.now(),
    )


def _csv(ctx: Ctx, me: Identity) -> Response:
    return Response(
        service.usage_csv(ctx.db, me.account.id, ctx.now()),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="usage.csv"'},
    )


class StripeWebhook(Controller):
    include_in_schema = False

    @post("/stripe/webhook", status_code=200)
    async def webhook(
        self,
        request: Request,
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> dict:
        """Stripe's events, verified by signature on the raw body (no cookie, no CSRF)."""
        payload = await request.body()
        signature = request.headers.get("stripe-signature")

        def process() -> str:
            event = webhooks.verify_event(settings, payload, signature)
            with pooled(settings) as db:
                return webhooks.handle_event(db, settings, event, clock())

        outcome = await anyio.to_thread.run_sync(process)
        log.info("stripe webhook processed: %s", outcome)
        return {"received": True, "outcome": outcome}


def _context(ctx: Ctx, me: Identity) -> dict[str, Any]:
    db, now = ctx.db, ctx.now()
    usage = service.usage(db, me.account.id, now)
    names = {i.id: i.name for i in instances.list_instances(db, me.account.id)}
    keys = {k.id: f"{k.name} ({k.prefix}…)" for k in visible_keys(db, me)}
    return {
        "me": me,
        "summary": service.summary(db, ctx.settings, me.account.id, me.role),
        "usage": usage,
        "instance_names": names,
        "key_names": keys,
        "topups": payments.topups(db, me.account.id, 20) if me.is_manager else [],
        "usd": ledger.usd,
        "usd_precise": ledger.usd_precise,
        "caps": {
            (cap["subject"], cap["subject_id"]): cap
            for cap in (service.caps(db, me.account.id, now) if me.is_manager else [])
        },
        "cap_subjects": [("instance", i, f"instance {n}") for i, n in names.items()]
        + [("key", k, f"key {label}") for k, label in keys.items()],
    }


class BillingPages(Controller):
    include_in_schema = False

    @get("/billing", sync_to_thread=True)
    def page(self, me: Member, ctx: Deps, topup: FromQuery[str | None] = None) -> Template:
        context = _context(ctx, me)
        if topup and me.is_manager:
            # Back from Stripe Checkout (its success_url names the top-up).
            try:
                found = payments.topup(ctx.db, me.account.id, topup)
            except ApplianceError:
                found = None
            if found and found.status == "paid":
                amount = ledger.usd(found.amount_microusd)
                context["flashes"] = [("ok", f"Thank you: {amount} USD were added.")]
            elif found and found.status == "pending":
                confirming = "Stripe is confirming the payment; the balance updates shortly."
                context["flashes"] = [("info", confirming)]
        return Template("billing.html", context=context)

    @get("/billing/usage.csv", sync_to_thread=True)
    def usage_csv(self, me: Member, ctx: Deps) -> Response:
        return _csv(ctx, me)

    @post("/billing/checkout", sync_to_thread=True)
    @rerenders("billing.html", _context, ApplianceError)
    def checkout(self, data: Form, manager: Member, ctx: Deps) -> Response:
        topup, url = _checkout(ctx, manager, data.get("amount_usd", ""))
        # A page that moves on to Stripe rather than a redirect: the CSP's form-action
        # 'self' also covers redirects after a form is sent, and must stay as strict.
        return Template(
            "billing_redirect.html",
            context={"url": url, "amount_usd": ledger.usd(topup.amount_microusd)},
        )

    @post("/billing/caps", sync_to_thread=True)
    @rerenders("billing.html", _context)
    def set_cap_form(self, data: Form, manager: Member, ctx: Deps) -> Response:
        """The caps form: one instance or key per form; an empty amount removes the cap."""
        subject, account = data.get("subject", ""), manager.account.id
        key = "instance_id" if subject == "instance" else "key_id" if subject == "key" else ""
        if not key:
            raise InvalidInput("A cap is set on an instance or an API key.")
        _check_subject(ctx.db, account, {key: data.get("subject_id")})
        amount = (data.get("monthly_usd") or "").strip() or None
        service.set_cap(ctx.db, account, subject, data["subject_id"], amount, ctx.now())
        message = f"Monthly cap set to {amount} USD." if amount else "Monthly cap removed."
        return ctx.redirect("/billing#caps", message)
