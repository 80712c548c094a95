"""Hugging Face datasets with SQuAD-style columns.

``hf:NAME[:CONFIG]`` loads a hub data set with ``datasets.load_dataset(NAME, CONFIG)`` (needs a
network or a warm cache); ``hf:DIR`` loads a folder written by ``save_to_disk`` with
``datasets.load_from_disk``. Columns: ``id``, ``context``, ``question``, ``answers`` (a
``{"text": [...]}`` record as in SQuAD, or a plain list of strings), optional ``title``.

Mapped like SQuAD: corpus = the distinct ``(title, context)`` pairs over all splits (title
underscores become spaces; ``pid`` = a 16-hex sha1 of title and context); each question's qrel
is its own context (grade 1); answers are its answer texts, de-duplicated in order. The data
set's own splits are kept as they are (``train``/``validation`` stay so named); a lone
``Dataset`` becomes the split it was saved as, or ``"train"``. Rows whose answer list is
empty (SQuAD 2.0 unanswerable questions) are dropped with one warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from onmkd.data._files import check_id, dedupe, json_type, ordered_splits, stable_pid
from onmkd.data.types import Dataset, Split
from onmkd.errors import DataError

REQUIRED_COLUMNS = ("id", "context", "question", "answers")


def _looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or Path(name).expanduser().exists()


def _answer_texts(value: Any, loc: str) -> list[str]:
    if isinstance(value, dict):
        if "text" not in value:
            raise DataError(f"{loc}: field 'answers': missing field 'text'")
        value = value["text"]
    if value is None:
        return []
    if not isinstance(value, list):
        raise DataError(f"{loc}: field 'answers': expected a list of answer texts, got {json_type(value)}")
    texts: list[str] = []
    for k, item in enumerate(value):
        if isinstance(item, dict) and "text" in item:
            item = item["text"]
        if not isinstance(item, str):
            raise DataError(f"{loc}: field 'answers'[{k}]: expected a string, got {json_type(item)}")
        texts.append(item)
    return dedupe(texts)


def _text(row: dict[str, Any], key: str, loc: str, *, optional: bool = False) -> str:
    value = row.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{loc}: field {key!r}: expected a string, got {json_type(value)}")
    return value


def _load(name: str, config: str | None) -> tuple[str, Any]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise DataError("hf: the 'datasets' package is not installed (pip install datasets)") from None
    if _looks_local(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise DataError(f"{path}: no such folder")
        if not path.is_dir():
            raise DataError(f"{path}: is a file, expected a folder saved with DatasetDict.save_to_disk")
        try:
            return str(path), datasets.load_from_disk(str(path))
        except Exception as exc:  # noqa: BLE001 - datasets raises many kinds
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{path}: cannot load as a saved Hugging Face dataset ({msg})") from None
    try:
        return f"hf:{name}", datasets.load_dataset(name, config)
    except Exception as exc:  # noqa: BLE001 - network, cache and script errors all end here
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        where = f"{name}:{config}" if config else name
        raise DataError(f"hf:{where}: cannot load from the Hugging Face hub ({type(exc).__name__}: {msg})") from None


def load_hf(name: str, config: str | None = None, *, display_name: str | None = None) -> Dataset:
    """Load a hub name or a ``save_to_disk`` folder; see the module docstring."""
    src, loaded = _load(name, config)
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        parts = {str(k): v for k, v in loaded.items()}
    elif isinstance(loaded, datasets.Dataset):
        parts = {str(loaded.split) if loaded.split else "train": loaded}
    else:
        raise DataError(f"{src}: expected a Dataset or DatasetDict, got {type(loaded).__name__}")
    if not parts:
        raise DataError(f"{src}: the dataset has no splits")

    corpus: dict[str, dict[str, str]] = {}
    splits: dict[str, Split] = {}
    dropped = 0
    for split_name, ds in parts.items():
        columns = list(ds.column_names)
        for col in REQUIRED_COLUMNS:
            if col not in columns:
                raise DataError(
                    f"{src}: split {split_name!r}: missing column {col!r} "
                    f"(has: {', '.join(columns)}; SQuAD-style columns id, title, context, question, answers needed)"
                )
        keep = [c for c in (*REQUIRED_COLUMNS, "title") if c in columns]
        split = Split(queries={}, qrels={}, answers={})
        row_index = 0
        for batch in ds.select_columns(keep).iter(batch_size=1000):
            n = len(batch["id"])
            for r in range(n):
                row = {c: batch[c][r] for c in keep}
                loc = f"{src}: split {split_name!r} row {row_index}"
                row_index += 1
                qid = check_id(row["id"], loc, "id")
                title = _text(row, "title", loc, optional=True).replace("_", " ").strip()
                context = _text(row, "context", loc)
                question = _text(row, "question", loc).strip()
                answers = _answer_texts(row["answers"], loc)
                if qid in split.queries:
                    raise DataError(f"{loc}: duplicate id {qid!r}")
                if not answers:
                    dropped += 1
                    continue
                if not question:
                    raise DataError(f"{loc}: field 'question': empty question")
                pid = stable_pid(title, context)
                corpus.setdefault(pid, {"title": title, "text": context})
                split.queries[qid] = question
                split.qrels[qid] = {pid: 1}
                split.answers[qid] = answers
        if not split.queries:
            raise DataError(f"{src}: split {split_name!r} has no answerable questions")
        splits[split_name] = split
    if dropped:
        warnings.warn(f"{src}: dropped {dropped} questions with no answers (unanswerable)", stacklevel=3)
    if not corpus:  # pragma: no cover - every kept question adds its context
        raise DataError(f"{src}: empty corpus")
    ordered = {n: splits[n] for n in ordered_splits(set(splits))}
    if display_name is None:
        display_name = Path(name).expanduser().resolve().name if _looks_local(name) else name
    return Dataset(name=display_name, corpus=corpus, splits=ordered, source=src)
