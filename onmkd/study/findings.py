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

    [tuning]                                           # every main row's learning rate, picked on dev
    lr = [5e-5, 1e-4, 2e-4]
    seed = 0                                           # optional: the seed of the tuning runs (the plan's first)
    metric = "mrr@10"                                  # optional: the dev metric that picks
    benchmarks = ["nq-qed"]                            # optional: a subset of the benchmarks

With ``[tuning]``, each main row of a tuned benchmark is first trained once per learning rate (seed
``tuning.seed``, no test evaluation), and the learning rate whose selected student scores best on
dev is the row's for every seed and for transfer; its epoch is picked on dev as in every run (the
best of ``train.epochs``). Rows that share a training config (DPR and the DPR ensemble's members)
share their tuning runs. The curves and the settings study keep their configs' learning rate.

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
DEV_METRICS = ("mrr@10", "ndcg@10", "acc@1", "acc@5", "acc@20", "acc@100", "recall@1", "recall@5", "recall@20", "recall@100")
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

    def with_lr(self, lr: float) -> Row:
        return replace(self, config=replace(self.config, train=replace(self.config.train, lr=lr)))


@dataclass(frozen=True)
class Tuning:
    """``[tuning]``: the learning rates every main row tries on dev before its seeds run."""

    lrs: tuple[float, ...]
    seed: int
    metric: str
    benchmarks: tuple[str, ...]


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
    tuning: Tuning | None = None


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
    _keys(raw, {"paper", "benchmarks", "main", "curves", "settings", "transfer", "tuning"}, src)
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
    tuning = _tuning(raw, names, head.seeds, src)
    if tuning:
        for i, e in enumerate(main):
            if any(s.replace(" ", "").startswith("train.lr=") for s in e.get("set", [])):
                raise ConfigError(f"{src}: main[{i}].set: train.lr is picked on dev by [tuning]; remove it from the row")
    return Findings(src, head.seeds, head.split, head.encoders, dict(benches), tuple(rows), transfer, head.budget, tuning)


def _tuning(raw: dict, names: list[str], seeds: tuple[int, ...], src: str) -> Tuning | None:
    tu = _table(raw, "tuning", f"{src}: [tuning]")
    if not tu:
        return None
    where = f"{src}: tuning"
    _keys(tu, {"lr", "seed", "metric", "benchmarks"}, where)
    lrs = tu.get("lr")
    if (not isinstance(lrs, list) or not lrs or len(set(lrs)) != len(lrs)
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 1 for x in lrs)):
        raise ConfigError(f"{where}.lr: a non-empty list of distinct learning rates in (0, 1), got {lrs!r}")
    seed = tu.get("seed", seeds[0])
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{where}.seed: expected an integer, got {seed!r}")
    metric = tu.get("metric", "mrr@10")
    if metric not in DEV_METRICS:
        raise ConfigError(f"{where}.metric: {metric!r} is not one of {', '.join(DEV_METRICS)}")
    return Tuning(tuple(float(x) for x in lrs), seed, metric, tuple(_subset(tu, names, where)))


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
    kind: str            # tune (train only), train (one student or peers, then test), ensemble, transfer
    cfg: RunConfig | None = None
    test_on: str = ""    # transfer: the benchmark whose test set is searched
    undecided: bool = False  # its row's learning rate waits for the tuning runs (priced, not run)


TABLES = ("tuning", "main", "transfer", "curve", "settings")


def jobs(plan: Findings, seeds: tuple[int, ...], benchmarks: tuple[str, ...], chosen: dict | None = None) -> list[Job]:
    """Every unit of work of the plan, in the order that answers the main question first: the tuning
    runs, the main tables (seed by seed, so that a cut-short run has whole tables for its first
    seeds), transfer, the curves, then the settings study. ``chosen``: ``{(benchmark, label): lr}``
    of the main rows whose tuning has finished (:func:`chosen_lrs`); the others are ``undecided``."""
    out: list[Job] = []
    chosen = chosen or {}
    tuned = set(plan.tuning.benchmarks) if plan.tuning else set()

    def rows(table: str, bench: str):
        return [r for r in plan.rows if r.table == table and r.benchmark == bench]

    def main_rows(bench: str) -> list[tuple[Row, bool]]:
        if bench not in tuned:
            return [(r, False) for r in rows("main", bench)]
        return [(r.with_lr(chosen[bench, r.label]), False) if (bench, r.label) in chosen else (r, True)
                for r in rows("main", bench)]

    for table in TABLES:
        if table == "tuning":
            for b in (b for b in benchmarks if b in tuned):
                for tried in (r.with_lr(lr) for r in rows("main", b) for lr in plan.tuning.lrs):
                    out.append(Job(tried, plan.tuning.seed, "tune", tried.member_configs(plan.tuning.seed)[0]))
            continue
        for seed in seeds:
            for b in benchmarks:
                if table == "transfer":
                    for row, undecided in (x for x in main_rows(b) if x[0].label in plan.transfer):
                        out += [Job(row, seed, "transfer", row.member_configs(seed)[0], test_on=o, undecided=undecided)
                                for o in benchmarks if o != b]
                    continue
                for row, undecided in (main_rows(b) if table == "main" else [(r, False) for r in rows(table, b)]):
                    out += [Job(row, seed, "train", c, undecided=undecided) for c in row.member_configs(seed)]
                    if row.members > 1:
                        out.append(Job(row, seed, "ensemble", undecided=undecided))
    return out


def chosen_lrs(plan: Findings, out: Path) -> tuple[dict, dict]:
    """``({(benchmark, label): lr}, record)``: each tuned main row's learning rate, the best dev
    ``tuning.metric`` of its tuning runs (the first in the plan's order on a tie), once all of them
    have trained; ``record`` (for the manifest and the report) has every dev score measured so far."""
    from onmkd.study.runs import run_dir

    chosen: dict = {}
    record: dict = {}
    if not plan.tuning:
        return chosen, record
    t = plan.tuning
    for job in (j for j in jobs(plan, (), t.benchmarks) if j.kind == "tune"):
        row = job.row
        entry = record.setdefault(row.benchmark, {}).setdefault(row.label, {
            "config_lr": next(r.config.train.lr for r in plan.rows if (r.table, r.benchmark, r.label) == ("main", row.benchmark, row.label)),
            "metric": t.metric, "seed": t.seed, "dev": {}, "runs": {}, "chosen": None})
        metrics = run_dir(out, job.cfg) / "metrics.json"
        if metrics.exists():
            dev = json.loads(metrics.read_text()).get("dev", {})
            entry["dev"][repr(job.cfg.train.lr)] = dev.get(t.metric)
            entry["runs"][repr(job.cfg.train.lr)] = str(run_dir(out, job.cfg).relative_to(out))
    for bench, labels in record.items():
        for label, entry in labels.items():
            scores = [(entry["dev"].get(repr(lr)), lr) for lr in t.lrs]
            if all(v is not None for v, _ in scores):
                best = max(scores, key=lambda x: x[0])  # max keeps the first of equals: the plan's order
                entry["chosen"] = best[1]
                chosen[bench, label] = best[1]
    return chosen, record


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

    def wanted(j: Job) -> bool:
        if not tables:
            return True
        if j.kind == "tune":  # the main rows and their transfer need their learning rate first
            return bool({"tuning", "main", "transfer"} & set(tables))
        return ("transfer" if j.kind == "transfer" else j.row.table) in tables

    def plan_jobs(chosen: dict) -> list[Job]:
        return [j for j in jobs(plan, seeds, benches, chosen) if wanted(j)]

    chosen, record = chosen_lrs(plan, out)
    todo = plan_jobs(chosen)
    first = {b: next(r.config for r in plan.rows if r.benchmark == b) for b in plan.benchmarks}
    sizes = {b: _sizes(data_of(b, first[b]), first[b]) for b in benches}
    seconds = _read_seconds(out)
    timed = jobs(plan, tuple(sorted(set(plan.seeds) | set(seeds))), benches)  # rates from any timed run of these benchmarks
    rates = _rates(out, timed, sizes, seconds, plan.split)

    def units(job: Job) -> tuple[float, float]:
        n_train, n, n_dev = sizes[job.row.benchmark]
        if job.kind == "tune":
            return run_units(job.cfg, n_train, 0, n_dev)
        if job.kind == "train" and (job.undecided or not _trained(out, job.cfg)):
            return run_units(job.cfg, n_train, n, n_dev)
        return 0.0, float(sizes[job.test_on or job.row.benchmark][1])

    def outstanding(todo: list[Job]) -> tuple[dict, list[Job]]:
        unique: dict[str, Job] = {}
        for j in todo:  # a run shared by two tables (or two rows' tuning) is one run, named by its first
            unique.setdefault(_key(out, j, plan.split), j)
        return unique, [j for j in unique.values() if not _done(out, j, plan.split)]

    unique, pending = outstanding(todo)
    left = sum(rates.seconds(units(j)) for j in pending)
    undecided = sum(j.undecided for j in pending)
    log(f"{plan.source}: {len(unique)} runs on {', '.join(benches)} with seeds {', '.join(map(str, seeds))}; "
        f"{len(unique) - len(pending)} finished, {len(pending)} to go: about {fmt_s(left)} on this machine "
        + (f"(rates measured on {rates.measured} finished runs)" if rates.measured else "(prior rates: no run has finished here yet)")
        + (f"; {undecided} of them wait for their learning rate (priced at the config's)" if undecided else ""))
    if estimate_only:
        return out
    if command and not finished_only:  # recorded now: a run cut short still names the command that made its runs
        _write_manifest(plan, out, [], command=command)
    rows: list[dict] = []
    done_s = 0.0
    count = [0, len(todo)]

    def run(batch: list[Job]) -> None:
        nonlocal done_s, pending, rates
        for job in batch:
            count[0] += 1
            row, seed = job.row, job.seed
            fresh = not _done(out, job, plan.split)
            if job.undecided or (finished_only and fresh):
                continue
            trained = job.cfg is not None and _trained(out, job.cfg)
            t = time.monotonic()
            data = data_of(row.benchmark, row.config)
            if job.kind == "tune":
                from onmkd.training.train import train

                train(job.cfg, run_dir(out, job.cfg), data, log=lambda m: None)
            elif job.kind == "train":
                r = train_and_test(job.cfg, out, data, plan.split, label=row.label, role=row.role, stage="findings",
                                   latency_queries=50, table=row.table,
                                   extra={"benchmark": row.benchmark, "test_on": row.benchmark, "experiment": row.source,
                                          "x": row.x, "members": row.members, "lr": job.cfg.train.lr})
                r.update(_compute(job.cfg, run_dir(out, job.cfg)))
                if row.members == 1:
                    rows.append(r)
            elif job.kind == "ensemble":
                rows.append(_ensemble(out, row, seed, data, plan.split))
            else:
                rows.append(_transfer(out, job, data, data_of(job.test_on, first[job.test_on]), plan.split))
            if fresh:
                took = time.monotonic() - t
                key = _key(out, job, plan.split)
                # a run trained by the tuning is only tested now: its seconds do not price a training
                seconds[key + ("#test" if job.kind == "train" and trained else "")] = took
                write_json(out / "seconds.json", seconds)
                done_s += took
                pending = [j for j in pending if _key(out, j, plan.split) != key]
                rates = _rates(out, timed, sizes, seconds, plan.split)
                left = sum(rates.seconds(units(j)) for j in pending)
                log(f"[{count[0]}/{count[1]}] {_describe(job)} ({job.kind}): {took:.0f} s; this invocation "
                    f"{fmt_s(done_s)}, about {fmt_s(left)} left")

    tune = [j for j in todo if j.kind == "tune"]
    run(tune)
    if tune:  # the learning rates are known now: the rows that waited for them get their runs
        chosen, record = chosen_lrs(plan, out)
        for (b, label), lr in chosen.items():
            log(f"{b}: {label}: learning rate {lr:g} (best dev {plan.tuning.metric} of {', '.join(f'{x:g}' for x in plan.tuning.lrs)})")
        todo = plan_jobs(chosen)
        unique, pending = outstanding(todo)
        count[1] = len(todo)
    run([j for j in todo if j.kind != "tune"])
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
    left_over = [j for j in unique.values() if not _done(out, j, plan.split)]
    _write_manifest(plan, out, rows, command=command, pending=[_describe(j) for j in left_over],
                    estimate=fmt_s(sum(rates.seconds(units(j)) for j in left_over)),
                    whole=fmt_s(sum(rates.seconds(units(j)) for j in unique.values())), tuning=record)
    from onmkd.study.findings_report import build_findings_report

    build_findings_report(out, report_dir or Path("reports/findings"), command=command, log=log)
    return out


def _sizes(data, cfg: RunConfig) -> tuple[int, int, int]:
    """``(train questions, corpus passages, dev passages searched)`` of a benchmark."""
    n_train = len(data.split(cfg.data.train_split).queries)
    n = len(data.corpus)
    return n_train, n, min(n, cfg.data.dev_pool) if cfg.data.dev_pool else n


def _trained(out: Path, cfg: RunConfig) -> bool:
    from onmkd.study.runs import run_dir

    return (run_dir(out, cfg) / "metrics.json").exists()


def _eval_dir(out: Path, job: Job, split: str) -> Path:
    from onmkd.study.runs import run_dir

    if job.kind == "tune":
        return run_dir(out, job.cfg)  # its metrics.json: the training's selection on dev
    if job.kind == "ensemble":
        return ensemble_dir(out, job.row, job.seed) / split
    folder = run_dir(out, job.cfg)
    return folder / (f"transfer-{job.test_on}" if job.kind == "transfer" else split)


def ensemble_dir(out: Path, row: Row, seed: int) -> Path:
    """The evaluation folder of a row's ensemble for ``seed``: named by its members' run hashes."""
    from onmkd.study.space import config_hash

    return out / "ensembles" / "+".join(config_hash(c) for c in row.member_configs(seed))


def _done(out: Path, job: Job, split: str) -> bool:
    return not job.undecided and (_eval_dir(out, job, split) / "metrics.json").exists()


def _key(out: Path, job: Job, split: str) -> str:
    if job.undecided:  # no config yet: one key per unit of work
        return f"undecided:{_describe(job)}:{job.kind}:{job.cfg.train.seed if job.cfg else ''}:{job.test_on}"
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
        if job.kind not in ("train", "tune") or job.undecided:
            continue
        key, full = _key(out, job, split), job.kind == "train"
        if not full and key not in seconds and f"{key}/{split}" in seconds:  # trained and tested as a main run
            key, full = f"{key}/{split}", True
        if key not in seconds or key in seen:
            continue
        seen.add(key)
        measured += seconds[key]
        n_train, n_passages, n_dev = sizes[job.row.benchmark]
        predicted += prior.seconds(run_units(job.cfg, n_train, n_passages if full else 0, n_dev))
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
            "lr": row.config.train.lr,
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
            "stage": "findings", "benchmark": job.row.benchmark, "test_on": job.test_on, "x": None, "members": 1,
            "lr": job.cfg.train.lr}


def _describe(job: Job) -> str:
    row = job.row
    where = f"{row.benchmark} -> {job.test_on}" if job.test_on else row.benchmark
    epochs = f" ({row.x:g} epoch{'' if row.x == 1 else 's'})" if row.x else ""
    if job.kind == "tune":
        return f"{where}: tuning: {row.label}, lr {job.cfg.train.lr:g}, seed {job.seed}"
    return f"{where}: {row.table}: {row.label}{epochs}, seed {job.seed}"


def row_lr(out: Path, row: dict) -> float | None:
    """The learning rate a manifest row's student was trained at, from its run's config (rows
    written before rows carried it); None for an encoder as released."""
    run = row["member_runs"][0] if row.get("member_runs") else str(Path(row["path"]).parent) if row["path"].startswith("runs/") else None
    cfg = out / run / "config.json" if run else None
    return json.loads(cfg.read_text())["train"]["lr"] if cfg and cfg.exists() else None


def _write_manifest(plan: Findings, out: Path, rows: list[dict], *, command: str = "", pending: list[str] = (),
                    estimate: str = "", whole: str = "", tuning: dict | None = None) -> None:
    """This invocation's rows and earlier invocations' (:func:`onmkd.study.paper.merged_rows`), every
    command that made runs here, and the tuning runs' dev scores with each row's learning rate."""
    before = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
    commands = before.get("commands", []) + ([command] if command and command not in before.get("commands", []) else [])
    rows = merged_rows(before, rows)
    for r in rows:
        if "lr" not in r:
            r["lr"] = row_lr(out, r)
    write_json(out / "manifest.json", {"kind": "findings", "plan": plan.source, "split": plan.split,
                                       "benchmarks": plan.benchmarks, "budget": list(plan.budget),
                                       "seeds": sorted({r["seed"] for r in rows if r.get("seed") is not None}),
                                       "selection": "dev", "commands": commands, "pending": list(pending),
                                       "pending_estimate": estimate, "selection_estimate": whole,
                                       "tuning": before.get("tuning", {}) if tuning is None else tuning,
                                       "runs": rows})
