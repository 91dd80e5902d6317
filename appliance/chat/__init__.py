"""Chat: conversations, their turns and versions, prompt assembly and citations."""
