"""Resolve a data set spec string to a :class:`~onmkd.data.types.Dataset`.

The format readers live beside this module: :mod:`onmkd.data.squad`, :mod:`onmkd.data.qed`,
:mod:`onmkd.data.beir`, :mod:`onmkd.data.dpr` and :mod:`onmkd.data.hf`.
"""

from __future__ import annotations

from pathlib import Path

from onmkd.data.beir import is_beir_dir, load_beir
from onmkd.data.dpr import load_dpr, load_dpr_qa
from onmkd.data.qed import load_qed
from onmkd.data.splits import Fold, parse_fold, split_qed, split_scifact, split_spec_options
from onmkd.data.squad import load_squad
from onmkd.data.types import Dataset
from onmkd.errors import ConfigError, DataError

SPEC_HELP = """\
Data set specs:
  squad | squad:PATH            bundled SQuAD v1.1 dev, or any SQuAD-format .json/.zip; split by article
  nq-qed | nq-qed:PATH          bundled QED dev (NQ questions + gold paragraphs), or a .jsonlines[.gz];
                                split by paragraph (70/10/20 by sha256), plus all = every question
  scifact:DIR                   BEIR SciFact folder: official test, dev = every 10th train question by id
  beir:DIR | DIR                BEIR folder: corpus.jsonl[.gz], queries.jsonl[.gz], qrels/<split>.tsv
  dpr:FILE[,FILE...]            DPR biencoder .json files; split from the name (train/dev/test)
  dpr-qa:PSGS_TSV:QA[,QA...]    DPR psgs_w100.tsv + *.qa.csv questions (answers only, no qrels)
  hf:NAME_OR_DIR[:CONFIG]       Hugging Face hub name or save_to_disk folder with SQuAD-style columns
Options (nq-qed and scifact:DIR only), after '?':
  SPEC?fold=KofN                cross-validation: fold K of N is test, dev every 10th of the rest"""

_FORMS = (
    "squad, squad:PATH, nq-qed, nq-qed:PATH, scifact:DIR, beir:DIR or a BEIR folder, dpr:FILE[,FILE...], "
    "dpr-qa:PSGS_TSV:QA_CSV[,QA_CSV...], hf:NAME_OR_DIR[:CONFIG]"
)
_PREFIXES = ("squad", "nq-qed", "scifact", "beir", "dpr", "dpr-qa", "hf")
_WITH_FOLDS = ("nq-qed", "scifact")
UNKNOWN_QRELS = ("fail", "skip")


def _paths(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _split_dpr_qa(rest: str) -> tuple[str, str]:
    """``PSGS_TSV:QA_CSV[,...]`` -> the two parts; the first colon after an existing file wins."""
    colons = [i for i, c in enumerate(rest) if c == ":"]
    if not colons:
        raise DataError(f"dpr-qa:{rest}: expected dpr-qa:PSGS_TSV:QA_CSV[,QA_CSV...]")
    for i in colons:
        if Path(rest[:i]).expanduser().is_file():
            return rest[:i], rest[i + 1 :]
    return rest[: colons[0]], rest[colons[0] + 1 :]


def _split_hf(rest: str) -> tuple[str, str | None]:
    if Path(rest).expanduser().exists() or ":" not in rest:
        return rest, None
    name, config = rest.rsplit(":", 1)
    return name, (config or None)


def load_dataset(spec: str, *, unknown_qrels: str = "fail") -> Dataset:
    """Load the data set ``spec`` names (see :data:`SPEC_HELP`).

    ``unknown_qrels``: what to do with qrels naming a query or passage the data set lacks:
    ``"fail"`` (a DataError naming file and line) or ``"skip"`` (drop them, warn once).
    """
    if unknown_qrels not in UNKNOWN_QRELS:
        raise ConfigError(f"unknown_qrels: expected 'fail' or 'skip', got {unknown_qrels!r}")
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"empty data set spec: expected one of {_FORMS}")
    spec = spec.strip()
    base, options = split_spec_options(spec)
    fold: Fold | None = None
    if options:
        if base.partition(":")[0] not in _WITH_FOLDS:
            raise DataError(f"{spec}: options apply to nq-qed, nq-qed:PATH and scifact:DIR only")
        fold = parse_fold(options["fold"], spec)
    if base == "squad":
        return load_squad()
    if base == "nq-qed":
        return split_qed(load_qed(), fold, spec)
    if base == "scifact":
        raise DataError(f"{spec}: name the BEIR folder, scifact:DIR (SciFact is CC BY-NC and not bundled)")

    prefix, sep, rest = base.partition(":")
    if sep and prefix in _PREFIXES:
        rest = rest.strip()
        if not rest:
            raise DataError(f"{spec}: missing the path after '{prefix}:' (valid forms: {_FORMS})")
        if prefix == "squad":
            return load_squad(rest)
        if prefix == "nq-qed":
            return split_qed(load_qed(rest), fold, spec)
        if prefix == "scifact":
            return split_scifact(load_beir(rest, unknown_qrels=unknown_qrels, name="scifact"), fold, spec)
        if prefix == "beir":
            return load_beir(rest, unknown_qrels=unknown_qrels)
        if prefix == "dpr":
            return load_dpr(_paths(rest))
        if prefix == "dpr-qa":
            psgs, qa = _split_dpr_qa(rest)
            return load_dpr_qa(psgs, _paths(qa))
        from onmkd.data.hf import load_hf  # imports `datasets`: only when asked for

        name, config = _split_hf(rest)
        return load_hf(name, config)

    path = Path(spec).expanduser()
    if path.is_dir():
        if is_beir_dir(path):
            return load_beir(path, unknown_qrels=unknown_qrels)
        raise DataError(f"{path}: not a BEIR folder: no corpus.jsonl or corpus.jsonl.gz (valid forms: {_FORMS})")
    if path.is_file():
        raise DataError(f"{spec}: a bare path must be a BEIR folder; name a file's format (valid forms: {_FORMS})")
    raise DataError(f"unknown data set spec {spec!r} (no such folder either); valid forms: {_FORMS}")
