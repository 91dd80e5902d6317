"""Settings: every field declared once, with its default (and bounds) and, in the string
below it, its help text.

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
from appliance.config_loader import DEFAULT_DATA_DIR, Paths, secret, setting

# Settings that existed once and were removed, with why. A config file or environment that
# still sets one is accepted with one warning (the value is ignored), so that an upgrade does
# not stop a working install; any other unknown setting still stops every command.
RETIRED_SETTINGS: dict[str, str] = {
    "inference.engine": "there is one chat engine now (the batched one)",
    "inference.prefix_cache_mb": "the prefix cache is sized by inference.prefix_cache_entries",
}


@dataclass(frozen=True)
class WebSettings:
    host: str = "127.0.0.1"
    """Address the web service listens on."""
    port: int = setting(8000, min=1, max=65535)
    """TCP port of the web service."""
    public_url: str = ""
    """URL people use to reach the appliance (e.g. https://ai.example.lan), used in links and
    emails. Empty: http://HOST:PORT (https:// when web.tls_cert is set)."""
    trusted_proxies: tuple[str, ...] = ()
    """Addresses of reverse proxies whose X-Forwarded-For header is trusted. Empty: the header is
    ignored."""
    tls_cert: str = ""
    """PEM certificate (full chain) the web service serves HTTPS with, together with web.tls_key.
    Empty: plain HTTP (a local install, or TLS ended by a proxy)."""
    tls_key: str = ""
    """PEM private key of web.tls_cert."""
    cors_origins: tuple[str, ...] = ()
    """Origins (e.g. https://app.example.lan) whose browser pages may call /v1 with an API key
    (CORS, with preflight). '*' allows any. Empty: CORS is off."""
    redirect_port: int = setting(0, min=0, max=65535)
    """With TLS on: also listen on this port (e.g. 80) with plain HTTP that only redirects to the
    HTTPS URL. 0: no such listener."""


@dataclass(frozen=True)
class DatabaseSettings:
    busy_timeout_ms: int = setting(10_000, min=5000)
    """How long a connection waits for another writer before 'database is locked'."""


@dataclass(frozen=True)
class WorkerSettings:
    workers: int = setting(2, min=1, max=64)
    """Threads of the task-queue consumer."""
    heartbeat_stale_seconds: int = setting(180, min=60)
    """A worker heartbeat older than this counts as 'worker not running' in doctor and on the
    admin page."""


@dataclass(frozen=True)
class LoggingSettings:
    level: str = setting("info", choices=("debug", "info", "warning", "error"))
    """Log level of every service."""


@dataclass(frozen=True)
class MailSettings:
    """Outgoing mail: sign-in codes and invitations."""

    backends: tuple[str, ...] = ("file", "console")
    """Where outgoing mail goes, any of: `smtp` (the server below); `file` (one .eml file per
    message in DATA_DIR/outbox/); `console` (prints each message to the worker's stdout: for
    local installs only, since it shows sign-in codes)."""
    sender: str = "Private AI <appliance@localhost>"
    """From address of outgoing mail; its domain is also used in Message-ID."""
    smtp_host: str = "localhost"
    """SMTP server to send through."""
    smtp_port: int = setting(587, min=1, max=65535)
    """TCP port of the SMTP server."""
    smtp_security: str = setting("starttls", choices=("starttls", "tls", "none"))
    """`starttls`: plain connection upgraded with STARTTLS (port 587); `tls`: TLS from the start
    (port 465); `none`: unencrypted (only for a relay on the same host)."""
    smtp_user: str = ""
    """SMTP user name. Empty: no login."""
    smtp_password: str = secret()
    """SMTP password. Prefer the APPLIANCE_MAIL__SMTP_PASSWORD environment variable (e.g. in
    appliance.env) over writing it in the TOML file."""
    smtp_timeout_seconds: float = setting(20.0, min=1)
    """How long to wait for the SMTP server before giving up."""


@dataclass(frozen=True)
class KnowledgeSettings:
    """The knowledge base: uploads, ingestion and retrieval."""

    max_upload_mb: int = setting(50, min=1)
    """Largest file one upload may be, in MB; larger ones get 413."""
    quota_mb: int = setting(2048, min=1)
    """Storage each account may use for uploaded documents, in MB."""
    chunk_tokens: int = setting(200, min=16, max=8192)
    """Target size of a chunk in tokens of the embedding model (it must fit the embedding model's
    limit, inference.embedding_max_tokens)."""
    chunk_overlap_tokens: int = setting(40, min=0)
    """Tokens repeated from the end of one chunk at the start of the next."""
    search_k: int = setting(8, min=1, max=50)
    """Passages a search returns by default."""
    rerank: bool = True
    """Re-score the fused search candidates with the inference service's reranker when it serves
    one (inference.rerank_model); off: the fused order stands."""
    rerank_candidates: int = setting(20, min=2, max=100)
    """Fused candidates the reranker re-scores per search. Each is one cross-encoder pass over
    the query and the passage, so on a CPU this is the search's main cost."""
    extract_timeout_seconds: int = setting(120, min=5)
    """Wall-clock limit for extracting the text of one document (or voice sample)."""
    extract_memory_mb: int = setting(1024, min=128)
    """Memory limit of the child that extracts a document's (or voice sample's) text."""


@dataclass(frozen=True)
class AuthSettings:
    """Sign-in by emailed one-time code, sessions and throttles (see docs/security.md)."""

    signup: str = setting("invite", choices=("invite", "open"))
    """Who may sign in: `invite` (members, invited addresses and the setup link) or `open` (any
    address gets a new account of its own)."""
    code_ttl_minutes: int = setting(10, min=1, max=10)
    """Minutes a sign-in code stays valid."""
    code_max_failures: int = setting(5, min=1, max=10)
    """Wrong tries after which a sign-in code is void."""
    codes_per_address_per_hour: int = setting(5, min=1)
    """Sign-in codes one address may request per hour."""
    codes_per_client_per_hour: int = setting(30, min=1)
    """Sign-in codes one client address may request per hour."""
    account_lock_failures: int = setting(100, min=5)
    """Wrong codes for one address within an hour that lock its sign-in (only tries with the
    attempt cookie of a code that was sent count)."""
    client_lock_failures: int = setting(100, min=5)
    """Wrong codes from one client address within an hour that lock it out."""
    lock_minutes: int = setting(60, min=1)
    """How long such a lock lasts."""
    session_idle_minutes: int = setting(30, min=1)
    """A session not used for this long ends."""
    session_absolute_hours: int = setting(12, min=1)
    """A session ends this long after sign-in, used or not."""


@dataclass(frozen=True)
class PersonaSettings:
    """The account's system prompt (optionally written by Claude) and voice-training samples."""

    anthropic_api_key: str = secret()
    """Anthropic API key for writing system prompts with Claude. Only the short onboarding
    summary is sent (see PRIVACY.md, section 5), and every call is recorded in the egress log.
    Empty: Claude is off, a local template is used and nothing leaves the box. Prefer the
    APPLIANCE_PERSONA__ANTHROPIC_API_KEY environment variable over writing it in the TOML file."""
    anthropic_model: str = "claude-sonnet-5-5"
    """Claude model that writes system prompts (claude-sonnet-4-5 reaches end-of-life on
    2026-11-30)."""
    anthropic_base_url: str = ""
    """Base URL of the Anthropic API. Empty: Anthropic's own (https://api.anthropic.com)."""
    max_sample_bytes: int = setting(1_000_000, min=1024, max=9_000_000)
    """Largest voice-training sample (.txt, .md or .docx) in bytes; larger uploads get 413. At
    most 9 MB, below the web service's 10 MB request limit."""
    max_samples: int = setting(10, min=1, max=100)
    """Voice-training samples one account may keep."""
    voice_token_budget: int = setting(400, min=0, max=8192)
    """How much of the system prompt the voice excerpts may take, in tokens, estimated as
    ceil(characters / 4). 0 leaves the voice excerpts out."""


@dataclass(frozen=True)
class PrivacySettings:
    """What the privacy policy (``/privacy``) states beside the configuration itself."""

    company_legal_name: str = ""
    """Name of the person or organisation running the appliance, shown in the privacy policy and
    in page and mail footers. The name given in the first-run setup or on /admin takes precedence
    in the policy. Empty: "the operator of this appliance"."""
    contact_email: str = ""
    """Where privacy questions and deletion requests go. The contact given in the first-run setup
    or on /admin takes precedence. Empty: the first operator's email."""
    log_retention_days: int = setting(30, min=1)
    """Days operational logs and the request log are kept, then purged."""
    erase_window_days: int = setting(30, min=0)
    """Days within which a deleted account's data and uploads are erased."""
    tax_retention_years: int = setting(7, min=0)
    """Years billing records are kept for tax and audit."""
    response_window_business_days: int = setting(7, min=1)
    """Business days within which an emailed deletion request is actioned."""
    minimum_age: int = setting(13, min=0, max=21)
    """Minimum age of users."""
    operators: tuple[str, ...] = ()
    """Named people or roles with access to production systems."""
    policy_notice_days: int = setting(30, min=0)
    """Days between publishing a changed privacy policy (`appliance policy publish`, which emails
    every user) and the day it takes effect."""
    export_ttl_hours: int = setting(24, min=1)
    """Hours a data export (Settings → My data) can be downloaded before it is purged."""
    purge_batch_size: int = setting(500, min=1)
    """Rows (or files) a retention purge deletes per transaction, so a purge never holds the
    write lock for long."""


@dataclass(frozen=True)
class BillingSettings:
    """Prepaid credits: prices, top-up limits and notices (see docs/billing.md)."""

    enabled: bool = False
    """Charge usage against the account's prepaid balance. Off (an internal team appliance):
    usage is still metered and shown, nothing is charged, requests are never refused for credit
    and no Stripe request is ever made."""
    currency: str = setting("usd", choices=("usd",))
    """Currency of balances and top-ups."""
    price_prompt_per_1k: float = setting(0.0005, min=0)
    """Price of 1,000 prompt tokens, in USD."""
    price_completion_per_1k: float = setting(0.0015, min=0)
    """Price of 1,000 completion tokens, in USD."""
    model_prices: tuple[str, ...] = ()
    """Per-model prices that replace the two above, as `MODEL=PROMPT:COMPLETION` (USD per 1,000
    tokens), e.g. `["qwen2.5-7b=0.002:0.006"]`."""
    price_embedding_per_1k: float = setting(0.0, min=0)
    """Price of 1,000 input tokens of `/v1/embeddings`, in USD (0: metered and counted against
    spend caps, not charged)."""
    price_instance_hour: float = setting(0.0, min=0)
    """Price of one hour of a running instance, in USD (charged per minute)."""
    price_storage_gb_month: float = setting(0.0, min=0)
    """Price of 1 GB of knowledge-base storage for a month, in USD (charged daily)."""
    topup_min_usd: int = setting(5, min=1)
    """Smallest top-up, in USD."""
    topup_max_usd: int = setting(1000, min=1)
    """Largest top-up, in USD."""
    low_balance_usd: float = setting(5.0, min=0)
    """Owners and admins are emailed once each time the balance falls below this (USD). 0 turns
    the notice off."""
    auto_topup_threshold_usd: float = setting(0.0, min=0)
    """Top up automatically with the saved card when the balance falls below this (USD). 0: auto
    top-up is off."""
    auto_topup_amount_usd: int = setting(20, min=1)
    """Amount of an automatic top-up, in USD."""
    hold_timeout_seconds: int = setting(900, min=60)
    """A reservation older than this (a request that never finished) is released by the worker;
    longer than inference.request_timeout_seconds."""


@dataclass(frozen=True)
class StripeSettings:
    """Stripe, for top-ups: off until both keys are set (and billing.enabled)."""

    secret_key: str = secret()
    """Stripe secret API key (sk_live_… or a restricted key). Prefer the
    APPLIANCE_STRIPE__SECRET_KEY environment variable over the TOML file. Never logged or shown."""
    webhook_secret: str = secret()
    """Signing secret of the webhook endpoint https://HOST/stripe/webhook (whsec_…). Prefer the
    APPLIANCE_STRIPE__WEBHOOK_SECRET environment variable."""
    api_base: str = "https://api.stripe.com"
    """Base URL of the Stripe API (tests use a local stand-in)."""


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
        return self.local_web_url

    @property
    def local_web_url(self) -> str:
        """The web service's URL on this machine (a wildcard address reached on loopback)."""
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
        return config_loader.load(cls, RETIRED_SETTINGS, data_dir, config_file, overrides, environ)


def sections() -> dict[str, type]:
    """Section name → dataclass, in declaration order."""
    return config_loader.sections(Settings)


def iter_settings() -> Iterator[tuple[str, dataclasses.Field]]:
    """Every setting as ``("section.key", field)``: for docs and the docs test."""
    return config_loader.iter_settings(Settings)
