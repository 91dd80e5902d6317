"""Outgoing mail: compose a message from templates, deliver it through the configured backends.

``compose(settings, "signin_code", to, code=..., minutes=...)`` renders
``appliance/webui/templates/mail/signin_code.{subject.txt,txt,html}``;
``deliver(settings, mail)`` sends it through every backend in ``mail.backends`` (``smtp``,
``file``, ``console``). Mail goes out from the worker (the ``send_mail`` task), never from a
web request.

Logs name the backends and a hash of the recipient only: never the address, the subject or
the body (they carry sign-in codes).
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import functools
import hashlib
import logging
import re
import secrets
import smtplib
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlite_utils import Database

import appliance
from appliance import permissions, personal
from appliance.config import Settings
from appliance.errors import ApplianceError, ConfigError

log = logging.getLogger(__name__)

BACKENDS = ("smtp", "file", "console")
PRODUCT = "Private AI"
TEMPLATES = Path(appliance.__file__).resolve().parent / "webui" / "templates" / "mail"

#: Longest failure reason kept per backend in a ``MailError`` (server replies can be long).
_MAX_REASON = 300
_ADDRESS_RE = re.compile(r"[^\s<>()\[\]'\",;:@]+@[^\s<>()\[\]'\",;:@]+")


class MailError(ApplianceError):
    """One or more backends failed to deliver a message (the task should be retried).

    Attributes:
        failures: backend name → ``"ExceptionClass: message"`` (redacted).
        delivered: the backends that did deliver the message in the same call.
    """

    def __init__(self, message: str, failures: dict[str, str], delivered: list[str]) -> None:
        super().__init__(message)
        self.failures = failures
        self.delivered = delivered


@dataclass(frozen=True)
class Mail:
    """A composed message, ready for ``deliver``."""

    to: str
    subject: str
    text: str
    html: str | None = None


def recipient_ref(address: str) -> str:
    """A stable reference to an address for logs, which does not reveal it."""
    return hashlib.sha256(address.lower().encode()).hexdigest()[:12]


def check_settings(settings: Settings) -> None:
    """Validate the ``[mail]`` settings that ``config.py`` cannot check on its own.

    Raises:
        ConfigError: naming the setting and the bad value.
    """
    backends = settings.mail.backends
    for name in backends:
        if name not in BACKENDS:
            raise ConfigError(
                f"setting 'mail.backends' must list only {', '.join(BACKENDS)}, got {name!r}"
            )
    if not backends:
        raise ConfigError(
            f"setting 'mail.backends' must name at least one of {', '.join(BACKENDS)}: "
            "without one, nobody receives sign-in codes"
        )
    _sender_domain(settings)


def compose(
    settings: Settings, template: str, to: str, *, company: str | None = None, **context: Any
) -> Mail:
    """Render ``appliance/webui/templates/mail/<template>.*`` into a ``Mail`` to ``to``.

    ``<template>.subject.txt`` and ``<template>.txt`` are required, ``<template>.html`` is
    optional. Besides ``context``, templates see ``product``, ``company`` (the footer's
    operator name: ``company``, else ``privacy.company_legal_name``), ``public_url`` and
    ``privacy_url``.

    Raises:
        jinja2.TemplateNotFound: no such template.
        jinja2.UndefinedError: the template uses a variable ``context`` does not provide.
    """
    env = _environment()
    values = {
        **context,
        "product": PRODUCT,
        "company": settings.privacy.company_legal_name if company is None else company,
        "public_url": settings.public_url,
        "privacy_url": settings.public_url + "/privacy",
    }
    # Collapsing whitespace keeps the subject on one line even when it shows a value
    # someone typed (an account name), so it can never add a header.
    subject = " ".join(env.get_template(f"{template}.subject.txt").render(values).split())
    text = env.get_template(f"{template}.txt").render(values).strip() + "\n"
    html = None
    if (TEMPLATES / f"{template}.html").is_file():
        html = env.get_template(f"{template}.html").render(values).strip() + "\n"
    return Mail(to=to, subject=subject, text=text, html=html)


def deliver(settings: Settings, mail: Mail, *, backends: Sequence[str] | None = None) -> list[str]:
    """Send ``mail`` through every configured backend; returns those that delivered it.

    Every backend is tried even when an earlier one fails.

    Args:
        backends: only these of the configured backends (e.g. to retry the ones that
            failed, from ``MailError.failures``); default all of ``mail.backends``.

    Raises:
        ConfigError: ``mail.backends`` or ``mail.sender`` is invalid.
        MailError: any backend failed, after all were tried; names each failed backend
            and why, without the password, the address or the body.
    """
    check_settings(settings)
    chosen = list(dict.fromkeys(settings.mail.backends))
    if backends is not None:
        chosen = [name for name in chosen if name in backends]
    message = _build(settings, mail)
    delivered: list[str] = []
    failures: dict[str, str] = {}
    for name in chosen:
        try:
            _SENDERS[name](settings, mail, message)
        except Exception as exc:
            failures[name] = _reason(exc, settings, mail)
        else:
            delivered.append(name)
    ref = recipient_ref(mail.to)
    if delivered:
        log.info("mail to recipient %s delivered via %s", ref, ", ".join(delivered))
    if failures:
        detail = "; ".join(f"{name}: {reason}" for name, reason in failures.items())
        why = f"mail to recipient {ref} failed via {', '.join(failures)} ({detail})"
        raise MailError(why, failures, delivered)
    return delivered


def _outbox(settings: Settings) -> Iterator[tuple[Path, EmailMessage]]:
    """The messages the ``file`` backend wrote, oldest first, with their files."""
    parser = email.parser.BytesParser(policy=email.policy.default)
    for path in sorted(settings.paths.outbox.glob("*.eml")):
        yield path, parser.parsebytes(path.read_bytes())  # type: ignore[misc]


def outbox_messages(settings: Settings) -> list[EmailMessage]:
    """The messages the ``file`` backend wrote, oldest first."""
    return [message for _, message in _outbox(settings)]


def forget(settings: Settings, addresses: list[str]) -> int:
    """Delete every message in the outbox sent to, or naming, one of ``addresses`` (an
    erased person: the outbox is a delivery spool, not a record); returns how many."""
    wanted = {address.lower() for address in addresses if address}
    if not wanted:
        return 0
    # Whole addresses only: bob@example.com is not named by a mail to jimbob@example.com.
    naming = re.compile(
        r"(?<![\w.%+-])(?:" + "|".join(map(re.escape, sorted(wanted))) + r")(?![\w-]|\.\w)",
        re.IGNORECASE,
    )
    removed = 0
    for path, message in _outbox(settings):
        _, to = email.utils.parseaddr(str(message["To"] or ""))
        text = " ".join(
            part.get_content() for part in message.walk() if part.get_content_maintype() == "text"
        )
        if to.lower() in wanted or naming.search(text):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


# -- personal data (appliance.personal) -------------------------------------------------

#: The outbox is a delivery spool, not a record: no table, nothing exported.
TABLES: tuple[personal.Table, ...] = ()


def export(db: Database, settings: Settings, scope: personal.Scope) -> personal.Held:
    return personal.Held()


def erase(db: Database, settings: Settings, job: personal.Erasure) -> bool:
    """The departing people's mails (addresses, codes) leave the outbox."""
    removed = forget(settings, job.emails)
    if removed:
        job.count("outbox", removed)
    return True


def purge_outbox(db, settings: Settings, now: datetime, budget, on_batch):
    """Mail the file backend wrote (it holds addresses and codes) past the log retention."""
    outbox = settings.paths.outbox
    if not outbox.is_dir():
        return 0, True
    cutoff = personal.log_cutoff(settings, now)
    old = [p for p in sorted(outbox.glob("*.eml")) if _written_at(p) < cutoff]
    batch = settings.privacy.purge_batch_size
    for start in range(0, len(old), batch):
        if not budget.spend():
            return start, False
        for path in old[start : start + batch]:
            path.unlink(missing_ok=True)
        on_batch(len(old[start : start + batch]))
    return len(old), True


def _written_at(path: Path) -> datetime:
    # The file backend names messages by their UTC time: 20261127T091500123456Z-….eml
    try:
        return datetime.strptime(path.name.split("-", 1)[0], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)
    except ValueError:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)


PURGES: dict[str, personal.Purge] = {"outbox": purge_outbox}


@functools.cache
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"], default_for_string=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _sender_domain(settings: Settings) -> str:
    _, address = email.utils.parseaddr(settings.mail.sender)
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        raise ConfigError(
            f"setting 'mail.sender' must be an address such as "
            f"'Private AI <appliance@example.com>', got {settings.mail.sender!r}"
        )
    return domain


def _build(settings: Settings, mail: Mail) -> EmailMessage:
    message = EmailMessage(policy=email.policy.default)
    message["From"] = settings.mail.sender
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message["Date"] = email.utils.format_datetime(datetime.now(UTC))
    message["Message-ID"] = email.utils.make_msgid(domain=_sender_domain(settings))
    # RFC 3834: tells autoresponders (out-of-office) not to answer.
    message["Auto-Submitted"] = "auto-generated"
    # Quoted-printable keeps the .eml files and SMTP traffic readable (codes and links
    # stay greppable) where the default could pick base64 for non-ASCII text.
    message.set_content(mail.text, cte="quoted-printable")
    if mail.html is not None:
        message.add_alternative(mail.html, subtype="html", cte="quoted-printable")
    return message


def _send_file(settings: Settings, mail: Mail, message: EmailMessage) -> None:
    outbox = settings.paths.outbox
    outbox.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    # Private (it holds sign-in codes); the temporary file's name does not end in .eml.
    with permissions.private_file(outbox / f"{stamp}-{secrets.token_hex(6)}.eml") as handle:
        handle.write(message.as_bytes())


def _send_console(settings: Settings, mail: Mail, message: EmailMessage) -> None:
    rule = "-" * 72
    print(
        f"{rule}\n"
        "Mail (console backend: for local installs only)\n"
        f"To: {mail.to}\n"
        f"Subject: {mail.subject}\n\n"
        f"{mail.text.rstrip()}\n"
        f"{rule}",
        flush=True,
    )


def _send_smtp(settings: Settings, mail: Mail, message: EmailMessage) -> None:
    config = settings.mail
    timeout = config.smtp_timeout_seconds
    context = ssl.create_default_context()
    server = (config.smtp_host, config.smtp_port)
    client: smtplib.SMTP
    if config.smtp_security == "tls":
        client = smtplib.SMTP_SSL(*server, timeout=timeout, context=context)
    else:
        client = smtplib.SMTP(*server, timeout=timeout)
    with client:
        if config.smtp_security == "starttls":
            client.starttls(context=context)
        if config.smtp_user:
            client.login(config.smtp_user, config.smtp_password)
        _, sender = email.utils.parseaddr(config.sender)
        client.send_message(message, from_addr=sender, to_addrs=[mail.to])


_SENDERS = {"smtp": _send_smtp, "file": _send_file, "console": _send_console}


def _reason(exc: BaseException, settings: Settings, mail: Mail) -> str:
    """``"Class: message"`` with the password and every address taken out."""
    text = str(exc)
    if settings.mail.smtp_password:
        text = text.replace(settings.mail.smtp_password, "***")
    # Server replies and SMTPRecipientsRefused quote the recipient.
    if mail.to:
        text = re.sub(re.escape(mail.to), "<recipient>", text, flags=re.IGNORECASE)
    text = _ADDRESS_RE.sub("<address>", text)
    if len(text) > _MAX_REASON:
        text = text[:_MAX_REASON] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
