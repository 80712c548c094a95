"""The one in-memory shape every reader produces (DESIGN.md §5.4).

- corpus: ``{pid: {"title": str, "text": str}}``
- queries: ``{qid: text}`` per split
- qrels: ``{qid: {pid: grade}}`` per split
- answers: ``{qid: [answer strings]}`` per split (empty when the data set has none)
"""

from __future__ import annotations

from dataclasses import dataclass, field

Corpus = dict[str, dict[str, str]]
Queries = dict[str, str]
Qrels = dict[str, dict[str, int]]
Answers = dict[str, list[str]]


@dataclass
class Split:
    """Questions of one split with their relevance judgements and (optional) answer strings."""

    queries: Queries
    qrels: Qrels
    answers: Answers = field(default_factory=dict)
    # Training-only extras (DPR biencoder files): {qid: [pid, ...]}.
    hard_negatives: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Dataset:
    """A retrieval data set: one corpus searched by every split."""

    name: str
    corpus: Corpus
    splits: dict[str, Split]
    source: str = ""
    # How the splits were made, in one line (shown by `onmkd-bench data info`).
    split_rule: str = ""

    def split(self, name: str) -> Split:
        from onmkd.errors import DataError

        if name not in self.splits:
            have = ", ".join(sorted(self.splits)) or "none"
            raise DataError(f"{self.source or self.name}: no split {name!r} (splits: {have})")
        return self.splits[name]

    def info(self) -> dict[str, object]:
        """Passages in the corpus (every split searches all of them), the split rule, and per split:
        questions, qrels, distinct positive passages (grade > 0), questions with answers."""
        out: dict[str, object] = {
            "dataset": self.name,
            "passages": len(self.corpus),
            "split_rule": self.split_rule or "splits as given by the files",
        }
        for name, s in self.splits.items():
            out[f"{name}.questions"] = len(s.queries)
            out[f"{name}.qrels"] = sum(len(v) for v in s.qrels.values())
            out[f"{name}.positives"] = len({p for rel in s.qrels.values() for p, g in rel.items() if g > 0})
            out[f"{name}.with_answers"] = sum(1 for q in s.queries if s.answers.get(q))
        return out


def passage_text(doc: dict[str, str], with_title: bool = True) -> str:
    """Text a passage is encoded and indexed as: ``title + " " + text`` (BEIR's convention),
    or the text alone when ``with_title`` is false."""
    title = doc.get("title", "").strip() if with_title else ""
    text = doc.get("text", "").strip()
    return f"{title} {text}" if title else text
