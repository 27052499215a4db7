"""Retrieval (dense, BM25, hybrid over FAISS) and `ask`, which answers from retrieved passages or abstains."""
