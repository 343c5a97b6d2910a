"""Retrieval: FAISS indexes over item embeddings and a Recommender for trained runs."""

from sibrar.retrieval.index import Hits, IndexConfig, ItemIndex, recall_at_k
from sibrar.retrieval.recommender import Recommender

__all__ = ["Hits", "IndexConfig", "ItemIndex", "Recommender", "recall_at_k"]
