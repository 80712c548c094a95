"""Data readers: counts on the bundled/real data, each format on tiny files, and bad input."""

from __future__ import annotations

import gzip
import json
import re
import warnings
import zipfile
from pathlib import Path

import pytest

import onmkd.data as data
from onmkd.data import SPEC_HELP, Dataset, Split, load_dataset, passage_text
from onmkd.data._files import stable_pid
from onmkd.data.squad import split_of_article
from onmkd.errors import ConfigError, DataError, OnmkdError

SCIFACT = Path("/work/shared/data/scifact-beir")


# --------------------------------------------------------------------------- helpers


def write_jsonl(path: Path, rows: list[object], *, gz: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def make_beir(
    root: Path,
    *,
    corpus: list[object] | None = None,
    queries: list[object] | None = None,
    qrels: dict[str, str] | None = None,
    gz: bool = False,
) -> Path:
    """A small BEIR folder: 4 docs, 3 queries, qrels/train.tsv + qrels/test.tsv."""
    root.mkdir(parents=True, exist_ok=True)
    if corpus is None:
        corpus = [
            {"_id": "d1", "title": "Cats", "text": "Cats purr."},
            {"_id": "d2", "title": "Dogs", "text": "Dogs bark."},
            {"_id": "d3", "title": "", "text": "Birds sing."},
            {"_id": 4, "title": None, "text": "Fish swim."},
        ]
    if queries is None:
        queries = [
            {"_id": "q1", "text": "what purrs"},
            {"_id": "q2", "text": "what barks"},
            {"_id": "q3", "text": "what sings", "metadata": {}},
        ]
    if qrels is None:
        qrels = {
            "train": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\n",
            "test": "query-id\tcorpus-id\tscore\nq3\td3\t1\nq3\t4\t0\n",
        }
    write_jsonl(root / ("corpus.jsonl.gz" if gz else "corpus.jsonl"), corpus, gz=gz)
    write_jsonl(root / "queries.jsonl", queries)
    (root / "qrels").mkdir(exist_ok=True)
    for name, text in qrels.items():
        (root / "qrels" / f"{name}.tsv").write_text(text, encoding="utf-8")
    return root


def squad_doc(n_articles: int = 1) -> dict[str, object]:
    return {
        "version": "1.1",
        "data": [
            {
                "title": f"Article_{i}",
                "paragraphs": [
                    {
                        "context": f"Paragraph {i}-0 text.",
                        "qas": [
                            {
                                "id": f"q{i}a",
                                "question": f"Question {i}a?",
                                "answers": [{"text": "text", "answer_start": 0}, {"text": "text"}, {"text": "T"}],
                            },
                            {"id": f"q{i}b", "question": "Another?", "answers": [{"text": "x"}]},
                        ],
                    },
                    {"context": f"Paragraph {i}-1 text.", "qas": []},
                ],
            }
            for i in range(n_articles)
        ],
    }


def raises_data_error(spec: str, *parts: str, **kwargs: object) -> str:
    """Load ``spec``; assert a one-line DataError whose message contains every part."""
    with pytest.raises(DataError) as info:
        load_dataset(spec, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"
    return msg


@pytest.fixture(scope="module")
def squad() -> Dataset:
    return load_dataset("squad")


@pytest.fixture(scope="module")
def qed() -> Dataset:
    return load_dataset("nq-qed")


# --------------------------------------------------------------------------- API


def test_public_api() -> None:
    assert data.Dataset is Dataset and data.Split is Split and data.passage_text is passage_text
    for form in ("squad", "nq-qed", "beir:DIR", "dpr:", "dpr-qa:", "hf:"):
        assert form in SPEC_HELP
    assert passage_text({"title": "T", "text": "body"}) == "T body"


# --------------------------------------------------------------------------- SQuAD


def test_split_rule() -> None:
    names = [split_of_article(i) for i in range(48)]
    assert names.count("train") == 34 and names.count("dev") == 5 and names.count("test") == 9
    assert names[:10] == ["train", "train", "dev", "train", "test", "train", "train", "train", "train", "test"]


def test_bundled_squad_counts(squad: Dataset) -> None:
    assert squad.name == "squad"
    assert len(squad.corpus) == 2067
    assert list(squad.splits) == ["train", "dev", "test"]
    assert squad.info() == {
        "dataset": "squad",
        "passages": 2067,
        "split_rule": "by article index i in file order: i mod 5 = 4 test, i mod 10 = 2 dev, else train; "
        "corpus = all paragraphs",
        "train.questions": 7687,
        "train.qrels": 7687,
        "train.positives": 1427,
        "train.with_answers": 7687,
        "dev.questions": 908,
        "dev.qrels": 908,
        "dev.positives": 201,
        "dev.with_answers": 908,
        "test.questions": 1975,
        "test.qrels": 1975,
        "test.positives": 439,
        "test.with_answers": 1975,
    }
    # Test questions cover 439 paragraphs of 9 articles.
    test_pids = {pid for rel in squad.split("test").qrels.values() for pid in rel}
    assert len(test_pids) == 439


def test_bundled_squad_splits_by_article(squad: Dataset) -> None:
    articles: dict[str, set[int]] = {}
    for name, split in squad.splits.items():
        for qid, rel in split.qrels.items():
            assert qid in split.queries and list(rel.values()) == [1]
            (pid,) = rel
            article = int(pid.split("-")[0])
            assert split_of_article(article) == name  # each qrel paragraph belongs to an article of its split
            articles.setdefault(name, set()).add(article)
    assert {k: len(v) for k, v in articles.items()} == {"train": 34, "dev": 5, "test": 9}
    assert not (articles["train"] & articles["dev"]) and not (articles["train"] & articles["test"])
    assert not (articles["dev"] & articles["test"])


def test_bundled_squad_fields(squad: Dataset) -> None:
    first = squad.corpus["0-0"]
    assert first["title"] == "Super Bowl 50"  # underscores -> spaces
    assert first["text"].startswith("Super Bowl 50 was an American football game")
    train = squad.split("train")
    qid = "56be4db0acb8001400a502ec"
    assert train.queries[qid] == "Which NFL team represented the AFC at Super Bowl 50?"
    assert train.qrels[qid] == {"0-0": 1}
    assert train.answers[qid] == ["Denver Broncos"]  # three identical answers, de-duplicated
    assert all("_" not in d["title"] for d in squad.corpus.values())


def test_squad_path_json_and_zip(tmp_path: Path) -> None:
    doc = squad_doc(5)
    doc["data"][0]["paragraphs"][0]["qas"].append(  # type: ignore[index]
        {"id": "imp", "question": "Unanswerable?", "answers": [], "is_impossible": True}
    )
    path = tmp_path / "mini.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    ds = load_dataset(f"squad:{path}")
    assert ds.name == "mini" and ds.source == str(path)
    assert len(ds.corpus) == 10
    assert ds.corpus["3-1"] == {"title": "Article 3", "text": "Paragraph 3-1 text."}
    assert list(ds.splits) == ["train", "dev", "test"]  # articles 0,1,3 / 2 / 4
    assert sorted(ds.split("test").queries) == ["q4a", "q4b"]
    assert ds.split("dev").answers["q2a"] == ["text", "T"]
    assert "imp" not in ds.split("train").queries
    assert ds.info()["train.questions"] == 6

    zpath = tmp_path / "mini.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("inner/mini.json", json.dumps(squad_doc(1)))
    zds = load_dataset(f"squad:{zpath}")
    assert list(zds.splits) == ["train"] and len(zds.corpus) == 2


# --------------------------------------------------------------------------- QED


def test_bundled_qed(qed: Dataset) -> None:
    info = qed.info()
    assert {k: v for k, v in info.items() if not k.startswith(("train.", "dev.", "test."))} == {
        "dataset": "nq-qed",
        "passages": 1343,
        "split_rule": "by paragraph: sha256(pid)[:8] mod 100 < 70 train, < 80 dev, else test; "
        "all = every question; corpus = all paragraphs",
        "all.questions": 1355,
        "all.qrels": 1355,
        "all.positives": 1343,
        "all.with_answers": 1355,
    }
    test = qed.split("all")
    qid = "-3290814144789249484"
    assert test.queries[qid] == "who got the first nobel prize in physics"
    assert test.answers[qid] == ["Wilhelm Conrad Röntgen , of Germany", "Wilhelm Conrad Röntgen"]
    (pid,) = test.qrels[qid]
    assert qed.corpus[pid]["title"] == "List of Nobel laureates in Physics"
    assert pid == stable_pid(qed.corpus[pid]["title"], qed.corpus[pid]["text"])
    with pytest.raises(DataError, match="no split 'validation'"):
        qed.split("validation")


def test_qed_user_copy(tmp_path: Path) -> None:
    row = {
        "example_id": 7,
        "question_text": "who",
        "title_text": "T",
        "paragraph_text": "P",
        "original_nq_answers": [[{"string": "a"}], [{"string": "a"}, {"string": "b"}]],
    }
    path = write_jsonl(tmp_path / "mine.jsonlines", [row, {**row, "example_id": 8}])
    ds = load_dataset(f"nq-qed:{path}")
    assert ds.name == "mine" and len(ds.corpus) == 1
    assert ds.split("all").answers == {"7": ["a", "b"], "8": ["a", "b"]}
    (one,) = (s for n, s in ds.splits.items() if n != "all")  # one paragraph: one split
    assert one.answers == ds.split("all").answers


# --------------------------------------------------------------------------- BEIR


@pytest.mark.skipif(not SCIFACT.is_dir(), reason="SciFact BEIR folder not present")
def test_scifact_counts() -> None:
    ds = load_dataset(f"beir:{SCIFACT}")
    assert ds.info() == {
        "dataset": "scifact-beir",
        "passages": 5183,
        "split_rule": "splits as given by the files",
        "train.questions": 809,
        "train.qrels": 919,
        "train.positives": 565,
        "train.with_answers": 0,
        "test.questions": 300,
        "test.qrels": 339,
        "test.positives": 283,
        "test.with_answers": 0,
    }
    assert load_dataset(str(SCIFACT)).info() == ds.info()  # bare path


@pytest.mark.parametrize("gz", [False, True])
def test_beir_small(tmp_path: Path, gz: bool) -> None:
    root = make_beir(tmp_path / "mini", gz=gz)
    ds = load_dataset(f"beir:{root}")
    assert ds.name == "mini"
    assert ds.corpus["4"] == {"title": "", "text": "Fish swim."}
    assert list(ds.splits) == ["train", "test"]
    assert ds.split("train").queries == {"q1": "what purrs", "q2": "what barks"}
    assert ds.split("train").qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    assert ds.split("test").qrels == {"q3": {"d3": 1, "4": 0}}
    assert ds.split("test").answers == {}
    assert ds.info()["test.qrels"] == 2
    assert load_dataset(str(root)).info() == ds.info()


def test_beir_unknown_qrels_skip(tmp_path: Path) -> None:
    qrels = {"test": "query-id\tcorpus-id\tscore\nq1\td1\t1\nqX\td1\t1\nq2\tdX\t1\n"}
    root = make_beir(tmp_path / "b", qrels=qrels)
    raises_data_error(f"beir:{root}", "test.tsv:3", "unknown query id 'qX'")
    with pytest.warns(UserWarning, match="skipped 2 qrels lines"):
        ds = load_dataset(f"beir:{root}", unknown_qrels="skip")
    assert ds.split("test").qrels == {"q1": {"d1": 1}}
    with pytest.raises(ConfigError):
        load_dataset(f"beir:{root}", unknown_qrels="ignore")


# --------------------------------------------------------------------------- DPR


def test_dpr_biencoder(tmp_path: Path) -> None:
    ctx = lambda t, **k: {"title": f"T{t}", "text": f"text {t}", **k}  # noqa: E731
    train = [
        {
            "question": "q zero",
            "answers": ["a", "a", "b"],
            "positive_ctxs": [ctx(1, passage_id="11")],
            "negative_ctxs": [ctx(2, passage_id=12)],
            "hard_negative_ctxs": [ctx(3, psg_id="13"), ctx(4)],
        },
        {"question": "q one", "answers": [], "positive_ctxs": [ctx(4), ctx(1, passage_id="11")]},
    ]
    dev = [{"question": "q dev", "answers": ["c"], "positive_ctxs": [ctx(5)], "negative_ctxs": []}]
    other = [{"question": "q other", "answers": ["d"], "positive_ctxs": [ctx(1, passage_id="11")]}]
    paths = []
    for name, rows in (("nq-train.json", train), ("nq-dev.json", dev), ("extra.json", other)):
        (tmp_path / name).write_text(json.dumps(rows), encoding="utf-8")
        paths.append(str(tmp_path / name))
    ds = load_dataset("dpr:" + ",".join(paths))
    h4 = stable_pid("T4", "text 4")
    assert set(ds.corpus) == {"11", "12", "13", h4, stable_pid("T5", "text 5")}
    assert ds.corpus["12"] == {"title": "T2", "text": "text 2"}
    assert list(ds.splits) == ["train", "dev", "extra"]
    tr = ds.split("train")
    assert tr.queries == {"nq-train-0": "q zero", "nq-train-1": "q one"}
    assert tr.qrels == {"nq-train-0": {"11": 1}, "nq-train-1": {h4: 1, "11": 1}}
    assert tr.answers == {"nq-train-0": ["a", "b"], "nq-train-1": []}
    assert tr.hard_negatives == {"nq-train-0": ["13", h4]}
    assert ds.split("extra").qrels == {"extra-0": {"11": 1}}
    assert ds.info()["train.with_answers"] == 1


def test_dpr_qa(tmp_path: Path) -> None:
    psgs = tmp_path / "psgs_w100.tsv"
    psgs.write_text(
        'id\ttext\ttitle\n1\t"He said ""hi"" there"\tHamlet\n2\tWilliam Shakespeare wrote plays\tShakespeare\n',
        encoding="utf-8",
    )
    qa = tmp_path / "nq-test.qa.csv"
    qa.write_text("who wrote hamlet\t['William Shakespeare', 'Shakespeare']\nwhat is 1\t[\"one\"]\n", encoding="utf-8")
    qa2 = tmp_path / "trivia-dev.qa.csv"
    qa2.write_text("q\t['a']\n", encoding="utf-8")
    ds = load_dataset(f"dpr-qa:{psgs}:{qa},{qa2}")
    assert ds.corpus == {
        "1": {"title": "Hamlet", "text": 'He said "hi" there'},
        "2": {"title": "Shakespeare", "text": "William Shakespeare wrote plays"},
    }
    assert list(ds.splits) == ["dev", "test"]
    test = ds.split("test")
    assert test.queries == {"nq-test-0": "who wrote hamlet", "nq-test-1": "what is 1"}
    assert test.answers["nq-test-0"] == ["William Shakespeare", "Shakespeare"]
    assert test.qrels == {}
    assert ds.info() == {
        "dataset": "nq-test+trivia-dev",
        "passages": 2,
        "split_rule": "splits as given by the files",
        "dev.questions": 1,
        "dev.qrels": 0,
        "dev.positives": 0,
        "dev.with_answers": 1,
        "test.questions": 2,
        "test.qrels": 0,
        "test.positives": 0,
        "test.with_answers": 2,
    }


# --------------------------------------------------------------------------- Hugging Face


def _save_hf(path: Path, splits: dict[str, dict[str, list[object]]]) -> Path:
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({k: datasets.Dataset.from_dict(v) for k, v in splits.items()})
    dd.save_to_disk(str(path))
    return path


def _hf_rows(prefix: str, contexts: list[str], answers: list[list[str]]) -> dict[str, list[object]]:
    n = len(contexts)
    return {
        "id": [f"{prefix}{i}" for i in range(n)],
        "title": ["Some_Title"] * n,
        "context": contexts,
        "question": [f"question {prefix}{i}?" for i in range(n)],
        "answers": [{"text": a, "answer_start": [0] * len(a)} for a in answers],
    }


def test_hf_local_dir(tmp_path: Path) -> None:
    root = _save_hf(
        tmp_path / "hfsquad",
        {
            "train": _hf_rows("t", ["ctx A", "ctx A", "ctx B"], [["x", "x"], ["y"], ["z"]]),
            "validation": _hf_rows("v", ["ctx B", "ctx C"], [["w"], []]),
        },
    )
    with pytest.warns(UserWarning, match="dropped 1 questions"):
        ds = load_dataset(f"hf:{root}")
    assert ds.name == "hfsquad"
    assert list(ds.splits) == ["train", "validation"]
    assert len(ds.corpus) == 2  # ctx C only had an unanswerable question
    pid_a = stable_pid("Some Title", "ctx A")
    assert ds.corpus[pid_a] == {"title": "Some Title", "text": "ctx A"}
    tr = ds.split("train")
    assert tr.qrels["t0"] == {pid_a: 1} and tr.qrels["t1"] == {pid_a: 1}
    assert tr.answers["t0"] == ["x"]
    assert ds.info()["validation.questions"] == 1


def test_hf_missing_column(tmp_path: Path) -> None:
    rows = _hf_rows("t", ["ctx"], [["a"]])
    del rows["context"]
    root = _save_hf(tmp_path / "bad", {"train": rows})
    raises_data_error(f"hf:{root}", str(root), "missing column 'context'")


def test_hf_missing_folder(tmp_path: Path) -> None:
    raises_data_error(f"hf:{tmp_path / 'nope'}", "nope", "no such folder")


# --------------------------------------------------------------------------- bad input


def test_unknown_spec_lists_forms() -> None:
    msg = raises_data_error("msmarco", "unknown data set spec 'msmarco'")
    for form in ("squad:PATH", "nq-qed", "beir:DIR", "dpr:FILE", "dpr-qa:PSGS_TSV:QA_CSV", "hf:NAME_OR_DIR"):
        assert form in msg
    raises_data_error("beir:", "missing the path")
    raises_data_error("", "empty data set spec")


def test_missing_file_and_folder(tmp_path: Path) -> None:
    raises_data_error(f"squad:{tmp_path / 'none.json'}", "none.json", "no such file")
    raises_data_error(f"beir:{tmp_path / 'nodir'}", "nodir", "no such folder")
    raises_data_error(f"dpr:{tmp_path / 'x-train.json'}", "x-train.json", "no such file")
    (tmp_path / "plain").mkdir()
    raises_data_error(str(tmp_path / "plain"), "plain", "not a BEIR folder")
    root = make_beir(tmp_path / "noq")
    (root / "queries.jsonl").unlink()
    raises_data_error(str(root), "noq", "queries.jsonl")


def test_truncated_json_line(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "b")
    text = (root / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    text[2] = text[2][:15]
    (root / "corpus.jsonl").write_text("\n".join(text) + "\n", encoding="utf-8")
    raises_data_error(f"beir:{root}", "corpus.jsonl:3:", "invalid JSON")


def test_truncated_gzip(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "b", gz=True)
    blob = (root / "corpus.jsonl.gz").read_bytes()
    (root / "corpus.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    raises_data_error(f"beir:{root}", "corpus.jsonl.gz:")


def test_not_utf8_line(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "b")
    (root / "queries.jsonl").write_bytes(b'{"_id": "q1", "text": "ok"}\n{"_id": "q2", "text": "caf\xe9"}\n')
    raises_data_error(f"beir:{root}", "queries.jsonl:2:", "not valid UTF-8")


def test_not_utf8_json_file(tmp_path: Path) -> None:
    path = tmp_path / "latin.json"
    path.write_bytes(b'{"data": [\n {"title": "caf\xe9"}\n]}')
    raises_data_error(f"squad:{path}", "latin.json:2:", "not valid UTF-8")


def test_invalid_json_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"data": [\n  {"title": "x",\n   "paragraphs": [}\n]}', encoding="utf-8")
    raises_data_error(f"squad:{path}", "broken.json:3:", "invalid JSON")


def test_squad_without_data(tmp_path: Path) -> None:
    path = tmp_path / "nodata.json"
    path.write_text('{"version": "1.1"}', encoding="utf-8")
    raises_data_error(f"squad:{path}", "nodata.json", "missing field 'data'")
    path.write_text("[1, 2]", encoding="utf-8")
    raises_data_error(f"squad:{path}", "nodata.json", "expected a JSON object")


def test_squad_missing_field(tmp_path: Path) -> None:
    doc = squad_doc(1)
    del doc["data"][0]["paragraphs"][0]["qas"][1]["question"]  # type: ignore[index]
    path = tmp_path / "missing.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    raises_data_error(f"squad:{path}", f"{path}: data[0].paragraphs[0].qas[1]: missing field 'question'")


def test_squad_wrong_type(tmp_path: Path) -> None:
    doc = squad_doc(1)
    doc["data"][0]["paragraphs"][1]["context"] = 42  # type: ignore[index]
    path = tmp_path / "types.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    raises_data_error(f"squad:{path}", "types.json: data[0].paragraphs[1]", "'context'", "expected a string")
    doc = squad_doc(1)
    doc["data"][0]["paragraphs"] = {"oops": 1}  # type: ignore[index]
    path.write_text(json.dumps(doc), encoding="utf-8")
    raises_data_error(f"squad:{path}", "types.json: data[0]", "'paragraphs'", "expected a list")


def test_squad_duplicate_id(tmp_path: Path) -> None:
    doc = squad_doc(2)
    doc["data"][1]["paragraphs"][0]["qas"][0]["id"] = "q0a"  # type: ignore[index]
    path = tmp_path / "dup.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    raises_data_error(f"squad:{path}", "dup.json: data[1].paragraphs[0].qas[0]", "duplicate question id 'q0a'")


def test_squad_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    path.write_text('{"data": []}', encoding="utf-8")
    raises_data_error(f"squad:{path}", "empty.json", "empty corpus")
    path.write_text('{"data": [{"title": "t", "paragraphs": [{"context": "c", "qas": []}]}]}', encoding="utf-8")
    raises_data_error(f"squad:{path}", "empty.json", "no questions")


def test_zip_with_two_json(tmp_path: Path) -> None:
    zpath = tmp_path / "two.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("a.json", "{}")
        zf.writestr("b.json", "{}")
    raises_data_error(f"squad:{zpath}", "two.zip", "exactly one .json")
    (tmp_path / "junk.zip").write_bytes(b"PK not really")
    raises_data_error(f"squad:{tmp_path / 'junk.zip'}", "junk.zip", "not a valid zip")


def test_beir_duplicate_corpus_id(tmp_path: Path) -> None:
    corpus = [{"_id": "d1", "text": "a"}, {"_id": "d2", "text": "b"}, {"_id": "d1", "text": "c"}]
    root = make_beir(tmp_path / "b", corpus=corpus, qrels={"test": "q1\td1\t1\n"})
    raises_data_error(f"beir:{root}", "corpus.jsonl:3:", "duplicate corpus id 'd1'", "line 1")


def test_beir_duplicate_query_id(tmp_path: Path) -> None:
    queries = [{"_id": "q1", "text": "a"}, {"_id": "q1", "text": "b"}]
    root = make_beir(tmp_path / "b", queries=queries)
    raises_data_error(f"beir:{root}", "queries.jsonl:2:", "duplicate query id 'q1'")


def test_beir_missing_field_and_wrong_type(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "a", corpus=[{"_id": "d1", "text": "a"}, {"_id": "d2", "title": "no text"}])
    raises_data_error(f"beir:{root}", "corpus.jsonl:2:", "missing field 'text'")
    root = make_beir(tmp_path / "b", queries=[{"_id": "q1", "text": ["a"]}])
    raises_data_error(f"beir:{root}", "queries.jsonl:1:", "'text'", "expected a string")
    root = make_beir(tmp_path / "c", queries=[[1, 2]])
    raises_data_error(f"beir:{root}", "queries.jsonl:1:", "expected a JSON object")
    root = make_beir(tmp_path / "d", corpus=[{"_id": 1.5, "text": "a"}])
    raises_data_error(f"beir:{root}", "corpus.jsonl:1:", "'_id'")


def test_beir_unknown_ids_fail(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "b", qrels={"test": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\tnope\t1\n"})
    raises_data_error(f"beir:{root}", "test.tsv:3:", "unknown corpus id 'nope'")
    root = make_beir(tmp_path / "c", qrels={"dev": "query-id\tcorpus-id\tscore\nq9\td1\t1\n"})
    raises_data_error(f"beir:{root}", "dev.tsv:2:", "unknown query id 'q9'")


def test_beir_score_not_integer(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "b", qrels={"test": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t0.5\n"})
    raises_data_error(f"beir:{root}", "test.tsv:3:", "score '0.5' is not an integer")
    root = make_beir(tmp_path / "c", qrels={"test": "query-id\tcorpus-id\tscore\nq1\td1\n"})
    raises_data_error(f"beir:{root}", "test.tsv:2:", "expected 3")
    root = make_beir(tmp_path / "d", qrels={"test": "q1\td1\t1\nq1\td1\t2\n"})
    raises_data_error(f"beir:{root}", "test.tsv:2:", "conflicting grades")


def test_beir_empty_corpus_and_queries(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "a", corpus=[])
    raises_data_error(f"beir:{root}", "corpus.jsonl", "empty corpus")
    root = make_beir(tmp_path / "b", queries=[])
    raises_data_error(f"beir:{root}", "queries.jsonl", "no queries")
    root = make_beir(tmp_path / "c", qrels={"test": "query-id\tcorpus-id\tscore\n"})
    raises_data_error(f"beir:{root}", "test.tsv", "no qrels")
    root = make_beir(tmp_path / "d", qrels={"test": "query-id\tcorpus-id\tscore\nqX\td1\t1\n"})
    with pytest.raises(DataError, match="test.tsv: no qrels"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_dataset(f"beir:{root}", unknown_qrels="skip")


def test_qed_bad_lines(tmp_path: Path) -> None:
    good = {"example_id": 1, "question_text": "q", "title_text": "t", "paragraph_text": "p", "original_nq_answers": []}
    path = write_jsonl(tmp_path / "q.jsonlines", [good, good])
    raises_data_error(f"nq-qed:{path}", "q.jsonlines:2:", "duplicate example_id '1'")
    path = write_jsonl(tmp_path / "q.jsonlines", [good, {**good, "example_id": 2, "original_nq_answers": [[{}]]}])
    raises_data_error(f"nq-qed:{path}", "q.jsonlines:2:", "original_nq_answers[0][0]", "'string'")
    path = write_jsonl(tmp_path / "q.jsonlines", [{k: v for k, v in good.items() if k != "paragraph_text"}])
    raises_data_error(f"nq-qed:{path}", "q.jsonlines:1:", "missing field 'paragraph_text'")
    (tmp_path / "e.jsonlines").write_text("\n", encoding="utf-8")
    raises_data_error(f"nq-qed:{tmp_path / 'e.jsonlines'}", "e.jsonlines", "no questions")


def test_dpr_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "x-train.json"
    path.write_text(json.dumps({"question": "q"}), encoding="utf-8")
    raises_data_error(f"dpr:{path}", "x-train.json", "expected a JSON list")
    path.write_text(json.dumps([{"question": "q", "answers": [], "positive_ctxs": [{"title": "t"}]}]), encoding="utf-8")
    raises_data_error(f"dpr:{path}", "x-train.json: [0].positive_ctxs[0]", "missing field 'text'")
    path.write_text(json.dumps([{"question": "q", "answers": "a", "positive_ctxs": []}]), encoding="utf-8")
    raises_data_error(f"dpr:{path}", "x-train.json: [0]", "'answers'")
    other = tmp_path / "sub"
    other.mkdir()
    (other / "x-train.json").write_text("[]", encoding="utf-8")
    raises_data_error(f"dpr:{path},{other / 'x-train.json'}", "x-train", "stem")


def test_dpr_qa_bad_input(tmp_path: Path) -> None:
    psgs = tmp_path / "psgs.tsv"
    psgs.write_text("id\ttext\ttitle\n1\tt\tT\n", encoding="utf-8")
    qa = tmp_path / "nq-test.qa.csv"
    qa.write_text("ok\t['a']\nbad\t__import__('os').system('echo hi')\n", encoding="utf-8")
    raises_data_error(f"dpr-qa:{psgs}:{qa}", "nq-test.qa.csv:2:", "not a Python list literal")
    qa.write_text("ok\t['a']\nbad\t{'a': 1}\n", encoding="utf-8")
    raises_data_error(f"dpr-qa:{psgs}:{qa}", "nq-test.qa.csv:2:", "list of strings")
    qa.write_text("only a question\n", encoding="utf-8")
    raises_data_error(f"dpr-qa:{psgs}:{qa}", "nq-test.qa.csv:1:", "expected 2")
    qa.write_text("q\t['a']\n", encoding="utf-8")
    psgs.write_text("1\tt\tT\n", encoding="utf-8")
    raises_data_error(f"dpr-qa:{psgs}:{qa}", "psgs.tsv:1:", "header")
    psgs.write_text("id\ttext\ttitle\n1\tt\tT\n1\tu\tU\n", encoding="utf-8")
    raises_data_error(f"dpr-qa:{psgs}:{qa}", "psgs.tsv:3:", "duplicate passage id '1'")
    psgs.write_bytes(b"id\ttext\ttitle\n1\t\xff\tT\n")
    raises_data_error(f"dpr-qa:{psgs}:{qa}", "psgs.tsv:2:", "not valid UTF-8")
    raises_data_error(f"dpr-qa:{psgs}", "dpr-qa:PSGS_TSV:QA_CSV")


def test_errors_are_onmkd_errors() -> None:
    assert issubclass(DataError, OnmkdError)
    assert re.search(r"valid forms", str(pytest.raises(DataError, load_dataset, "nope:x").value))
