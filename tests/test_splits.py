"""Fixed splits and cross-validation folds (onmkd.data.splits): determinism, no leakage, the
documented counts on the real data, folds that partition the questions, and bad options."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from onmkd.cli import app
from onmkd.data import Dataset, load_dataset
from onmkd.data.qed import BUNDLED as QED_FILE
from onmkd.data.splits import Fold, fold_units, hash_bucket, hash_order, positive_pids, qed_paragraph_split
from onmkd.errors import DataError

SCIFACT = Path("/work/shared/data/scifact-beir")
needs_scifact = pytest.mark.skipif(not SCIFACT.is_dir(), reason="SciFact BEIR folder not present")
SPLITS = ("train", "dev", "test")


def qids(ds: Dataset) -> dict[str, list[str]]:
    return {name: list(s.queries) for name, s in ds.splits.items()}


def assert_partition(ds: Dataset, pool: set[str]) -> None:
    """train, dev and test are disjoint and together hold every question of ``pool``."""
    parts = [set(ds.splits[n].queries) for n in SPLITS if n in ds.splits]
    assert sum(len(p) for p in parts) == len(pool) and set().union(*parts) == pool


def assert_no_paragraph_leak(ds: Dataset) -> None:
    test = positive_pids(ds.split("test"))
    assert test and not test & positive_pids(ds.split("train")) and not test & positive_pids(ds.split("dev"))
    assert not positive_pids(ds.split("train")) & positive_pids(ds.split("dev"))


@pytest.fixture(scope="module")
def qed() -> Dataset:
    return load_dataset("nq-qed")


# --------------------------------------------------------------------------- the hash rule


def test_hash_rule_is_fixed() -> None:
    # The rule is sha256, not Python's salted hash(): these values hold on every machine.
    assert hash_bucket("abc") == int.from_bytes(hashlib.sha256(b"abc").digest()[:8], "big") % 100 == 74
    assert hash_order(["b", "a", "c", "a"]) == sorted({"a", "b", "c"}, key=lambda k: hashlib.sha256(k.encode()).hexdigest())
    out = subprocess.run(
        [sys.executable, "-c", "from onmkd.data import load_dataset as l; d = l('nq-qed?fold=3of7');"
         "print(sorted(d.split('test').queries)[:5], len(d.split('dev').queries))"],
        capture_output=True, text=True, env={"PYTHONHASHSEED": "12345", "PYTHONPATH": str(Path(__file__).parents[1])},
        check=True,
    ).stdout
    here = load_dataset("nq-qed?fold=3of7")
    assert out.strip() == f"{sorted(here.split('test').queries)[:5]} {len(here.split('dev').queries)}"


def test_fold_units_balance() -> None:
    units = [f"u{i}" for i in range(23)]
    seen: list[str] = []
    for k in range(1, 6):
        parts = fold_units(reversed(units), Fold(k, 5), "units", "x")
        assert parts == fold_units(units, Fold(k, 5), "units", "x")  # input order does not matter
        test = [u for u, s in parts.items() if s == "test"]
        assert len(test) in (4, 5)
        seen += test
        rest = [u for u in hash_order(units) if parts[u] != "test"]
        assert [u for u in rest if parts[u] == "dev"] == rest[9::10]
    assert sorted(seen) == sorted(units)


# --------------------------------------------------------------------------- nq-qed


def test_qed_counts_and_rule(qed: Dataset) -> None:
    assert list(qed.splits) == ["train", "dev", "test", "all"]
    counts = {n: (len(s.queries), len(positive_pids(s))) for n, s in qed.splits.items()}
    assert counts == {"train": (945, 937), "dev": (131, 131), "test": (279, 275), "all": (1355, 1343)}
    assert len(qed.corpus) == 1343  # retrieval over every paragraph, whichever the split
    for name in SPLITS:
        for rel in qed.split(name).qrels.values():
            (pid,) = rel
            assert qed_paragraph_split(pid) == name
    assert_partition(qed, set(qed.split("all").queries))
    assert_no_paragraph_leak(qed)


def test_qed_deterministic_and_order_free(qed: Dataset, tmp_path: Path) -> None:
    assert qids(load_dataset("nq-qed")) == qids(qed)
    lines = gzip.decompress(QED_FILE.read_bytes()).decode("utf-8").splitlines(True)
    shuffled = tmp_path / "qed-reversed.jsonlines"
    shuffled.write_text("".join(reversed(lines)), encoding="utf-8")
    other = load_dataset(f"nq-qed:{shuffled}")
    assert {n: set(q) for n, q in qids(other).items()} == {n: set(q) for n, q in qids(qed).items()}
    assert set(other.corpus) == set(qed.corpus)


def test_qed_folds_partition(qed: Dataset) -> None:
    everything = set(qed.split("all").queries)
    tests: list[set[str]] = []
    for k in range(1, 6):
        ds = load_dataset(f"nq-qed?fold={k}of5")
        assert len(ds.corpus) == 1343 and ds.info()["split_rule"].startswith(f"fold {k}of5")
        assert_partition(ds, everything)
        assert_no_paragraph_leak(ds)
        tests.append(set(ds.split("test").queries))
        paragraphs = len(positive_pids(ds.split("test")))
        assert paragraphs in (268, 269)  # 1,343 paragraphs in 5 folds: sizes differ by one at most
    assert sum(len(t) for t in tests) == len(everything) and set().union(*tests) == everything
    assert qids(load_dataset("nq-qed?fold=1of5")) == qids(load_dataset("nq-qed?fold=1of5"))


# --------------------------------------------------------------------------- SciFact


@needs_scifact
def test_scifact_counts_and_no_leak() -> None:
    ds = load_dataset(f"scifact:{SCIFACT}")
    official = load_dataset(f"beir:{SCIFACT}")
    assert ds.name == "scifact" and len(ds.corpus) == 5183
    assert {n: len(s.queries) for n, s in ds.splits.items()} == {"train": 729, "dev": 80, "test": 300}
    assert {n: sum(map(len, s.qrels.values())) for n, s in ds.splits.items()} == {"train": 831, "dev": 88, "test": 339}
    assert set(ds.split("dev").queries) == set(sorted(official.split("train").queries)[9::10])
    assert ds.split("test").qrels == official.split("test").qrels
    test = set(ds.split("test").queries)
    assert not test & set(ds.split("train").queries) and not test & set(ds.split("dev").queries)
    assert_partition(ds, set(official.split("train").queries) | test)
    assert qids(load_dataset(f"scifact:{SCIFACT}")) == qids(ds)


@needs_scifact
def test_scifact_folds_partition() -> None:
    official = load_dataset(f"beir:{SCIFACT}")
    pool = set(official.split("train").queries) | set(official.split("test").queries)
    assert len(pool) == 1109
    tests: list[set[str]] = []
    for k in range(1, 6):
        ds = load_dataset(f"scifact:{SCIFACT}?fold={k}of5")
        assert_partition(ds, pool)
        tests.append(set(ds.split("test").queries))
        assert len(tests[-1]) in (221, 222)
    assert set().union(*tests) == pool and sum(map(len, tests)) == len(pool)


def _mini_beir(root: Path, splits: dict[str, list[str]]) -> Path:
    (root / "qrels").mkdir(parents=True)
    all_q = list(dict.fromkeys(q for qs in splits.values() for q in qs))
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{q}", "text": f"doc {q}"}) + "\n" for q in all_q))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": f"q {q}"}) + "\n" for q in all_q))
    for name, qs in splits.items():
        (root / "qrels" / f"{name}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\td{q}\t1\n" for q in qs))
    return root


def test_scifact_rule_on_a_small_folder(tmp_path: Path) -> None:
    root = _mini_beir(tmp_path / "b", {"train": [f"{i:02d}" for i in range(25)], "test": ["t1", "t2"]})
    ds = load_dataset(f"scifact:{root}")
    assert list(ds.split("dev").queries) == ["09", "19"]
    assert len(ds.split("train").queries) == 23 and list(ds.split("test").queries) == ["t1", "t2"]
    assert "sorted(qids)[9::10]" in ds.info()["split_rule"]
    given = _mini_beir(tmp_path / "g", {"train": ["a", "b"], "dev": ["c"], "test": ["d"]})
    assert {n: list(s.queries) for n, s in load_dataset(f"scifact:{given}").splits.items()} == {
        "train": ["a", "b"], "dev": ["c"], "test": ["d"]}


# --------------------------------------------------------------------------- bad specs


@pytest.mark.parametrize(
    "spec, parts",
    [
        ("nq-qed?fold=0of5", ["nq-qed?fold=0of5", "K must be between 1 and N (5), got 0"]),
        ("nq-qed?fold=6of5", ["nq-qed?fold=6of5", "K must be between 1 and N (5), got 6"]),
        ("nq-qed?fold=1of1", ["N must be at least 2"]),
        ("nq-qed?fold=aof5", ["nq-qed?fold=aof5", "expected KofN with whole numbers", "'aof5'"]),
        ("nq-qed?fold=1.5of5", ["expected KofN"]),
        ("nq-qed?fold=1/5", ["expected KofN"]),
        ("nq-qed?fold=", ["not key=value"]),
        ("nq-qed?seed=3", ["nq-qed?seed=3", "unknown option 'seed'", "fold=KofN"]),
        ("nq-qed?fold=1of5&fold=2of5", ["given twice"]),
        ("nq-qed?fold=1of2000", ["2000 folds but only 1,343 paragraphs"]),
        ("squad?fold=1of5", ["squad?fold=1of5", "options apply to nq-qed"]),
        ("?fold=1of5", ["no data set before '?'"]),
        ("scifact", ["scifact", "name the BEIR folder"]),
    ],
)
def test_bad_specs_fail_with_one_line(spec: str, parts: list[str]) -> None:
    with pytest.raises(DataError) as info:
        load_dataset(spec)
    msg = str(info.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, (part, msg)


def test_scifact_needs_train_and_test(tmp_path: Path) -> None:
    root = _mini_beir(tmp_path / "b", {"train": ["a", "b"]})
    with pytest.raises(DataError, match=r"scifact:.*needs qrels/train.tsv and qrels/test.tsv \(splits found: train\)"):
        load_dataset(f"scifact:{root}")
    both = _mini_beir(tmp_path / "c", {"train": ["a"], "test": ["a"]})
    with pytest.raises(DataError, match="'a' is in more than one qrels file"):
        load_dataset(f"scifact:{both}?fold=1of2")


def test_cli_data_info(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["data", "info", "nq-qed?fold=1of5"], catch_exceptions=False)
    assert ok.exit_code == 0, ok.output
    lines = dict(line.split(None, 1) for line in ok.output.splitlines())
    assert lines["passages"].strip() == "1,343" and lines["all.questions"].strip() == "1,355"
    assert lines["split_rule"].startswith("fold 1of5") and "test.positives" in lines
    bad = runner.invoke(app, ["data", "info", "nq-qed?fold=0of5"], catch_exceptions=False)
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines() == [bad.output.strip()] and "error: nq-qed?fold=0of5: " in bad.output
