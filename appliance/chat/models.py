"""What the chat store returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Message:
    id: str
    conversation_id: str
    position: int
    role: str
    content: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    sources: list[dict[str, Any]]
    model: str | None
    created_at: str
    parent_id: str | None = None  # the message this one follows; None for the first
    selected: int = 1  # the version on the conversation's current line among its siblings

    def public(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in ("id", "role", "content", "finish_reason")}
        data["usage"] = {name: getattr(self, name) for name in USAGE}
        return data | {name: getattr(self, name) for name in ("sources", "model", "created_at")}


@dataclass(frozen=True)
class Conversation:
    id: str
    account_id: str
    user_id: str
    instance_id: str
    title: str
    source: str
    generating_since: str | None
    created_at: str
    updated_at: str
    #: The current line: from the first message, the selected version at each step.
    messages: list[Message] = field(default_factory=list)
    #: For each message on the line that has other versions: all of them, oldest first.
    versions: dict[str, list[str]] = field(default_factory=dict)

    def public(self, *, with_messages: bool = False) -> dict[str, Any]:
        shown = ("id", "instance_id", "title", "source", "created_at", "updated_at")
        data: dict[str, Any] = {name: getattr(self, name) for name in shown}
        if with_messages:
            data["messages"] = [m.public() for m in self.messages]
        return data


#: The token counts a message stores (``usage`` in its public shape).
USAGE = ("prompt_tokens", "completion_tokens", "cached_tokens")
