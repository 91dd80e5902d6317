"""Instances: an account's private model endpoints (model, settings, system prompt, state)."""
