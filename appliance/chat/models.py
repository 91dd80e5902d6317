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

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "content": self.content,
            "finish_reason": self.finish_reason,
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "cached_tokens": self.cached_tokens,
            },
            "sources": self.sources,
            "model": self.model,
            "created_at": self.created_at,
        }


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
    messages: list[Message] = field(default_factory=list)

    def public(self, *, with_messages: bool = False) -> dict[str, Any]:
        data = {
            "id": self.id,
            "instance_id": self.instance_id,
            "title": self.title,
            "source": self.source,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if with_messages:
            data["messages"] = [m.public() for m in self.messages]
        return data
