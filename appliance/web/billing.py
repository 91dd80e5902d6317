"""Billing over HTTP: the JSON API, the Billing page and the Stripe webhook.

Members see the balance and the usage; owners and admins also top up, set spend caps and
see top-ups and the saved card (others get 404 for those, like every manager route).
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import sqlite_utils
from litestar import Controller, Request, Response, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, URLEncodedBody
from litestar.response import Redirect, Template
from markupsafe import Markup, escape

from appliance.auth import service as auth
from appliance.billing import ledger, meter, payments, service
from appliance.clock import Clock
from appliance.config import Settings
from appliance.db import open_db
from appliance.errors import ApplianceError, InvalidInput
from appliance.inference.client import InferenceClient
from appliance.instances import service as instances
from appliance.web.identity import Identity

log = logging.getLogger(__name__)


#: Tokens a chat template adds per message, on top of the content (an upper bound).
TEMPLATE_TOKENS_PER_MESSAGE = 8


class Metered:
    """One inference request's hold: ``start`` reserves before the model runs (402 when
    the credit or a spend cap does not cover it), ``finish`` settles what was used or, if
    nothing was produced, releases the hold. ``finish`` runs shielded from cancellation
    on its own connection, so a client that hangs up is still charged for what it got;
    a hold that is never finished is released by the worker after
    ``billing.hold_timeout_seconds``."""

    def __init__(self, settings: Settings, hold: meter.Hold, prompt_tokens: int, clock: Clock):
        self.settings = settings
        self.hold = hold
        self.prompt_tokens = prompt_tokens
        self.clock = clock
        self.finished = False

    @classmethod
    async def start(
        cls,
        db: sqlite_utils.Database,
        settings: Settings,
        inference: InferenceClient,
        identity: Identity,
        instance: Any,
        payload: dict[str, Any],
        clock: Clock,
        prompt_tokens: int | None = None,
    ) -> Metered:
        """``prompt_tokens``: the prompt as counted when it was assembled (chat and /v1
        already know it); counted here otherwise."""

        def reserve() -> Metered:
            if prompt_tokens is not None:
                counted = prompt_tokens
            elif not settings.billing.enabled:
                counted = 0
            else:
                texts = [str(m.get("content") or "") for m in payload["messages"]]
                counts = _token_counts(inference, texts, "chat")
                counted = sum(counts) + TEMPLATE_TOKENS_PER_MESSAGE * (len(texts) + 1)
            hold = meter.reserve(
                db,
                settings,
                account_id=identity.account.id,
                instance_id=instance.id,
                key_id=identity.key.id if identity.key else None,
                model=instance.model,
                prompt_tokens=counted,
                max_completion_tokens=int(payload.get("max_tokens") or 0),
                now=clock(),
            )
            return cls(settings, hold, counted, clock)

        return await anyio.to_thread.run_sync(reserve)

    async def finish(self, usage: dict[str, Any] | None, produced: int = 0) -> None:
        """Settle ``usage`` (OpenAI's usage object), or ``produced`` completion tokens
        when the request ended without one; release when nothing was produced."""
        if self.finished:
            return
        self.finished = True

        def close() -> None:
            db = open_db(self.settings)
            try:
                if usage:
                    meter.settle(
                        db,
                        self.settings,
                        self.hold,
                        prompt_tokens=int(usage.get("prompt_tokens") or 0),
                        completion_tokens=int(usage.get("completion_tokens") or 0),
                        now=self.clock(),
                    )
                elif produced:
                    meter.settle(
                        db,
                        self.settings,
                        self.hold,
                        prompt_tokens=self.prompt_tokens,
                        completion_tokens=produced,
                        now=self.clock(),
                    )
                else:
                    meter.release(db, self.hold, now=self.clock())
            finally:
                db.close()

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(close)

    def observe(self, inference: InferenceClient) -> _ObservedClient:
        """``inference`` for a streaming relay: the stream's usage chunk (or the count of
        chunks with content, if the client hangs up early) settles the hold when the
        stream ends. A stream the inference service itself breaks off (it crashed, or
        answered with an error) is an answer the client did not get: the hold is released
        and nothing is charged."""
        return _ObservedClient(inference, self)


def _token_counts(inference: InferenceClient, texts: list[str], model: str) -> list[int]:
    """Token counts in the model's tokenizer, or an estimate where the server can't tell."""
    counts = inference.count_tokens(texts, model=model)
    return counts if counts is not None else [len(t.encode()) // 2 + 1 for t in texts]


def embed_metered(
    db: sqlite_utils.Database,
    settings: Settings,
    inference: InferenceClient,
    identity: Identity,
    instance: Any,
    texts: list[str],
    clock: Clock,
) -> tuple[list[list[float]], int]:
    """``/v1/embeddings`` under the same hold and settle as chat (``meter.EMBEDDINGS``):
    402 when the credit or the instance's or key's spend cap does not cover the input.
    Returns the vectors and the input tokens charged."""
    counted = 0
    if settings.billing.enabled:
        limit = settings.inference.embedding_max_tokens  # longer texts are cut to this
        counted = sum(min(n, limit) for n in _token_counts(inference, texts, "embedding"))
    hold = meter.reserve(
        db,
        settings,
        account_id=identity.account.id,
        instance_id=instance.id,
        key_id=identity.key.id if identity.key else None,
        model=meter.EMBEDDINGS,
        prompt_tokens=counted,
        max_completion_tokens=0,
        now=clock(),
    )
    try:
        vectors, tokens = inference.embed_counted(texts, account_id=identity.account.id)
    except BaseException:
        meter.release(db, hold, now=clock())
        raise
    used = tokens if tokens is not None else counted
    meter.settle(db, settings, hold, prompt_tokens=used, completion_tokens=0, now=clock())
    return vectors, used


class _ObservedClient:
    def __init__(self, inner: InferenceClient, metered: Metered):
        self.inner = inner
        self.metered = metered

    async def astream_chat(self, body: dict[str, Any], **kwargs: Any):
        usage = None
        produced = 0
        try:
            async for chunk in self.inner.astream_chat(body, **kwargs):
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        produced += 1
                yield chunk
        except ApplianceError:
            usage, produced = None, 0
            raise
        finally:
            await self.metered.finish(usage, produced)


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
    def summary(
        self,
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
    ) -> dict:
        """Balance (``balance_microusd``, ``balance_usd``), open holds, prices, top-up
        limits; for owners and admins also the saved card (brand and last four digits)."""
        return service.summary(db, settings, me.account.id, me.role)

    @post("/checkout", status_code=201, sync_to_thread=True)
    def checkout(
        self,
        data: JSONBody[dict[str, Any]],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> dict:
        """Start a top-up: ``{"amount_usd": 20}`` → ``{"url", "topup"}``; open ``url``
        (Stripe Checkout). The balance is credited when Stripe reports the payment."""
        topup, url = payments.start_checkout(
            db,
            settings,
            account_id=manager.account.id,
            user_id=manager.user.id,
            amount_usd=data.get("amount_usd"),
            now=clock(),
        )
        return {"url": url, "topup": topup.public()}

    @get("/topups", sync_to_thread=True)
    def topups(
        self, manager: NamedDependency[Identity], db: NamedDependency[sqlite_utils.Database]
    ) -> list[dict]:
        """Top-ups, newest first."""
        return [t.public() for t in payments.topups(db, manager.account.id)]

    @get("/topups/{topup_id:str}", sync_to_thread=True)
    def topup(
        self,
        topup_id: FromPath[str],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
    ) -> dict:
        """One top-up (its status: pending, paid or failed)."""
        return payments.topup(db, manager.account.id, topup_id).public()

    @get("/ledger", sync_to_thread=True)
    def ledger_entries(
        self, manager: NamedDependency[Identity], db: NamedDependency[sqlite_utils.Database]
    ) -> list[dict]:
        """The latest 200 ledger entries (top-ups, usage, instance time, refunds…)."""
        return service.history(db, manager.account.id)

    @get("/usage", sync_to_thread=True)
    def usage(
        self,
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
        days: FromQuery[int] = service.USAGE_DAYS,
    ) -> dict:
        """Usage per day (``days``, default 90), per instance and per API key."""
        return service.usage(db, me.account.id, clock(), days)

    @get("/usage.csv", sync_to_thread=True)
    def usage_csv(
        self,
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> Response:
        """Every ledger entry of the last 90 days as CSV."""
        return _csv(service.usage_csv(db, me.account.id, clock()))

    @get("/caps", sync_to_thread=True)
    def caps(
        self,
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> list[dict]:
        """Monthly spend caps of instances and API keys, with this month's spending."""
        return service.caps(db, manager.account.id, clock())

    @put("/caps", sync_to_thread=True)
    def set_cap(
        self,
        data: JSONBody[dict[str, Any]],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> list[dict]:
        """``{"instance_id" | "key_id", "monthly_usd": "25.00" | null}``: requests beyond
        it get 402 until the month ends (UTC)."""
        subject, subject_id = _check_subject(db, manager.account.id, data)
        service.set_cap(
            db, manager.account.id, subject, subject_id, data.get("monthly_usd"), clock()
        )
        return service.caps(db, manager.account.id, clock())


def _csv(text: str) -> Response:
    return Response(
        text,
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
            event = payments.verify_event(settings, payload, signature)
            db = open_db(settings)
            try:
                return payments.handle_event(db, settings, event, clock())
            finally:
                db.close()

        outcome = await anyio.to_thread.run_sync(process)
        log.info("stripe webhook processed: %s", outcome)
        return {"received": True, "outcome": outcome}


def usage_chart(days: list[dict[str, Any]]) -> Markup:
    """The usage per day as an SVG bar chart (cost, or tokens while nothing is charged)."""
    by_cost = any(d["cost_microusd"] for d in days)
    values = [
        d["cost_microusd"] if by_cost else d["prompt_tokens"] + d["completion_tokens"] for d in days
    ]
    width, height, top = 720, 160, 12
    step = width / max(1, len(days))
    peak = max(values) if values and max(values) > 0 else 1
    unit = "USD" if by_cost else "tokens"
    bars = []
    for index, (day, value) in enumerate(zip(days, values, strict=True)):
        bar = (height - top) * value / peak
        label = ledger.usd_precise(value) + " USD" if by_cost else f"{value:,} tokens"
        bars.append(
            f'<rect x="{index * step:.1f}" y="{height - bar:.1f}" width="{max(1.0, step - 1):.1f}" '
            f'height="{bar:.1f}" class="bar"><title>{escape(day["date"])}: '
            f"{escape(label)}</title></rect>"
        )
    peak_label = ledger.usd_precise(peak) if by_cost else f"{peak:,}"
    first, last = (days[0]["date"], days[-1]["date"]) if days else ("", "")
    # Every interpolated value is a number or passed through escape().
    return Markup(  # noqa: S704
        f'<svg class="usage-chart" viewBox="0 -2 {width} {height + 22}" role="img" '
        f'aria-label="Usage per day in {unit}, {escape(first)} to {escape(last)}" '
        f'xmlns="http://www.w3.org/2000/svg">'
        f'<line x1="0" y1="{height}" x2="{width}" y2="{height}" class="axis"/>'
        f'<text x="0" y="{top - 2}" class="peak">{escape(peak_label)} {unit}</text>'
        + "".join(bars)
        + f'<text x="0" y="{height + 16}" class="date">{escape(first)}</text>'
        f'<text x="{width}" y="{height + 16}" text-anchor="end" class="date">'
        f"{escape(last)}</text></svg>"
    )


class BillingPages(Controller):
    include_in_schema = False

    @get("/billing", sync_to_thread=True)
    def page(
        self,
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
        topup: FromQuery[str | None] = None,
    ) -> Template:
        context = _context(db, settings, me, clock)
        if topup and me.is_manager:
            # Back from Stripe Checkout (its success_url names the top-up).
            try:
                found = payments.topup(db, me.account.id, topup)
            except ApplianceError:
                found = None
            if found and found.status == "paid":
                amount = ledger.usd(found.amount_microusd)
                context["flashes"] = [("ok", f"Thank you: {amount} USD were added.")]
            elif found and found.status == "pending":
                context["flashes"] = [
                    ("info", "Stripe is confirming the payment; the balance updates shortly.")
                ]
        return Template("billing.html", context=context)

    @get("/billing/usage.csv", sync_to_thread=True)
    def usage_csv(
        self,
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> Response:
        return _csv(service.usage_csv(db, me.account.id, clock()))

    @post("/billing/checkout", sync_to_thread=True)
    def checkout(
        self,
        data: URLEncodedBody[dict[str, str]],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> Response:
        try:
            topup, url = payments.start_checkout(
                db,
                settings,
                account_id=manager.account.id,
                user_id=manager.user.id,
                amount_usd=data.get("amount_usd", ""),
                now=clock(),
            )
        except ApplianceError as exc:
            context = _context(db, settings, manager, clock)
            context["flashes"] = [("error", str(exc))]
            return Template("billing.html", context=context, status_code=400)
        # A page that moves on to Stripe rather than a redirect: the CSP's form-action
        # 'self' also covers redirects after a form is sent, and must stay as strict.
        return Template(
            "billing_redirect.html",
            context={"url": url, "amount_usd": ledger.usd(topup.amount_microusd)},
        )

    @post("/billing/caps", sync_to_thread=True)
    def set_cap_form(
        self,
        data: URLEncodedBody[dict[str, str]],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> Response:
        """The caps form: one instance or key per form; an empty amount removes the cap."""
        subject = data.get("subject", "")
        key = "instance_id" if subject == "instance" else "key_id" if subject == "key" else ""
        try:
            if not key:
                raise InvalidInput("A cap is set on an instance or an API key.")
            _check_subject(db, manager.account.id, {key: data.get("subject_id")})
            amount = (data.get("monthly_usd") or "").strip() or None
            service.set_cap(db, manager.account.id, subject, data["subject_id"], amount, clock())
        except InvalidInput as exc:
            context = _context(db, settings, manager, clock)
            context["flashes"] = [("error", str(exc))]
            return Template("billing.html", context=context, status_code=400)
        return Redirect("/billing#caps")


def _context(db, settings: Settings, me: Identity, clock: Clock) -> dict[str, Any]:
    now = clock()
    usage = service.usage(db, me.account.id, now)
    names = {i.id: i.name for i in instances.list_instances(db, me.account.id)}
    keys = {
        k.id: f"{k.name} ({k.prefix}…)"
        for k in auth.list_keys(db, me.account.id, None if me.is_manager else me.user.id)
    }
    return {
        "me": me,
        "summary": service.summary(db, settings, me.account.id, me.role),
        "usage": usage,
        "chart": usage_chart(usage["days"]),
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
