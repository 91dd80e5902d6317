"""What the persona store returns."""

from dataclasses import dataclass

SOURCES = ("local", "claude", "edited")


@dataclass(frozen=True)
class SystemPrompt:
    id: str
    account_id: str
    version: int
    text: str
    source: str
    created_at: str
    created_by: str | None


@dataclass(frozen=True)
class Generated:
    """A new system prompt version, with what it replaced (for the diff)."""

    prompt: SystemPrompt
    previous: str
    diff: list[tuple[str, str]]


@dataclass(frozen=True)
class EgressEntry:
    """One HTTP request that carried account data out of the box."""

    id: str
    account_id: str
    at: str
    service: str
    purpose: str
    data_categories: str
    bytes_sent: int
    outcome: str


@dataclass(frozen=True)
class VoiceSample:
    id: str
    account_id: str
    filename: str
    kind: str
    size: int
    sha256: str
    created_at: str


@dataclass(frozen=True)
class VoiceExcerpt:
    id: str
    sample_id: str
    account_id: str
    text: str
    position: int
