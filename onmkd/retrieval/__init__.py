"""Retrieval: encoders and their checkpoints, inference backends, faiss indexes, BM25, metrics,
and evaluation (encode -> index -> search -> metrics)."""
