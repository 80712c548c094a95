"""Shared fixtures: offline mode, a private cache, and a tiny randomly initialised BERT."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

WORDS = (
    "the a an of in on to and is was who what when where which capital city river france paris germany "
    "berlin rhine flows through country king queen born year war broncos denver super bowl won game team "
    "tesla inventor electricity current oxygen element gas atomic number eight"
).split()


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep converted checkpoints and encoded corpora out of the user's cache."""
    if "ONMKD_TEST_CACHE" in os.environ:  # reuse across sessions when the developer asks to
        os.environ["ONMKD_CACHE"] = os.environ["ONMKD_TEST_CACHE"]
    else:
        os.environ["ONMKD_CACHE"] = str(tmp_path_factory.mktemp("onmkd-cache"))
    yield


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request, monkeypatch):
    """Tiny-model tests run on one thread (subprocesses too): threads only add overhead at hidden
    size 32, and much of it on a busy machine. The slow tests on real models keep torch's default."""
    if "slow" in request.keywords:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer BERT of hidden size 32 with a WordPiece vocabulary of the test words, saved to a folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + list("abcdefghijklmnopqrstuvwxyz0123456789")
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_beir(tmp_path):
    """A five-passage BEIR folder with three test questions (one has two relevant passages)."""
    import json

    folder = tmp_path / "tiny-beir"
    (folder / "qrels").mkdir(parents=True)
    docs = {
        "d1": ("Paris", "paris is the capital city of france"),
        "d2": ("Berlin", "berlin is the capital city of germany"),
        "d3": ("Rhine", "the rhine river flows through germany and france"),
        "d4": ("Tesla", "tesla was an inventor of electricity current"),
        "d5": ("Oxygen", "oxygen is a gas with atomic number eight"),
    }
    with open(folder / "corpus.jsonl", "w") as f:
        for pid, (title, text) in docs.items():
            f.write(json.dumps({"_id": pid, "title": title, "text": text}) + "\n")
    qs = {"q1": "what is the capital of france", "q2": "which river flows through germany", "q3": "who was tesla"}
    with open(folder / "queries.jsonl", "w") as f:
        for qid, text in qs.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t1\nq2\td2\t1\nq3\td4\t1\n")
    return folder


SQUAD_ARTICLES = [
    ("France", "paris is the capital city of france", [("what is the capital of france", "paris"), ("which city is the capital of france", "paris")]),
    ("Germany", "berlin is the capital city of germany", [("what is the capital of germany", "berlin"), ("which city is in germany", "berlin")]),
    ("Rhine", "the rhine river flows through germany and france", [("which river flows through germany", "rhine"), ("what flows through france", "rhine")]),
    ("Tesla", "tesla was an inventor of electricity current", [("who was an inventor", "tesla"), ("who was the inventor of current", "tesla")]),
    ("Oxygen", "oxygen is a gas with atomic number eight", [("what gas has atomic number eight", "oxygen"), ("what is a gas", "oxygen")]),
    ("Bowl", "the denver broncos won the super bowl game", [("who won the super bowl", "denver broncos"), ("which team won the game", "denver broncos")]),
    ("King", "the king and queen of france were born in paris", [("where were the king and queen born", "paris"), ("where was the queen born", "paris")]),
    ("War", "the war was won in the year eight", [("when was the war won", "eight"), ("in what year was the war won", "eight")]),
    ("Capital", "berlin and paris are each a capital city", [("which capital city is in germany", "berlin"), ("name a capital city", "paris")]),
    ("Element", "oxygen is an element and a gas", [("what element is a gas", "oxygen"), ("which gas is an element", "oxygen")]),
]


@pytest.fixture(scope="session")
def tiny_squad(tmp_path_factory):
    """A ten-article SQuAD-format file (split by article: 7 train, 1 dev, 2 test); spec ``squad:PATH``."""
    import json

    data = []
    for i, (title, text, qas) in enumerate(SQUAD_ARTICLES):
        data.append({"title": title, "paragraphs": [{"context": text, "qas": [
            {"id": f"a{i}q{j}", "question": q, "answers": [{"text": a, "answer_start": text.find(a)}]}
            for j, (q, a) in enumerate(qas)]}]})
    path = tmp_path_factory.mktemp("tiny-squad") / "tiny-squad.json"
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path
