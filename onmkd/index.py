"""faiss indexes over passage vectors: build, search, save, size on disk.

Inner product throughout: with L2-normalised vectors it is cosine similarity.
- ``flat``: exact search (IndexFlatIP), the default.
- ``hnsw``: graph search (IndexHNSWFlat), ``hnsw_m`` links per node, ``ef_search`` at query time.
- ``ivfpq``: inverted lists with product quantisation (IndexIVFPQ), ``nlist`` lists, ``pq_m``
  sub-quantisers of ``pq_bits`` bits, ``nprobe`` lists visited per query.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import faiss
import numpy as np

from onmkd.errors import ConfigError
from onmkd.io import atomic_path

INDEX_KINDS = ("flat", "hnsw", "ivfpq")


@dataclass(frozen=True)
class IndexSpec:
    """Which faiss index to build; the fields of the other kinds are ignored."""

    kind: str = "flat"
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    nlist: int = 0  # 0: about 4·sqrt(N), at most N/39 so that k-means has 39 points per list
    pq_m: int = 0  # 0: dim/8 sub-quantisers (dim must divide by it)
    pq_bits: int = 8
    nprobe: int = 16

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ConfigError(f"index: {self.kind!r} is not one of {', '.join(INDEX_KINDS)}")

    def to_dict(self) -> dict:
        return asdict(self)


def build_index(vectors: np.ndarray, spec: IndexSpec = IndexSpec()) -> faiss.Index:
    """Build an inner-product index over ``vectors`` ``[N, d]`` (float32)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    if n == 0:
        raise ConfigError("index: cannot build an index over an empty corpus")
    if spec.kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.ef_construction
        index.hnsw.efSearch = spec.ef_search
    else:
        pq_m = spec.pq_m or max(1, d // 8)
        if d % pq_m:
            raise ConfigError(f"index.pq_m: {pq_m} does not divide the vector size {d}")
        nlist = spec.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
        if n < max(nlist, 2**spec.pq_bits):
            raise ConfigError(
                f"index: ivfpq needs at least {max(nlist, 2 ** spec.pq_bits)} passages to train "
                f"(nlist {nlist}, pq_bits {spec.pq_bits}); the corpus has {n}: use flat or hnsw"
            )
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, spec.pq_bits, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = min(spec.nprobe, nlist)
    index.add(x)
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, row ids) per query, best first; ``k`` is capped at the index size."""
    k = min(k, index.ntotal)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def index_bytes(index: faiss.Index) -> int:
    """Bytes the index takes when serialised (what it occupies on disk)."""
    return int(faiss.serialize_index(index).nbytes)


def save_index(index: faiss.Index, path: str | os.PathLike[str]) -> None:
    """Write the index to ``path`` atomically."""
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
