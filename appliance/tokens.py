"""The one estimate of how many tokens a text takes, for where no tokenizer can tell (the
inference service is down, or a budget is checked without asking it)."""


def estimate_tokens(text: str) -> int:
    """About four characters a token (prose in the languages the shipped models know best),
    rounded up; at least 1."""
    return max(1, (len(text) + 3) // 4)
