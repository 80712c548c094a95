"""QED (Natural Questions questions with their gold Wikipedia paragraph) as a retrieval data set.

Input: JSON lines (plain or gzip) with ``example_id``, ``question_text``, ``title_text``,
``paragraph_text`` and ``original_nq_answers`` (a list of annotations, each a list of spans
with a ``string``).

Corpus: the distinct ``(title_text, paragraph_text)`` pairs, ``pid`` = a 16-hex sha1 of title
and text (stable across copies and orderings of the file). Queries: ``question_text`` keyed by
``example_id``; qrels: the question's own paragraph (grade 1); answers: every distinct span
``string`` across ``original_nq_answers``, in order. The bundled dev file has 1,355 questions
over 1,343 paragraphs.

:func:`load_qed` returns the file as it is: every question in one split, ``"test"``. The
``nq-qed`` and ``nq-qed:PATH`` specs then split it by paragraph into train/dev/test (plus
``all`` = every question) with :func:`onmkd.data.splits.split_qed`, whose docstring gives the rule
and the counts.
"""

from __future__ import annotations

from pathlib import Path

from onmkd.data._files import (
    check_text,
    dedupe,
    expect_object,
    file_stem,
    get_id,
    get_list,
    get_str,
    iter_jsonl,
    json_type,
    stable_pid,
)
from onmkd.data.types import Dataset, Split
from onmkd.errors import DataError

BUNDLED = Path(__file__).resolve().parent / "bundled" / "qed-dev.jsonlines.gz"


def load_qed(path: str | Path | None = None, *, name: str | None = None) -> Dataset:
    """Read a QED ``.jsonlines`` file (gzip detected by content)."""
    path = BUNDLED if path is None else Path(path).expanduser()
    corpus: dict[str, dict[str, str]] = {}
    split = Split(queries={}, qrels={}, answers={})
    first_line: dict[str, int] = {}
    for lineno, row in iter_jsonl(path):
        loc = f"{path}:{lineno}"
        row = expect_object(row, loc)
        qid = get_id(row, "example_id", loc)
        question = get_str(row, "question_text", loc).strip()
        title = get_str(row, "title_text", loc, "", null_ok=True).strip()
        text = get_str(row, "paragraph_text", loc)
        answers: list[str] = []
        for a, annotation in enumerate(get_list(row, "original_nq_answers", loc, [])):
            if not isinstance(annotation, list):
                raise DataError(
                    f"{loc}: field 'original_nq_answers[{a}]': expected a list of spans, got {json_type(annotation)}"
                )
            for s, span in enumerate(annotation):
                sloc = f"{loc}: field 'original_nq_answers[{a}][{s}]'"
                if not isinstance(span, dict):
                    raise DataError(f"{sloc}: expected an object, got {json_type(span)}")
                if "string" not in span:
                    raise DataError(f"{sloc}: missing field 'string'")
                if not isinstance(span["string"], str):
                    raise DataError(f"{sloc}: field 'string': expected a string, got {json_type(span['string'])}")
                answers.append(check_text(span["string"], sloc, "string"))
        if qid in first_line:
            raise DataError(f"{loc}: duplicate example_id {qid!r} (first at line {first_line[qid]})")
        if not question:
            raise DataError(f"{loc}: field 'question_text': empty question")
        first_line[qid] = lineno
        pid = stable_pid(title, text)
        corpus.setdefault(pid, {"title": title, "text": text})
        split.queries[qid] = question
        split.qrels[qid] = {pid: 1}
        split.answers[qid] = dedupe(answers)
    if not split.queries:
        raise DataError(f"{path}: no questions (empty file)")
    if name is None:
        name = "nq-qed" if path == BUNDLED else file_stem(path)
    return Dataset(name=name, corpus=corpus, splits={"test": split}, source=str(path))
