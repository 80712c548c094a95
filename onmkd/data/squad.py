"""SQuAD-format JSON (v1.1; v2.0 files load too) as a retrieval data set.

Corpus: every paragraph of every article, ``pid = f"{article_index}-{paragraph_index}"``
(0-based, file order), ``title`` = the article title with underscores replaced by spaces,
``text`` = the paragraph's context.

Splits are made BY ARTICLE, so no article's paragraphs serve two splits. With ``i`` the
article's 0-based index in file order::

    i % 5 == 4   -> "test"
    i % 10 == 2  -> "dev"
    otherwise    -> "train"

On the bundled SQuAD v1.1 dev file (48 articles) this gives 34 train / 5 dev / 9 test
articles; test has 1,975 questions over 439 paragraphs, dev 908, train 7,687. Splits with no
questions are left out (a file with one article has only "train").

Each question (``qid`` = its SQuAD ``id``) has one relevant passage, its own paragraph
(grade 1); its answers are its answer ``text`` strings, de-duplicated in order. Questions
marked ``is_impossible`` (SQuAD 2.0 unanswerable) are dropped. The whole corpus is searched
by every split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onmkd.data._files import (
    dedupe,
    expect_object,
    file_stem,
    get_id,
    get_list,
    get_str,
    json_type,
    ordered_splits,
    read_json,
)
from onmkd.data.types import Dataset, Split
from onmkd.errors import DataError

BUNDLED = Path(__file__).resolve().parent / "bundled" / "squad-v1.1-dev.json.zip"
SPLIT_RULE = ("by article index i in file order: i mod 5 = 4 test, i mod 10 = 2 dev, else train; "
              "corpus = all paragraphs")


def split_of_article(index: int) -> str:
    """The split of the article at 0-based ``index`` in file order (see the module docstring)."""
    if index % 5 == 4:
        return "test"
    if index % 10 == 2:
        return "dev"
    return "train"


def _answer_texts(qa: dict[str, Any], loc: str) -> list[str]:
    answers = get_list(qa, "answers", loc)
    texts: list[str] = []
    for k, ans in enumerate(answers):
        aloc = f"{loc}.answers[{k}]"
        ans = expect_object(ans, aloc)
        texts.append(get_str(ans, "text", aloc))
    return dedupe(texts)


def load_squad(path: str | Path | None = None, *, name: str | None = None) -> Dataset:
    """Read a SQuAD-format file (``.json``, ``.json.gz`` or a ``.zip`` holding one ``.json``)."""
    path = BUNDLED if path is None else Path(path).expanduser()
    src, doc = read_json(path)
    if not isinstance(doc, dict):
        raise DataError(f"{src}: expected a JSON object with a 'data' list (SQuAD format), got {json_type(doc)}")
    if "data" not in doc:
        raise DataError(f"{src}: missing field 'data' (not a SQuAD-format file?)")
    articles = doc["data"]
    if not isinstance(articles, list):
        raise DataError(f"{src}: field 'data': expected a list of articles, got {json_type(articles)}")

    corpus: dict[str, dict[str, str]] = {}
    splits: dict[str, Split] = {}
    seen: dict[str, str] = {}  # qid -> where it was first seen
    dropped = 0
    for i, article in enumerate(articles):
        aloc = f"{src}: data[{i}]"
        article = expect_object(article, aloc)
        title = get_str(article, "title", aloc, "", null_ok=True).replace("_", " ").strip()
        split_name = split_of_article(i)
        for j, para in enumerate(get_list(article, "paragraphs", aloc)):
            ploc = f"{aloc}.paragraphs[{j}]"
            para = expect_object(para, ploc)
            context = get_str(para, "context", ploc)
            pid = f"{i}-{j}"
            corpus[pid] = {"title": title, "text": context}
            for k, qa in enumerate(get_list(para, "qas", ploc)):
                qloc = f"{ploc}.qas[{k}]"
                qa = expect_object(qa, qloc)
                qid = get_id(qa, "id", qloc)
                question = get_str(qa, "question", qloc).strip()
                answers = _answer_texts(qa, qloc)
                if qid in seen:
                    raise DataError(f"{qloc}: duplicate question id {qid!r} (first at {seen[qid]})")
                seen[qid] = qloc.split(": ", 1)[1]
                if qa.get("is_impossible") is True:
                    dropped += 1
                    continue
                if not question:
                    raise DataError(f"{qloc}: field 'question': empty question")
                split = splits.setdefault(split_name, Split(queries={}, qrels={}, answers={}))
                split.queries[qid] = question
                split.qrels[qid] = {pid: 1}
                split.answers[qid] = answers

    if not corpus:
        raise DataError(f"{src}: no paragraphs (empty corpus)")
    if not splits:
        extra = f" ({dropped} unanswerable questions dropped)" if dropped else ""
        raise DataError(f"{src}: no questions{extra}")
    ordered = {n: splits[n] for n in ordered_splits(set(splits))}
    if name is None:
        name = "squad" if path == BUNDLED else file_stem(path)
    return Dataset(name=name, corpus=corpus, splits=ordered, source=str(path), split_rule=SPLIT_RULE)
