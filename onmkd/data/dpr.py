"""DPR's file formats.

Biencoder JSON (``dpr:FILE[,FILE...]``): a JSON list of ``{"question", "answers",
"positive_ctxs", "negative_ctxs", "hard_negative_ctxs"}``, each ctx ``{"title", "text",
"passage_id" | "psg_id"}``. Corpus: the union of all ctxs, ``pid`` = ``passage_id`` (or
``psg_id``) when present, else a 16-hex sha1 of title and text; the first text seen for a pid
is kept. Questions: ``qid = f"{file_stem}-{index}"``; qrels: the positive ctxs (grade 1);
answers: ``answers``; ``Split.hard_negatives``: the pids of ``hard_negative_ctxs``.

Retriever QA files (``dpr-qa:PSGS_TSV:QA_CSV[,QA_CSV...]``): ``psgs_w100.tsv`` (tab-separated,
header ``id  text  title``) is the corpus; each ``*.qa.csv`` (tab-separated, no header:
question, then a Python-literal list of answer strings) gives questions with answers and no
qrels (evaluation by answer match only). ``qid = f"{file_stem}-{row_index}"``.

Either way a file's split comes from its name: contains "train" -> train, "dev" -> dev,
"test" -> test, else the file's stem; files naming the same split are merged.
"""

from __future__ import annotations

import ast
import csv
import warnings
from pathlib import Path
from typing import Any, Iterator

from onmkd.data._files import (
    check_id,
    check_text,
    expect_object,
    file_stem,
    get_list,
    get_str,
    iter_lines,
    json_type,
    ordered_splits,
    read_json,
    split_from_filename,
    stable_pid,
    str_list,
)
from onmkd.data.types import Dataset, Split
from onmkd.errors import DataError


def _empty_split() -> Split:
    return Split(queries={}, qrels={}, answers={}, hard_negatives={})


def _check_stems(files: list[Path]) -> None:
    """Question ids are built from file stems, so two files may not share one."""
    seen: dict[str, Path] = {}
    for path in files:
        stem = file_stem(path)
        if stem in seen:
            raise DataError(f"{path}: same file name stem {stem!r} as {seen[stem]} (question ids would clash)")
        seen[stem] = path


# --------------------------------------------------------------------------- biencoder JSON


def _ctx_pid(ctx: dict[str, Any], loc: str) -> tuple[str, str, str]:
    title = get_str(ctx, "title", loc, "", null_ok=True)
    text = get_str(ctx, "text", loc)
    for key in ("passage_id", "psg_id"):
        if key in ctx and ctx[key] is not None:
            return check_id(ctx[key], loc, key), title, text
    return stable_pid(title, text), title, text


def load_dpr(paths: list[str | Path], *, name: str | None = None) -> Dataset:
    """Read DPR biencoder JSON files (``.json`` or ``.json.gz``); see the module docstring."""
    files = list(dict.fromkeys(Path(p).expanduser() for p in paths))
    if not files:
        raise DataError("dpr: no files given (expected dpr:FILE[,FILE...])")
    _check_stems(files)
    corpus: dict[str, dict[str, str]] = {}
    splits: dict[str, Split] = {}
    conflicts = 0
    for path in files:
        src, doc = read_json(path)
        if not isinstance(doc, list):
            raise DataError(f"{src}: expected a JSON list of DPR examples, got {json_type(doc)}")
        stem = file_stem(path)
        split = splits.setdefault(split_from_filename(path), _empty_split())
        for i, ex in enumerate(doc):
            loc = f"{src}: [{i}]"
            ex = expect_object(ex, loc)
            question = get_str(ex, "question", loc).strip()
            if not question:
                raise DataError(f"{loc}: field 'question': empty question")
            answers = str_list(ex.get("answers", []), loc, "answers")
            groups: dict[str, list[str]] = {}
            for key in ("positive_ctxs", "negative_ctxs", "hard_negative_ctxs"):
                pids: list[str] = []
                for k, ctx in enumerate(get_list(ex, key, loc, [])):
                    cloc = f"{loc}.{key}[{k}]"
                    pid, title, text = _ctx_pid(expect_object(ctx, cloc), cloc)
                    have = corpus.setdefault(pid, {"title": title, "text": text})
                    if have["text"] != text:
                        conflicts += 1
                    pids.append(pid)
                groups[key] = list(dict.fromkeys(pids))
            qid = f"{stem}-{i}"
            split.queries[qid] = question
            split.answers[qid] = answers
            if groups["positive_ctxs"]:
                split.qrels[qid] = {pid: 1 for pid in groups["positive_ctxs"]}
            if groups["hard_negative_ctxs"]:
                split.hard_negatives[qid] = groups["hard_negative_ctxs"]
    for split_name, split in splits.items():
        if not split.queries:
            raise DataError(f"{', '.join(map(str, files))}: split {split_name!r} has no questions")
    if not corpus:
        raise DataError(f"{', '.join(map(str, files))}: no ctxs in any example (empty corpus)")
    if conflicts:
        warnings.warn(
            f"dpr: {conflicts} ctxs reuse a passage id with a different text; the first text was kept",
            stacklevel=3,
        )
    ordered = {n: splits[n] for n in ordered_splits(set(splits))}
    return Dataset(
        name=name or "+".join(file_stem(p) for p in files),
        corpus=corpus,
        splits=ordered,
        source=",".join(str(p) for p in files),
    )


# --------------------------------------------------------------------------- psgs_w100.tsv + qa.csv


def _tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(lineno, fields)`` of a tab-separated file read as DPR does (csv quoting rules)."""
    lines = iter_lines(path)
    current = [0]

    def feed() -> Iterator[str]:
        for lineno, line in lines:
            current[0] = lineno
            yield line

    reader = csv.reader(feed(), delimiter="\t")
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"{path}:{current[0]}: malformed line ({exc})") from None
        yield current[0], row


def read_passages_tsv(path: Path) -> dict[str, dict[str, str]]:
    """DPR's ``psgs_w100.tsv``: header ``id  text  title``, one passage per line."""
    corpus: dict[str, dict[str, str]] = {}
    first: dict[str, int] = {}
    columns: dict[str, int] | None = None
    width = 0
    for lineno, row in _tsv_rows(path):
        if not row or row == [""]:
            continue
        if columns is None:
            header = [c.strip().lower() for c in row]
            if "id" not in header or "text" not in header:
                raise DataError(
                    f"{path}:{lineno}: expected a header line naming the columns id, text, title; got {row[:3]!r}"
                )
            columns = {c: header.index(c) for c in ("id", "text", "title") if c in header}
            width = len(header)
            continue
        if len(row) != width:
            raise DataError(f"{path}:{lineno}: expected {width} tab-separated columns, got {len(row)}")
        pid = row[columns["id"]].strip()
        if not pid:
            raise DataError(f"{path}:{lineno}: empty passage id")
        if pid in first:
            raise DataError(f"{path}:{lineno}: duplicate passage id {pid!r} (first at line {first[pid]})")
        first[pid] = lineno
        title = row[columns["title"]] if "title" in columns else ""
        corpus[pid] = {"title": title, "text": row[columns["text"]]}
    if columns is None:
        raise DataError(f"{path}: empty file (expected a header line: id, text, title)")
    if not corpus:
        raise DataError(f"{path}: no passages (empty corpus)")
    return corpus


def read_qa_csv(path: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """A DPR ``*.qa.csv``: ``question <TAB> ['answer', ...]`` per line, no header."""
    stem = file_stem(path)
    queries: dict[str, str] = {}
    answers: dict[str, list[str]] = {}
    index = 0
    for lineno, row in _tsv_rows(path):
        if not row or row == [""]:
            continue
        if len(row) != 2:
            raise DataError(
                f"{path}:{lineno}: expected 2 tab-separated columns (question, answer list), got {len(row)}"
            )
        question, literal = row[0].strip(), row[1].strip()
        if not question:
            raise DataError(f"{path}:{lineno}: empty question")
        try:
            value = ast.literal_eval(literal)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, OverflowError):
            raise DataError(f"{path}:{lineno}: answers {literal[:60]!r} are not a Python list literal") from None
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
            raise DataError(f"{path}:{lineno}: answers must be a list of strings, got {literal[:60]!r}")
        for k, answer in enumerate(value):
            check_text(answer, f"{path}:{lineno}", f"answers[{k}]")  # '\ud800' escapes
        qid = f"{stem}-{index}"
        index += 1
        queries[qid] = question
        answers[qid] = list(dict.fromkeys(value))
    if not queries:
        raise DataError(f"{path}: no questions (empty file)")
    return queries, answers


def load_dpr_qa(psgs: str | Path, qa_files: list[str | Path], *, name: str | None = None) -> Dataset:
    """DPR's passages TSV plus retriever QA files; see the module docstring."""
    psgs_path = Path(psgs).expanduser()
    files = list(dict.fromkeys(Path(p).expanduser() for p in qa_files))
    if not files:
        raise DataError("dpr-qa: no QA files given (expected dpr-qa:PSGS_TSV:QA_CSV[,QA_CSV...])")
    _check_stems(files)
    # Check the (small) QA files before the (large) passages file.
    splits: dict[str, Split] = {}
    for path in files:
        queries, answers = read_qa_csv(path)
        split = splits.setdefault(split_from_filename(path), _empty_split())
        split.queries.update(queries)
        split.answers.update(answers)
    corpus = read_passages_tsv(psgs_path)
    ordered = {n: splits[n] for n in ordered_splits(set(splits))}
    return Dataset(
        name=name or "+".join(file_stem(p) for p in files),
        corpus=corpus,
        splits=ordered,
        source=f"{psgs_path}:{','.join(str(p) for p in files)}",
    )
