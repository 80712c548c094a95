"""BEIR-layout folders.

A folder holding::

    corpus.jsonl[.gz]    one {"_id", "title", "text"} object per line
    queries.jsonl[.gz]   one {"_id", "text"} object per line
    qrels/<split>.tsv    query-id <TAB> corpus-id <TAB> score, after a header line

gives one split per qrels file, named by the file's stem; a split's questions are the queries
its qrels name. Grades are kept as written (integers; 0 stays 0). BEIR sets carry no answer
strings. Qrels that name an unknown query or corpus id fail by default; with
``unknown_qrels="skip"`` those lines are dropped and one warning gives their count.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from onmkd.data._files import (
    expect_object,
    get_id,
    get_str,
    iter_jsonl,
    iter_lines,
    ordered_splits,
    require_dir,
)
from onmkd.data.types import Dataset, Split
from onmkd.errors import DataError


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: not a BEIR folder: no {stem}.jsonl or {stem}.jsonl.gz")


def is_beir_dir(path: Path) -> bool:
    """Whether ``path`` looks like a BEIR folder (has a corpus file)."""
    return path.is_dir() and any((path / n).is_file() for n in ("corpus.jsonl", "corpus.jsonl.gz"))


def read_corpus(path: Path) -> dict[str, dict[str, str]]:
    """``corpus.jsonl[.gz]``: ``{_id: {"title", "text"}}``; duplicate ids fail."""
    corpus: dict[str, dict[str, str]] = {}
    first: dict[str, int] = {}
    for lineno, row in iter_jsonl(path):
        loc = f"{path}:{lineno}"
        row = expect_object(row, loc)
        pid = get_id(row, "_id", loc)
        title = get_str(row, "title", loc, "", null_ok=True)
        text = get_str(row, "text", loc, null_ok=True)
        if pid in first:
            raise DataError(f"{loc}: duplicate corpus id {pid!r} (first at line {first[pid]})")
        first[pid] = lineno
        corpus[pid] = {"title": title, "text": text}
    if not corpus:
        raise DataError(f"{path}: empty corpus")
    return corpus


def read_queries(path: Path) -> dict[str, str]:
    """``queries.jsonl[.gz]``: ``{_id: text}``; duplicate ids fail."""
    queries: dict[str, str] = {}
    first: dict[str, int] = {}
    for lineno, row in iter_jsonl(path):
        loc = f"{path}:{lineno}"
        row = expect_object(row, loc)
        qid = get_id(row, "_id", loc)
        text = get_str(row, "text", loc)
        if qid in first:
            raise DataError(f"{loc}: duplicate query id {qid!r} (first at line {first[qid]})")
        first[qid] = lineno
        queries[qid] = text
    if not queries:
        raise DataError(f"{path}: no queries (empty file)")
    return queries


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_qrels(
    path: Path,
    queries: dict[str, str],
    corpus: dict[str, dict[str, str]],
    *,
    unknown_qrels: str = "fail",
) -> tuple[dict[str, dict[str, int]], int]:
    """One qrels TSV: ``({qid: {pid: grade}}, lines skipped for naming unknown ids)``."""
    qrels: dict[str, dict[str, int]] = {}
    skipped = 0
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) == 1:
            parts = line.split()
        parts = [p.strip() for p in parts]
        if len(parts) != 3:
            raise DataError(
                f"{path}:{lineno}: expected 3 tab-separated columns (query-id, corpus-id, score), got {len(parts)}"
            )
        qid, pid, score = parts
        if lineno == 1 and not _is_number(score):
            continue  # header line: query-id corpus-id score
        try:
            grade = int(score)
        except ValueError:
            raise DataError(f"{path}:{lineno}: score {score!r} is not an integer") from None
        if not qid or not pid:
            raise DataError(f"{path}:{lineno}: empty query or corpus id")
        unknown = (
            f"unknown query id {qid!r} (not in queries)"
            if qid not in queries
            else f"unknown corpus id {pid!r} (not in corpus)"
            if pid not in corpus
            else None
        )
        if unknown is not None:
            if unknown_qrels == "skip":
                skipped += 1
                continue
            raise DataError(f"{path}:{lineno}: {unknown}; use --unknown-qrels skip (load_dataset(..., unknown_qrels='skip')) to drop such lines")
        judged = qrels.setdefault(qid, {})
        if pid in judged and judged[pid] != grade:
            raise DataError(
                f"{path}:{lineno}: conflicting grades for query {qid!r}, passage {pid!r} ({judged[pid]} and {grade})"
            )
        judged[pid] = grade
    return qrels, skipped


def load_beir(folder: str | Path, *, unknown_qrels: str = "fail", name: str | None = None) -> Dataset:
    """Read a BEIR-layout folder (see the module docstring)."""
    folder = require_dir(Path(folder).expanduser())
    corpus_path = _find(folder, "corpus")
    queries_path = _find(folder, "queries")
    qrels_dir = folder / "qrels"
    if not qrels_dir.is_dir():
        raise DataError(f"{folder}: not a BEIR folder: no qrels/ folder")
    qrels_files = sorted(qrels_dir.glob("*.tsv"))
    if not qrels_files:
        raise DataError(f"{qrels_dir}: no <split>.tsv qrels files")

    corpus = read_corpus(corpus_path)
    queries = read_queries(queries_path)
    splits: dict[str, Split] = {}
    skipped: dict[str, int] = {}
    for qpath in qrels_files:
        qrels, n_skipped = read_qrels(qpath, queries, corpus, unknown_qrels=unknown_qrels)
        if n_skipped:
            skipped[qpath.name] = n_skipped
        if not qrels:
            extra = f" ({n_skipped} lines with unknown ids skipped)" if n_skipped else ""
            raise DataError(f"{qpath}: no qrels, so the split has no questions{extra}")
        splits[qpath.stem] = Split(queries={q: queries[q] for q in qrels}, qrels=qrels, answers={})
    if skipped:
        detail = ", ".join(f"{k}: {v}" for k, v in skipped.items())
        warnings.warn(
            f"{folder}: skipped {sum(skipped.values())} qrels lines naming unknown query or corpus ids ({detail})",
            stacklevel=3,
        )
    ordered = {n: splits[n] for n in ordered_splits(set(splits))}
    return Dataset(name=name or folder.resolve().name, corpus=corpus, splits=ordered, source=str(folder))
