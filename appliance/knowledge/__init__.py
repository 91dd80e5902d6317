"""The knowledge base: uploads, extraction, chunking, indexing, hybrid search, deletion."""
