"""Settings: every field declared once, with its default and help text.

Sources, later ones winning: the defaults below, ``DATA_DIR/appliance.toml`` (or the file
given with ``--config`` / ``APPLIANCE_CONFIG``), ``APPLIANCE_<SECTION>__<KEY>`` environment
variables, then explicit overrides from the command line. How they are read and checked
lives in ``config_loader.py``; this module only declares them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance import config_loader
from appliance.config_inference import InferenceSettings
from appliance.config_loader import DEFAULT_DATA_DIR, Paths, describe_default, env_name, setting
from appliance.config_loader import secret as _secret
from appliance.errors import ConfigError

# Settings that existed once and were removed, with why. A config file or environment that
# still sets one is accepted with one warning (the value is ignored), so that an upgrade does
# not stop a working install; any other unknown setting still stops every command.
RETIRED_SETTINGS: dict[str, str] = {
    "inference.engine": "there is one chat engine now (the batched one)",
    "inference.prefix_cache_mb": "the prefix cache is sized by inference.prefix_cache_entries",
}


@dataclass(frozen=True)
class WebSettings:
    host: str = setting("127.0.0.1", "Address the web service listens on.")
    port: int = setting(8000, "TCP port of the web service.", min=1, max=65535)
    public_url: str = setting(
        "",
        "URL people use to reach the appliance (e.g. https://ai.example.lan), used in links "
        "and emails. Empty: http://HOST:PORT (https:// when web.tls_cert is set).",
    )
    trusted_proxies: tuple[str, ...] = setting(
        (),
        "Addresses of reverse proxies whose X-Forwarded-For header is trusted. "
        "Empty: the header is ignored.",
    )
    tls_cert: str = setting(
        "",
        "PEM certificate (full chain) the web service serves HTTPS with, together with "
        "web.tls_key. Empty: plain HTTP (a local install, or TLS ended by a proxy).",
    )
    tls_key: str = setting("", "PEM private key of web.tls_cert.")
    cors_origins: tuple[str, ...] = setting(
        (),
        "Origins (e.g. https://app.example.lan) whose browser pages may call /v1 with an "
        "API key (CORS, with preflight). '*' allows any. Empty: CORS is off.",
    )
    redirect_port: int = setting(
        0,
        "With TLS on: also listen on this port (e.g. 80) with plain HTTP that only "
        "redirects to the HTTPS URL. 0: no such listener.",
        min=0,
        max=65535,
    )


@dataclass(frozen=True)
class DatabaseSettings:
    busy_timeout_ms: int = setting(
        10_000,
        "How long a connection waits for another writer before 'database is locked'.",
        min=5000,
    )


@dataclass(frozen=True)
class WorkerSettings:
    workers: int = setting(2, "Threads of the task-queue consumer.", min=1, max=64)
    heartbeat_stale_seconds: int = setting(
        180,
        "A worker heartbeat older than this counts as 'worker not running' in doctor and "
        "on the admin page.",
        min=60,
    )


@dataclass(frozen=True)
class LoggingSettings:
    level: str = setting(
        "info",
        "Log level of every service.",
        choices=("debug", "info", "warning", "error"),
    )


@dataclass(frozen=True)
class MailSettings:
    """Outgoing mail: sign-in codes and invitations."""

    backends: tuple[str, ...] = setting(
        ("file", "console"),
        "Where outgoing mail goes, any of: `smtp` (the server below); `file` (one .eml "
        "file per message in DATA_DIR/outbox/); `console` (prints each message to the "
        "worker's stdout: for local installs only, since it shows sign-in codes).",
    )
    sender: str = setting(
        "Private AI <appliance@localhost>",
        "From address of outgoing mail; its domain is also used in Message-ID.",
    )
    smtp_host: str = setting("localhost", "SMTP server to send through.")
    smtp_port: int = setting(587, "TCP port of the SMTP server.", min=1, max=65535)
    smtp_security: str = setting(
        "starttls",
        "`starttls`: plain connection upgraded with STARTTLS (port 587); `tls`: TLS from "
        "the start (port 465); `none`: unencrypted (only for a relay on the same host).",
        choices=("starttls", "tls", "none"),
    )
    smtp_user: str = setting("", "SMTP user name. Empty: no login.")
    smtp_password: str = _secret(
        "SMTP password. Prefer the APPLIANCE_MAIL__SMTP_PASSWORD environment "
        "variable (e.g. in appliance.env) over writing it in the TOML file."
    )
    smtp_timeout_seconds: float = setting(
        20.0, "How long to wait for the SMTP server before giving up.", min=1
    )


@dataclass(frozen=True)
class KnowledgeSettings:
    """The knowledge base: uploads, ingestion and retrieval."""

    max_upload_mb: int = setting(
        50, "Largest file one upload may be, in MB; larger ones get 413.", min=1
    )
    quota_mb: int = setting(
        2048, "Storage each account may use for uploaded documents, in MB.", min=1
    )
    chunk_tokens: int = setting(
        200,
        "Target size of a chunk in tokens of the embedding model (it must fit the "
        "embedding model's limit, inference.embedding_max_tokens).",
        min=16,
        max=8192,
    )
    chunk_overlap_tokens: int = setting(
        40, "Tokens repeated from the end of one chunk at the start of the next.", min=0
    )
    search_k: int = setting(8, "Passages a search returns by default.", min=1, max=50)
    rerank: bool = setting(
        True,
        "Re-score the fused search candidates with the inference service's reranker when "
        "it serves one (inference.rerank_model); off: the fused order stands.",
    )
    rerank_candidates: int = setting(
        20,
        "Fused candidates the reranker re-scores per search. Each is one cross-encoder "
        "pass over the query and the passage, so on a CPU this is the search's main cost.",
        min=2,
        max=100,
    )
    extract_timeout_seconds: int = setting(
        120, "Wall-clock limit for extracting the text of one document (or voice sample).", min=5
    )
    extract_memory_mb: int = setting(
        1024,
        "Memory limit of the child that extracts a document's (or voice sample's) text.",
        min=128,
    )


@dataclass(frozen=True)
class AuthSettings:
    """Sign-in by emailed one-time code, sessions and throttles (see docs/security.md)."""

    signup: str = setting(
        "invite",
        "Who may sign in: `invite` (members, invited addresses and the setup link) or "
        "`open` (any address gets a new account of its own).",
        choices=("invite", "open"),
    )
    code_ttl_minutes: int = setting(10, "Minutes a sign-in code stays valid.", min=1, max=10)
    code_max_failures: int = setting(
        5, "Wrong tries after which a sign-in code is void.", min=1, max=10
    )
    codes_per_address_per_hour: int = setting(
        5, "Sign-in codes one address may request per hour.", min=1
    )
    codes_per_client_per_hour: int = setting(
        30, "Sign-in codes one client address may request per hour.", min=1
    )
    account_lock_failures: int = setting(
        100,
        "Wrong codes for one address within an hour that lock its sign-in (only tries with "
        "the attempt cookie of a code that was sent count).",
        min=5,
    )
    client_lock_failures: int = setting(
        100, "Wrong codes from one client address within an hour that lock it out.", min=5
    )
    lock_minutes: int = setting(60, "How long such a lock lasts.", min=1)
    session_idle_minutes: int = setting(30, "A session not used for this long ends.", min=1)
    session_absolute_hours: int = setting(
        12, "A session ends this long after sign-in, used or not.", min=1
    )


@dataclass(frozen=True)
class PersonaSettings:
    """The account's system prompt (optionally written by Claude) and voice-training samples."""

    anthropic_api_key: str = _secret(
        "Anthropic API key for writing system prompts with Claude. Only the short "
        "onboarding summary is sent (see PRIVACY.md, section 5), and every call is "
        "recorded in the egress log. Empty: Claude is off, a local template is used and "
        "nothing leaves the box. Prefer the APPLIANCE_PERSONA__ANTHROPIC_API_KEY "
        "environment variable over writing it in the TOML file."
    )
    anthropic_model: str = setting(
        "claude-sonnet-5-5",
        "Claude model that writes system prompts (claude-sonnet-4-5 reaches end-of-life on "
        "2026-11-30).",
    )
    anthropic_base_url: str = setting(
        "", "Base URL of the Anthropic API. Empty: Anthropic's own (https://api.anthropic.com)."
    )
    max_sample_bytes: int = setting(
        1_000_000,
        "Largest voice-training sample (.txt, .md or .docx) in bytes; larger uploads get 413. "
        "At most 9 MB, below the web service's 10 MB request limit.",
        min=1024,
        max=9_000_000,
    )
    max_samples: int = setting(10, "Voice-training samples one account may keep.", min=1, max=100)
    voice_token_budget: int = setting(
        400,
        "How much of the system prompt the voice excerpts may take, in tokens, estimated as "
        "ceil(characters / 4). 0 leaves the voice excerpts out.",
        min=0,
        max=8192,
    )


@dataclass(frozen=True)
class PrivacySettings:
    """What the privacy policy (``/privacy``) states beside the configuration itself."""

    company_legal_name: str = setting(
        "",
        "Name of the person or organisation running the appliance, shown in the privacy "
        "policy and in page and mail footers. The name given in the first-run setup or on "
        '/admin takes precedence in the policy. Empty: "the operator of this appliance".',
    )
    contact_email: str = setting(
        "",
        "Where privacy questions and deletion requests go. The contact given in the "
        "first-run setup or on /admin takes precedence. Empty: the first operator's email.",
    )
    log_retention_days: int = setting(
        30, "Days operational logs and the request log are kept, then purged.", min=1
    )
    erase_window_days: int = setting(
        30,
        "Days within which a deleted account's data and uploads are erased.",
        min=0,
    )
    tax_retention_years: int = setting(
        7, "Years billing records are kept for tax and audit.", min=0
    )
    response_window_business_days: int = setting(
        7, "Business days within which an emailed deletion request is actioned.", min=1
    )
    minimum_age: int = setting(13, "Minimum age of users.", min=0, max=21)
    operators: tuple[str, ...] = setting(
        (), "Named people or roles with access to production systems."
    )
    policy_notice_days: int = setting(
        30,
        "Days between publishing a changed privacy policy (`appliance policy publish`, "
        "which emails every user) and the day it takes effect.",
        min=0,
    )
    export_ttl_hours: int = setting(
        24,
        "Hours a data export (Settings → My data) can be downloaded before it is purged.",
        min=1,
    )
    purge_batch_size: int = setting(
        500,
        "Rows (or files) a retention purge deletes per transaction, so a purge never holds "
        "the write lock for long.",
        min=1,
    )


@dataclass(frozen=True)
class BillingSettings:
    """Prepaid credits: prices, top-up limits and notices (see docs/billing.md)."""

    enabled: bool = setting(
        False,
        "Charge usage against the account's prepaid balance. Off (an internal team "
        "appliance): usage is still metered and shown, nothing is charged, requests are "
        "never refused for credit and no Stripe request is ever made.",
    )
    currency: str = setting("usd", "Currency of balances and top-ups.", choices=("usd",))
    price_prompt_per_1k: float = setting(0.0005, "Price of 1,000 prompt tokens, in USD.", min=0)
    price_completion_per_1k: float = setting(
        0.0015, "Price of 1,000 completion tokens, in USD.", min=0
    )
    model_prices: tuple[str, ...] = setting(
        (),
        "Per-model prices that replace the two above, as `MODEL=PROMPT:COMPLETION` "
        '(USD per 1,000 tokens), e.g. `["qwen2.5-7b=0.002:0.006"]`.',
    )
    price_embedding_per_1k: float = setting(
        0.0,
        "Price of 1,000 input tokens of `/v1/embeddings`, in USD (0: metered and counted "
        "against spend caps, not charged).",
        min=0,
    )
    price_instance_hour: float = setting(
        0.0, "Price of one hour of a running instance, in USD (charged per minute).", min=0
    )
    price_storage_gb_month: float = setting(
        0.0,
        "Price of 1 GB of knowledge-base storage for a month, in USD (charged daily).",
        min=0,
    )
    topup_min_usd: int = setting(5, "Smallest top-up, in USD.", min=1)
    topup_max_usd: int = setting(1000, "Largest top-up, in USD.", min=1)
    low_balance_usd: float = setting(
        5.0,
        "Owners and admins are emailed once each time the balance falls below this (USD). "
        "0 turns the notice off.",
        min=0,
    )
    auto_topup_threshold_usd: float = setting(
        0.0,
        "Top up automatically with the saved card when the balance falls below this (USD). "
        "0: auto top-up is off.",
        min=0,
    )
    auto_topup_amount_usd: int = setting(20, "Amount of an automatic top-up, in USD.", min=1)
    hold_timeout_seconds: int = setting(
        900,
        "A reservation older than this (a request that never finished) is released by "
        "the worker; longer than inference.request_timeout_seconds.",
        min=60,
    )


@dataclass(frozen=True)
class StripeSettings:
    """Stripe, for top-ups: off until both keys are set (and billing.enabled)."""

    secret_key: str = _secret(
        "Stripe secret API key (sk_live_… or a restricted key). Prefer the "
        "APPLIANCE_STRIPE__SECRET_KEY environment variable over the TOML file. Never "
        "logged or shown."
    )
    webhook_secret: str = _secret(
        "Signing secret of the webhook endpoint https://HOST/stripe/webhook (whsec_…). "
        "Prefer the APPLIANCE_STRIPE__WEBHOOK_SECRET environment variable."
    )
    api_base: str = setting(
        "https://api.stripe.com", "Base URL of the Stripe API (tests use a local stand-in)."
    )


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default=Path(DEFAULT_DATA_DIR))
    config_file: Path | None = None
    web: WebSettings = field(default_factory=WebSettings)
    inference: InferenceSettings = field(default_factory=InferenceSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    mail: MailSettings = field(default_factory=MailSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    knowledge: KnowledgeSettings = field(default_factory=KnowledgeSettings)
    persona: PersonaSettings = field(default_factory=PersonaSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    billing: BillingSettings = field(default_factory=BillingSettings)
    stripe: StripeSettings = field(default_factory=StripeSettings)

    @property
    def paths(self) -> Paths:
        return Paths(self.data_dir)

    @property
    def inference_url(self) -> str:
        """Base URL of the inference service, without a trailing slash or ``/v1``."""
        if self.inference.url:
            return self.inference.url.rstrip("/").removesuffix("/v1")
        return f"http://{config_loader.url_host(self.inference.host)}:{self.inference.port}"

    @property
    def public_url(self) -> str:
        if self.web.public_url:
            return self.web.public_url.rstrip("/")
        host = "127.0.0.1" if self.web.host in ("0.0.0.0", "::") else self.web.host  # noqa: S104
        scheme = "https" if self.web.tls_cert else "http"
        return f"{scheme}://{config_loader.url_host(host)}:{self.web.port}"

    def replace(self, **overrides: Any) -> Settings:
        """A copy with ``"section.key"`` overrides applied and validated."""
        raw = config_loader.split_overrides(overrides)
        return config_loader.apply(self, raw, "override", RETIRED_SETTINGS)

    @classmethod
    def load(
        cls,
        *,
        data_dir: str | Path | None = None,
        config_file: str | Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Read settings from the config file and the environment.

        Args:
            data_dir: ``--data-dir``; else ``APPLIANCE_DATA_DIR``; else ``./data``.
            config_file: ``--config``; else ``APPLIANCE_CONFIG``; else
                ``DATA_DIR/appliance.toml`` when it exists.
            overrides: ``{"web.port": 9000}`` from command-line flags, applied last.
            environ: the environment to read (default ``os.environ``).

        Raises:
            ConfigError: naming the bad key, file or variable.
        """
        return config_loader.load(
            cls,
            RETIRED_SETTINGS,
            data_dir=data_dir,
            config_file=config_file,
            overrides=overrides,
            environ=environ,
        )


def sections() -> dict[str, type]:
    """Section name → dataclass, in declaration order."""
    return config_loader.sections(Settings)


def iter_settings() -> Iterator[tuple[str, dataclasses.Field]]:
    """Every setting as ``("section.key", field)``: for docs and the docs test."""
    return config_loader.iter_settings(Settings)


__all__ = [
    "RETIRED_SETTINGS",
    "ConfigError",
    "Settings",
    "describe_default",
    "env_name",
    "iter_settings",
    "sections",
    "setting",
]
