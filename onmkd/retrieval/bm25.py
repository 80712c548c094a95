"""BM25 through bm25s: English stop words removed, Snowball (Porter 2) stemming, Lucene's
scoring variant with k1 = 0.9, b = 0.4 (the defaults of Anserini/pyserini's BM25)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class BM25:
    """A BM25 index over passage texts, searched with question texts."""

    def __init__(self, k1: float = 0.9, b: float = 0.4):
        self.k1, self.b = k1, b
        self._retriever = None
        self._stemmer = None

    def _tokenize(self, texts: Sequence[str]):
        import bm25s

        return bm25s.tokenize(list(texts), stopwords="en", stemmer=self._stemmer, show_progress=False)

    def index(self, texts: Sequence[str]) -> "BM25":
        import bm25s
        import Stemmer

        self._stemmer = Stemmer.Stemmer("english")
        self._retriever = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        self._retriever.index(self._tokenize(texts), show_progress=False)
        self._n = len(texts)
        return self

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, passage row ids) per question, best first."""
        k = min(k, self._n)
        ids, scores = self._retriever.retrieve(self._tokenize(queries), k=k, show_progress=False, n_threads=0)
        return scores.astype(np.float32), ids.astype(np.int64)
