"""Retrieval metrics.

- Qrels metrics (recall@k, MRR@10, nDCG@10) come from ``trec_eval`` through ``pytrec_eval``;
  runs are ranked the way trec_eval ranks them (score descending, ties broken by document id
  descending), so a TREC run file written by :func:`write_trec_run` re-evaluates to the same
  numbers in any trec_eval-compatible tool.
- DPR top-k answer accuracy is the one metric no library offers: a question counts as answered
  at k when one of its top-k passages contains one of its answers as a token sequence after
  normalisation (:func:`normalize_tokens`).
"""

from __future__ import annotations

import os
import re
import string
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from onmkd.io import atomic_path

Run = dict[str, dict[str, float]]

ACC_KS = (1, 5, 20, 100)
RECALL_KS = (1, 5, 20, 100)

_ARTICLES = {"a", "an", "the"}
_PUNCT = set(string.punctuation)


def normalize_tokens(text: str) -> list[str]:
    """Tokens of ``text`` for answer matching, following DPR and the SQuAD evaluation script.

    Unicode NFD (as DPR), lower case, every punctuation character (Unicode category P*) replaced
    by a space, articles (a, an, the) removed, split on white space.
    """
    text = unicodedata.normalize("NFD", text).lower()
    text = "".join(" " if (ch in _PUNCT or unicodedata.category(ch).startswith("P")) else ch for ch in text)
    return [t for t in text.split() if t not in _ARTICLES]


def _joined(tokens: Sequence[str]) -> str:
    return " " + " ".join(tokens) + " "


def has_answer(passage: str, answers: Iterable[str]) -> bool:
    """True when some answer's normalised tokens occur contiguously in the passage's tokens."""
    hay = _joined(normalize_tokens(passage))
    return any((toks := normalize_tokens(a)) and _joined(toks) in hay for a in answers)


def rank(run: Mapping[str, Mapping[str, float]], k: int | None = None) -> dict[str, list[str]]:
    """Document ids per query in trec_eval order: score descending, then doc id descending."""
    out = {}
    for qid, docs in run.items():
        ordered = sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
        out[qid] = [d for d, _ in ordered[:k]]
    return out


def first_hit_ranks(
    ranked: Mapping[str, Sequence[str]],
    passages: Mapping[str, str],
    answers: Mapping[str, Sequence[str]],
    max_k: int = max(ACC_KS),
) -> dict[str, float]:
    """Per question with answers: the rank (1-based) of the first top-``max_k`` passage holding
    an answer, or ``inf`` when none does."""
    cache: dict[str, str] = {}
    out: dict[str, float] = {}
    for qid, pids in ranked.items():
        golds = [_joined(t) for a in answers.get(qid, ()) if (t := normalize_tokens(a))]
        if not golds:
            continue
        hit = np.inf
        for r, pid in enumerate(pids[:max_k], start=1):
            hay = cache.get(pid)
            if hay is None:
                hay = cache[pid] = _joined(normalize_tokens(passages[pid]))
            if any(g in hay for g in golds):
                hit = r
                break
        out[qid] = hit
    return out


def answer_accuracy(
    ranked: Mapping[str, Sequence[str]],
    passages: Mapping[str, str],
    answers: Mapping[str, Sequence[str]],
    ks: Sequence[int] = ACC_KS,
) -> dict[str, float]:
    """DPR top-k accuracy: the fraction of questions with answers whose top-k holds an answer.

    ``ranked`` gives each question's passage ids best first; ``passages`` their texts. Questions
    without answers are left out; returns ``{"acc@k": value}``.
    """
    hits = np.asarray(list(first_hit_ranks(ranked, passages, answers, max(ks)).values()))
    if not hits.size:
        return {}
    return {f"acc@{k}": float(np.mean(hits <= k)) for k in ks}


def qrels_metrics(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    recall_ks: Sequence[int] = RECALL_KS,
    per_query: bool = False,
) -> dict[str, float] | dict[str, dict[str, float]]:
    """recall@k, MRR@10 and nDCG@10 (trec_eval's ``recall_k``, ``recip_rank`` over the top 10,
    ``ndcg_cut_10``), averaged over the queries that have at least one relevant document.

    A query of the qrels absent from the run counts as zero, as in trec_eval with ``-c``.
    """
    import pytrec_eval

    judged = {q: {d: int(g) for d, g in docs.items()} for q, docs in qrels.items() if any(g > 0 for g in docs.values())}
    if not judged:
        return {}
    runs = {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in judged}
    top10 = {q: {d: runs[q][d] for d in ids} for q, ids in rank(runs, 10).items()}
    cut = ",".join(str(k) for k in recall_ks)
    scores = pytrec_eval.RelevanceEvaluator(judged, {f"recall.{cut}", "ndcg_cut.10"}).evaluate(_nonempty(runs))
    rr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(_nonempty(top10))
    rows: dict[str, dict[str, float]] = {}
    for q in judged:
        s = scores.get(q, {})
        row = {f"recall@{k}": s.get(f"recall_{k}", 0.0) for k in recall_ks}
        row["mrr@10"] = rr.get(q, {}).get("recip_rank", 0.0)
        row["ndcg@10"] = s.get("ndcg_cut_10", 0.0)
        rows[q] = row
    if per_query:
        return rows
    names = next(iter(rows.values())).keys()
    return {m: float(np.mean([r[m] for r in rows.values()])) for m in names}


def _nonempty(run: Run) -> Run:
    # trec_eval skips queries with no retrieved documents; they are filled in as zeros above.
    return {q: docs for q, docs in run.items() if docs}


def write_trec_run(run: Mapping[str, Mapping[str, float]], path: str | os.PathLike[str], tag: str) -> None:
    """Write ``run`` as a TREC run file (``qid Q0 docid rank score tag``), atomically.

    Scores are written with 9 significant digits (exact for float32), in trec_eval order.
    """
    tag = re.sub(r"\s+", "_", tag) or "onmkd"
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for qid, ids in rank(run).items():
            for r, pid in enumerate(ids, start=1):
                f.write(f"{qid} Q0 {pid} {r} {run[qid][pid]:.9g} {tag}\n")


def read_trec_run(path: str | os.PathLike[str]) -> Run:
    """Read a TREC run file into ``{qid: {docid: score}}``."""
    from onmkd.errors import DataError

    run: Run = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise DataError(f"{path}:{n}: expected 6 columns 'qid Q0 docid rank score tag', got {len(parts)}")
            try:
                run.setdefault(parts[0], {})[parts[2]] = float(parts[4])
            except ValueError:
                raise DataError(f"{path}:{n}: score {parts[4]!r} is not a number") from None
    return run
