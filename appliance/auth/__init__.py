"""Sign-in codes, sessions, API keys and the throttles that protect them."""
