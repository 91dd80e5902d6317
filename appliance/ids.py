"""Random, non-sequential identifiers: an id never tells how many objects exist."""

import secrets


def new_id(prefix: str) -> str:
    """``prefix_`` followed by 20 random base32-ish characters (100 bits)."""
    alphabet = "abcdefghijkmnpqrstuvwxyz23456789"
    return f"{prefix}_" + "".join(secrets.choice(alphabet) for _ in range(20))
