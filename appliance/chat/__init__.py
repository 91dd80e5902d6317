"""Chat: prompt assembly (and, later, conversations and citations)."""
