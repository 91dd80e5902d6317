"""A local HTTP server standing in for Stripe's API: it records every request the real
``stripe`` library sends and answers with small, Stripe-shaped objects."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from conftest import JSONHandler, serving


@dataclass
class Recorded:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]


@dataclass
class StripeStandIn:
    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    #: Sessions listed by GET /v1/checkout/sessions (for reconciliation).
    listed_sessions: list[dict] = field(default_factory=list)
    payment_intent_status: str = "succeeded"
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: int = 0

    def next_id(self, prefix: str) -> str:
        with self.lock:
            self.counter += 1
            return f"{prefix}_test_{self.counter}"

    def calls(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == path]


def _handler(state: StripeStandIn):
    class Handler(JSONHandler):
        def _record(self) -> Recorded:
            parts = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            params = dict(parse_qsl(body or parts.query, keep_blank_values=True))
            recorded = Recorded(
                self.command, parts.path, params, {k.lower(): v for k, v in self.headers.items()}
            )
            state.requests.append(recorded)
            return recorded

        def do_GET(self) -> None:
            recorded = self._record()
            path = recorded.path
            if path.startswith("/pay/"):
                raw = b"<!doctype html><title>Stripe stand-in</title><h1>Pay here</h1>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
            elif path == "/v1/checkout/sessions":
                self.send_json(
                    {
                        "object": "list",
                        "url": "/v1/checkout/sessions",
                        "has_more": False,
                        "data": state.listed_sessions,
                    }
                )
            elif path.startswith("/v1/payment_intents/"):
                self.send_json(
                    {
                        "id": path.rsplit("/", 1)[1],
                        "object": "payment_intent",
                        "payment_method": {
                            "id": "pm_test_card",
                            "object": "payment_method",
                            "card": {"brand": "visa", "last4": "4242"},
                        },
                    }
                )
            else:
                self.send_json({"error": {"message": "unknown"}}, 404)

        def do_POST(self) -> None:
            recorded = self._record()
            path, params = recorded.path, recorded.params
            if path == "/v1/customers":
                self.send_json({"id": "cus_test_1", "object": "customer"})
            elif path == "/v1/checkout/sessions":
                session_id = state.next_id("cs")
                self.send_json(
                    {
                        "id": session_id,
                        "object": "checkout.session",
                        "url": f"{state.url}/pay/{session_id}",
                        "status": "open",
                        "payment_status": "unpaid",
                        "currency": params.get("line_items[0][price_data][currency]"),
                        "amount_total": int(params["line_items[0][price_data][unit_amount]"]),
                        "client_reference_id": params.get("client_reference_id"),
                        "customer": params.get("customer"),
                    }
                )
            elif path == "/v1/payment_intents":
                amount = int(params["amount"])
                succeeded = state.payment_intent_status == "succeeded"
                self.send_json(
                    {
                        "id": state.next_id("pi"),
                        "object": "payment_intent",
                        "status": state.payment_intent_status,
                        "amount": amount,
                        "amount_received": amount if succeeded else 0,
                    }
                )
            else:
                self.send_json({"error": {"message": "unknown"}}, 404)

    return Handler


@contextlib.contextmanager
def running() -> Iterator[StripeStandIn]:
    """The stand-in, served until the block ends."""
    state = StripeStandIn()
    with serving(_handler(state)) as state.url:
        yield state


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header, made the way Stripe makes it."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def session_object(topup_id: str, session_id: str, *, paid=True, cents=2500) -> dict:
    """A Checkout Session as a webhook event carries it, for the top-up ``topup_id``."""
    return {
        "id": session_id,
        "object": "checkout.session",
        "client_reference_id": topup_id,
        "payment_status": "paid" if paid else "unpaid",
        "status": "complete",
        "amount_total": cents,
        "currency": "usd",
        "customer": "cus_test_1",
        "payment_intent": f"pi_for_{session_id}",
    }


def event(event_id: str, kind: str, obj: dict) -> bytes:
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": kind,
            "created": int(time.time()),
            "livemode": False,
            "api_version": "2024-06-20",
            "data": {"object": obj},
        }
    ).encode()
