"""The account's persona: its system prompt (with history) and voice-training samples."""
