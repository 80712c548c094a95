"""``onmkd-bench paper --plan experiments/findings.toml``: where does OnMKD help a small retriever?

A findings plan is a paper plan (:mod:`onmkd.study.paper`) run on several benchmarks, with the
controls a reviewer asks for. Every row is trained with every seed on every benchmark, selected on
that benchmark's dev split and evaluated on its test split (the whole corpus); the report
(:mod:`onmkd.study.findings_report`) then compares OnMKD with each baseline question by question.

    [paper]
    seeds = [0, 1, 2]
    split = "test"
    encoders = ["minilm-l6", "minilm-l3", "bm25"]     # per benchmark, as released: the teacher ceiling
    budget = { "train.epochs" = 2, ... }               # applied to every run, before each row's own `set`

    [benchmarks]                                       # name = data set spec (onmkd-bench data info SPEC)
    squad = "squad"
    nq-qed = "nq-qed"
    scifact = "scifact:../shared/data/scifact-beir"

    [[main]]
    label = "DPR, 2x steps"
    role = "compute-matched"                           # onmkd, same-depth baseline or compute-matched
    config = "dpr.toml"
    steps = 2                                          # train.epochs times 2 (optional)
    # ensemble = 2                                     # K students, seeds s, s+1000, ...: score average
    # set = ["loss.beta=0.1"]                          # overrides of this row only

    [curves]                                           # the main rows' methods against training length
    epochs = [1, 2, 4]
    configs = { OnMKD = "onmkd.toml", DPR = "dpr.toml" }
    benchmarks = ["nq-qed"]                            # optional: a subset of the benchmarks

    [settings]                                         # OnMKD's levers, each against `reference`
    reference = "onmkd.toml"
    variants = { "beta = 0.1" = ["loss.beta=0.1"] }
    benchmarks = ["nq-qed"]

    [transfer]
    labels = ["OnMKD", "DPR"]                          # main rows evaluated zero-shot on the other test sets

Runs are keyed by their full config (``runs/HASH``), so a rerun resumes: finished trainings and
evaluations are kept, and a run shared by two tables (the curve's point at the main length) is
trained once. Before it starts, the command prints how many runs are left and an estimate of their
time; after each run, what it took and the estimate of what is left.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

from onmkd.config import RunConfig, read_toml
from onmkd.errors import ConfigError
from onmkd.io import check_component, write_json
from onmkd.study.paper import _keys, _list_of, _table, _value, merged_rows, plan_config, read_head
from onmkd.training.methods import METHODS, method_role

ROLES = ("onmkd", "same-depth baseline", "compute-matched")
ENSEMBLE_SEED_STEP = 1000  # member j of an ensemble trains with seed s + j * 1000


@dataclass(frozen=True)
class Row:
    """One row of a findings table on one benchmark (its seed is set when it runs)."""

    table: str          # main, curve, settings
    label: str
    role: str
    benchmark: str
    config: RunConfig
    source: str
    members: int = 1    # > 1: a score-average ensemble of this many students
    x: float | None = None  # the curve's training length (epochs)

    def member_configs(self, seed: int) -> list[RunConfig]:
        """The training configs of this row's students for ``seed`` (one unless an ensemble)."""
        return [replace(self.config, train=replace(self.config.train, seed=seed + j * ENSEMBLE_SEED_STEP))
                for j in range(self.members)]


@dataclass(frozen=True)
class Findings:
    source: str
    seeds: tuple[int, ...]
    split: str
    encoders: tuple[str, ...]
    benchmarks: dict[str, str]
    rows: tuple[Row, ...]
    transfer: tuple[str, ...]
    budget: tuple[str, ...]


def is_findings_plan(path: str | Path) -> bool:
    """True when the plan file has a ``[benchmarks]`` table (a findings plan, not a paper plan)."""
    return "benchmarks" in read_toml(Path(path), "plan")[1]


def _subset(raw: dict, names: list[str], where: str) -> list[str]:
    chosen = _list_of(raw, "benchmarks", str, list(names), f"{where}.benchmarks")
    for b in chosen:
        if b not in names:
            raise ConfigError(f"{where}.benchmarks: {b!r} is not one of the plan's benchmarks ({', '.join(names)})")
    return chosen


def _positive_int(e: dict, key: str, low: int, where: str) -> int:
    v = e.get(key, 1)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(f"{where}.{key}: expected an integer >= {low}, got {v!r}")
    return v


def load_findings(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Findings:
    """Read a findings plan; every config of every benchmark is loaded and checked now."""
    p = Path(path)
    raw = read_toml(p, "plan")[1]
    src = str(p)
    _keys(raw, {"paper", "benchmarks", "main", "curves", "settings", "transfer"}, src)
    head = read_head(raw, src, overrides)
    benches = _table(raw, "benchmarks", f"{src}: [benchmarks]")
    if not benches:
        raise ConfigError(f"{src}: [benchmarks]: name at least one benchmark (name = \"data set spec\")")
    for name, spec in benches.items():
        check_component(name, f"{src}: benchmarks.{name}")
        if not isinstance(spec, str) or not spec:
            raise ConfigError(f"{src}: benchmarks.{name}: expected a data set spec (a string), got {spec!r}")
    names = list(benches)

    def cfg(rel, where: str, bench: str, extra=()) -> RunConfig:
        return plan_config(p, rel, where, head, (f"data.dataset={_value(benches[bench])}", *extra))

    rows: list[Row] = []
    main = raw.get("main", [])
    if not isinstance(main, list) or not main:
        raise ConfigError(f"{src}: main: expected [[main]] tables (the rows of each benchmark's main table)")
    labels: list[str] = []
    for i, e in enumerate(main):
        where = f"{src}: main[{i}]"
        if not isinstance(e, dict):
            raise ConfigError(f"{where}: expected a table, got {e!r}")
        _keys(e, {"label", "role", "config", "steps", "ensemble", "set"}, where)
        if not isinstance(e.get("label"), str) or "config" not in e:
            raise ConfigError(f"{where}: needs label (a string) and config")
        if e["label"] in labels:
            raise ConfigError(f"{where}.label: {e['label']!r} is used by another row")
        labels.append(e["label"])
        role = e.get("role", "same-depth baseline")
        if role not in ROLES:
            raise ConfigError(f"{where}.role: {role!r} is not one of {', '.join(ROLES)}")
        steps = _positive_int(e, "steps", 1, where)
        members = _positive_int(e, "ensemble", 1, where) if "ensemble" in e else 1
        if "ensemble" in e and members < 2:
            raise ConfigError(f"{where}.ensemble: expected an integer >= 2 (the number of students), got {members!r}")
        sets = tuple(_list_of(e, "set", str, [], f"{where}.set"))
        for b in names:
            c = cfg(e["config"], where, b, sets)
            if steps > 1:
                c = replace(c, train=replace(c.train, epochs=c.train.epochs * steps))
            if members > 1 and METHODS[c.train.method].peers:
                raise ConfigError(f"{where}.ensemble: members must be one-student runs; {c.train.method!r} trains peers")
            rows.append(Row("main", e["label"], role, b, c, e["config"], members))
    if sum(1 for e in main if e.get("role") == "onmkd") != 1:
        raise ConfigError(f"{src}: main: exactly one row needs role = \"onmkd\" (the method every other row is compared with)")

    cur = _table(raw, "curves", f"{src}: [curves]")
    if cur:
        _keys(cur, {"epochs", "configs", "benchmarks"}, f"{src}: curves")
        epochs = _list_of(cur, "epochs", int, [], f"{src}: curves.epochs")
        if not epochs or min(epochs) < 1:
            raise ConfigError(f"{src}: curves.epochs: a non-empty list of positive integers, got {epochs!r}")
        for name, rel in _table(cur, "configs", f"{src}: curves.configs").items():
            for b in _subset(cur, names, f"{src}: curves"):
                for n in epochs:
                    c = cfg(rel, f"{src}: curves.configs.{name} (epochs = {n})", b, (f"train.epochs={n}",))
                    rows.append(Row("curve", name, method_role(c.train.method), b, c, rel, x=float(n)))

    st = _table(raw, "settings", f"{src}: [settings]")
    if st:
        _keys(st, {"reference", "variants", "benchmarks"}, f"{src}: settings")
        if "reference" not in st:
            raise ConfigError(f"{src}: settings: needs reference (the config every variant changes)")
        chosen = _subset(st, names, f"{src}: settings")
        for b in chosen:
            rows.append(Row("settings", "reference", "onmkd", b, cfg(st["reference"], f"{src}: settings.reference", b),
                            st["reference"]))
        for name, sets in _table(st, "variants", f"{src}: settings.variants").items():
            where = f"{src}: settings.variants.{name}"
            if not isinstance(sets, list) or not all(isinstance(s, str) for s in sets):
                raise ConfigError(f"{where}: expected a list of overrides like \"loss.beta=0.1\", got {sets!r}")
            for b in chosen:
                rows.append(Row("settings", name, "setting", b, cfg(st["reference"], where, b, tuple(sets)), st["reference"]))

    tr = _table(raw, "transfer", f"{src}: [transfer]")
    _keys(tr, {"labels"}, f"{src}: transfer")
    transfer = tuple(_list_of(tr, "labels", str, [], f"{src}: transfer.labels"))
    for label in transfer:
        if label not in labels:
            raise ConfigError(f"{src}: transfer.labels: {label!r} is not a main row's label ({', '.join(labels)})")
    return Findings(src, head.seeds, head.split, head.encoders, dict(benches), tuple(rows), transfer, head.budget)


# --------------------------------------------------------------------------- pricing

# Seconds before any run of the plan has finished here (then the measured rates replace them):
# a 2-layer MiniLM student on 2 AVX2 cores, 32 questions and passages of 128 tokens per step.
PRIOR_STEP_S = 3.2       # one student's training step
PRIOR_PASSAGE_S = 0.012  # one passage encoded by a 2-layer student at 128 tokens
PRIOR_FIXED_S = 25.0     # loading, tokenising, checkpoints and selection per training run


def run_units(cfg: RunConfig, n_train: int, n_passages: int, n_dev_passages: int) -> tuple[float, float]:
    """``(student-steps, passage encodings)`` of training ``cfg`` and testing it once, in 2-layer,
    128-token units: what a run costs, whatever the machine."""
    q = min(n_train, cfg.data.max_train_questions or n_train)
    steps = math.ceil(q / cfg.train.batch_size) * cfg.train.epochs
    students = cfg.model.peers
    scale = cfg.model.layers / 2 * cfg.data.p_max_len / 128
    passages = (students * cfg.train.epochs * n_dev_passages + n_passages) * scale
    return steps * students * scale, passages


@dataclass
class Rates:
    step_s: float = PRIOR_STEP_S
    passage_s: float = PRIOR_PASSAGE_S
    fixed_s: float = PRIOR_FIXED_S
    measured: int = 0   # runs that the rates were scaled from

    def seconds(self, units: tuple[float, float]) -> float:
        return self.fixed_s + units[0] * self.step_s + units[1] * self.passage_s


def fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else f"{s // 60} min {s % 60:02d} s"


# --------------------------------------------------------------------------- running

@dataclass(frozen=True)
class Job:
    row: Row
    seed: int
    kind: str            # train (one student or peers), ensemble (members already trained), transfer
    cfg: RunConfig | None = None
    test_on: str = ""    # transfer: the benchmark whose test set is searched


def jobs(plan: Findings, seeds: tuple[int, ...], benchmarks: tuple[str, ...]) -> list[Job]:
    """Every unit of work of the plan, in the order that answers the main question first: the main
    tables (seed by seed, so that a cut-short run has whole tables for its first seeds), transfer,
    the curves, then the settings study."""
    out: list[Job] = []

    def rows(table: str, bench: str):
        return [r for r in plan.rows if r.table == table and r.benchmark == bench]

    for table in TABLES:
        for seed in seeds:
            for b in benchmarks:
                if table == "transfer":
                    for row in (r for r in rows("main", b) if r.label in plan.transfer):
                        out += [Job(row, seed, "transfer", row.member_configs(seed)[0], test_on=o)
                                for o in benchmarks if o != b]
                    continue
                for row in rows(table, b):
                    out += [Job(row, seed, "train", c) for c in row.member_configs(seed)]
                    if row.members > 1:
                        out.append(Job(row, seed, "ensemble"))
    return out


TABLES = ("main", "transfer", "curve", "settings")


def run_findings(plan: Findings, out: Path, *, seeds: tuple[int, ...] | None = None, benchmarks: tuple[str, ...] = (),
                 tables: tuple[str, ...] = (), report_dir: Path | None = None, command: str = "", finished_only: bool = False,
                 estimate_only: bool = False, log=print) -> Path:
    """Train and evaluate every row (resuming), the encoders and the transfer runs; write the
    manifest and the findings report."""
    import os

    from onmkd.data import load_dataset
    from onmkd.study.runs import evaluate_encoder, run_dir, train_and_test
    from onmkd.training.train import hold_out_dev

    os.environ.setdefault("TQDM_DISABLE", "1")
    out = Path(out)
    seeds = tuple(seeds or plan.seeds)
    for b in benchmarks:
        if b not in plan.benchmarks:
            raise ConfigError(f"--benchmark: {b!r} is not one of the plan's benchmarks ({', '.join(plan.benchmarks)})")
    benches = tuple(benchmarks or plan.benchmarks)
    for t in tables:
        if t not in TABLES:
            raise ConfigError(f"--table: {t!r} is not a table of a findings plan ({', '.join(TABLES)})")
    datasets: dict[str, object] = {}

    def data_of(bench: str, cfg: RunConfig):
        if bench not in datasets:
            datasets[bench] = hold_out_dev(load_dataset(plan.benchmarks[bench]), cfg)
        return datasets[bench]

    todo = [j for j in jobs(plan, seeds, benches) if not tables or (j.kind == "transfer" and "transfer" in tables)
            or (j.kind != "transfer" and j.row.table in tables)]
    first = {b: next(r.config for r in plan.rows if r.benchmark == b) for b in plan.benchmarks}
    sizes = {b: _sizes(data_of(b, first[b]), first[b]) for b in benches}
    seconds = _read_seconds(out)
    timed = jobs(plan, tuple(sorted(set(plan.seeds) | set(seeds))), benches)  # rates from any timed run of these benchmarks
    rates = _rates(out, timed, sizes, seconds, plan.split)

    def units(job: Job) -> tuple[float, float]:
        if job.kind == "train":
            return run_units(job.cfg, *sizes[job.row.benchmark])
        return 0.0, float(sizes[job.test_on or job.row.benchmark][1])

    unique = {_key(out, j, plan.split): j for j in todo}  # a run shared by two tables is one run
    pending = [j for k, j in unique.items() if not _done(out, j, plan.split)]
    left = sum(rates.seconds(units(j)) for j in pending)
    log(f"{plan.source}: {len(unique)} runs on {', '.join(benches)} with seeds {', '.join(map(str, seeds))}; "
        f"{len(unique) - len(pending)} finished, {len(pending)} to go: about {fmt_s(left)} on this machine "
        + (f"(rates measured on {rates.measured} finished runs)" if rates.measured else "(prior rates: no run has finished here yet)"))
    if estimate_only:
        return out
    if command and not finished_only:  # recorded now: a run cut short still names the command that made its runs
        _write_manifest(plan, out, [], command=command)
    rows: list[dict] = []
    done_s = 0.0
    for i, job in enumerate(todo, 1):
        row, seed = job.row, job.seed
        fresh = not _done(out, job, plan.split)
        if finished_only and fresh:
            continue
        t = time.monotonic()
        data = data_of(row.benchmark, row.config)
        if job.kind == "train":
            r = train_and_test(job.cfg, out, data, plan.split, label=row.label, role=row.role, stage="findings",
                               latency_queries=50, table=row.table,
                               extra={"benchmark": row.benchmark, "test_on": row.benchmark, "experiment": row.source,
                                      "x": row.x, "members": row.members})
            r.update(_compute(job.cfg, run_dir(out, job.cfg)))
            if row.members == 1:
                rows.append(r)
        elif job.kind == "ensemble":
            rows.append(_ensemble(out, row, seed, data, plan.split))
        else:
            rows.append(_transfer(out, job, data, data_of(job.test_on, first[job.test_on]), plan.split))
        if fresh:
            took = time.monotonic() - t
            seconds[_key(out, job, plan.split)] = took
            write_json(out / "seconds.json", seconds)
            done_s += took
            pending = [j for j in pending if _key(out, j, plan.split) != _key(out, job, plan.split)]
            rates = _rates(out, timed, sizes, seconds, plan.split)
            left = sum(rates.seconds(units(j)) for j in pending)
            log(f"[{i}/{len(todo)}] {_describe(job)} ({job.kind}): {took:.0f} s; this invocation "
                f"{fmt_s(done_s)}, about {fmt_s(left)} left")
    from onmkd.study.runs import encoder_dir

    for b in benches:
        for enc in plan.encoders:
            if finished_only and not (encoder_dir(out / b, enc) / "metrics.json").exists():
                continue
            log(f"{b}: {enc} as released")
            r = evaluate_encoder(enc, out / b, data_of(b, first[b]), first[b], plan.split, label=enc, stage="findings",
                                 latency_queries=50, table="main")
            r["path"] = f"{b}/{r['path']}"
            rows.append({**r, "benchmark": b, "test_on": b})
    left_over = [j for k, j in unique.items() if not _done(out, j, plan.split)]
    _write_manifest(plan, out, rows, command=command, pending=[_describe(j) for j in left_over],
                    estimate=fmt_s(sum(rates.seconds(units(j)) for j in left_over)),
                    whole=fmt_s(sum(rates.seconds(units(j)) for j in unique.values())))
    from onmkd.study.findings_report import build_findings_report

    build_findings_report(out, report_dir or Path("reports/findings"), command=command, log=log)
    return out


def _sizes(data, cfg: RunConfig) -> tuple[int, int, int]:
    """``(train questions, corpus passages, dev passages searched)`` of a benchmark."""
    n_train = len(data.split(cfg.data.train_split).queries)
    n = len(data.corpus)
    return n_train, n, min(n, cfg.data.dev_pool) if cfg.data.dev_pool else n


def _eval_dir(out: Path, job: Job, split: str) -> Path:
    from onmkd.study.runs import run_dir

    if job.kind == "ensemble":
        return ensemble_dir(out, job.row, job.seed) / split
    folder = run_dir(out, job.cfg)
    return folder / (f"transfer-{job.test_on}" if job.kind == "transfer" else split)


def ensemble_dir(out: Path, row: Row, seed: int) -> Path:
    """The evaluation folder of a row's ensemble for ``seed``: named by its members' run hashes."""
    from onmkd.study.space import config_hash

    return out / "ensembles" / "+".join(config_hash(c) for c in row.member_configs(seed))


def _done(out: Path, job: Job, split: str) -> bool:
    return (_eval_dir(out, job, split) / "metrics.json").exists()


def _key(out: Path, job: Job, split: str) -> str:
    return str(_eval_dir(out, job, split).relative_to(out))


def _read_seconds(out: Path) -> dict:
    path = out / "seconds.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _rates(out: Path, todo: list[Job], sizes: dict, seconds: dict, split: str) -> Rates:
    """The prior rates scaled by how long this plan's finished training runs took here."""
    prior = Rates()
    measured, predicted, n = 0.0, 0.0, 0
    seen: set[str] = set()
    for job in todo:
        key = _key(out, job, split) if job.kind == "train" else None
        if key is None or key not in seconds or key in seen:
            continue
        seen.add(key)
        measured += seconds[key]
        predicted += prior.seconds(run_units(job.cfg, *sizes[job.row.benchmark]))
        n += 1
    if not n:
        return prior
    f = measured / predicted
    return Rates(prior.step_s * f, prior.passage_s * f, prior.fixed_s * f, n)


def _compute(cfg: RunConfig, run: Path) -> dict:
    """A training run's compute: student-steps and, once trained, the measured training-step seconds."""
    log = run / "log.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    steps = {r["step"]: r for r in rows}  # the last line of each step (a run restarted from scratch logs it again)
    steps_s = sum(cfg.train.batch_size / r["examples_per_s"] for r in steps.values() if r.get("examples_per_s")) if steps else None
    n = len(steps)
    return {"epochs": cfg.train.epochs, "students": cfg.model.peers, "student_steps": n * cfg.model.peers,
            "train_steps_s": steps_s}


def _ensemble(out: Path, row: Row, seed: int, data, split: str) -> dict:
    from onmkd.retrieval.ensemble import evaluate_ensemble
    from onmkd.retrieval.evaluate import EvalConfig
    from onmkd.study.runs import run_dir

    cfgs = row.member_configs(seed)
    target = ensemble_dir(out, row, seed) / split
    if not (target / "metrics.json").exists():
        d = row.config.data
        ecfg = EvalConfig(model="ensemble", dataset=d.dataset, split=split, q_max_len=d.q_max_len,
                          p_max_len=d.p_max_len, titles=d.titles, batch_size=row.config.train.eval_batch_size)
        evaluate_ensemble([str(run_dir(out, c)) for c in cfgs], data, ecfg, target)
    parts = [_compute(c, run_dir(out, c)) for c in cfgs]
    return {"path": str(target.relative_to(out)), "label": row.label, "role": row.role, "table": row.table,
            "method": "ensemble", "layers": row.config.model.layers, "seed": seed, "split": split,
            "stage": "findings", "benchmark": row.benchmark, "test_on": row.benchmark, "experiment": row.source,
            "x": row.x, "members": row.members, "member_runs": [str(run_dir(out, c).relative_to(out)) for c in cfgs],
            "epochs": row.config.train.epochs, "students": len(cfgs),
            "student_steps": sum(p["student_steps"] for p in parts),
            "train_steps_s": sum(p["train_steps_s"] or 0.0 for p in parts)}


def _transfer(out: Path, job: Job, own, data, split: str) -> dict:
    """The row's first student, trained on its benchmark (``own``; trained now if it is not yet),
    searching another benchmark's test set (``data``)."""
    from onmkd.study.runs import run_dir, test_evaluate
    from onmkd.training.train import train

    run = run_dir(out, job.cfg)
    target = run / f"transfer-{job.test_on}"
    if not (target / "metrics.json").exists():
        train(job.cfg, run, own, log=lambda m: None)  # kept as it is when finished
    test_evaluate(str(run), target, data, job.cfg, split, latency_queries=10)
    return {"path": str(target.relative_to(out)), "label": job.row.label, "role": job.row.role, "table": "transfer",
            "method": job.cfg.train.method, "layers": job.cfg.model.layers, "seed": job.seed, "split": split,
            "stage": "findings", "benchmark": job.row.benchmark, "test_on": job.test_on, "x": None, "members": 1}


def _describe(job: Job) -> str:
    row = job.row
    where = f"{row.benchmark} -> {job.test_on}" if job.test_on else row.benchmark
    epochs = f" ({row.x:g} epoch{'' if row.x == 1 else 's'})" if row.x else ""
    return f"{where}: {row.table}: {row.label}{epochs}, seed {job.seed}"


def _write_manifest(plan: Findings, out: Path, rows: list[dict], *, command: str = "", pending: list[str] = (),
                    estimate: str = "", whole: str = "") -> None:
    """This invocation's rows and earlier invocations' (:func:`onmkd.study.paper.merged_rows`), and
    every command that made runs here."""
    before = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
    commands = before.get("commands", []) + ([command] if command and command not in before.get("commands", []) else [])
    rows = merged_rows(before, rows)
    write_json(out / "manifest.json", {"kind": "findings", "plan": plan.source, "split": plan.split,
                                       "benchmarks": plan.benchmarks, "budget": list(plan.budget),
                                       "seeds": sorted({r["seed"] for r in rows if r.get("seed") is not None}),
                                       "selection": "dev", "commands": commands, "pending": list(pending),
                                       "pending_estimate": estimate, "selection_estimate": whole,
                                       "runs": rows})
