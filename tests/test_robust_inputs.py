"""Bad input gets a clear error: property tests over every reader, and the commands on broken files.

Each reader (SQuAD, QED, BEIR, DPR biencoder, DPR QA files, run config, search space, paper plan)
is fed arbitrary bytes and mutated copies of a valid file: truncated, a byte flipped, bytes
inserted or deleted, non-UTF-8 bytes, a line duplicated (duplicate ids), an absurdly long line, a
JSON field deleted or given a wrong-typed value. It must either return a sound result or raise an
:class:`~onmkd.errors.OnmkdError` whose message is one line naming the file; any other exception
fails the test. ``benchmarks/fuzz_readers.py`` runs the same mutations for minutes.
"""

from __future__ import annotations

import copy
import datetime
import gzip
import hashlib
import json
import math
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from onmkd.cli import app
from onmkd.config import MAX_TOML_BYTES, RunConfig, load_config
from onmkd.data import Dataset, _files
from onmkd.data.beir import load_beir
from onmkd.data.dpr import load_dpr, load_dpr_qa
from onmkd.data.qed import load_qed
from onmkd.data.squad import load_squad
from onmkd.errors import ConfigError, DataError, OnmkdError
from onmkd.study.paper import Plan, load_plan
from onmkd.study.space import Space, load_space

PROPS = settings(max_examples=60, deadline=None, database=None, print_blob=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SMALL_LINE_CAP = 4096  # MAX_LINE_BYTES while fuzzing, so "absurdly long" lines stay cheap
LONG = SMALL_LINE_CAP + 100


# --------------------------------------------------------------------------- valid samples


def squad_doc() -> dict[str, Any]:
    return {"version": "1.1", "data": [
        {"title": "Paris_City", "paragraphs": [
            {"context": "Paris is the capital of France.", "qas": [
                {"id": "q1", "question": "What is the capital of France?", "answers": [{"text": "Paris", "answer_start": 0}]},
                {"id": "q2", "question": "Which country?", "answers": [{"text": "France", "answer_start": 24}]}]},
            {"context": "It lies on the Seine.", "qas": []}]},
        {"title": "Berlin", "paragraphs": [
            {"context": "Berlin is in Germany.", "qas": [
                {"id": "q3", "question": "Where is Berlin?", "answers": [{"text": "Germany"}]}]}]},
    ]}


def qed_rows() -> list[dict[str, Any]]:
    return [{"example_id": 10 + i, "question_text": f"who wrote book {i}", "title_text": f"Book {i}",
             "paragraph_text": f"Book {i} was written by author {i}.",
             "original_nq_answers": [[{"start": 0, "end": 6, "string": f"author {i}"}]]} for i in range(3)]


def beir_files() -> dict[str, bytes]:
    corpus = [{"_id": "d1", "title": "Cats", "text": "Cats purr."}, {"_id": "d2", "title": "", "text": "Dogs bark."},
              {"_id": 3, "title": None, "text": "Birds sing."}]
    queries = [{"_id": "q1", "text": "what purrs"}, {"_id": "q2", "text": "what barks"}]
    return {
        "corpus.jsonl": "".join(json.dumps(r) + "\n" for r in corpus).encode(),
        "queries.jsonl": "".join(json.dumps(r) + "\n" for r in queries).encode(),
        "qrels/test.tsv": b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq2\t3\t0\n",
    }


def dpr_examples() -> list[dict[str, Any]]:
    return [{"question": "what purrs", "answers": ["cats"],
             "positive_ctxs": [{"title": "Cats", "text": "Cats purr.", "passage_id": "1"}],
             "negative_ctxs": [{"title": "Dogs", "text": "Dogs bark.", "passage_id": "2"}],
             "hard_negative_ctxs": [{"title": "Birds", "text": "Birds sing."}]},
            {"question": "what barks", "answers": ["dogs"],
             "positive_ctxs": [{"title": "Dogs", "text": "Dogs bark.", "psg_id": 2}], "hard_negative_ctxs": []}]


PSGS_TSV = b"id\ttext\ttitle\n1\tCats purr.\tCats\n2\t\"Dogs \"\"bark\"\".\"\tDogs\n"
QA_CSV = b"what purrs\t['cats']\nwhat barks\t[\"dogs\", 'hounds']\n"

CONFIG_TOML = b"""[data]
dataset = "squad"
max_train_questions = 64

[model]
peers = 2
layers = 2

[[model.peer]]
checkpoint = "minilm-l6"

[[model.peer]]
checkpoint = "minilm-l6-sre"
seed = 1

[loss]
alpha = 1.0
cross_layers = [[1, 1]]

[train]
method = "onmkd"
batch_size = 8
lr = 5e-5
"""

SPACE_TOML = b"""[study]
name = "tiny"
objectives = ["acc@20", "query_ms_p50"]
n_trials = 3

[fixed]
"train.epochs" = 1
"model.peer[*].layer_rule" = "first"

[params]
"loss.alpha" = { type = "float", low = 0.1, high = 10.0, log = true }
"model.layers" = { type = "int", low = 1, high = 3 }
"train.method" = { type = "categorical", choices = ["onmkd", "dml"] }
"loss.beta" = { type = "float", low = 0.0, high = 1.0, step = 0.25, when = { "train.method" = ["onmkd"] } }

[final]
top = 1
seeds = [1]
baselines = ["dpr"]
"""

PLAN_TOML = b"""[paper]
seeds = [0, 1]
split = "test"
encoders = ["bm25"]
budget = { "train.checkpoint_every" = 2 }

[[main]]
label = "OnMKD"
role = "onmkd"
config = "run.toml"

[layers]
layers = [1, 2]
configs = { OnMKD = "run.toml" }

[ablations]
reference = "run.toml"
configs = { "no KL" = "run.toml" }
"""


# --------------------------------------------------------------------------- checks


def expect_clean(load: Callable[[], Any], names: list[str]) -> Any:
    """``load()``'s result, or None after an OnmkdError of one line naming one of ``names``.

    Any other exception propagates and fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return load()
        except OnmkdError as exc:
            msg = str(exc)
            assert msg and len(msg.splitlines()) == 1, f"message is not one line: {msg!r}"
            assert any(n in msg for n in names), f"message names none of {names}: {msg!r}"
            return None


def check_dataset(ds: Dataset | None) -> None:
    """A returned data set is sound: a corpus, questions in every split, qrels on known passages,
    and only valid Unicode (what the encoders and output files need)."""
    if ds is None:
        return
    assert isinstance(ds, Dataset)
    assert ds.corpus and ds.splits
    for pid, doc in ds.corpus.items():
        assert isinstance(doc["title"], str) and isinstance(doc["text"], str)
        (pid + doc["title"] + doc["text"]).encode("utf-8")
    for name, split in ds.splits.items():
        assert split.queries, name
        for qid, question in split.queries.items():
            (qid + question).encode("utf-8")
            assert all(isinstance(a, str) for a in split.answers.get(qid, []))
            "".join(split.answers.get(qid, [])).encode("utf-8")
        for qid, rel in split.qrels.items():
            assert qid in split.queries and rel and set(rel) <= set(ds.corpus)
            assert all(isinstance(g, int) for g in rel.values())
        for qid, pids in split.hard_negatives.items():
            assert set(pids) <= set(ds.corpus)


# --------------------------------------------------------------------------- mutations

TOKENS = [b'"', b"{", b"}", b"[", b"]", b",", b":", b"\t", b"\n", b"null", b"\\", b"\x00", b"1e999", b'"\\ud800"',
          b"\\udfff", b"9" * 5000, b"[" * 3000]
NOT_UTF8 = [b"\xff", b"\x80", b"\xc3", b"\xe9t\xe9", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xfe\xff"]
WRONG_VALUES = [None, True, False, 0, -1, 2**70, 1.5, float("inf"), "", " ", "x", "\ud800", [], [None], [[]], {}, {"x": 1}]


def mutate_bytes(data: st.DataObject, raw: bytes) -> bytes:
    """One to three random byte-level mutations of ``raw``."""
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        n = len(raw)
        kind = data.draw(st.sampled_from(
            ["truncate", "flip", "insert", "token", "delete", "not_utf8", "dup_line", "drop_line", "long_line", "splice"]), label="kind")
        pos = data.draw(st.integers(0, n), label="pos")
        if kind == "truncate":
            raw = raw[:pos]
        elif kind == "flip" and n:
            i = min(pos, n - 1)
            raw = raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255), label="xor")]) + raw[i + 1:]
        elif kind == "insert":
            raw = raw[:pos] + data.draw(st.binary(min_size=1, max_size=12), label="blob") + raw[pos:]
        elif kind == "token":
            raw = raw[:pos] + data.draw(st.sampled_from(TOKENS), label="token") + raw[pos:]
        elif kind == "delete":
            raw = raw[:pos] + raw[pos + data.draw(st.integers(1, 40), label="len"):]
        elif kind == "not_utf8":
            raw = raw[:pos] + data.draw(st.sampled_from(NOT_UTF8), label="bad") + raw[pos:]
        elif kind in ("dup_line", "drop_line"):
            lines = raw.splitlines(keepends=True)
            if lines:
                i = data.draw(st.integers(0, len(lines) - 1), label="line")
                if kind == "dup_line":
                    lines.insert(data.draw(st.integers(0, len(lines)), label="to"), lines[i])
                else:
                    del lines[i]
                raw = b"".join(lines)
        elif kind == "long_line":
            raw = raw[:pos] + data.draw(st.sampled_from([b"x", b"\t", b"[", b"\xc3\xa9"]), label="fill") * LONG + raw[pos:]
        elif kind == "splice" and n:
            a = data.draw(st.integers(0, n - 1), label="a")
            raw = raw[:pos] + raw[a:a + data.draw(st.integers(1, 60), label="len")] + raw[pos:]
    return raw


def _slots(value: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            out.append((value, k))
            _slots(v, out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.append((value, i))
            _slots(v, out)
    return out


def mutate_json(data: st.DataObject, doc: Any) -> Any:
    """A copy of ``doc`` with one field deleted, given a wrong-typed value, duplicated or emptied."""
    doc = copy.deepcopy(doc)
    slots = _slots(doc, [])
    if not slots:
        return doc
    parent, key = data.draw(st.sampled_from(slots), label="slot")
    op = data.draw(st.sampled_from(["delete", "wrong", "duplicate", "empty"]), label="op")
    if op == "delete":
        del parent[key]
    elif op == "duplicate" and isinstance(parent, list):
        parent.insert(key, copy.deepcopy(parent[key]))
    elif op == "empty" and isinstance(parent[key], (str, list, dict)):
        parent[key] = type(parent[key])()
    else:
        parent[key] = copy.deepcopy(data.draw(st.sampled_from(WRONG_VALUES), label="value"))
    return doc


def jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def line_cap():
    """The line cap made small, so that the long-line mutation is cheap."""
    return mock.patch.object(_files, "MAX_LINE_BYTES", SMALL_LINE_CAP)


# --------------------------------------------------------------------------- readers on files


def run_squad(raw: bytes, *, zipped: bool = False) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sample.json"
        path.write_bytes(raw)
        if zipped:
            zpath = Path(tmp) / "sample.zip"
            with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
                zf.writestr("sample.json", raw)
            path = zpath
        check_dataset(expect_clean(lambda: load_squad(path), [str(path)]))


def run_zip_bytes(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sample.zip"
        path.write_bytes(raw)
        check_dataset(expect_clean(lambda: load_squad(path), [str(path)]))


def run_qed(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp, line_cap():
        path = Path(tmp) / "sample.jsonlines"
        path.write_bytes(raw)
        check_dataset(expect_clean(lambda: load_qed(path), [str(path)]))


def run_beir(files: dict[str, bytes], unknown_qrels: str = "fail") -> None:
    with tempfile.TemporaryDirectory() as tmp, line_cap():
        root = Path(tmp) / "beir"
        for name, raw in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(raw)
        check_dataset(expect_clean(lambda: load_beir(root, unknown_qrels=unknown_qrels), [str(root)]))


def run_dpr(raw: bytes, gz: bool = False) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("nq-train.json.gz" if gz else "nq-train.json")
        path.write_bytes(gzip.compress(raw) if gz else raw)
        check_dataset(expect_clean(lambda: load_dpr([path]), [str(path)]))


def run_dpr_qa(psgs: bytes, qa: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp, line_cap():
        p, q = Path(tmp) / "psgs_w100.tsv", Path(tmp) / "nq-test.qa.csv"
        p.write_bytes(psgs)
        q.write_bytes(qa)
        check_dataset(expect_clean(lambda: load_dpr_qa(p, [q]), [str(p), str(q)]))


def run_config(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.toml"
        path.write_bytes(raw)
        cfg = expect_clean(lambda: load_config(path), [str(path)])
        assert cfg is None or isinstance(cfg, RunConfig)


def run_space(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "space.toml"
        path.write_bytes(raw)
        (Path(tmp) / "run.toml").write_bytes(CONFIG_TOML)
        space = expect_clean(lambda: load_space(path), [str(path)])
        assert space is None or (isinstance(space, Space) and space.params)


def run_plan(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.toml"
        path.write_bytes(raw)
        (Path(tmp) / "run.toml").write_bytes(CONFIG_TOML)
        (Path(tmp) / "folder.toml").mkdir()
        plan = expect_clean(lambda: load_plan(path), [str(path)])
        assert plan is None or (isinstance(plan, Plan) and plan.entries)


def test_valid_samples_load() -> None:
    """The samples the mutations start from are valid, so mutants probe past the first check."""
    run_squad(json.dumps(squad_doc()).encode())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.json"
        path.write_text(json.dumps(squad_doc()))
        assert len(load_squad(path).corpus) == 3
        path = Path(tmp) / "q.jsonlines"
        path.write_bytes(jsonl(qed_rows()))
        assert len(load_qed(path).splits["test"].queries) == 3
        root = Path(tmp) / "b"
        for name, raw in beir_files().items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(raw)
        assert load_beir(root).info()["test.qrels"] == 3
        path = Path(tmp) / "nq-train.json"
        path.write_text(json.dumps(dpr_examples()))
        assert len(load_dpr([path]).corpus) == 3
        p, q = Path(tmp) / "psgs.tsv", Path(tmp) / "nq-test.qa.csv"
        p.write_bytes(PSGS_TSV)
        q.write_bytes(QA_CSV)
        ds = load_dpr_qa(p, [q])
        assert ds.corpus["2"]["text"] == 'Dogs "bark".' and ds.splits["test"].answers["nq-test-1"] == ["dogs", "hounds"]
        for name, raw in (("run.toml", CONFIG_TOML), ("space.toml", SPACE_TOML), ("plan.toml", PLAN_TOML)):
            (Path(tmp) / name).write_bytes(raw)
        assert load_config(Path(tmp) / "run.toml").train.batch_size == 8
        assert len(load_space(Path(tmp) / "space.toml").params) == 4
        assert len(load_plan(Path(tmp) / "plan.toml").entries) == 5


# --------------------------------------------------------------------------- (a) arbitrary bytes


@PROPS
@given(raw=st.binary(max_size=2000))
def test_squad_arbitrary_bytes(raw: bytes) -> None:
    run_squad(raw)


@PROPS
@given(raw=st.binary(max_size=2000))
def test_squad_zip_arbitrary_bytes(raw: bytes) -> None:
    run_zip_bytes(b"PK\x03\x04" + raw)


@PROPS
@given(raw=st.one_of(st.binary(max_size=2000), st.binary(max_size=500).map(gzip.compress)))
def test_qed_arbitrary_bytes(raw: bytes) -> None:
    run_qed(raw)


@PROPS
@given(which=st.sampled_from(sorted(beir_files())), raw=st.binary(max_size=1500))
def test_beir_arbitrary_bytes(which: str, raw: bytes) -> None:
    run_beir({**beir_files(), which: raw})


@PROPS
@given(raw=st.binary(max_size=2000))
def test_dpr_arbitrary_bytes(raw: bytes) -> None:
    run_dpr(raw)


@PROPS
@given(psgs=st.one_of(st.just(PSGS_TSV), st.binary(max_size=1500)), qa=st.one_of(st.just(QA_CSV), st.binary(max_size=1500)))
def test_dpr_qa_arbitrary_bytes(psgs: bytes, qa: bytes) -> None:
    run_dpr_qa(psgs, qa)


@PROPS
@given(which=st.sampled_from(["config", "space", "plan"]),
       raw=st.one_of(st.binary(max_size=1000), st.text(max_size=300).map(str.encode)))
def test_toml_arbitrary_bytes(which: str, raw: bytes) -> None:
    {"config": run_config, "space": run_space, "plan": run_plan}[which](raw)


# --------------------------------------------------------------------------- (b) mutated valid files


@PROPS
@given(data=st.data(), zipped=st.booleans())
def test_squad_mutated(data: st.DataObject, zipped: bool) -> None:
    doc = squad_doc()
    if data.draw(st.booleans(), label="structural"):
        raw = json.dumps(mutate_json(data, doc)).encode()
    else:
        raw = mutate_bytes(data, json.dumps(doc, indent=1).encode())
    run_squad(raw, zipped=zipped)


@PROPS
@given(data=st.data())
def test_squad_zip_bytes_mutated(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        zpath = Path(tmp) / "s.zip"
        with zipfile.ZipFile(zpath, "w", data.draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))) as zf:
            zf.writestr("s.json", json.dumps(squad_doc()))
        raw = zpath.read_bytes()
    run_zip_bytes(mutate_bytes(data, raw))


@PROPS
@given(data=st.data())
def test_qed_mutated(data: st.DataObject) -> None:
    rows = qed_rows()
    if data.draw(st.booleans(), label="structural"):
        i = data.draw(st.integers(0, len(rows) - 1))
        rows[i] = mutate_json(data, rows[i])
        raw = jsonl(rows)
    else:
        raw = mutate_bytes(data, jsonl(rows))
    if data.draw(st.booleans(), label="gzip"):
        raw = gzip.compress(raw)
        if data.draw(st.booleans(), label="mutate the gzip bytes"):
            raw = mutate_bytes(data, raw)
    run_qed(raw)


@PROPS
@given(data=st.data(), which=st.sampled_from(sorted(beir_files())), unknown=st.sampled_from(["fail", "skip"]))
def test_beir_mutated(data: st.DataObject, which: str, unknown: str) -> None:
    files = beir_files()
    if which != "qrels/test.tsv" and data.draw(st.booleans(), label="structural"):
        rows = [json.loads(line) for line in files[which].splitlines()]
        i = data.draw(st.integers(0, len(rows) - 1))
        rows[i] = mutate_json(data, rows[i])
        files[which] = jsonl(rows)
    else:
        files[which] = mutate_bytes(data, files[which])
    if which == "corpus.jsonl" and data.draw(st.booleans(), label="gzip"):
        files["corpus.jsonl.gz"] = gzip.compress(files.pop("corpus.jsonl"))
    run_beir(files, unknown)


@PROPS
@given(data=st.data(), gz=st.booleans())
def test_dpr_mutated(data: st.DataObject, gz: bool) -> None:
    if data.draw(st.booleans(), label="structural"):
        raw = json.dumps(mutate_json(data, dpr_examples())).encode()
    else:
        raw = mutate_bytes(data, json.dumps(dpr_examples(), indent=1).encode())
    run_dpr(raw, gz)


@PROPS
@given(data=st.data(), which=st.sampled_from(["psgs", "qa"]))
def test_dpr_qa_mutated(data: st.DataObject, which: str) -> None:
    psgs, qa = PSGS_TSV, QA_CSV
    if which == "psgs":
        psgs = mutate_bytes(data, psgs)
    else:
        qa = mutate_bytes(data, qa)
    run_dpr_qa(psgs, qa)


TOML_VALUES = ['"x"', '""', "0", "-1", "1.5", "nan", "-inf", "true", "[]", "[1, \"a\"]", "[[1, 2]]", "{}",
               '{ a = 1 }', "1979-05-27", "07:32:00", "1" + "0" * 400, "1" + "0" * 5000,
               "[" * 2000 + "]" * 2000, '"\\ud800"', "'''\n'''"]


def mutate_toml(data: st.DataObject, raw: bytes) -> bytes:
    """Byte mutations, or a value replaced by one of another type, or a line deleted or repeated."""
    if data.draw(st.booleans(), label="bytes"):
        return mutate_bytes(data, raw)
    lines = raw.decode().splitlines()
    i = data.draw(st.integers(0, len(lines) - 1), label="line")
    op = data.draw(st.sampled_from(["value", "delete", "repeat", "rename"]), label="op")
    if op == "value" and " = " in lines[i]:
        lines[i] = lines[i].split(" = ", 1)[0] + " = " + data.draw(st.sampled_from(TOML_VALUES), label="value")
    elif op == "rename" and " = " in lines[i]:
        lines[i] = data.draw(st.sampled_from(["bogus", '"loss.alpah"', '"model.peer[9].seed"', '"a..b"', "seeds"])) + " = " + lines[i].split(" = ", 1)[1]
    elif op == "delete":
        del lines[i]
    else:
        lines.insert(i, lines[i])
    return ("\n".join(lines) + "\n").encode()


@PROPS
@given(data=st.data())
def test_config_mutated(data: st.DataObject) -> None:
    run_config(mutate_toml(data, CONFIG_TOML))


@PROPS
@given(data=st.data())
def test_space_mutated(data: st.DataObject) -> None:
    run_space(mutate_toml(data, SPACE_TOML))


@PROPS
@given(data=st.data())
def test_plan_mutated(data: st.DataObject) -> None:
    run_plan(mutate_toml(data, PLAN_TOML))


# --------------------------------------------------------------------------- generated TOML trees


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{ " + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(x)}" for k, x in v.items()) + " }"


def to_toml(tree: dict[str, Any]) -> bytes:
    """A TOML document for ``tree``: tables as [sections], lists of tables as [[arrays]]."""
    def key(k: str) -> str:
        return json.dumps(k, ensure_ascii=False)

    def is_tables(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    lines = [f"{key(k)} = {toml_value(v)}" for k, v in tree.items() if not isinstance(v, dict) and not is_tables(v)]
    for k, v in tree.items():
        if isinstance(v, dict):
            lines.append(f"[{key(k)}]")
            lines += [f"{key(kk)} = {toml_value(vv)}" for kk, vv in v.items()]
        elif is_tables(v):
            for item in v:
                lines.append(f"[[{key(k)}]]")
                lines += [f"{key(kk)} = {toml_value(vv)}" for kk, vv in item.items()]
    return ("\n".join(lines) + "\n").encode()


SCALARS = st.one_of(
    st.integers(-3, 12), st.integers(), st.just(10**400), st.floats(), st.booleans(), st.text(max_size=8),
    st.sampled_from(["onmkd", "dml", "dpr", "kd", "mean", "cls", "list", "first", "even", "bm25", "given", "cpu",
                     "squad", "minilm-l6", "minilm-l3", "test", "dev", "acc@20", "mrr@10", "median", "tpe"]),
    st.dates(), st.times())
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)
CONFIG_FIELDS = {
    "data": ["dataset", "train_split", "dev_split", "dev_from_train", "hard_negatives", "negatives", "q_max_len", "titles"],
    "model": ["peers", "layers", "tied", "pooling", "attention_dropout"],
    "loss": ["tau", "alpha", "beta", "kl_temperature", "cross_layers", "teacher"],
    "train": ["method", "seed", "epochs", "batch_size", "lr", "warmup", "device", "select", "threads"],
}
PEER = st.dictionaries(st.sampled_from(["checkpoint", "layer_rule", "layer_list", "random", "seed", "bogus"]), VALUES, max_size=3)
SECTION = st.sampled_from(sorted(CONFIG_FIELDS)).flatmap(
    lambda s: st.tuples(st.just(s), st.dictionaries(st.sampled_from(CONFIG_FIELDS[s] + ["bogus"]), VALUES, max_size=3)))
CONFIG_TREES = st.builds(
    lambda sections, peers, junk: {**dict(sections), **({"model": {**dict(sections).get("model", {}), "peer": peers}} if peers else {}), **junk},
    st.lists(SECTION, max_size=4), st.lists(PEER, max_size=3), st.dictionaries(st.sampled_from(["x", "data", "model"]), VALUES, max_size=1))


@PROPS
@given(tree=CONFIG_TREES)
def test_config_generated(tree: dict[str, Any]) -> None:
    run_config(to_toml(tree))


CONFIG_PATHS = [f"{s}.{f}" for s, fs in CONFIG_FIELDS.items() for f in fs] + [
    "model.peer[*].seed", "model.peer[0].checkpoint", "model.peer[7].seed", "model.peer", "data", "bogus.x", "a..b", "x[*]"]
PARAM = st.fixed_dictionaries(
    {"type": st.sampled_from(["float", "int", "categorical", "floot", 3])},
    optional={"low": SCALARS, "high": SCALARS, "log": st.booleans() | SCALARS, "step": SCALARS,
              "choices": st.lists(SCALARS, max_size=3) | st.dictionaries(st.text(max_size=4), VALUES, max_size=2),
              "when": st.dictionaries(st.sampled_from(CONFIG_PATHS), st.lists(SCALARS, max_size=2), max_size=1)})
SPACE_TREES = st.fixed_dictionaries({"params": st.dictionaries(st.sampled_from(CONFIG_PATHS), PARAM | VALUES, max_size=3)}, optional={
    "study": st.dictionaries(st.sampled_from(["name", "objectives", "n_trials", "timeout", "sampler", "pruner", "grace_s"]), VALUES, max_size=3),
    "fixed": st.dictionaries(st.sampled_from(CONFIG_PATHS), VALUES, max_size=2),
    "base": st.dictionaries(st.sampled_from(["config", "bogus"]), st.sampled_from(["run.toml", "missing.toml", ".", 3, ""]), max_size=1),
    "final": st.dictionaries(st.sampled_from(["top", "seeds", "baselines", "encoders", "split"]), VALUES, max_size=2),
})


@PROPS
@given(tree=SPACE_TREES)
def test_space_generated(tree: dict[str, Any]) -> None:
    run_space(to_toml(tree))


CONFIG_REFS = st.sampled_from(["run.toml", "missing.toml", "folder.toml", "", 3, ["run.toml"]])
PLAN_TREES = st.fixed_dictionaries({}, optional={
    "paper": st.dictionaries(st.sampled_from(["seeds", "split", "encoders", "budget", "bogus"]),
                             VALUES | st.dictionaries(st.sampled_from(CONFIG_PATHS), VALUES, max_size=2), max_size=3),
    "main": st.lists(st.dictionaries(st.sampled_from(["label", "role", "config", "rol"]), CONFIG_REFS | VALUES, max_size=3), max_size=2) | VALUES,
    "layers": st.dictionaries(st.sampled_from(["layers", "configs"]), VALUES | st.dictionaries(st.text(max_size=4), CONFIG_REFS, max_size=2), max_size=2) | VALUES,
    "ablations": st.dictionaries(st.sampled_from(["reference", "configs"]), CONFIG_REFS | st.dictionaries(st.text(max_size=4), CONFIG_REFS, max_size=2), max_size=2),
})


@PROPS
@given(tree=PLAN_TREES)
def test_plan_generated(tree: dict[str, Any]) -> None:
    run_plan(to_toml(tree))


# --------------------------------------------------------------------------- the bugs these tests found


def _raises(exc_type: type[OnmkdError], load: Callable[[], Any], *parts: str) -> str:
    with warnings.catch_warnings(), pytest.raises(exc_type) as info:
        warnings.simplefilter("ignore")
        load()
    msg = str(info.value)
    assert len(msg.splitlines()) == 1, msg
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"
    return msg


def _beir(tmp_path: Path, **replace: bytes) -> Path:
    root = tmp_path / "beir"
    for name, raw in {**beir_files(), **replace}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(raw)
    return root


def test_absurdly_long_line_is_one_error_at_the_real_cap(tmp_path: Path) -> None:
    cap = _files.MAX_LINE_BYTES
    assert cap >= 1024 * 1024  # far above any real line (DPR passages: < 10 KB)
    long_query = b'{"_id": "q3", "text": "' + b"a" * cap + b'"}\n'
    root = _beir(tmp_path, **{"queries.jsonl": beir_files()["queries.jsonl"] + long_query})
    _raises(DataError, lambda: load_beir(root), "queries.jsonl:3:", "longer than", "MAX_LINE_BYTES")
    # A line of exactly the cap (line end included) still reads.
    fits = b'{"_id": "q3", "text": "' + b"a" * (cap - 30) + b'"}'
    fits += b" " * (cap - len(fits) - 1) + b"\n"
    root = _beir(tmp_path / "fits", **{"queries.jsonl": beir_files()["queries.jsonl"] + fits})
    assert len(load_beir(root).corpus) == 3


def test_gzip_bomb_without_line_ends_stops_at_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "bomb.jsonlines"
    path.write_bytes(gzip.compress(b"[" * (SMALL_LINE_CAP * 4)))
    with line_cap():
        _raises(DataError, lambda: load_qed(path), "bomb.jsonlines:1:", "longer than 4,096 bytes")


@pytest.mark.parametrize("fmt", ["squad", "jsonl"])
def test_json_number_beyond_the_digit_limit(tmp_path: Path, fmt: str) -> None:
    big = "1" * 5000
    if fmt == "squad":
        path = tmp_path / "big.json"
        path.write_text('{"data": [], "n": %s}' % big)
        _raises(DataError, lambda: load_squad(path), "big.json", "invalid JSON", "4300 digits")
    else:
        root = _beir(tmp_path, **{"corpus.jsonl": b'{"_id": %s, "text": "t"}\n' % big.encode()})
        _raises(DataError, lambda: load_beir(root), "corpus.jsonl:1:", "invalid JSON")


def test_lone_surrogates_name_the_field(tmp_path: Path) -> None:
    root = _beir(tmp_path, **{"queries.jsonl": b'{"_id": "q1", "text": "a"}\n{"_id": "q2", "text": "b\\ud800"}\n'})
    _raises(DataError, lambda: load_beir(root), "queries.jsonl:2:", "'text'", "lone surrogate")
    doc = squad_doc()
    doc["data"][1]["paragraphs"][0]["qas"][0]["id"] = "q\ud83d"
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    _raises(DataError, lambda: load_squad(path), "s.json: data[1].paragraphs[0].qas[0]", "'id'", "not valid Unicode")
    rows = qed_rows()
    rows[1]["original_nq_answers"][0][0]["string"] = "\udfff"
    path = tmp_path / "q.jsonlines"
    path.write_bytes(jsonl(rows))
    _raises(DataError, lambda: load_qed(path), "q.jsonlines:2:", "original_nq_answers[0][0]", "lone surrogate")
    ex = dpr_examples()
    ex[0]["hard_negative_ctxs"][0]["text"] = "\ud800 no id, so hashed"
    path = tmp_path / "nq-dev.json"
    path.write_text(json.dumps(ex))
    _raises(DataError, lambda: load_dpr([path]), "nq-dev.json: [0].hard_negative_ctxs[0]", "'text'")
    p, q = tmp_path / "psgs.tsv", tmp_path / "nq-test.qa.csv"
    p.write_bytes(PSGS_TSV)
    q.write_bytes(b"ok\t['a']\nq\t['\\ud800']\n")
    _raises(DataError, lambda: load_dpr_qa(p, [q]), "nq-test.qa.csv:2:", "answers[0]", "lone surrogate")


def test_zip_with_an_unknown_compression_method(tmp_path: Path) -> None:
    path = tmp_path / "odd.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("s.json", json.dumps(squad_doc()))
    raw = bytearray(path.read_bytes())
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):  # method field in the local and central headers
        at = raw.find(sig) + (8 if sig == b"PK\x03\x04" else 10)
        raw[at:at + 2] = (99).to_bytes(2, "little")
    path.write_bytes(bytes(raw))
    _raises(DataError, lambda: load_squad(path), "odd.zip", "cannot read the zip archive")


@pytest.mark.parametrize("loader", ["config", "space", "plan"])
@pytest.mark.parametrize("text, parts", [
    ("a = " + "[" * 3000 + "]" * 3000 + "\n", ["nested too deeply"]),
    ("[loss]\nalpha = 1" + "0" * 5000 + "\n", ["invalid TOML", "4300 digits"]),
    ("[loss]\nalpha = 1\n\xe9\n", [":3: not UTF-8 text"]),
], ids=["deep", "huge-int", "not-utf8"])
def test_toml_parser_limits_are_config_errors(tmp_path: Path, loader: str, text: str, parts: list[str]) -> None:
    path = tmp_path / "f.toml"
    path.write_bytes(text.encode("latin-1") if "\xe9" in text else text.encode())
    load = {"config": load_config, "space": load_space, "plan": load_plan}[loader]
    _raises(ConfigError, lambda: load(path), str(path), *parts)


@pytest.mark.parametrize("loader", ["config", "space", "plan"])
def test_toml_folder_and_oversized_file(tmp_path: Path, loader: str) -> None:
    load = {"config": load_config, "space": load_space, "plan": load_plan}[loader]
    (tmp_path / "dir.toml").mkdir()
    _raises(ConfigError, lambda: load(tmp_path / "dir.toml"), "dir.toml: is a folder")
    big = tmp_path / "big.toml"
    big.write_bytes(b"# " + b"x" * MAX_TOML_BYTES + b"\n")
    _raises(ConfigError, lambda: load(big), "big.toml: larger than")


@pytest.mark.parametrize("text, parts", [
    ("model = 3\n", ["run.toml: model: expected ModelConfig, got 3"]),
    ("[data]\nbogus = 1\n", ["run.toml: unknown field 'data.bogus'"]),
    ("[train]\nbatch_size = 0\n", ["run.toml: train.batch_size: must be at least 1"]),
    ("[loss]\nalpha = 1" + "0" * 400 + "\n", ["run.toml: loss.alpha: an integer of 401 digits is beyond the range of a float"]),
], ids=["section-type", "unknown-field", "invalid", "float-overflow"])
def test_config_errors_name_the_file(tmp_path: Path, text: str, parts: list[str]) -> None:
    path = tmp_path / "run.toml"
    path.write_text(text)
    _raises(ConfigError, lambda: load_config(path), *parts)


@pytest.mark.parametrize("text, parts", [
    ('[base]\nconfig = 3\n[params]\n"loss.tau" = { type = "float", low = 0.1, high = 0.5 }\n', ["base.config: expected a path"]),
    ('[base]\nconfig = "run.toml"\n[params]\n"loss.tau" = { type = "float", low = 0.1, high = 0.5 }\n', ["base.config:", "run.toml: unknown field 'data.bogus'"]),
    ('[params]\n"data.dataset" = { type = "categorical", choices = [1979-05-27] }\n', ["params.'data.dataset' = \"1979-05-27\""]),
    ('[params]\n"loss.tau" = { type = "float", low = 0.1, high = 0.5, when = { "!!" = [1] } }\n', ["when: '!!' is neither"]),
    ('[params]\n"loss.tau" = { type = ["float"], low = 0.1, high = 0.5 }\n', [".type: ['float'] is not one of"]),
    ('[params]\n"loss.tau" = { type = "float", low = 0.1, high = inf }\n', [".high: expected a finite number"]),
    ('[fixed]\n"model.peer[' + "9" * 5000 + '].seed" = 1\n[params]\n"loss.tau" = { type = "float", low = 0.1, high = 0.5 }\n', ["is not a config path"]),
], ids=["base-type", "base-bad", "date-choice", "when-path", "type-list", "inf", "huge-index"])
def test_space_errors_name_the_file(tmp_path: Path, text: str, parts: list[str]) -> None:
    (tmp_path / "run.toml").write_text("[data]\nbogus = 1\n")
    path = tmp_path / "space.toml"
    path.write_text(text)
    _raises(ConfigError, lambda: load_space(path), str(path), *parts)


@pytest.mark.parametrize("text, parts", [
    ("paper = 3\n", ["[paper]: expected a table"]),
    ("[paper]\nseeds = 3\n", ["paper.seeds: expected a list of integers"]),
    ("[paper]\nbudget = 3\n", ["paper.budget: expected a table"]),
    ('[paper]\nbudget = { "train.seed" = 1979-05-27 }\n[[main]]\nlabel = "x"\nconfig = "run.toml"\n', ["main[0]:", "train.seed: expected int"]),
    ("main = [1]\n", ["main[0]: expected a table"]),
    ('[[main]]\nlabel = "x"\nconfig = 3\n', ["main[0]: expected a config path"]),
    ('[[main]]\nlabel = 1\nconfig = "run.toml"\n', ["main[0].label: expected a string"]),
    ('[[main]]\nlabel = "x"\nconfig = "."\n', ["main[0]:", "is a folder"]),
    ('[layers]\nlayers = 2\nconfigs = { A = "run.toml" }\n', ["layers.layers: expected a list of integers"]),
    ('[ablations]\nconfigs = ["run.toml"]\n', ["ablations.configs: expected a table"]),
])
def test_plan_errors_name_the_file(tmp_path: Path, text: str, parts: list[str]) -> None:
    (tmp_path / "run.toml").write_bytes(CONFIG_TOML)
    path = tmp_path / "plan.toml"
    path.write_text(text)
    _raises(ConfigError, lambda: load_plan(path), str(path), *parts)


@pytest.mark.parametrize("reader", ["squad", "qed", "beir-corpus", "beir-queries", "beir-qrels", "dpr", "dpr-psgs", "dpr-qa"])
def test_empty_files_are_clear_errors(tmp_path: Path, reader: str) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    if reader == "squad":
        _raises(DataError, lambda: load_squad(empty), "empty: empty file")
    elif reader == "qed":
        _raises(DataError, lambda: load_qed(empty), "empty: no questions")
    elif reader.startswith("beir"):
        name = {"beir-corpus": "corpus.jsonl", "beir-queries": "queries.jsonl", "beir-qrels": "qrels/test.tsv"}[reader]
        root = _beir(tmp_path, **{name: b"\n\n"})
        _raises(DataError, lambda: load_beir(root), name, {"corpus.jsonl": "empty corpus", "queries.jsonl": "no queries",
                                                            "qrels/test.tsv": "no qrels"}[name])
    elif reader == "dpr":
        path = tmp_path / "nq-train.json"
        path.write_text("[]")
        _raises(DataError, lambda: load_dpr([path]), "nq-train.json", "split 'train' has no questions")
    else:
        p, q = tmp_path / "psgs.tsv", tmp_path / "nq-test.qa.csv"
        p.write_bytes(b"" if reader == "dpr-psgs" else PSGS_TSV)
        q.write_bytes(b"" if reader == "dpr-qa" else QA_CSV)
        where = "psgs.tsv: empty file" if reader == "dpr-psgs" else "nq-test.qa.csv: no questions"
        _raises(DataError, lambda: load_dpr_qa(p, [q]), where)


# --------------------------------------------------------------------------- the commands on broken files

runner = CliRunner()


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _earlier_result(folder: Path) -> dict[str, str]:
    """A finished result (a sentinel metrics.json) in ``folder``; returns the folder's digest."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text('{"acc@20": 0.5, "note": "an earlier result"}\n')
    return _tree_digest(folder)


def _invoke(args: list[Any]) -> Any:
    with line_cap(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _assert_one_line_error(result: Any, where: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and where in lines[0], result.output
    assert "Traceback" not in result.output


def broken_dataset(kind: str, tmp: Path) -> tuple[str, str]:
    """A broken data set of ``kind``: (spec, what the error must name)."""
    tmp.mkdir(parents=True, exist_ok=True)
    if kind.startswith("beir"):
        files = beir_files()
        name, raw = {
            "beir-truncated": ("queries.jsonl", files["queries.jsonl"] + b'{"_id": "q9", "te'),
            "beir-not-utf8": ("corpus.jsonl", files["corpus.jsonl"] + b'{"_id": "d9", "text": "caf\xe9"}\n'),
            "beir-unknown-qrels": ("qrels/test.tsv", files["qrels/test.tsv"] + b"q1\tnope\t1\n"),
            "beir-empty-queries": ("queries.jsonl", b""),
            "beir-long-line": ("corpus.jsonl", files["corpus.jsonl"] + b"x" * LONG + b"\n"),
            "beir-duplicate-id": ("corpus.jsonl", files["corpus.jsonl"] + files["corpus.jsonl"].splitlines(True)[0]),
        }[kind]
        root = _beir(tmp, **{name: raw})
        return f"beir:{root}", str(root / name)
    if kind == "squad-wrong-type":
        doc = squad_doc()
        doc["data"][0]["paragraphs"][0]["context"] = 42
        path = tmp / "squad.json"
        path.write_text(json.dumps(doc))
        return f"squad:{path}", f"{path}: data[0].paragraphs[0]"
    if kind == "qed-missing-field":
        rows = qed_rows()
        del rows[2]["question_text"]
        path = tmp / "qed.jsonlines"
        path.write_bytes(gzip.compress(jsonl(rows)))
        return f"nq-qed:{path}", f"{path}:3:"
    if kind == "dpr-truncated":
        path = tmp / "nq-dev.json"
        path.write_text(json.dumps(dpr_examples())[:-40])
        return f"dpr:{path}", str(path)
    assert kind == "dpr-qa-bad-answers"
    p, q = tmp / "psgs.tsv", tmp / "nq-test.qa.csv"
    p.write_bytes(PSGS_TSV)
    q.write_bytes(QA_CSV + b"bad\t['a'\n")
    return f"dpr-qa:{p}:{q}", f"{q}:3:"


BROKEN_DATA = ["beir-truncated", "beir-not-utf8", "beir-unknown-qrels", "beir-empty-queries", "beir-long-line",
               "beir-duplicate-id", "squad-wrong-type", "qed-missing-field", "dpr-truncated", "dpr-qa-bad-answers"]


@pytest.mark.parametrize("kind", BROKEN_DATA)
def test_data_commands_on_broken_data(kind: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    spec, where = broken_dataset(kind, tmp_path / "data")
    _assert_one_line_error(_invoke(["data", "info", spec]), where)
    out = tmp_path / "out"
    before = _earlier_result(out)
    commands = [
        ["evaluate", "--model", tiny_model_dir, "--dataset", spec, "--split", "test", "--out", out],
        ["baselines", "--dataset", spec, "--models", "bm25", "--out", out],
        ["profile", "--model", tiny_model_dir, "--dataset", spec, "--out", out / "metrics.json"],
    ]
    for args in commands:
        _assert_one_line_error(_invoke(args), where)
        assert _tree_digest(out) == before, args


BROKEN_TOML = {
    "syntax": (b"[loss\nalpha = 1\n", "Expected ']'"),
    "not-utf8": (b"[loss]\nalpha = 1\n# caf\xe9\n", ":3: not UTF-8 text"),
    "wrong-type": (b'[train]\nbatch_size = "big"\n', "train"),
    "deep": (b"a = " + b"[" * 3000 + b"]" * 3000 + b"\n", "nested too deeply"),
    "huge-int": (b"[loss]\nalpha = 1" + b"0" * 5000 + b"\n", "invalid TOML"),
    "folder": (None, "is a folder"),
}


def _broken_toml(kind: str, tmp: Path) -> Path:
    raw, _ = BROKEN_TOML[kind]
    path = tmp / "broken.toml"
    if raw is None:
        path.mkdir(parents=True)
    else:
        tmp.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
    return path


@pytest.mark.parametrize("kind", sorted(BROKEN_TOML))
def test_toml_commands_on_broken_files(kind: str, tmp_path: Path) -> None:
    path = _broken_toml(kind, tmp_path / "in")
    where = BROKEN_TOML[kind][1]
    out, report = tmp_path / "out", tmp_path / "report"
    before, before_report = _earlier_result(out), _earlier_result(report)
    for args in (["train", "--config", path, "--out", out],
                 ["sweep", "--space", path, "--study-dir", out],
                 ["paper", "--plan", path, "--out", out, "--report", report]):
        result = _invoke(args)
        _assert_one_line_error(result, str(path))
        assert where in result.output, (args, result.output)
        assert _tree_digest(out) == before and _tree_digest(report) == before_report, args


def test_run_commands_on_a_broken_data_set(tmp_path: Path) -> None:
    """Valid config, space and plan naming a broken data set: each command stops before any
    training, and the earlier result in its output folder stays as it was."""
    spec, where = broken_dataset("beir-truncated", tmp_path / "data")
    run = tmp_path / "run.toml"
    run.write_text(f'[data]\ndataset = "{spec}"\n[model]\npeers = 1\n[train]\nmethod = "dpr"\n')
    space = tmp_path / "space.toml"
    space.write_text('[base]\nconfig = "run.toml"\n[params]\n"loss.tau" = { type = "float", low = 0.01, high = 0.1 }\n'
                     '[final]\nbaselines = []\n')
    plan = tmp_path / "plan.toml"
    plan.write_text('[paper]\nencoders = []\n[[main]]\nlabel = "DPR"\nrole = "same-depth baseline"\nconfig = "run.toml"\n')
    out, report = tmp_path / "out", tmp_path / "report"
    before, before_report = _earlier_result(out), _earlier_result(report)
    for args in (["sweep", "--space", space, "--study-dir", out],
                 ["paper", "--plan", plan, "--out", out, "--report", report]):
        _assert_one_line_error(_invoke(args), where)
        assert _tree_digest(out) == before and _tree_digest(report) == before_report, args
    # train (into a new run directory: it keeps a finished one as it is) fails at the data too.
    fresh = tmp_path / "fresh"
    _assert_one_line_error(_invoke(["train", "--config", run, "--out", fresh]), where)
    assert not (fresh / "metrics.json").exists()


def test_fuzz_script_runs_and_reports(tmp_path: Path) -> None:
    """benchmarks/fuzz_readers.py, a few mutants per reader: no crash, and its report is written."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fuzz_readers", Path(__file__).parent.parent / "benchmarks" / "fuzz_readers.py")
    module = importlib.util.module_from_spec(spec)
    with mock.patch.dict("sys.modules", {"fuzz_readers": module}):
        spec.loader.exec_module(module)
    out = tmp_path / "fuzz.md"
    assert module.main(["--seed", "3", "--max-runs", "90", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Fuzzing the readers\n\n`python benchmarks/fuzz_readers.py 120 --seed 3 --max-runs 90 --out ")
    assert "| **all** | **90** |" in text and "## Crashes and bad messages\n\nNone." in text
    assert _files.MAX_LINE_BYTES == 16 * 1024 * 1024  # the fuzzer's lowered cap is put back
