"""What an answer keeps of its passages: citation markers checked against the passages
it was given, references to them, and the token usage it cost."""

from __future__ import annotations

import re
from typing import Any

from appliance.chat import prompt

CITATION = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\](?!\()")


def check_citations(text: str, numbers: set[int]) -> tuple[str, list[int]]:
    """Drop markers whose number was not retrieved; ``[1, 3]`` becomes ``[1][3]``.

    Returns the checked text and the cited numbers in order of first use.
    """
    cited: dict[int, None] = {}  # an ordered set

    def fix(match: re.Match) -> str:
        kept = [int(n) for n in re.findall(r"\d+", match.group(1)) if int(n) in numbers]
        cited.update(dict.fromkeys(kept))
        return "".join(f"[{n}]" for n in kept)

    checked = CITATION.sub(fix, text)
    checked = re.sub(r"[ \t]+([.,;:!?])", r"\1", checked) if checked != text else checked
    return checked, list(cited)


def cited_sources(passages: list[prompt.Passage], cited: list[int]) -> list[dict[str, Any]]:
    """What an answer keeps of its passages: references, not their text (a deleted
    document's text must not live on in a conversation)."""
    kept = ("number", "document_id", "chunk_id", "filename", "page", "heading")
    return [{k: getattr(p, k) for k in kept} | {"cited": p.number in cited} for p in passages]


def usage_counts(usage: dict[str, Any] | None) -> dict[str, int]:
    """An OpenAI ``usage`` object as the counts a message stores."""
    usage = usage or {}
    return {
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "completion_tokens": usage.get("completion_tokens", 0),
        "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
    }
