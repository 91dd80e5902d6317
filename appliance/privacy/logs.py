"""Content-free operational logs: a redaction filter and JSON lines for journald.

Every log record of every service passes through ``RedactionFilter`` (installed on the one
handler ``configure`` sets up), which takes out what must never reach a log: email
addresses, API keys, bearer tokens, cookies, setup and session tokens, sign-in codes and
card-like numbers. Message and document text is never passed to a logger in the first
place (tests/privacy/test_logs.py proves it); redaction is the second line of defence.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from datetime import UTC, datetime
from typing import IO

#: (pattern, replacement), applied in order: longer, more specific patterns first.
PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s,;\"']+"), r"\1 <redacted>"),
    (re.compile(r"(?i)\b((?:set-)?cookie)(\s*[:=]\s*)[^\n]*"), r"\1\2<redacted>"),
    (re.compile(r"\bapl_[A-Za-z0-9_\-]{4,}"), "<api-key>"),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{12,}"), "<api-key>"),
    (
        re.compile(r"(?i)\b(token|code|key|secret|password|session|csrftoken)=[^&\s\"']+"),
        r"\1=<redacted>",
    ),
    (re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+"), "<email>"),
    (re.compile(r"(?<![\w-])(?:\d[ \-]?){12,18}\d(?![\w-])"), "<card-number>"),
    (re.compile(r"(?<![\w.:-])\d{6}(?![\w.:-])"), "<code>"),
    # Session ids, setup tokens and the like: long random strings with letters and digits
    # (not UUIDs: task ids in the worker's log are no secret and operators need them).
    (
        re.compile(
            r"(?<![\w-])(?![0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(?![\w-]))"
            r"(?=[A-Za-z0-9_\-]*\d)(?=[A-Za-z0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{32,}(?![\w-])"
        ),
        "<token>",
    ),
)


def redact(text: str) -> str:
    """``text`` with every secret-looking or personal value replaced by a placeholder."""
    for pattern, replacement in PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactionFilter(logging.Filter):
    """Rewrites each record's message (and traceback) through ``redact``; drops nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg!r} (unformattable arguments)"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        # Formatters must not format the exception again from exc_info (unredacted).
        record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {k: redact(v) if isinstance(v, str) else v for k, v in fields.items()}
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, extra ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(level: str, stream: IO[str] | None = None) -> logging.Handler:
    """Send every logger's records, redacted, as JSON lines to ``stream`` (stdout).

    Called once per process by the CLI. Returns the handler (tests read it).
    """
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactionFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs full URLs at INFO; URLs may carry tokens.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    return handler
