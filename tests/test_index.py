import numpy as np
import pytest

from onmkd.errors import ConfigError
from onmkd.index import IndexSpec, build_index, index_bytes, save_index, search


def _vectors(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_is_exact():
    x, q = _vectors(200, 16), _vectors(5, 16, seed=1)
    scores, ids = search(build_index(x), q, 10)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    assert (ids == exact).all()
    assert np.allclose(scores, np.take_along_axis(q @ x.T, exact, axis=1), atol=1e-5)


def test_hnsw_finds_most_neighbours():
    x, q = _vectors(1000, 16), _vectors(20, 16, seed=1)
    _, ids = search(build_index(x, IndexSpec(kind="hnsw")), q, 10)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    assert overlap > 0.9


def test_ivfpq_builds_and_is_smaller(tmp_path):
    x = _vectors(5000, 32)
    flat, pq = build_index(x), build_index(x, IndexSpec(kind="ivfpq", pq_m=8))
    assert index_bytes(pq) < index_bytes(flat) / 3
    _, ids = search(pq, x[:10], 5)
    assert (ids[:, 0] >= 0).all()
    save_index(pq, tmp_path / "pq.faiss")
    assert (tmp_path / "pq.faiss").stat().st_size > 0


def test_bad_specs_name_the_field():
    with pytest.raises(ConfigError, match="index: 'lsh'"):
        IndexSpec(kind="lsh")
    with pytest.raises(ConfigError, match="pq_m"):
        build_index(_vectors(5000, 30), IndexSpec(kind="ivfpq", pq_m=8))
    with pytest.raises(ConfigError, match="ivfpq needs at least"):
        build_index(_vectors(50, 32), IndexSpec(kind="ivfpq"))
    with pytest.raises(ConfigError, match="empty corpus"):
        build_index(np.zeros((0, 8), dtype=np.float32))


def test_k_larger_than_corpus_is_capped():
    scores, ids = search(build_index(_vectors(3, 8)), _vectors(2, 8, seed=1), 100)
    assert ids.shape == (2, 3)
