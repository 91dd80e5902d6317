"""The privacy policy: rendered from ``appliance/webui/templates/policy/privacy.md``, this
appliance's configuration and its operator's details, published in versions that every
user is told about before they take effect (docs/privacy.md).

``facts`` is the one place that reads the settings the text depends on. A version
records the text's SHA-256, so publishing the same text twice is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import jinja2
from sqlite_utils import Database

import appliance
from appliance.accounts import service as accounts
from appliance.billing import payments
from appliance.clock import iso, parse
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import Conflict, InvalidInput, NotFound

TEMPLATE = Path(appliance.__file__).resolve().parent / "webui/templates/policy/privacy.md"
PRODUCT = "Private AI"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
MAX_OPERATOR_NAME = 100


@dataclass(frozen=True)
class Operator:
    """Who runs the appliance, as the policy names them."""

    name: str
    contact: str
    updated_at: str | None = None


@dataclass(frozen=True)
class PolicyVersion:
    version: int
    text_sha256: str
    published_at: str
    effective_at: str
    summary: str


@dataclass(frozen=True)
class Block:
    """One piece of the rendered policy: ``h2``, ``h3``, ``p`` or ``ul`` (``items``)."""

    kind: str
    text: str = ""
    items: tuple[str, ...] = ()


def operator(db: Database, settings: Settings) -> Operator:
    """The operator's name and privacy contact: as given in the first-run setup or on
    /admin, else ``privacy.company_legal_name`` and ``privacy.contact_email``; no name
    (the policy says "the operator"), and the first operator's email address."""
    row = next(db["policy_operator"].rows_where("id = 1"), None)
    name = operator_name(db, settings, row)
    contact = (row and row["contact"]) or settings.privacy.contact_email
    if not contact:
        contact = next((u.email for u in accounts.users(db) if u.operator), "")
    updated = row["updated_at"] if row else None
    return Operator(name, contact or "the operator of this appliance", updated)


def operator_name(db: Database, settings: Settings, row: dict | None = None) -> str:
    """The name the page and mail footers show: the operator as named at the first-run setup
    or on /admin, else ``privacy.company_legal_name`` (empty: no name is shown)."""
    if row is None:
        row = next(db["policy_operator"].rows_where("id = 1", select="name"), None)
    return (row and row["name"]) or settings.privacy.company_legal_name


def check_operator(name: str, contact: str) -> tuple[str, str]:
    """The operator's name and contact, cleaned (``InvalidInput`` if not acceptable)."""
    name = (name or "").strip()
    if not name or len(name) > MAX_OPERATOR_NAME:
        raise InvalidInput(
            f"The operator's name (a person or an organisation) must be 1 to "
            f"{MAX_OPERATOR_NAME} characters."
        )
    try:
        contact = accounts.normalise_email(contact)
    except InvalidInput:
        raise InvalidInput("The privacy contact must be an email address.") from None
    return name, contact


def set_operator(db: Database, name: str, contact: str, now: datetime) -> Operator:
    """Record who runs the appliance (first-run setup, /admin). The policy in effect does
    not change until a new version is published.

    Raises:
        InvalidInput: the name is empty or too long, or the contact is not an email address.
    """
    saved = Operator(*check_operator(name, contact), iso(now))
    with write_transaction(db):
        db["policy_operator"].upsert({"id": 1, **asdict(saved)}, pk="id")
    return saved


def facts(db: Database, settings: Settings) -> dict[str, object]:
    """Everything the policy's text depends on: this appliance's configuration, the
    operator's details and the retention windows in effect."""
    p = settings.privacy
    who = operator(db, settings)
    inference = urlsplit(settings.inference.url)
    claude = bool(settings.persona.anthropic_api_key)
    stripe = payments.configured(settings)
    smtp = "smtp" in settings.mail.backends
    return {
        "product": PRODUCT,
        "operator": who.name,
        "contact": who.contact,
        "public_url": settings.public_url,
        "tls": settings.public_url.startswith("https://"),
        "claude": claude,
        "billing": settings.billing.enabled,
        "stripe": stripe,
        "smtp": smtp,
        "smtp_host": settings.mail.smtp_host,
        "third_parties": claude or stripe or smtp,
        "local_inference": not settings.inference.url or inference.hostname in LOOPBACK,
        "inference_host": inference.hostname or "",
        "log_days": p.log_retention_days,
        "erase_days": p.erase_window_days,
        "tax_years": p.tax_retention_years,
        "response_days": p.response_window_business_days,
        "minimum_age": p.minimum_age,
        "operators": ", ".join(p.operators) or "the operators of this appliance",
    }


_ENVIRONMENT = jinja2.Environment(
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,  # noqa: S701 - Markdown text, not HTML: the page escapes each block
)


def render_text(db: Database, settings: Settings) -> str:
    """The policy as text for this appliance as it is configured now (an unknown value in
    the template is an error)."""
    template = _ENVIRONMENT.from_string(TEMPLATE.read_text(encoding="utf-8"))
    return template.render(facts(db, settings))


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def blocks(text: str) -> list[Block]:
    """The small Markdown subset the template uses, as blocks the page renders (escaped)."""
    out: list[Block] = []
    items: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("- "):
            items.append(line[2:].strip())
            continue
        if items:
            out.append(Block("ul", items=tuple(items)))
            items = []
        if line.startswith("### "):
            out.append(Block("h3", line[4:].strip()))
        elif line.startswith("## "):
            out.append(Block("h2", line[3:].strip()))
        elif line.strip():
            out.append(Block("p", line.strip()))
    return out


_VERSION = "version, text_sha256, published_at, effective_at, summary"


def _version(db: Database, where: str, now: datetime) -> PolicyVersion | None:
    found = db["policy_versions"].rows_where(
        where, [iso(now)], select=_VERSION, order_by="version desc", limit=1
    )
    row = next(found, None)
    return PolicyVersion(**row) if row else None


def versions(db: Database) -> list[PolicyVersion]:
    rows = db["policy_versions"].rows_where(select=_VERSION, order_by="version")
    return [PolicyVersion(**row) for row in rows]


def current(db: Database, now: datetime) -> PolicyVersion | None:
    """The version in effect at ``now`` (None before the first one takes effect)."""
    return _version(db, "effective_at <= ?", now)


def publish(
    db: Database,
    settings: Settings,
    now: datetime,
    *,
    effective_at: datetime | None = None,
    summary: str = "",
) -> PolicyVersion:
    """Record the current text as a new version, in effect from ``effective_at``.

    Default effective date: ``privacy.policy_notice_days`` after ``now``. The caller emails
    every user (``announce``) so they hear of it before it takes effect.

    Raises:
        Conflict: the text is the same as the latest version's.
        InvalidInput: the effective date is in the past, or sooner than the notice period
            allows for a change to an already published policy.
    """
    notice = timedelta(days=settings.privacy.policy_notice_days)
    effective = effective_at or now + notice
    if effective < now:
        raise InvalidInput("The effective date must not be in the past.")
    text = render_text(db, settings)
    digest = text_hash(text)
    with write_transaction(db):
        published = versions(db)
        if published and published[-1].text_sha256 == digest:
            raise Conflict(f"The policy text is unchanged since version {published[-1].version}.")
        if published and effective - now < notice:
            raise InvalidInput(
                f"A changed policy takes effect at least {notice.days} days after it is "
                "published (privacy.policy_notice_days), so users hear of it first."
            )
        number = (published[-1].version + 1) if published else 1
        version = PolicyVersion(number, digest, iso(now), iso(effective), summary.strip()[:2000])
        db["policy_versions"].insert({**asdict(version), "text": text})
    return version


def announce(
    db: Database, version: PolicyVersion, send_mail: Callable[[str, str, dict], object]
) -> int:
    """Email every user about a published version through ``send_mail(template, to,
    context)`` (the queue's task); how many were emailed."""
    context = {
        "version": version.version,
        "effective": version.effective_at[:10],
        "summary": version.summary,
    }
    emails = accounts.active_people(db)
    for email in emails:
        send_mail("policy_changed", email, context)
    return len(emails)


def pending(db: Database, user_id: str, now: datetime) -> PolicyVersion | None:
    """The version in effect if this user has not accepted it yet, else None."""
    version = current(db, now)
    if version is None:
        return None
    accepted = db["policy_acceptances"].count_where(
        "user_id = ? and version = ?", [user_id, version.version]
    )
    return None if accepted else version


def accept(db: Database, user_id: str, version: int, now: datetime) -> None:
    """Record that the user accepted ``version`` (which must be in effect)."""
    with write_transaction(db):
        in_effect = current(db, now)
        if in_effect is None or in_effect.version != version:
            raise NotFound("That policy version is not the one in effect.")
        db["policy_acceptances"].insert(
            {"user_id": user_id, "version": version, "accepted_at": iso(now)}, ignore=True
        )


def text_of(db: Database, version: int) -> str:
    row = next(db["policy_versions"].rows_where("version = ?", [version], select="text"), None)
    if row is None:
        raise NotFound("No such policy version.")
    return row["text"]


def upcoming(db: Database, now: datetime) -> PolicyVersion | None:
    """A published version that has not taken effect yet."""
    return _version(db, "effective_at > ?", now)


def shown_text(db: Database, settings: Settings, now: datetime) -> str:
    """What /privacy shows: the text in effect, or, before the first version takes effect,
    the text as the settings render it today."""
    version = current(db, now)
    return text_of(db, version.version) if version else render_text(db, settings)


def last_updated(db: Database, now: datetime) -> str | None:
    version = current(db, now)
    return parse(version.effective_at).date().isoformat() if version else None
