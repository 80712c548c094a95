"""Fixed, documented, deterministic train/dev/test splits, and cross-validation folds.

Every rule here depends only on ids (hashed with sha256, never Python's ``hash``), so the same
data gives the same splits on every machine, in every process and for any order of the input
file. The corpus is never split: every split searches all passages.

``nq-qed`` (QED dev: NQ questions with their gold paragraph) is split **by paragraph**: all
questions of one paragraph go to one split, so no test paragraph is a positive in train or dev.
With ``b(pid)`` = the first 8 bytes of ``sha256(pid)`` as a big-endian integer, mod 100
(``pid`` is already a content hash of title and text)::

    b < 70        -> train
    70 <= b < 80  -> dev
    b >= 80       -> test

plus ``all`` (every question: the one ``test`` split this data set had before the paragraph
split, on which the README's reference numbers were first measured). On the bundled file:
train 945 questions / 937 paragraphs, dev 131 / 131, test 279 / 275, all 1,355 / 1,343.

``scifact:DIR`` (a BEIR folder with ``qrels/train.tsv`` and ``qrels/test.tsv``): test = the
official test qrels; dev = every 10th train question in the order of their ids sorted as
strings (``sorted(qids)[9::10]``, the same questions ``data.dev_from_train = 0.1`` holds out);
train = the other train questions. On BEIR's SciFact: train 729, dev 80, test 300 questions.
A folder that already has ``qrels/dev.tsv`` keeps it and nothing is carved.

Cross-validation folds (``?fold=KofN``, K in 1..N, N >= 2): the units (paragraphs for nq-qed,
questions for SciFact, whose pool is the official train and test questions together) are put
in the order of ``sha256(unit)`` as hex (ties, which need a hash collision, by the unit);
the unit at position ``j`` is in fold ``j mod N + 1``, so fold sizes differ by at most one unit.
Fold K is the test split; of the other units, in the same order, every 10th (positions 9, 19,
... of that list) is dev and the rest train. The N folds partition the questions.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

from onmkd.data._files import ordered_splits
from onmkd.data.types import Dataset, Split
from onmkd.errors import DataError

# nq-qed's paragraph buckets, out of 100.
QED_TRAIN_BELOW = 70
QED_DEV_BELOW = 80
# Within the units that are not the test fold: every DEV_EVERY-th is dev (folds); SciFact's
# official train: every DEV_EVERY-th question by sorted id is dev.
DEV_EVERY = 10

OPTIONS_HELP = "fold=KofN (cross-validation fold K of N as the test split, e.g. fold=1of5)"
_FOLD = re.compile(r"(\d+)of(\d+)")

QED_RULE = (
    "by paragraph: sha256(pid)[:8] mod 100 < 70 train, < 80 dev, else test; "
    "all = every question; corpus = all paragraphs"
)
SCIFACT_RULE = (
    "test = official qrels/test.tsv; dev = every 10th train question by sorted id "
    "(sorted(qids)[9::10]); train = the other qrels/train.tsv questions; corpus = all abstracts"
)


# --------------------------------------------------------------------------- hashing


def hash_bucket(key: str, buckets: int = 100) -> int:
    """``int.from_bytes(sha256(key)[:8], "big") % buckets``: a bucket independent of order and seed."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % buckets


def hash_order(keys: Iterable[str]) -> list[str]:
    """``keys`` sorted by their sha256 hex digest (then by the key): a fixed shuffle."""
    return sorted(set(keys), key=lambda k: (hashlib.sha256(k.encode("utf-8")).hexdigest(), k))


# --------------------------------------------------------------------------- spec options


@dataclass(frozen=True)
class Fold:
    """Cross-validation fold ``k`` (1-based) of ``n``."""

    k: int
    n: int

    def __str__(self) -> str:
        return f"{self.k}of{self.n}"


def split_spec_options(spec: str) -> tuple[str, dict[str, str]]:
    """``"nq-qed?fold=1of5"`` -> ``("nq-qed", {"fold": "1of5"})``.

    Options follow the last ``?`` as ``key=value`` pairs joined by ``&``; a spec that names an
    existing path (which may hold a ``?``) has none. Malformed or repeated options fail naming
    the spec.
    """
    if "?" not in spec or Path(spec).expanduser().exists():
        return spec, {}
    base, query = spec.rsplit("?", 1)
    base = base.strip()
    if not base:
        raise DataError(f"{spec}: no data set before '?'")
    options: dict[str, str] = {}
    for part in query.split("&"):
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value:
            raise DataError(f"{spec}: option {part!r} is not key=value (options: {OPTIONS_HELP})")
        if key != "fold":
            raise DataError(f"{spec}: unknown option {key!r} (options: {OPTIONS_HELP})")
        if key in options:
            raise DataError(f"{spec}: option {key!r} given twice")
        options[key] = value
    return base, options


def parse_fold(value: str, spec: str) -> Fold:
    """``"2of5"`` -> ``Fold(2, 5)``; anything else fails naming the spec."""
    m = _FOLD.fullmatch(value.strip())
    if not m:
        raise DataError(f"{spec}: fold: expected KofN with whole numbers K and N, e.g. fold=1of5, got {value!r}")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 2:
        raise DataError(f"{spec}: fold {value}: N must be at least 2, got {n}")
    if not 1 <= k <= n:
        raise DataError(f"{spec}: fold {value}: K must be between 1 and N ({n}), got {k}")
    return Fold(k, n)


# --------------------------------------------------------------------------- helpers


def subset(split: Split, qids: Iterable[str]) -> Split:
    """The questions ``qids`` of ``split`` (in ``split``'s order) with their qrels, answers, negatives."""
    keep = set(qids)
    qs = [q for q in split.queries if q in keep]
    return Split(
        queries={q: split.queries[q] for q in qs},
        qrels={q: split.qrels[q] for q in qs if q in split.qrels},
        answers={q: split.answers[q] for q in qs if q in split.answers},
        hard_negatives={q: split.hard_negatives[q] for q in qs if q in split.hard_negatives},
    )


def positive_pids(split: Split) -> set[str]:
    """Passages judged relevant (grade > 0) for some question of ``split``."""
    return {pid for rel in split.qrels.values() for pid, grade in rel.items() if grade > 0}


def fold_units(units: Iterable[str], fold: Fold, what: str, spec: str) -> dict[str, str]:
    """``{unit: "train" | "dev" | "test"}`` for fold ``fold`` (see the module docstring)."""
    ordered = hash_order(units)
    if len(ordered) < fold.n:
        raise DataError(f"{spec}: fold {fold}: {fold.n} folds but only {len(ordered):,} {what}")
    out: dict[str, str] = {}
    rest: list[str] = []
    for j, unit in enumerate(ordered):
        if j % fold.n == fold.k - 1:
            out[unit] = "test"
        else:
            rest.append(unit)
    for i, unit in enumerate(rest):
        out[unit] = "dev" if i % DEV_EVERY == DEV_EVERY - 1 else "train"
    return out


def _assign(pool: Split, split_of: Callable[[str], str]) -> dict[str, Split]:
    """Split ``pool`` by ``split_of(qid)``; empty splits are left out, the rest in display order."""
    members: dict[str, list[str]] = {}
    for qid in pool.queries:
        members.setdefault(split_of(qid), []).append(qid)
    return {name: subset(pool, members[name]) for name in ordered_splits(set(members))}


# --------------------------------------------------------------------------- nq-qed


def qed_paragraph_split(pid: str) -> str:
    """The split of nq-qed paragraph ``pid`` under the default rule."""
    b = hash_bucket(pid)
    return "train" if b < QED_TRAIN_BELOW else "dev" if b < QED_DEV_BELOW else "test"


def split_qed(data: Dataset, fold: Fold | None = None, spec: str = "nq-qed") -> Dataset:
    """Split a QED data set (one split holding every question) by paragraph, plus ``all``."""
    (pool,) = data.splits.values()
    paragraph: dict[str, str] = {}
    for qid in pool.queries:
        rel = pool.qrels.get(qid, {})
        if len(rel) != 1:  # the QED reader gives exactly one; guard the grouping rule
            raise DataError(f"{spec}: question {qid!r} has {len(rel)} gold paragraphs; expected one")
        (paragraph[qid],) = rel
    if fold is None:
        splits = _assign(pool, lambda q: qed_paragraph_split(paragraph[q]))
        rule = QED_RULE
    else:
        units = fold_units(paragraph.values(), fold, "paragraphs", spec)
        splits = _assign(pool, lambda q: units[paragraph[q]])
        rule = (f"fold {fold}: paragraphs in sha256(pid) order, position j in fold j mod {fold.n} + 1; "
                f"test = fold {fold.k}; dev = every 10th other paragraph; all = every question")
    splits["all"] = pool
    return replace(data, splits=splits, split_rule=rule)


# --------------------------------------------------------------------------- SciFact / BEIR


def split_scifact(data: Dataset, fold: Fold | None = None, spec: str = "scifact") -> Dataset:
    """Official test, a dev carved from the official train, the rest train (see the module docstring)."""
    have = ", ".join(data.splits) or "none"
    for need in ("train", "test"):
        if need not in data.splits:
            raise DataError(f"{spec}: needs qrels/train.tsv and qrels/test.tsv (splits found: {have})")
    train, test = data.splits["train"], data.splits["test"]
    given_dev = data.splits.get("dev")
    if fold is None:
        if given_dev is not None:
            return replace(data, split_rule="splits as given: qrels/train.tsv, qrels/dev.tsv, qrels/test.tsv")
        dev_ids = set(sorted(train.queries)[DEV_EVERY - 1 :: DEV_EVERY])
        splits = {
            "train": subset(train, [q for q in train.queries if q not in dev_ids]),
            "dev": subset(train, [q for q in train.queries if q in dev_ids]),
            "test": test,
        }
        splits = {k: v for k, v in splits.items() if v.queries}
        return replace(data, splits=splits, split_rule=SCIFACT_RULE)

    parts = [s for s in (train, given_dev, test) if s is not None]
    pool = Split(queries={}, qrels={}, answers={})
    for part in parts:
        for qid in part.queries:
            if qid in pool.queries:
                raise DataError(f"{spec}: question {qid!r} is in more than one qrels file; folds need each once")
        pool.queries.update(part.queries)
        pool.qrels.update(part.qrels)
        pool.answers.update(part.answers)
    units = fold_units(pool.queries, fold, "questions", spec)
    rule = (f"fold {fold} over the official train+test questions: sha256(qid) order, position j in fold "
            f"j mod {fold.n} + 1; test = fold {fold.k}; dev = every 10th other question; corpus = all abstracts")
    return replace(data, splits=_assign(pool, units.__getitem__), split_rule=rule)
