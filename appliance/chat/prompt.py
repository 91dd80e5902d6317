"""Prompt assembly: system prompt + retrieved passages + as much history as fits.

What is kept, in order, within ``budget`` tokens of the chat model:

1. the system prompt (the instance's, or the account's persona prompt with voice excerpts);
2. the newest message (a request whose system prompt and newest message alone do not fit
   is refused, not silently cut);
3. retrieved passages, best first, while they fit;
4. earlier messages, newest first, while they fit: long conversations lose their oldest
   turns, and follow-up questions keep the recent context they depend on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from appliance.errors import InvalidInput

Counter = Callable[[list[str]], list[int]]
#: Tokens the chat template adds around each message (role markers, separators).
MESSAGE_OVERHEAD = 4
PASSAGES_HEADER = (
    "Passages from the team's documents follow, numbered. Base your answer on them when they "
    "are relevant and cite each one you use as [n]. If they do not answer the question, say so."
)


@dataclass(frozen=True)
class Passage:
    number: int
    document_id: str
    filename: str
    text: str
    page: int | None = None
    heading: str = ""
    chunk_id: int | None = None

    def render(self) -> str:
        where = self.filename + (f", page {self.page}" if self.page else "")
        where += f", {self.heading}" if self.heading else ""
        return f"[{self.number}] ({where})\n{self.text}"


@dataclass(frozen=True)
class Assembled:
    messages: list[dict[str, str]]
    passages: list[Passage]
    tokens: int
    dropped_messages: int
    dropped_passages: int


def assemble(
    system: str,
    passages: list[Passage],
    conversation: list[dict[str, str]],
    *,
    budget: int,
    count: Counter,
) -> Assembled:
    """Fit ``system``, ``passages`` and ``conversation`` (oldest first) into ``budget``.

    Raises:
        InvalidInput: the system prompt and the newest message alone exceed the budget.
    """
    if not conversation:
        raise InvalidInput("There is no message to answer.")
    texts = [system, PASSAGES_HEADER, *(p.render() for p in passages)]
    texts += [m["content"] for m in conversation]
    counts = count(texts)
    system_tokens = counts[0] + MESSAGE_OVERHEAD if system else 0
    header_tokens = counts[1] + 2
    passage_tokens = [c + 2 for c in counts[2 : 2 + len(passages)]]
    message_tokens = [c + MESSAGE_OVERHEAD for c in counts[2 + len(passages) :]]
    used = system_tokens + message_tokens[-1]
    if used > budget:
        raise InvalidInput(
            f"The message is too long: with the system prompt it needs {used} tokens, "
            f"and this instance's context budget is {budget}."
        )
    kept_passages: list[Passage] = []
    if passages and used + header_tokens + passage_tokens[0] <= budget:
        used += header_tokens
        for passage, tokens in zip(passages, passage_tokens, strict=True):
            if used + tokens > budget:
                break
            kept_passages.append(passage)
            used += tokens
    kept = 1
    for tokens in reversed(message_tokens[:-1]):
        if used + tokens > budget:
            break
        used += tokens
        kept += 1
    system_text = system
    if kept_passages:
        block = "\n\n".join([PASSAGES_HEADER, *(p.render() for p in kept_passages)])
        system_text = f"{system}\n\n{block}" if system else block
    messages = ([{"role": "system", "content": system_text}] if system_text else []) + list(
        conversation[-kept:]
    )
    return Assembled(
        messages=messages,
        passages=kept_passages,
        tokens=used,
        dropped_messages=len(conversation) - kept,
        dropped_passages=len(passages) - len(kept_passages),
    )
