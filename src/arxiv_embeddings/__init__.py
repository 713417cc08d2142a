"""arxiv-embeddings."""
