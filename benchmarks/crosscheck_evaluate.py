"""Cross-check `onmkd-bench evaluate` against an independent pipeline on the same data.

Independent path: sentence-transformers' own `SentenceTransformer.encode` (max_seq_length 256,
its mean pooling and normalisation), brute-force numpy inner products, and ranx for the qrels
metrics; answer accuracy with DPR's own regex tokeniser rule, written here from its description.
Then recomputes the onmkd run's metrics from its `run.trec` with ranx and compares both.

    python benchmarks/crosscheck_evaluate.py --run-dir runs/evaluate/minilm-l6__squad__test \
        --model minilm-l6 --dataset squad --split test

Writes a JSON line per check to stdout; exit code 1 when the run file disagrees beyond 1e-6.
"""

from __future__ import annotations

import argparse
import json
import re
import unicodedata
from pathlib import Path

import numpy as np

ALNUM = r"[\p{L}\p{N}\p{M}]+"


def dpr_tokens(text: str) -> list[str]:
    # DPR's SimpleTokenizer: runs of letters/digits/marks, or single non-space characters; uncased.
    import regex

    return [m.group().lower() for m in regex.finditer(rf"({ALNUM})|([^\p{{Z}}\p{{C}}])", unicodedata.normalize("NFD", text))]


def dpr_has_answer(passage: str, answers: list[str]) -> bool:
    toks = dpr_tokens(passage)
    for a in answers:
        at = dpr_tokens(a)
        for i in range(len(toks) - len(at) + 1):
            if at and toks[i : i + len(at)] == at:
                return True
    return False


def ranx_metrics(qrels, run, ks=(1, 5, 20, 100)):
    from ranx import Qrels, Run, evaluate

    judged = {q: d for q, d in qrels.items() if any(g > 0 for g in d.values())}
    # trec_eval order: score descending, ties by doc id descending; ranx keeps insertion order on ties.
    ordered = {q: dict(sorted(run.get(q, {}).items(), key=lambda kv: (kv[1], kv[0]), reverse=True)) for q in judged}
    ordered = {q: (d or {"__none__": -1e9}) for q, d in ordered.items()}
    names = [f"recall@{k}" for k in ks] + ["mrr@10", "ndcg@10"]
    out = evaluate(Qrels(judged), Run(ordered), names, make_comparable=True)
    return {k: float(v) for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--model", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--skip-encode", action="store_true", help="only recompute from the run file")
    args = ap.parse_args()

    from onmkd.data import load_dataset, passage_text
    from onmkd.retrieval.metrics import read_trec_run

    data = load_dataset(args.dataset)
    split = data.split(args.split)
    ours = json.loads((args.run_dir / "metrics.json").read_text())
    status = 0

    # 1. The run file, re-evaluated by another library.
    run = read_trec_run(args.run_dir / "run.trec")
    again = ranx_metrics(split.qrels, run)
    worst = max(abs(again[k] - ours[k]) for k in again)
    print(json.dumps({"check": "run file -> ranx", "max_abs_diff": worst, **{k: round(v, 6) for k, v in again.items()}}))
    status |= worst > 1e-6
    if args.skip_encode or args.model == "bm25":
        return int(status)

    # 2. An independent dense pipeline from the texts.
    from sentence_transformers import SentenceTransformer

    from onmkd.retrieval.models import resolve

    st = SentenceTransformer(resolve(args.model), device="cpu")
    st.max_seq_length = 256
    pids = list(data.corpus)
    P = st.encode([passage_text(data.corpus[p]) for p in pids], batch_size=64, normalize_embeddings=True)
    qids = list(split.queries)
    Q = st.encode([split.queries[q] for q in qids], batch_size=64, normalize_embeddings=True)
    S = Q @ P.T
    top = np.argsort(-S, axis=1, kind="stable")[:, :100]
    indep = {q: {pids[j]: float(S[i, j]) for j in top[i]} for i, q in enumerate(qids)}
    m = ranx_metrics(split.qrels, indep)
    if split.answers:
        for k in (1, 5, 20, 100):
            hits = [any(dpr_has_answer(data.corpus[pids[j]]["text"], split.answers[q]) for j in top[i][:k])
                    for i, q in enumerate(qids) if split.answers.get(q)]
            m[f"acc@{k}"] = float(np.mean(hits))
    diffs = {k: round(m[k] - ours[k], 6) for k in m if k in ours}
    print(json.dumps({"check": "independent pipeline", "metrics": {k: round(v, 4) for k, v in m.items()}, "diff_vs_onmkd": diffs}))
    return int(status)


if __name__ == "__main__":
    raise SystemExit(main())
