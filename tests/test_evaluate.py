import json
import math

import pytest

from onmkd.data import load_dataset
from onmkd.retrieval.evaluate import EvalConfig, evaluate
from onmkd.errors import ConfigError, DataError
from onmkd.retrieval.metrics import read_trec_run


def _by_hand(qrels, run, k):
    """Recall@k, MRR@10, nDCG@10 written out independently of the library."""
    rec, rr, ndcg = [], [], []
    for q, rel in qrels.items():
        ranked = [d for d, _ in sorted(run.get(q, {}).items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]
        hits = [d for d in ranked[:k] if rel.get(d, 0) > 0]
        rec.append(len(hits) / sum(1 for g in rel.values() if g > 0))
        first = next((i for i, d in enumerate(ranked[:10], 1) if rel.get(d, 0) > 0), None)
        rr.append(1 / first if first else 0.0)
        dcg = sum(rel.get(d, 0) / math.log2(i + 1) for i, d in enumerate(ranked[:10], 1))
        ideal = sorted(rel.values(), reverse=True)[:10]
        ndcg.append(dcg / sum(g / math.log2(i + 1) for i, g in enumerate(ideal, 1)))
    n = len(qrels)
    return sum(rec) / n, sum(rr) / n, sum(ndcg) / n


@pytest.mark.parametrize("model", ["tiny", "bm25"])
def test_run_directory_and_independent_recomputation(model, tiny_model_dir, tiny_beir, tmp_path):
    name = str(tiny_model_dir) if model == "tiny" else "bm25"
    data = load_dataset(str(tiny_beir))
    cfg = EvalConfig(model=name, dataset=str(tiny_beir), split="test", batch_size=2)
    out = tmp_path / "run"
    metrics = evaluate(cfg, data, out_dir=out)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["primary"] == "ndcg@10"
    assert json.loads((out / "config.json").read_text())["model"] == name
    run = read_trec_run(out / "run.trec")
    qrels = data.split("test").qrels
    for k in (1, 5):
        assert saved[f"recall@{k}"] == pytest.approx(_by_hand(qrels, run, k)[0], abs=1e-6)
    _, mrr, ndcg = _by_hand(qrels, run, 5)
    assert saved["mrr@10"] == pytest.approx(mrr, abs=1e-6)
    assert saved["ndcg@10"] == pytest.approx(ndcg, abs=1e-6)
    assert metrics["questions"] == 3


def test_bm25_ranks_the_obvious_passage_first(tiny_beir):
    data = load_dataset(str(tiny_beir))
    m = evaluate(EvalConfig(model="bm25", dataset="x"), data)
    assert m["recall@1"] == pytest.approx((1 + 0.5 + 1) / 3)  # q2 has two relevant passages


def test_second_evaluation_reuses_encoded_corpus(tiny_model_dir, tiny_beir, monkeypatch, tmp_path):
    from onmkd.retrieval.models import Encoder

    monkeypatch.setenv("ONMKD_CACHE", str(tmp_path / "cache"))

    data = load_dataset(str(tiny_beir))
    cfg = EvalConfig(model=str(tiny_model_dir), dataset="tiny", split="test")
    calls = []
    real = Encoder.encode

    def counting(self, texts, **kw):
        calls.append(kw.get("desc"))
        return real(self, texts, **kw)

    monkeypatch.setattr(Encoder, "encode", counting)
    first = evaluate(cfg, data)
    second = evaluate(cfg, data)
    assert calls == ["passages", "questions", "questions"]
    assert "corpus_encode_s" in first and "corpus_encode_s" not in second
    assert first["ndcg@10"] == second["ndcg@10"]


def test_damaged_cache_entry_is_encoded_again(tiny_model_dir, tiny_beir, monkeypatch, tmp_path):
    import os

    monkeypatch.setenv("ONMKD_CACHE", str(tmp_path / "cache"))
    from onmkd.io import cache_dir

    data = load_dataset(str(tiny_beir))
    cfg = EvalConfig(model=str(tiny_model_dir), dataset="tiny", split="test")
    evaluate(cfg, data)
    for f in (cache_dir() / "embeddings").glob("*.npy"):
        with open(f, "r+b") as fh:
            fh.seek(-4, os.SEEK_END)
            fh.write(b"\0\0\0\0")
    assert "corpus_encode_s" in evaluate(cfg, data)


def test_answers_give_accuracy_from_text_not_title():
    from onmkd.data import Dataset, Split

    corpus = {"p1": {"title": "", "text": "paris is the capital of france"},
              "p2": {"title": "Madrid", "text": "berlin is the capital of germany"}}
    split = Split(queries={"q1": "capital of france", "q2": "capital of germany"},
                  qrels={"q1": {"p1": 1}, "q2": {"p2": 1}}, answers={"q1": ["Paris"], "q2": ["Madrid"]})
    m = evaluate(EvalConfig(model="bm25", dataset="x"), Dataset("x", corpus, {"test": split}))
    assert m["acc@1"] == 0.5 and m["recall@1"] == 1.0  # "Madrid" is only in p2's title


def test_titles_switch_changes_what_is_indexed():
    from onmkd.data import Dataset, Split

    corpus = {"p1": {"title": "Oxygen", "text": "a gas with atomic number eight"},
              "p2": {"title": "Tesla", "text": "an inventor"}}
    split = Split(queries={"q1": "oxygen"}, qrels={"q1": {"p1": 1}})
    data = Dataset("x", corpus, {"test": split})
    assert evaluate(EvalConfig(model="bm25", dataset="x"), data)["recall@1"] == 1.0
    assert evaluate(EvalConfig(model="bm25", dataset="x", titles=False), data)["recall@1"] == 0.0


def test_missing_split_and_bad_options(tiny_beir):
    data = load_dataset(str(tiny_beir))
    with pytest.raises(DataError, match="no split 'dev'"):
        evaluate(EvalConfig(model="bm25", dataset="x", split="dev"), data)
    with pytest.raises(ConfigError, match="top_k"):
        EvalConfig(model="bm25", dataset="x", top_k=0)
