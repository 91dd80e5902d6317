"""Structure-aware chunking, sized in tokens of the embedding model.

Headings start a new chunk and form the heading path kept with each chunk (for
citations); paragraphs are split into sentences; chunks fill up to ``chunk_tokens`` and
repeat about ``overlap_tokens`` of the previous chunk's last sentences.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from appliance.knowledge.extract import Section
from appliance.knowledge.store import Chunk

Counter = Callable[[list[str]], list[int]]
SENTENCE_END = re.compile(r"(?<=[.!?…])\s+(?=[\"'“(\[]?[A-Z0-9À-Ý])|\n+")


@dataclass
class _Unit:
    text: str
    tokens: int
    page: int | None
    heading: str


def split_sentences(text: str) -> list[str]:
    parts = [part.strip() for part in SENTENCE_END.split(text)]
    return [part for part in parts if part]


def chunk_sections(
    sections: Sequence[Section],
    count: Counter,
    *,
    chunk_tokens: int,
    overlap_tokens: int,
) -> list[Chunk]:
    """Cut ``sections`` into chunks of at most ``chunk_tokens`` tokens (by ``count``)."""
    path: list[tuple[int, str]] = []
    raw: list[tuple[str, int | None, str, bool]] = []  # text, page, heading, starts a block
    for section in sections:
        if section.kind == "heading":
            level = max(1, section.level or 1)
            path = [(lvl, title) for lvl, title in path if lvl < level]
            path.append((level, section.text.strip()))
            raw.append(("", section.page, _path(path), True))
            continue
        for sentence in split_sentences(section.text):
            raw.append((sentence, section.page, _path(path), False))
    sentences = [text for text, *_ in raw if text]
    counts = iter(count(sentences)) if sentences else iter(())
    units: list[_Unit | None] = []
    for text, page, heading, is_heading in raw:
        if is_heading:
            units.append(None)  # a boundary
            continue
        tokens = next(counts)
        if tokens > chunk_tokens:
            units.extend(_split_long(text, tokens, chunk_tokens, page, heading))
        else:
            units.append(_Unit(text, tokens, page, heading))
    return _pack(units, chunk_tokens, overlap_tokens)


def _path(path: list[tuple[int, str]]) -> str:
    return " > ".join(title for _, title in path if title)


def _split_long(text: str, tokens: int, limit: int, page, heading) -> list[_Unit]:
    words = text.split()
    per_piece = max(1, int(len(words) * limit / tokens * 0.9))
    pieces = [" ".join(words[i : i + per_piece]) for i in range(0, len(words), per_piece)]
    share = tokens / max(1, len(words))
    return [
        _Unit(piece, max(1, int(len(piece.split()) * share)), page, heading) for piece in pieces
    ]


def _pack(units: list[_Unit | None], limit: int, overlap: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    current: list[_Unit] = []
    size = 0

    def flush(carry: bool) -> None:
        nonlocal current, size
        if not current:
            return
        chunks.append(
            Chunk(
                position=len(chunks),
                text=" ".join(unit.text for unit in current),
                page=current[0].page,
                heading=current[0].heading,
                tokens=size,
            )
        )
        kept: list[_Unit] = []
        if carry and overlap:
            total = 0
            for unit in reversed(current):
                if total + unit.tokens > overlap or len(kept) + 1 >= len(current):
                    break
                kept.insert(0, unit)
                total += unit.tokens
        current = kept
        size = sum(unit.tokens for unit in kept)

    for unit in units:
        if unit is None or (current and unit.heading != current[-1].heading):
            flush(carry=False)
            current, size = [], 0
            if unit is None:
                continue
        if current and size + unit.tokens > limit:
            flush(carry=True)
            if size + unit.tokens > limit:
                current, size = [], 0
        current.append(unit)
        size += unit.tokens
    flush(carry=False)
    return chunks
