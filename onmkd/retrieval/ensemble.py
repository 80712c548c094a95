"""A score-average ensemble of K dual encoders, searched exactly with one index.

The ensemble's score of a question q and a passage p is the average of its members' scores,
``s(q, p) = (1/K) Σ_k q_k · p_k``. That is one inner product of concatenated vectors,
``[q_1/K, ..., q_K/K] · [p_1, ..., p_K]``, so the whole corpus is searched exactly through the same
faiss index as a single model (no re-ranking of a union of top-k lists, which would miss passages
that no member alone ranks high). Members' passage vectors come from the encoded-corpus cache
when their own evaluations encoded them.

It is the compute-matched control of the findings plan (:mod:`onmkd.study.findings`): two
independently trained DPR students cost what OnMKD's two peers cost, and tell mutual learning
apart from "two models are better than one".
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from onmkd import __version__
from onmkd.data import Dataset, passage_text
from onmkd.errors import ConfigError
from onmkd.io import write_json
from onmkd.retrieval.evaluate import EvalConfig, dense_run, encode_corpus, load_retriever, primary_metric, score_run
from onmkd.retrieval.metrics import write_trec_run


def ensemble_vectors(questions: Sequence[np.ndarray], passages: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated question and passage vectors whose inner product is the members' average score."""
    if not questions or len(questions) != len(passages):
        raise ConfigError(f"ensemble: expected as many question as passage matrices (one per member), got "
                          f"{len(questions)} and {len(passages)}")
    k = len(questions)
    q = np.concatenate([np.asarray(x, dtype=np.float32) / k for x in questions], axis=1)
    p = np.concatenate([np.asarray(x, dtype=np.float32) for x in passages], axis=1)
    return np.ascontiguousarray(q), np.ascontiguousarray(p)


def evaluate_ensemble(members: Sequence[str], data: Dataset, cfg: EvalConfig, out_dir: str | Path | None = None) -> dict:
    """Evaluate the score average of ``members`` (run directories or model folders) on ``cfg.split``.

    Writes ``config.json``, ``run.trec`` and ``metrics.json`` (last) to ``out_dir`` as
    :func:`onmkd.retrieval.evaluate.evaluate` does; ``params_m`` and ``ms_per_query`` are the
    members' sums (every member encodes each question).
    """
    if len(members) < 2:
        raise ConfigError(f"ensemble: needs at least 2 members, got {len(members)}")
    split = data.split(cfg.split)
    pids = list(data.corpus)
    texts = [passage_text(data.corpus[p], cfg.titles) for p in pids]
    qids = list(split.queries)
    questions = [split.queries[q] for q in qids]
    qv, pv, params, encode_ms = [], [], 0.0, 0.0
    for m in members:
        dual = load_retriever(str(m))
        pv.append(encode_corpus(dual.passage, pids, texts, cfg)[0])
        t0 = time.perf_counter()
        qv.append(dual.question.encode(questions, max_length=cfg.q_max_len, batch_size=cfg.batch_size, progress=False))
        encode_ms += 1000 * (time.perf_counter() - t0) / max(1, len(qids))
        params += dual.question.parameters_count() + (0 if dual.tied else dual.passage.parameters_count())
    q, p = ensemble_vectors(qv, pv)
    run, (index_mb, search_ms) = dense_run(q, p, qids, pids, cfg)
    metrics = score_run(run, data, cfg.split)
    metrics.update({"index_mb": index_mb, "search_ms_per_query": search_ms, "ms_per_query": encode_ms + search_ms,
                    "params_m": params / 1e6, "members": float(len(members))})
    if out_dir is not None:
        out = Path(out_dir)
        write_json(out / "config.json", {"onmkd_version": __version__, "command": "evaluate-ensemble",
                                         **cfg.to_dict(), "members": [str(m) for m in members],
                                         "dataset_source": data.source, "passages": len(data.corpus)})
        write_trec_run(run, out / "run.trec", tag="ensemble")
        write_json(out / "metrics.json", {"primary": primary_metric(metrics), **metrics})
    return metrics
