"""Encode -> index -> search -> metrics, for a dense encoder or BM25, with a run directory.

``evaluate(...)`` returns flat metrics (``acc@20``, ``recall@100``, ``mrr@10``, ``ms_per_query``,
``index_mb`` …) and writes ``config.json``, ``metrics.json`` and ``run.trec`` when given a
run directory. The primary metric is ``acc@20`` where answers exist, else ``ndcg@10``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from onmkd import __version__
from onmkd.data import Dataset, passage_text
from onmkd.errors import ConfigError
from onmkd.retrieval.index import IndexSpec, build_index, estimate_bytes, index_bytes, search
from onmkd.io import atomic_path, cache_dir, check_component, file_sha256, write_json
from onmkd.retrieval.metrics import answer_accuracy, qrels_metrics, rank, write_trec_run
from onmkd.resources import check_disk, check_memory, human


@dataclass(frozen=True)
class EvalConfig:
    """How a model is evaluated. Defaults follow sentence-transformers' MiniLM setup."""

    model: str
    dataset: str
    split: str = "test"
    q_max_len: int = 64  # question tokens kept
    p_max_len: int = 256  # passage tokens kept (the MiniLM/MPNet training length)
    batch_size: int = 64  # encoding batch
    top_k: int = 100  # passages retrieved per question (the deepest cut-off reported)
    titles: bool = True  # index "title text" (BEIR, DPR); False: the passage text alone
    index: IndexSpec = field(default_factory=IndexSpec)
    cache: bool = True  # reuse encoded corpora by (model, corpus, length) fingerprint
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:N
    backend: str = "torch"  # torch (fp32), int8, onnx, onnx-int8 (onmkd.retrieval.backends; the last three on the CPU)

    def __post_init__(self) -> None:
        for name in ("q_max_len", "p_max_len", "batch_size", "top_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be a positive integer, got {getattr(self, name)}")
        check_component(self.split, "split")  # callers name run folders after it
        from onmkd.retrieval.backends import check_backend

        check_backend(self.backend)

    def to_dict(self) -> dict:
        return asdict(self)


def primary_metric(metrics: dict[str, float]) -> str:
    return "acc@20" if "acc@20" in metrics else "ndcg@10"


def _corpus_hash(pids: list[str], texts: list[str]) -> str:
    h = hashlib.sha256()
    for pid, text in zip(pids, texts):
        h.update(pid.encode())
        h.update(b"\0")
        h.update(text.encode())
        h.update(b"\1")
    return h.hexdigest()[:32]


def encode_cached(encoder, ids: list[str], texts: list[str], max_length: int, batch_size: int, label: str,
                  cache: bool = True) -> np.ndarray:
    """Vectors of ``texts``, from the cache when this (model, ids + texts, length) was encoded before.

    Cached arrays are checksummed and verified on load; a damaged entry is encoded again.
    """
    return _encode_cached(encoder, ids, texts, max_length, batch_size, label, cache)[0]


def _cache_entry(encoder, ids, texts, max_length) -> tuple[Path, Path, str]:
    """The cache files (vectors, metadata) of ``encoder``'s vectors of ``texts``, and its backend."""
    # The fingerprint of a backend (onmkd.retrieval.backends) names it; the key says it again so that no
    # backend can ever read another's vectors. PyTorch fp32 keeps the key it always had.
    backend = getattr(encoder, "backend", "torch")
    extra = "" if backend == "torch" else f"|{backend}"
    key = hashlib.sha256(f"{encoder.fingerprint()}|{_corpus_hash(ids, texts)}|{max_length}{extra}".encode()).hexdigest()[:40]
    folder = cache_dir() / "embeddings"
    return folder / f"{key}.npy", folder / f"{key}.json", backend


def _write_entry(encoder, data: Path, meta: Path, backend: str, vecs: np.ndarray, label: str, max_length: int) -> None:
    with atomic_path(data) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, vecs, allow_pickle=False)
    write_json(meta, {"model": encoder.name, "what": label, "count": len(vecs), "max_length": max_length,
                      "backend": backend, "sha256": file_sha256(data)})


def store_encoded(encoder, ids: list[str], texts: list[str], max_length: int, vecs: np.ndarray, label: str = "passages") -> None:
    """Put vectors that ``encoder`` has just computed for ``texts`` into the encoded-corpus cache, so
    that an evaluation of the same weights reads them instead of encoding again (the trainer does
    this for the student it selects on its last dev evaluation). Skipped where the disk is short."""
    data, meta, backend = _cache_entry(encoder, ids, texts, max_length)
    try:
        check_disk(data.parent, vecs.nbytes + 4096, f"caching the vectors of {len(ids):,} {label}")
    except Exception:  # a cache is an optimisation: never fail a run for it
        return
    _write_entry(encoder, data, meta, backend, np.ascontiguousarray(vecs, dtype=np.float32), label, max_length)


def _encode_cached(encoder, ids, texts, max_length, batch_size, label, cache):
    data, meta, backend = _cache_entry(encoder, ids, texts, max_length)
    n, dim = len(texts), int(getattr(encoder, "dim", 0) or 0)
    vec_bytes = n * dim * 4
    if cache and data.exists() and meta.exists():
        try:
            info = json.loads(meta.read_text())
            if info.get("sha256") == file_sha256(data):
                check_memory(vec_bytes, f"loading the cached vectors of {n:,} {label} ({dim}-d float32)", SHARD_HINT)
                return np.load(data, allow_pickle=False), True
        except (OSError, ValueError):
            pass  # damaged entry: encode again and overwrite it
    # Encoding tokenizes every text at once (Python lists of ids) and fills one [N, dim] array.
    tokens = sum(min(max_length, len(t) // 4 + 2) for t in texts)
    check_memory(vec_bytes + tokens * TOKEN_BYTES,
                 f"encoding {n:,} {label} ({dim}-d float32 vectors {human(vec_bytes)}, "
                 f"tokenized text about {human(tokens * TOKEN_BYTES)})", SHARD_HINT)
    if cache:
        check_disk(data.parent, vec_bytes + 4096, f"caching the vectors of {n:,} {label} (--no-cache skips it)")
    vecs = encoder.encode(texts, max_length=max_length, batch_size=batch_size, progress=True, desc=label)
    if cache:
        _write_entry(encoder, data, meta, backend, vecs, label, max_length)
    return vecs, False


def encode_corpus(encoder, pids: list[str], texts: list[str], cfg: EvalConfig) -> tuple[np.ndarray, bool]:
    """Passage vectors for an evaluation, cached; returns ``(vectors, from_cache)``."""
    return _encode_cached(encoder, pids, texts, cfg.p_max_len, cfg.batch_size, "passages", cfg.cache)


def load_retriever(model: str):
    """A :class:`~onmkd.training.peers.DualEncoder` for a registry name, checkpoint folder or training run directory."""
    from onmkd.retrieval.dual import DualEncoder

    path = Path(model)
    if (path / "student").is_dir():  # a training run: its selected student
        return DualEncoder.load(path / "student")
    if (path / "query").is_dir() and (path / "passage").is_dir():
        return DualEncoder.load(path)
    from onmkd.retrieval.models import Encoder

    return DualEncoder(Encoder.load(model))


TOKEN_BYTES = 64  # memory per token of tokenized text: ids, mask and type ids as Python lists, plus offsets
SHARD_HINT = ("encode the corpus in shards to disk with `onmkd-bench encode --shards N` (then `onmkd-bench index "
              "--kind ivfpq`), or use a machine with more memory; a flat index over the vectors needs as much "
              "again (--index ivfpq far less)")


def dense_run(qvecs: np.ndarray, pvecs: np.ndarray, qids: list[str], pids: list[str], cfg: EvalConfig):
    """Search ``pvecs`` with ``qvecs`` through the configured faiss index.

    Returns the run ``{qid: {pid: score}}`` and ``(index_mb, search_ms_per_query)``.
    Before building, checks that the index fits in memory (:func:`onmkd.retrieval.index.estimate_bytes`);
    if not, the message names the command-line alternatives (``build_index`` checks again, in
    index terms, for callers that build indexes themselves).
    """
    n, d = pvecs.shape
    need = estimate_bytes(n, d, cfg.index)
    sharded = "or a sharded index (`onmkd-bench encode --shards N`, then `onmkd-bench index --shards N`)"
    if cfg.index.kind == "ivfpq":
        alternative = f"lower index.pq_m, {sharded}"
    else:
        alternative = (f"use --index ivfpq (compressed, about {human(estimate_bytes(n, d, IndexSpec(kind='ivfpq')))})"
                       + (", --index hnsw" if cfg.index.kind == "flat" else "") + f" {sharded}")
    check_memory(need, f"a {cfg.index.kind} index over {n:,} passages of {d} dims", alternative)
    index = build_index(pvecs, cfg.index)
    t0 = time.perf_counter()
    scores, rows = search(index, qvecs, cfg.top_k)
    ms = 1000 * (time.perf_counter() - t0) / max(1, len(qids))
    run = {q: {pids[r]: float(sc) for r, sc in zip(rr, ss) if r >= 0} for q, ss, rr in zip(qids, scores, rows)}
    return run, (index_bytes(index) / 2**20, ms)


def retrieve(cfg: EvalConfig, data: Dataset, retriever=None) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Search the whole corpus for every question of ``cfg.split``.

    Returns the run ``{qid: {pid: score}}`` (top ``cfg.top_k``) and efficiency measurements.
    ``retriever``: an already loaded :class:`~onmkd.training.peers.DualEncoder` (else ``cfg.model`` is loaded).
    """
    split = data.split(cfg.split)
    pids = list(data.corpus)
    texts = [passage_text(data.corpus[p], cfg.titles) for p in pids]
    qids = list(split.queries)
    questions = [split.queries[q] for q in qids]
    stats: dict[str, float] = {}
    if cfg.model == "bm25" and retriever is None:
        from onmkd.retrieval.bm25 import BM25

        t0 = time.perf_counter()
        bm25 = BM25().index(texts)
        stats["index_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores, rows = bm25.search(questions, cfg.top_k)
        stats["ms_per_query"] = 1000 * (time.perf_counter() - t0) / max(1, len(qids))
        # BM25 scores of 0 mean that no question term matched: not retrieved.
        run = {q: {pids[r]: float(sc) for r, sc in zip(rr, ss) if sc > 0} for q, ss, rr in zip(qids, scores, rows)}
        return run, stats
    if retriever is None:
        from onmkd.runtime import resolve_device

        device = resolve_device(cfg.device, "--device") if cfg.backend == "torch" else "cpu"
        retriever = load_retriever(cfg.model).to(device)
    from onmkd.retrieval.backends import dual_with_backend

    dual = dual_with_backend(retriever, cfg.backend)
    t0 = time.perf_counter()
    pvecs, cached = encode_corpus(dual.passage, pids, texts, cfg)
    if not cached:
        stats["corpus_encode_s"] = time.perf_counter() - t0
        stats["passages_per_s"] = len(pids) / stats["corpus_encode_s"]
    t0 = time.perf_counter()
    qvecs = dual.question.encode(questions, max_length=cfg.q_max_len, batch_size=cfg.batch_size, progress=True, desc="questions")
    encode_ms = 1000 * (time.perf_counter() - t0) / max(1, len(qids))
    run, (stats["index_mb"], stats["search_ms_per_query"]) = dense_run(qvecs, pvecs, qids, pids, cfg)
    stats["ms_per_query"] = encode_ms + stats["search_ms_per_query"]
    stats["params_m"] = (dual.question.parameters_count() + (0 if dual.tied else dual.passage.parameters_count())) / 1e6
    return run, stats


def score_run(run: dict[str, dict[str, float]], data: Dataset, split_name: str) -> dict[str, float]:
    """Answer accuracy (where answers exist) and qrels metrics of a run over ``split_name``."""
    split = data.split(split_name)
    metrics: dict[str, float] = {"questions": float(len(split.queries))}
    if split.answers:
        # As in DPR, an answer counts only when it is in the passage text, not in its title.
        passages = {pid: doc.get("text", "") for pid, doc in data.corpus.items()}
        metrics.update(answer_accuracy(rank(run), passages, split.answers))
    metrics.update(qrels_metrics(split.qrels, run))
    return metrics


def evaluate(cfg: EvalConfig, data: Dataset, out_dir: str | Path | None = None, retriever=None,
             extra=None) -> dict[str, float]:
    """Retrieve for ``cfg.split`` and compute answer accuracy, qrels metrics and efficiency.

    With ``out_dir``: writes ``config.json``, ``run.trec`` and ``metrics.json`` (last) there.
    ``extra``: a function of the retriever returning more flat metrics (e.g. measured latency)
    to store in the same ``metrics.json``.
    """
    data.split(cfg.split)
    run, stats = retrieve(cfg, data, retriever)
    metrics = score_run(run, data, cfg.split)
    metrics.update(stats)
    if extra is not None:
        metrics.update(extra(retriever))
    if out_dir is not None:
        out = Path(out_dir)
        write_json(out / "config.json", {"onmkd_version": __version__, "command": "evaluate", **cfg.to_dict(),
                                         "dataset_source": data.source, "passages": len(data.corpus)})
        write_trec_run(run, out / "run.trec", tag=cfg.model)
        write_json(out / "metrics.json", {"primary": primary_metric(metrics), **metrics})
    return metrics
