"""Fuzz every reader with mutated copies of valid files; count ok / clean error / crash.

    python benchmarks/fuzz_readers.py [SECONDS] [--seed 0] [--max-runs N] [--out reports/fuzz_readers.md]

For SECONDS (default 120) the readers take turns (SQuAD JSON, SQuAD zip, QED, BEIR, DPR
biencoder, DPR passages + QA, run config, search space, paper plan). Each turn takes one of the
reader's valid samples, applies one to four random mutations and calls the reader on the mutant.
The samples are slices of the real data: bundled SQuAD v1.1 dev and QED dev, SciFact's BEIR
folder from ``/work/shared/data`` (a synthetic BEIR folder where it is absent), DPR files made
from the SQuAD slice, and the repository's own TOML files (experiments/, ablations/, the default
search space, the paper plans). Mutations: a byte flipped, a truncation, random or JSON-ish
bytes inserted (quotes, brackets, ``"\\ud800"``, a 5,000-digit number, 3,000 open brackets),
a range deleted, non-UTF-8 bytes, a line duplicated (duplicate ids), dropped or swapped, a line
longer than the line cap, a splice from another sample; on JSON, a field deleted, given a value
of another type, duplicated or emptied; on TOML, a value of another type, a renamed key; on
gzip and zip files either the compressed bytes or the content.

Outcomes: **ok** (the reader returned a result), **clean error** (an ``OnmkdError`` whose message
is one line naming the file), **bad message** (an ``OnmkdError`` of several lines or naming no
file) and **crash** (any other exception). The Markdown summary goes to stdout and, atomically,
to ``--out``; mutants that crash are saved under ``runs/fuzz_crashes/``. Exit status 1 when
anything crashed or gave a bad message.

The mutants are drawn from one ``random.Random(seed)``, so the k-th mutant is the same on every
run with the same seed (``--max-runs`` makes the whole run repeatable). While fuzzing, the line
cap (``onmkd.data._files.MAX_LINE_BYTES``, 16 MiB) is lowered to 64 KiB so that overlong lines
stay cheap to make; the check is the same.
"""

from __future__ import annotations

import argparse
import collections
import copy
import gzip
import io
import json
import platform
import random
import re
import shlex
import shutil
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onmkd import __version__  # noqa: E402
from onmkd.config import load_config  # noqa: E402
from onmkd.data import _files  # noqa: E402
from onmkd.data.beir import load_beir  # noqa: E402
from onmkd.data.dpr import load_dpr, load_dpr_qa  # noqa: E402
from onmkd.data.qed import BUNDLED as QED_BUNDLED  # noqa: E402
from onmkd.data.qed import load_qed  # noqa: E402
from onmkd.data.squad import BUNDLED as SQUAD_BUNDLED  # noqa: E402
from onmkd.data.squad import load_squad  # noqa: E402
from onmkd.errors import OnmkdError  # noqa: E402
from onmkd.io import write_text  # noqa: E402
from onmkd.study.paper import load_plan  # noqa: E402
from onmkd.study.space import load_space  # noqa: E402

SCIFACT = Path("/work/shared/data/scifact-beir")
LINE_CAP = 64 * 1024
CRASH_DIR = ROOT / "runs" / "fuzz_crashes"
OUTCOMES = ("ok", "clean error", "bad message", "crash")

TOKENS = [b'"', b"'", b"{", b"}", b"[", b"]", b",", b":", b"\t", b"\n", b"\r", b"\\", b"\x00", b"null", b"true",
          b'"\\ud800"', b"\\u", b"1e999", b"-0", b"NaN", b"Infinity", b"9" * 5000, b"[" * 3000, b"{\"a\":" * 50,
          b"\xef\xbb\xbf", b"#", b"=", b"[[", b"]]", b"\"\"\"", b"'''", b"1979-05-27", b"inf", b"nan"]
NOT_UTF8 = [b"\xff", b"\x80", b"\xc3", b"\xe9", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"]
WRONG_VALUES = [None, True, False, 0, -1, 2**70, 1.5, float("nan"), float("inf"), "", " ", "x", "\ud800", "\x00",
                [], [None], [[]], {}, {"x": 1}]
TOML_VALUES = ['"x"', '""', "0", "-1", "1.5", "nan", "-inf", "true", "[]", '[1, "a"]', "[[1, 2]]", "{}", "{ a = 1 }",
               "1979-05-27", "07:32:00", "1" + "0" * 400, "1" + "0" * 5000, "[" * 3000 + "]" * 3000, '"\\ud800"',
               '["minilm-l6"]', '{ type = "float", low = 1, high = 0 }', '"../missing.toml"', '"."']
TOML_KEYS = ["bogus", "seeds", "config", '"loss.alpah"', '"model.peer[9].seed"', '"a..b"', '"model.peer[' + "9" * 5000 + '].seed"']


# --------------------------------------------------------------------------- samples


def _squad_slice() -> dict[str, Any]:
    _, doc = _files.read_json(SQUAD_BUNDLED)
    data = []
    for art in doc["data"][:3]:
        paras = []
        for para in art["paragraphs"][:2]:
            paras.append({"context": para["context"][:400], "qas": para["qas"][:3]})
        data.append({"title": art["title"], "paragraphs": paras})
    return {"version": doc.get("version", "1.1"), "data": data}


def _qed_lines(n: int = 6) -> list[dict[str, Any]]:
    rows = []
    for _, row in _files.iter_jsonl(QED_BUNDLED):
        rows.append(row)
        if len(rows) == n:
            break
    return rows


def _jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _beir_sample() -> dict[str, bytes]:
    if not SCIFACT.is_dir():
        corpus = [{"_id": f"d{i}", "title": f"Doc {i}", "text": f"text of document {i}"} for i in range(6)]
        queries = [{"_id": f"q{i}", "text": f"question {i}"} for i in range(4)]
        qrels = "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(4))
        return {"corpus.jsonl": _jsonl(corpus), "queries.jsonl": _jsonl(queries), "qrels/test.tsv": qrels.encode()}
    lines = (SCIFACT / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()[:7]
    pairs = [ln.split("\t")[:2] for ln in lines[1:]]
    qids, pids = {q for q, _ in pairs}, {p for _, p in pairs}
    corpus, extra = [], 3
    for _, row in _files.iter_jsonl(next(SCIFACT.glob("corpus.jsonl*"))):
        if row["_id"] in pids or extra > 0:
            extra -= row["_id"] not in pids
            corpus.append({"_id": row["_id"], "title": row["title"][:80], "text": row["text"][:300]})
    queries = [row for _, row in _files.iter_jsonl(next(SCIFACT.glob("queries.jsonl*"))) if row["_id"] in qids]
    return {"corpus.jsonl": _jsonl(corpus), "queries.jsonl": _jsonl(queries),
            "qrels/test.tsv": ("\n".join(lines) + "\n").encode()}


def _dpr_examples(squad: dict[str, Any]) -> list[dict[str, Any]]:
    paras = [(a["title"], p) for a in squad["data"] for p in a["paragraphs"]]
    out = []
    for i, (title, para) in enumerate(paras):
        other_title, other = paras[(i + 1) % len(paras)]
        for qa in para["qas"][:2]:
            out.append({"question": qa["question"], "answers": [a["text"] for a in qa["answers"]],
                        "positive_ctxs": [{"title": title, "text": para["context"], "passage_id": str(i)}],
                        "negative_ctxs": [{"title": other_title, "text": other["context"], "psg_id": (i + 1) % len(paras)}],
                        "hard_negative_ctxs": [{"title": other_title, "text": other["context"][:100]}]})
    return out


def _dpr_qa(squad: dict[str, Any]) -> tuple[bytes, bytes]:
    psgs = ["id\ttext\ttitle"]
    qa = []
    k = 0
    for art in squad["data"]:
        for para in art["paragraphs"]:
            k += 1
            text = para["context"].replace("\t", " ").replace("\n", " ").replace('"', '""')
            psgs.append(f'{k}\t"{text}"\t{art["title"]}')
            for q in para["qas"][:2]:
                qa.append(f"{q['question'].strip()}\t{[a['text'] for a in q['answers']]!r}")
    return ("\n".join(psgs) + "\n").encode(), ("\n".join(qa) + "\n").encode()


# --------------------------------------------------------------------------- mutations


def _mutate_bytes(rng: random.Random, raw: bytes, others: list[bytes], ops: list[str]) -> bytes:
    n = len(raw)
    pos = rng.randint(0, n)
    kind = rng.choice(["flip", "flip", "truncate", "insert", "token", "token", "delete", "not_utf8", "dup_line",
                       "drop_line", "swap_lines", "long_line", "splice"])
    ops.append(kind)
    if kind == "flip" and n:
        i = min(pos, n - 1)
        return raw[:i] + bytes([raw[i] ^ rng.randint(1, 255)]) + raw[i + 1:]
    if kind == "truncate":
        return raw[:pos]
    if kind == "insert":
        return raw[:pos] + rng.randbytes(rng.randint(1, 16)) + raw[pos:]
    if kind == "token":
        return raw[:pos] + rng.choice(TOKENS) + raw[pos:]
    if kind == "delete":
        return raw[:pos] + raw[pos + rng.randint(1, 64):]
    if kind == "not_utf8":
        return raw[:pos] + rng.choice(NOT_UTF8) + raw[pos:]
    if kind in ("dup_line", "drop_line", "swap_lines"):
        lines = raw.splitlines(keepends=True)
        if not lines:
            return raw
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        if kind == "dup_line":
            lines.insert(j, lines[i])
        elif kind == "drop_line":
            del lines[i]
        else:
            lines[i], lines[j] = lines[j], lines[i]
        return b"".join(lines)
    if kind == "long_line":
        return raw[:pos] + rng.choice([b"x", b"\t", b"\xc3\xa9", b"["]) * (LINE_CAP + rng.randint(1, 100)) + raw[pos:]
    if kind == "splice":
        src = rng.choice(others) if others else raw
        if src:
            a = rng.randrange(len(src))
            return raw[:pos] + src[a:a + rng.randint(1, 200)] + raw[pos:]
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


def _mutate_json(rng: random.Random, doc: Any, ops: list[str]) -> Any:
    doc = copy.deepcopy(doc)
    slots = _slots(doc, [])
    if not slots:
        return doc
    parent, key = rng.choice(slots)
    op = rng.choice(["delete", "wrong_type", "wrong_type", "duplicate", "empty"])
    ops.append(f"json:{op}")
    if op == "delete":
        del parent[key]
    elif op == "duplicate" and isinstance(parent, list):
        parent.insert(key, copy.deepcopy(parent[key]))
    elif op == "empty" and isinstance(parent[key], (str, list, dict)):
        parent[key] = type(parent[key])()
    else:
        parent[key] = copy.deepcopy(rng.choice(WRONG_VALUES))
    return doc


def _mutate_toml(rng: random.Random, raw: bytes, ops: list[str]) -> bytes:
    lines = raw.decode("utf-8").splitlines()
    assigned = [i for i, ln in enumerate(lines) if " = " in ln and not ln.lstrip().startswith("#")]
    if not assigned:
        return raw
    i = rng.choice(assigned)
    key, value = lines[i].split(" = ", 1)
    op = rng.choice(["value", "value", "rename", "delete", "repeat"])
    ops.append(f"toml:{op}")
    if op == "value":
        lines[i] = f"{key} = {rng.choice(TOML_VALUES)}"
    elif op == "rename":
        lines[i] = f"{rng.choice(TOML_KEYS)} = {value}"
    elif op == "delete":
        del lines[i]
    else:
        lines.insert(i, lines[i])
    return ("\n".join(lines) + "\n").encode()


# --------------------------------------------------------------------------- readers


@dataclass
class Reader:
    """One reader under test: ``make`` draws a mutant (``{path relative to the work folder:
    bytes}``), ``load`` reads it from the work folder, ``names`` says what a clean message names."""

    name: str
    make: Callable[[random.Random, list[str]], dict[str, bytes]]
    load: Callable[[Path], Any]
    names: Callable[[Path], list[str]]
    counts: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)


def _mutate_n(rng: random.Random, raw: bytes, others: list[bytes], ops: list[str]) -> bytes:
    for _ in range(rng.randint(1, 4)):
        raw = _mutate_bytes(rng, raw, others, ops)
    return raw


def _bytes_or_json(rng: random.Random, doc: Any, raw: bytes, others: list[bytes], ops: list[str]) -> bytes:
    if rng.random() < 0.35:
        return json.dumps(_mutate_json(rng, doc, ops), indent=1).encode()
    return _mutate_n(rng, raw, others, ops)


def _maybe_gzip(rng: random.Random, raw: bytes, ops: list[str]) -> bytes:
    """The mutant as it is, gzipped, or gzipped and then its compressed bytes mutated."""
    r = rng.random()
    if r < 0.5:
        return raw
    ops.append("gzip")
    blob = gzip.compress(raw, mtime=0)
    return blob if r < 0.75 else _mutate_n(rng, blob, [], ops)


def build_readers(tmp: Path) -> list[Reader]:
    """The readers with their samples; the repository's TOML files are mirrored under ``tmp/repo``
    (relative references resolve there) and a TOML mutant is written beside its original."""
    squad = _squad_slice()
    tiny = {"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [{"id": "1", "question": "q?", "answers": [{"text": "c"}]}]}]}]}
    squad_docs = [(d, json.dumps(d, indent=1).encode()) for d in (squad, tiny)]
    squad_bytes = [raw for _, raw in squad_docs]

    def squad_make(rng, ops):
        doc, raw = rng.choice(squad_docs)
        return {"squad.json": _bytes_or_json(rng, doc, raw, squad_bytes, ops)}

    def zip_make(rng, ops):
        doc, raw = rng.choice(squad_docs)
        buf = io.BytesIO()
        method = rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
        content = rng.random() < 0.5  # the content mutated in a sound archive, or the archive's bytes
        ops.append("zip(content)" if content else "zip(bytes)")
        with zipfile.ZipFile(buf, "w", method) as zf:
            zf.writestr("dev.json", _bytes_or_json(rng, doc, raw, squad_bytes, ops) if content else raw)
        return {"squad.zip": buf.getvalue() if content else _mutate_n(rng, buf.getvalue(), [], ops)}

    qed = _qed_lines()

    def qed_make(rng, ops):
        rows = copy.deepcopy(qed)
        if rng.random() < 0.35:
            i = rng.randrange(len(rows))
            rows[i] = _mutate_json(rng, rows[i], ops)
            raw = _jsonl(rows)
        else:
            raw = _mutate_n(rng, _jsonl(rows), [], ops)
        return {"qed.jsonlines": _maybe_gzip(rng, raw, ops)}

    beir = _beir_sample()
    unknown = {"mode": "fail"}

    def beir_make(rng, ops):
        files = dict(beir)
        unknown["mode"] = rng.choice(["fail", "skip"])
        which = rng.choice(sorted(files))
        ops.append(which)
        if which.endswith(".jsonl") and rng.random() < 0.35:
            rows = [json.loads(ln) for ln in files[which].splitlines()]
            i = rng.randrange(len(rows))
            rows[i] = _mutate_json(rng, rows[i], ops)
            files[which] = _jsonl(rows)
        else:
            files[which] = _mutate_n(rng, files[which], list(beir.values()), ops)
        if which == "corpus.jsonl" and rng.random() < 0.3:
            files["corpus.jsonl.gz"] = _maybe_gzip(rng, files.pop("corpus.jsonl"), ops)
        return {f"beir/{k}": v for k, v in files.items()}

    dpr = _dpr_examples(squad)
    dpr_raw = json.dumps(dpr, indent=1).encode()

    def dpr_make(rng, ops):
        raw = _bytes_or_json(rng, dpr, dpr_raw, [], ops)
        if rng.random() < 0.2:
            ops.append("gzip")
            return {"nq-train.json.gz": gzip.compress(raw, mtime=0)}
        return {"nq-train.json": raw}

    psgs, qa = _dpr_qa(squad)

    def dpr_qa_make(rng, ops):
        p, q = psgs, qa
        if rng.random() < 0.5:
            ops.append("psgs")
            p = _mutate_n(rng, p, [q], ops)
        else:
            ops.append("qa")
            q = _mutate_n(rng, q, [p], ops)
        return {"psgs_w100.tsv": p, "nq-test.qa.csv": q}

    repo = tmp / "repo"
    for sub in ("experiments", "ablations", "onmkd/spaces"):
        for f in (ROOT / sub).glob("*.toml"):
            (repo / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, repo / sub / f.name)
    spaces = [Path("onmkd/spaces/default.toml"), Path("experiments/sweep-pareto.toml")]
    plans = [Path("experiments/paper.toml"), Path("experiments/paper-cpu.toml")]
    configs = [p.relative_to(repo) for p in sorted(repo.rglob("*.toml"))
               if p.relative_to(repo) not in spaces + plans and not p.name.startswith("sweep")]

    def toml_reader(name: str, samples: list[Path], loader: Callable[[Path], Any]) -> Reader:
        texts = [(repo / s).read_bytes() for s in samples]
        mutant = {"path": repo / samples[0].parent / "fuzz-mutant.toml"}

        def make(rng, ops):
            k = rng.randrange(len(samples))
            raw = _mutate_toml(rng, texts[k], ops) if rng.random() < 0.5 else _mutate_n(rng, texts[k], texts, ops)
            mutant["path"] = repo / samples[k].parent / "fuzz-mutant.toml"
            return {str(mutant["path"]): raw}  # absolute: beside the original

        return Reader(name, make, lambda work: loader(mutant["path"]), lambda work: [str(mutant["path"])])

    def at(work: Path, name: str) -> list[str]:
        return [str(work / name)]

    return [
        Reader("SQuAD JSON", squad_make, lambda w: load_squad(w / "squad.json"), lambda w: at(w, "squad.json")),
        Reader("SQuAD zip", zip_make, lambda w: load_squad(w / "squad.zip"), lambda w: at(w, "squad.zip")),
        Reader("QED jsonlines", qed_make, lambda w: load_qed(w / "qed.jsonlines"), lambda w: at(w, "qed.jsonlines")),
        Reader("BEIR folder", beir_make, lambda w: load_beir(w / "beir", unknown_qrels=unknown["mode"]), lambda w: at(w, "beir")),
        Reader("DPR biencoder", dpr_make, lambda w: load_dpr([next(w.glob("nq-train.json*"))]), lambda w: at(w, "nq-train.json")),
        Reader("DPR psgs + qa.csv", dpr_qa_make, lambda w: load_dpr_qa(w / "psgs_w100.tsv", [w / "nq-test.qa.csv"]),
               lambda w: at(w, "psgs_w100.tsv") + at(w, "nq-test.qa.csv")),
        toml_reader("run config (TOML)", configs, load_config),
        toml_reader("search space (TOML)", spaces, load_space),
        toml_reader("paper plan (TOML)", plans, load_plan),
    ]


# --------------------------------------------------------------------------- the loop


def _shape(msg: str, tmp: Path) -> str:
    """A message with its paths, numbers and quoted values elided, to count kinds of errors."""
    msg = re.sub(re.escape(str(tmp)) + r"[^\s:!,)]*", "…", msg)
    msg = re.sub(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", "'…'", msg)
    msg = re.sub(r"(?<![\w-])(?!0x)\d[\d,]*", "N", msg)
    msg = re.sub(r"\b0x[0-9a-f]+\b", "0x…", msg)
    return msg[:140]


def run(seconds: float, seed: int, max_runs: int | None, log=print) -> tuple[list[Reader], list[dict], int, float]:
    """Fuzz until ``seconds`` pass (or ``max_runs`` mutants are read); returns the readers with
    their counts, the crashes and bad messages, the number of mutants and the time taken."""
    rng = random.Random(seed)
    problems: list[dict] = []
    real_cap = _files.MAX_LINE_BYTES
    _files.MAX_LINE_BYTES = LINE_CAP
    try:
        with tempfile.TemporaryDirectory(prefix="onmkd-fuzz-") as tmp_name, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tmp = Path(tmp_name)
            readers = build_readers(tmp)
            work = tmp / "work"
            started = time.monotonic()
            index = 0
            while index < max_runs if max_runs is not None else time.monotonic() - started < seconds:
                reader = readers[index % len(readers)]
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir()
                ops: list[str] = []
                files = reader.make(rng, ops)
                for rel, raw in files.items():
                    path = work / rel  # an absolute rel (TOML) replaces work
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(raw)
                try:
                    reader.load(work)
                    outcome = "ok"
                except OnmkdError as exc:
                    msg = str(exc)
                    if len(msg.splitlines()) == 1 and any(n in msg for n in reader.names(work)):
                        outcome = "clean error"
                        reader.errors[_shape(msg, tmp)] += 1
                    else:
                        outcome = "bad message"
                        problems.append(_record(reader, index, ops, exc, files, outcome))
                except Exception as exc:  # noqa: BLE001 - what the fuzzer is here to find
                    outcome = "crash"
                    problems.append(_record(reader, index, ops, exc, files, outcome))
                finally:
                    for rel in files:
                        if Path(rel).is_absolute():
                            Path(rel).unlink(missing_ok=True)
                reader.counts[outcome] += 1
                index += 1
                if index % 5000 == 0:
                    log(f"{index:,} mutants, {time.monotonic() - started:.0f} s, {len(problems)} problems", file=sys.stderr)
            elapsed = time.monotonic() - started
    finally:
        _files.MAX_LINE_BYTES = real_cap
    return readers, problems, index, elapsed


def _record(reader: Reader, index: int, ops: list[str], exc: BaseException, files: dict[str, bytes], kind: str) -> dict:
    """A problem for the report; its mutant is saved under runs/fuzz_crashes/ to replay."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = frames[-1] if frames else None
    saved = CRASH_DIR / f"{re.sub(r'[^a-z0-9]+', '-', reader.name.lower()).strip('-')}-{index}"
    try:
        for rel, raw in files.items():
            target = saved / (Path(rel).name if Path(rel).is_absolute() else rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(raw)
    except OSError:
        pass
    lines = str(exc).splitlines()
    return {"reader": reader.name, "run": index, "kind": kind, "type": type(exc).__name__,
            "message": (lines[0] if lines else "")[:200], "lines": len(lines),
            "at": f"{Path(where.filename).name}:{where.lineno}" if where else "?", "ops": ", ".join(ops),
            "saved": str(saved.relative_to(ROOT))}


def report(readers: list[Reader], problems: list[dict], total: int, elapsed: float, command: str, seed: int) -> str:
    """The Markdown summary: outcomes per reader, the commonest errors, every distinct problem."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("`", "'")

    out = ["# Fuzzing the readers", "", f"`{command}`", "",
           f"{total:,} mutants in {elapsed:.0f} s, seed {seed} (Python {platform.python_version()}, onmkd {__version__}, "
           f"{time.strftime('%Y-%m-%d')}). While fuzzing, the line cap is {LINE_CAP // 1024} KiB instead of "
           f"`MAX_LINE_BYTES` = {_files.MAX_LINE_BYTES // 2**20} MiB, so that overlong lines stay cheap to make. "
           "A clean error is an `OnmkdError` of one line naming the file; a bad message is one that is not; "
           "a crash is any other exception.",
           "", "| reader | mutants | ok | clean error | bad message | crash | kinds of error |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    sums: collections.Counter = collections.Counter()
    for r in readers:
        sums.update(r.counts)
        out.append(f"| {r.name} | {sum(r.counts.values()):,} | " + " | ".join(f"{r.counts[o]:,}" for o in OUTCOMES)
                   + f" | {len(r.errors)} |")
    out.append(f"| **all** | **{sum(sums.values()):,}** | " + " | ".join(f"**{sums[o]:,}**" for o in OUTCOMES)
               + f" | {sum(len(r.errors) for r in readers)} |")
    out += ["", "## Commonest errors per reader", "",
            "Paths are elided as `…`, numbers as `N`, quoted values as `'…'`.", "",
            "| reader | error | count |", "| --- | --- | ---: |"]
    for r in readers:
        for shape, n in r.errors.most_common(4):
            out.append(f"| {r.name} | `{cell(shape)}` | {n:,} |")
    out += ["", "## Crashes and bad messages", ""]
    if not problems:
        out.append("None.")
        return "\n".join(out) + "\n"
    out += ["| reader | mutant | kind | exception | raised at | mutations | saved in |",
            "| --- | ---: | --- | --- | --- | --- | --- |"]
    seen = set()
    for c in problems:
        key = (c["reader"], c["type"], c["at"], c["kind"])
        if key not in seen:
            seen.add(key)
            out.append(f"| {c['reader']} | {c['run']} | {c['kind']} | `{cell(c['type'])}: {cell(c['message'])}` "
                       f"| {c['at']} | {cell(c['ops'])} | {c['saved']} |")
    out += ["", f"{len(problems)} in all; {len(seen)} distinct by reader, kind, exception type and place."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("seconds", nargs="?", type=float, default=120.0, help="how long to fuzz (default 120)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-runs", type=int, default=None, help="stop after this many mutants instead (repeatable runs)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "fuzz_readers.md")
    args = ap.parse_args(argv)
    # The command as run, with the defaults spelled out, so that the report says how to repeat it.
    command = ["python", "benchmarks/fuzz_readers.py", f"{args.seconds:g}", "--seed", str(args.seed)]
    if args.max_runs is not None:
        command += ["--max-runs", str(args.max_runs)]
    if args.out.resolve() != (ROOT / "reports" / "fuzz_readers.md").resolve():
        command += ["--out", str(args.out)]
    readers, problems, total, elapsed = run(args.seconds, args.seed, args.max_runs)
    text = report(readers, problems, total, elapsed, shlex.join(command), args.seed)
    print(text)
    write_text(args.out, text)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
