import numpy as np
import pytest

from onmkd.errors import ConfigError
from onmkd.retrieval.index import IndexSpec, build_index, index_bytes, save_index, search

from numerics import dot_atol


def _vectors(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.numerics
def test_flat_is_exact():
    x, q = _vectors(200, 16), _vectors(5, 16, seed=1)
    scores, ids = search(build_index(x), q, 10)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    assert (ids == exact).all()
    assert np.allclose(scores, np.take_along_axis(q @ x.T, exact, axis=1), atol=dot_atol(16))  # faiss vs numpy


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


# ---- sharded search, files with checksums, the memory check, GPU placement ---------------------

import faiss  # noqa: E402

from onmkd.errors import DataError  # noqa: E402
from onmkd.retrieval.index import (  # noqa: E402
    ShardedIndex, build_sharded_index, estimate_bytes, is_gpu_index, load_index, shard_bounds, sidecar_path,
)
from onmkd.resources import ResourceError  # noqa: E402


@pytest.mark.numerics
@pytest.mark.parametrize("shards,k", [(4, 10), (3, 100), (4, 400)])
def test_sharded_flat_equals_single_flat(shards, k):
    x, q = _vectors(1000, 16), _vectors(20, 16, seed=1)
    s1, i1 = search(build_index(x), q, k)
    sharded = build_sharded_index(x, IndexSpec(), shards)
    assert isinstance(sharded, ShardedIndex) and len(sharded.shards) == shards and sharded.ntotal == 1000
    s2, i2 = search(sharded, q, k)
    assert (i1 == i2).all()
    assert np.allclose(s1, s2, atol=dot_atol(16))


def test_shard_bounds_cover_all_rows():
    assert shard_bounds(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert shard_bounds(2, 5) == [(0, 1), (1, 2)]
    with pytest.raises(ConfigError, match="shards"):
        shard_bounds(10, 0)


@pytest.mark.numerics
def test_sharded_ivfpq_shares_one_training():
    x = _vectors(3000, 16)
    idx = build_sharded_index(x, IndexSpec(kind="ivfpq", pq_m=4, pq_bits=6, nlist=16, nprobe=16), 2)
    a, b = idx.shards
    assert np.array_equal(faiss.vector_to_array(a.pq.centroids), faiss.vector_to_array(b.pq.centroids))
    assert np.array_equal(a.quantizer.reconstruct_n(0, a.nlist), b.quantizer.reconstruct_n(0, b.nlist))
    single = faiss.clone_index(a)  # the same training, every row in one index
    single.reset()
    single.add(x)
    s1, i1 = search(single, x[:50], 10)
    s2, i2 = search(idx, x[:50], 10)
    assert np.allclose(s1, s2, atol=dot_atol(16)) and (i1 == i2).mean() > 0.98  # PQ codes can tie
    assert (i2 == np.arange(50)[:, None]).any(axis=1).mean() >= 0.9  # a vector finds itself


def test_save_load_roundtrip_with_sidecar(tmp_path):
    x, q = _vectors(500, 16), _vectors(5, 16, seed=1)
    for spec in (IndexSpec(), IndexSpec(kind="hnsw", ef_search=77)):
        index = build_index(x, spec)
        path = tmp_path / f"{spec.kind}.faiss"
        save_index(index, path)
        digest = sidecar_path(path).read_text().split()
        assert len(digest[0]) == 64 and digest[1] == path.name
        loaded = load_index(path)
        assert loaded.ntotal == 500
        assert (search(loaded, q, 10)[1] == search(index, q, 10)[1]).all()
    assert load_index(tmp_path / "hnsw.faiss").hnsw.efSearch == 77


def test_load_detects_a_flipped_byte_and_a_missing_sidecar(tmp_path):
    path = tmp_path / "flat.faiss"
    save_index(build_index(_vectors(100, 8)), path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="damaged or truncated"):
        load_index(path)
    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(DataError, match="damaged or truncated"):
        load_index(path)
    sidecar_path(path).unlink()
    with pytest.raises(DataError, match="no checksum file"):
        load_index(path)
    with pytest.raises(DataError, match="no such index file"):
        load_index(tmp_path / "absent.faiss")


def test_sharded_index_saves_as_a_folder(tmp_path):
    x, q = _vectors(300, 8), _vectors(4, 8, seed=1)
    idx = build_sharded_index(x, IndexSpec(), 3)
    save_index(idx, tmp_path / "sharded")
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir())[-1] == "shards.json"
    loaded = load_index(tmp_path / "sharded")
    assert isinstance(loaded, ShardedIndex) and loaded.offsets == [0, 100, 200]
    assert (search(loaded, q, 20)[1] == search(build_index(x), q, 20)[1]).all()
    assert index_bytes(loaded) == index_bytes(idx)
    shard = tmp_path / "sharded" / "shard-00001.faiss"
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(DataError, match="shard-00001.faiss"):
        load_index(tmp_path / "sharded")


def test_memory_check_names_the_alternative(monkeypatch):
    monkeypatch.delenv("ONMKD_SKIP_RESOURCE_CHECKS", raising=False)
    monkeypatch.setattr("onmkd.resources.available_memory", lambda: 10_000)
    x = _vectors(1000, 16)
    with pytest.raises(ResourceError, match=r"flat index over 1,000 vectors.*use ivfpq.*--shards"):
        build_index(x)
    with pytest.raises(ResourceError, match="hnsw index"):
        build_index(x, IndexSpec(kind="hnsw"))
    with pytest.raises(ResourceError):
        build_sharded_index(x, IndexSpec(), 4)
    monkeypatch.setenv("ONMKD_SKIP_RESOURCE_CHECKS", "1")
    assert build_index(x).ntotal == 1000


def test_estimates():
    assert estimate_bytes(1000, 384) == 1000 * 384 * 4
    assert estimate_bytes(1000, 384, IndexSpec(kind="hnsw", hnsw_m=32)) == 1000 * (384 * 4 + 32 * 8)
    est = estimate_bytes(10**6, 384, IndexSpec(kind="ivfpq", pq_m=48, nlist=1024, train_size=100_000))
    assert est == 100_000 * 384 * 4 + 1024 * 384 * 4 + 10**6 * (48 + 8)


def test_ivfpq_train_size_samples():
    x = _vectors(5000, 32)
    idx = build_index(x, IndexSpec(kind="ivfpq", pq_m=8, pq_bits=6, nlist=16, train_size=1000))
    assert idx.is_trained and idx.ntotal == 5000 and idx.nlist == 16
    with pytest.raises(ConfigError, match="train_size is 50"):
        build_index(x, IndexSpec(kind="ivfpq", pq_m=8, pq_bits=6, nlist=16, train_size=50))


def test_gpu_request_on_cpu_faiss(monkeypatch):
    monkeypatch.delattr(faiss, "StandardGpuResources", raising=False)  # as with faiss-cpu
    with pytest.raises(ConfigError, match="gpu extra"):
        build_index(_vectors(50, 8), IndexSpec(device="gpu"))
    index = build_index(_vectors(50, 8), IndexSpec(device="auto"))
    assert not is_gpu_index(index) and index.ntotal == 50
    with pytest.raises(ConfigError, match="index.device"):
        IndexSpec(device="tpu")


@pytest.mark.parametrize("vectors", ["uniform", "clustered"])
def test_ann_scale_benchmark_smoke(tmp_path, vectors):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ann_scale.py"
    out = tmp_path / "ann"
    proc = subprocess.run([sys.executable, str(script), "--n", "5000", "--queries", "50", "--pq-m", "8",
                           "--nprobe", "16", "--ef-search", "128", "--ef-construction", "40",
                           "--single-seconds", "0.1", "--threads", "1", "--data", vectors, "--topics", "20",
                           "--subtopics", "10", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.with_suffix(".json").read_text())
    recall = {r["index"]: r["recall@100"] for r in data["rows"]}
    assert recall["flat"] == 1.0 and recall["flat-4shards"] == 1.0
    assert set(recall) == {"flat", "flat-4shards", "ivfpq-m8", "hnsw-M32"}
    assert out.with_suffix(".md").read_text().startswith("# Approximate search at scale")
    assert "--n 5000" in data["command"]
    assert data["data"] == vectors
    if vectors == "clustered":  # structure that IVF lists can fit: far above the uniform worst case (about 0.1)
        assert recall["ivfpq-m8"] > 0.5
