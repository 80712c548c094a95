import math

import pytest

from onmkd.retrieval.metrics import (answer_accuracy, has_answer, normalize_tokens, qrels_metrics, rank, read_trec_run,
                           write_trec_run)


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("The Denver Broncos!", ["denver", "broncos"]),
        ("Röntgen, of Germany", ["ro\u0308ntgen", "of", "germany"]),  # NFD keeps the base letter + mark
        ("U.S.-based", ["u", "s", "based"]),
        ("an apple a day", ["apple", "day"]),
        ("  ", []),
    ],
)
def test_normalize_tokens(text, tokens):
    assert normalize_tokens(text) == tokens


@pytest.mark.parametrize(
    "passage, answers, expected",
    [
        ("Super Bowl 50 was won by the Denver Broncos.", ["Denver Broncos"], True),
        ("Super Bowl 50 was won by the Denver Broncos.", ["the Denver Broncos"], True),  # article dropped
        ("He scored 150 points.", ["50"], False),  # tokens, not substrings
        ("Carolina Panthers lost.", ["Denver Broncos", "Carolina"], True),  # any answer
        ("Born in 1856 in Smiljan.", ["Smiljan, Croatia"], False),  # whole answer must occur
        ("Röntgen won the first prize.", ["Rontgen"], False),  # accents are not stripped, as DPR
        ("Anything at all.", ["the"], False),  # an answer of articles only never matches
    ],
)
def test_has_answer(passage, answers, expected):
    assert has_answer(passage, answers) is expected


def test_answer_accuracy_by_hand():
    passages = {"p1": "paris is in france", "p2": "berlin is in germany", "p3": "rome is in italy"}
    ranked = {"q1": ["p2", "p1", "p3"], "q2": ["p3", "p2", "p1"], "q3": ["p1"], "q4": ["p2"]}
    answers = {"q1": ["Paris"], "q2": ["Germany"], "q3": ["Madrid"]}  # q4 has no answers: left out
    acc = answer_accuracy(ranked, passages, answers, ks=(1, 2, 3))
    assert acc == {"acc@1": 0.0, "acc@2": pytest.approx(2 / 3), "acc@3": pytest.approx(2 / 3)}


def test_rank_breaks_ties_like_trec_eval():
    assert rank({"q": {"a": 1.0, "c": 1.0, "b": 2.0}}) == {"q": ["b", "c", "a"]}


def test_qrels_metrics_by_hand():
    qrels = {"q1": {"d1": 1, "d2": 1}, "q2": {"d3": 2}, "q3": {"d9": 0}}  # q3 has no relevant doc: left out
    run = {"q1": {"d5": 0.9, "d1": 0.8, "d7": 0.7, "d2": 0.6}, "q2": {"d4": 0.9, "d6": 0.8}}
    m = qrels_metrics(qrels, run, recall_ks=(1, 2, 4))
    # q1: relevant at ranks 2 and 4; q2: nothing retrieved that is relevant.
    assert m["recall@1"] == pytest.approx(0.0)
    assert m["recall@2"] == pytest.approx((0.5 + 0) / 2)
    assert m["recall@4"] == pytest.approx((1.0 + 0) / 2)
    assert m["mrr@10"] == pytest.approx((1 / 2 + 0) / 2)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx((dcg / idcg + 0) / 2)


def test_mrr_is_cut_at_10():
    run = {"q": {f"x{i:02d}": 1 - i / 100 for i in range(12)} | {"d": 0.885}}  # d at rank 13
    assert qrels_metrics({"q": {"d": 1}}, run)["mrr@10"] == 0.0


def test_query_missing_from_run_counts_zero():
    m = qrels_metrics({"q1": {"d1": 1}, "q2": {"d2": 1}}, {"q1": {"d1": 1.0}}, recall_ks=(1,))
    assert m["recall@1"] == pytest.approx(0.5)


def test_trec_run_round_trip(tmp_path):
    run = {"q1": {"d1": 0.123456789, "d2": 0.5}, "q 2": {}}
    write_trec_run(run, tmp_path / "run.trec", tag="my model")
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert lines == ["q1 Q0 d2 1 0.5 my_model", "q1 Q0 d1 2 0.123456789 my_model"]
    assert read_trec_run(tmp_path / "run.trec") == {"q1": {"d2": 0.5, "d1": 0.123456789}}
