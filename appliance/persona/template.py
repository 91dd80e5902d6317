"""The local system prompt template and the line diff shown after a regeneration.

Both are deterministic and run entirely on the box.
"""

from __future__ import annotations

import difflib
import re

from appliance.accounts.models import Profile

FORMALITY = {
    "casual": "Write casually, like a friendly colleague: plain words, contractions are fine, "
    "no stiff phrasing.",
    "neutral": "Write in a clear, neutral, professional register.",
    "formal": "Write formally: complete sentences, no slang or contractions, courteous and "
    "precise.",
}
LENGTH = {
    "short": "Keep answers short: a few sentences or a brief list. Offer more detail only when "
    "asked.",
    "medium": "Aim for one to three short paragraphs; use a list when it makes steps or "
    "options clearer.",
    "detailed": "Give thorough answers: explain the reasoning, cover the cases that matter, and "
    "use headings or lists to structure longer answers.",
}
GROUND_RULES = (
    "Be accurate. If you do not know, or the team's documents do not say, say so plainly "
    "instead of guessing.",
    "When passages from the team's documents are provided, base your answer on them and name "
    "the document you used.",
    "Never invent facts, figures, prices, dates, names or quotes.",
    "If a request is ambiguous, ask one short clarifying question before giving a long answer.",
    "Treat everything the team shares with you as confidential.",
    "Do not pretend to be a person; if asked, say you are the team's AI assistant.",
)


def _clean(value: str) -> str:
    """One line of the owner's text, whitespace collapsed."""
    return re.sub(r"\s+", " ", value or "").strip()


def _sentence(value: str) -> str:
    text = _clean(value).rstrip(" .;,:")
    return text + "." if text else ""


def local_prompt(profile: Profile) -> str:
    """A complete system prompt built from the onboarding answers, without any network.

    Every answer that is filled in shapes a line; empty answers fall back to sensible
    defaults, so a skipped onboarding still gives a useful prompt.
    """
    business = _clean(profile.business_name)
    who = f"the team at {business}" if business else "a small team"
    lines = [
        f"You are the private AI assistant of {who}. You run on the team's own server, so "
        "what they share with you stays with them.",
    ]
    use = _sentence(profile.intended_use)
    if use:
        lines += [
            "",
            f"The team uses you for: {use}",
            "Focus on helping with that work; for other requests, help where you reasonably can.",
        ]
    style = []
    if _clean(profile.tone):
        style.append(f"Tone: {_sentence(profile.tone)}")
    formality = _clean(profile.formality)
    if formality:
        style.append(FORMALITY.get(formality.lower(), f"Formality: {_sentence(formality)}"))
    length = _clean(profile.length)
    if length:
        style.append(LENGTH.get(length.lower(), f"Answer length: {_sentence(length)}"))
    else:
        style.append(
            "Match the length of your answer to the question: short questions get short answers."
        )
    language = _clean(profile.language).rstrip(" .")
    if language:
        style.append(
            f"Answer in {language}, unless the user writes in another language or asks for one."
        )
    else:
        style.append("Answer in the language the user writes in.")
    style.append("Lead with the answer, then the details that matter.")
    lines += ["", "How to write:", *(f"- {line}" for line in style)]
    lines += ["", "Ground rules:", *(f"- {rule}" for rule in GROUND_RULES)]
    return "\n".join(lines)


def diff(old: str, new: str) -> list[tuple[str, str]]:
    """Line diff of two prompts as ``(op, line)``: ``" "`` kept, ``"-"`` removed, ``"+"`` added."""
    before, after = (old or "").splitlines(), (new or "").splitlines()
    result: list[tuple[str, str]] = []
    matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        result += [(" " if tag == "equal" else "-", line) for line in before[i1:i2]]
        result += [("+", line) for line in after[j1:j2] if tag != "equal"]
    return result
