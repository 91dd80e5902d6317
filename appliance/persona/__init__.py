"""The account's persona: its system prompt (with history) and voice-training samples.

- ``service``: system prompts: the local template, generation with Claude, edits,
  history, the egress log, and ``prompt_for_account`` for the chat feature;
- ``claude``: the one client that talks to Anthropic (only the onboarding summary);
- ``voice``: voice samples: upload checks, text extraction, excerpts, the voice block;
- ``template``: the deterministic local system prompt and the line diff;
- ``store``: all SQL for the domain's tables (``migrations``, ``models``).
"""
