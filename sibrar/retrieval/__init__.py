"""Retrieval: FAISS indexes over item embeddings."""

from sibrar.retrieval.index import Hits, IndexConfig, ItemIndex, recall_at_k

__all__ = ["Hits", "IndexConfig", "ItemIndex", "recall_at_k"]
