"""``onmkd-bench paper``: every table of the paper from one plan file, trained, evaluated, reported.

A plan (``experiments/paper.toml``) names, per table, the run configs (paths relative to the
plan) and the seeds; ``[paper] budget`` overrides every training config (e.g. a CPU budget).
Runs are keyed by their full config, so a run that appears in several tables (the full OnMKD
in the main, layer and ablation tables) is trained once, and a rerun resumes: finished
trainings and evaluations are kept. Test numbers are read only after training, which selects
on dev alone.

    [paper]
    seeds = [0, 1, 2]
    split = "test"
    encoders = ["minilm-l6", "minilm-l3", "bm25"]      # evaluated as released (table a)
    budget = { "data.max_train_questions" = 1024 }       # optional, applied to every run

    [[main]]                                             # table (a), one entry per row
    label = "DPR (2 layers)"
    role = "same-depth baseline"                         # or "onmkd"
    config = "dpr.toml"

    [layers]                                             # table (b)
    layers = [1, 2, 3]
    configs = { OnMKD = "onmkd.toml", DPR = "dpr.toml" }

    [ablations]                                          # table (c)
    reference = "onmkd.toml"                             # the full method
    configs = { "no KL" = "../ablations/no-kl.toml", ... }
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from onmkd.config import RunConfig, load_config, read_toml
from onmkd.errors import ConfigError
from onmkd.io import check_component, write_json
from onmkd.training.methods import method_role

ROLES_MAIN = ("onmkd", "same-depth baseline")
FULL = "full OnMKD"


@dataclass(frozen=True)
class Entry:
    table: str
    label: str
    role: str
    config: RunConfig
    source: str


@dataclass(frozen=True)
class Plan:
    source: str
    seeds: tuple[int, ...]
    split: str
    encoders: tuple[str, ...]
    entries: tuple[Entry, ...]


def _keys(table: dict, allowed: set, where: str) -> None:
    for k in table:
        if k not in allowed:
            close = difflib.get_close_matches(k, sorted(allowed), n=1)
            raise ConfigError(f"{where}: unknown key '{k}'" + (f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(sorted(allowed))})"))


def _value(v) -> str:
    return json.dumps(v, default=str)  # ints, floats, strings, booleans and lists read the same in TOML


def _table(raw: dict, key: str, where: str) -> dict:
    """``raw[key]`` (a table; empty when absent), else a ConfigError at ``where``."""
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table, got {type(value).__name__}")
    return value


def _list_of(raw: dict, key: str, kind: type, default: list, where: str) -> list:
    """``raw[key]`` (a list of ``kind``; ``default`` when absent), else a ConfigError at ``where``."""
    value = raw.get(key, default)
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{where}: expected a list of {'integers' if kind is int else 'strings'}, got {value!r}")
    return value


@dataclass(frozen=True)
class Head:
    """A plan's ``[paper]`` table, checked."""

    seeds: tuple[int, ...]
    split: str
    encoders: tuple[str, ...]
    budget: tuple[str, ...]  # ``section.field=value`` overrides of every run, the command line's last


def read_head(raw: dict, src: str, overrides=()) -> Head:
    """The ``[paper]`` table of a plan (``raw``: the whole file) and the command line's ``overrides``."""
    head = _table(raw, "paper", f"{src}: [paper]")
    _keys(head, {"seeds", "split", "encoders", "budget"}, f"{src}: paper")
    seeds = tuple(_list_of(head, "seeds", int, [0, 1, 2], f"{src}: paper.seeds"))
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{src}: paper.seeds: a non-empty list of distinct integers, got {list(seeds)!r}")
    split = head.get("split", "test")
    if not isinstance(split, str):
        raise ConfigError(f"{src}: paper.split: expected a split name, got {split!r}")
    check_component(split, f"{src}: paper.split")  # it names each run's test folder
    encoders = tuple(_list_of(head, "encoders", str, [], f"{src}: paper.encoders"))
    budget = tuple(f"{k}={_value(v)}" for k, v in _table(head, "budget", f"{src}: paper.budget").items()) + tuple(overrides)
    return Head(seeds, split, encoders, budget)


def plan_config(plan_file: Path, rel, where: str, head: Head, extra=()) -> RunConfig:
    """The run config ``rel`` (relative to the plan) with the budget and ``extra`` overrides, checked
    not to train or select on the plan's test split; errors name ``where``."""
    if not isinstance(rel, str):
        raise ConfigError(f"{where}: expected a config path (a string), got {rel!r}")
    try:
        c = load_config(plan_file.parent / rel, [*head.budget, *extra])
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if head.split in (c.data.dev_split, c.data.train_split):
        raise ConfigError(f"{where}: trains or selects on the {head.split!r} split")
    return c


def load_plan(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Plan:
    """Read a plan; every config is loaded (with the budget and ``overrides``) and checked now."""
    p = Path(path)
    raw = read_toml(p, "plan")[1]
    src = str(p)
    _keys(raw, {"paper", "main", "layers", "ablations"}, src)
    head = read_head(raw, src, overrides)

    def cfg(rel: str, where: str, extra: tuple[str, ...] = ()) -> RunConfig:
        return plan_config(p, rel, where, head, extra)

    entries: list[Entry] = []
    main = raw.get("main", [])
    if not isinstance(main, list):
        raise ConfigError(f"{src}: main: expected [[main]] tables, got {type(main).__name__}")
    for i, e in enumerate(main):
        where = f"{src}: main[{i}]"
        if not isinstance(e, dict):
            raise ConfigError(f"{where}: expected a table, got {e!r}")
        _keys(e, {"label", "role", "config"}, where)
        if "label" not in e or "config" not in e:
            raise ConfigError(f"{where}: needs label and config")
        if not isinstance(e["label"], str):
            raise ConfigError(f"{where}.label: expected a string, got {e['label']!r}")
        role = e.get("role", "onmkd")
        if role not in ROLES_MAIN:
            raise ConfigError(f"{where}.role: {role!r} is not one of {', '.join(ROLES_MAIN)}")
        entries.append(Entry("main", e["label"], role, cfg(e["config"], where), e["config"]))
    lay = _table(raw, "layers", f"{src}: [layers]")
    if lay:
        _keys(lay, {"layers", "configs"}, f"{src}: layers")
        depths = _list_of(lay, "layers", int, [], f"{src}: layers.layers")
        for name, rel in _table(lay, "configs", f"{src}: layers.configs").items():
            for n in depths:
                c = cfg(rel, f"{src}: layers.configs.{name} (layers = {n})", (f"model.layers={n}",))
                role = method_role(c.train.method)
                entries.append(Entry("layers", f"{name} ({n} layer{'s' if n != 1 else ''})", role, c, rel))
    abl = _table(raw, "ablations", f"{src}: [ablations]")
    if abl:
        _keys(abl, {"reference", "configs"}, f"{src}: ablations")
        if "reference" in abl:
            entries.append(Entry("ablation", FULL, "ablation", cfg(abl["reference"], f"{src}: ablations.reference"), abl["reference"]))
        for name, rel in _table(abl, "configs", f"{src}: ablations.configs").items():
            entries.append(Entry("ablation", name, "ablation", cfg(rel, f"{src}: ablations.configs.{name}"), rel))
    if not entries:
        raise ConfigError(f"{src}: no runs: add [[main]] entries, [layers] or [ablations]")
    return Plan(src, head.seeds, head.split, head.encoders, tuple(entries))


def run_paper(plan: Plan, out: Path, *, seeds: tuple[int, ...] | None = None, tables: tuple[str, ...] = (),
              report_dir: Path | None = None, command: str = "", remeasure: bool = False, finished_only: bool = False,
              log=print) -> Path:
    """Train and evaluate every entry with every seed (resuming), write the manifest and the report.

    ``remeasure``: measure the efficiency columns of finished evaluations again (quality kept).
    ``finished_only``: train nothing; report the runs that have finished their test evaluation.
    """
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")  # a log line per run; no encoding progress bars
    out = Path(out)
    entries = [e for e in plan.entries if not tables or e.table in tables]
    datasets: dict[str, object] = {}
    rows = _trained_rows(plan, entries, tuple(seeds or plan.seeds), out, datasets, remeasure, finished_only, log)
    rows += _encoder_rows(plan, entries, out, datasets, remeasure, finished_only, log)
    _write_manifest(plan, out, rows)
    from onmkd.study.report import build_report

    build_report([out], report_dir or out / "report", command=command, log=log)
    return out


def _dataset(cfg: RunConfig, datasets: dict):
    """The config's data set with its dev split held out, loaded once per data set spec."""
    from onmkd.data import load_dataset
    from onmkd.training.train import hold_out_dev

    if cfg.data.dataset not in datasets:
        datasets[cfg.data.dataset] = hold_out_dev(load_dataset(cfg.data.dataset), cfg)
    return datasets[cfg.data.dataset]


def _trained_rows(plan: Plan, entries: list[Entry], seeds: tuple[int, ...], out: Path, datasets: dict,
                  remeasure: bool, finished_only: bool, log) -> list[dict]:
    """Every entry trained with every seed and evaluated on the plan's split (finished ones kept)."""
    from onmkd.study.runs import run_dir, train_and_test

    rows = []
    for k, e in enumerate(entries):
        for seed in seeds:
            cfg = replace(e.config, train=replace(e.config.train, seed=seed))
            data = _dataset(cfg, datasets)
            run = run_dir(out, cfg)
            if finished_only and not (run / plan.split / "metrics.json").exists():
                log(f"[{k + 1}/{len(entries)}] {e.table}: {e.label}, seed {seed}: not finished, left out")
                continue
            log(f"[{k + 1}/{len(entries)}] {e.table}: {e.label}, seed {seed} -> {run}")
            rows.append(train_and_test(cfg, out, data, plan.split, label=e.label, role=e.role, stage="paper",
                                       latency_queries=100, remeasure=remeasure, table=e.table,
                                       extra={"experiment": e.source}))
    return rows


def _encoder_rows(plan: Plan, entries: list[Entry], out: Path, datasets: dict, remeasure: bool, finished_only: bool,
                  log) -> list[dict]:
    """The plan's encoders evaluated as released, with the lengths of the main table's first config."""
    from onmkd.study.runs import encoder_dir, evaluate_encoder

    main = [e for e in entries if e.table == "main"] or list(entries)
    if not (plan.encoders and main):
        return []
    cfg = main[0].config
    data = _dataset(cfg, datasets)
    rows = []
    for name in plan.encoders:
        target = encoder_dir(out, name)
        log(f"{name} as released -> {target}")
        if finished_only and not (target / "metrics.json").exists():
            continue
        rows.append(evaluate_encoder(name, out, data, cfg, plan.split, label=name, stage="paper", latency_queries=100,
                                     remeasure=remeasure, table="main"))
    return rows


def merged_rows(before: dict, rows: list[dict]) -> list[dict]:
    """The rows of an earlier manifest (``before``: other tables, seeds or benchmarks) and this
    invocation's ``rows``; a row of this one replaces its equal (same path, table and label)."""
    key = lambda r: (r["path"], r.get("table"), r["label"])  # noqa: E731
    mine = {key(r) for r in rows}
    return [r for r in before.get("runs", []) if key(r) not in mine] + rows


def _write_manifest(plan: Plan, out: Path, rows: list[dict]) -> None:
    """The manifest of this invocation's rows and of earlier invocations' (:func:`merged_rows`)."""
    before = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
    rows = merged_rows(before, rows)
    write_json(out / "manifest.json", {"kind": "paper", "plan": plan.source, "split": plan.split,
                                       "seeds": sorted({r["seed"] for r in rows if r.get("seed") is not None}),
                                       "reference": FULL, "selection": "dev", "runs": rows})
