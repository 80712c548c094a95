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
