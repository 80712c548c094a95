"""Search spaces for sweeps: a TOML file read, checked and turned into run configs.

A space file has up to five sections::

    [study]    name, objectives, n_trials, timeout, budget_s, sampler, seed, pruner, ... (StudySpec)
    [base]     config = "path/to/run.toml"  (relative to the space file; omitted: the defaults)
    [fixed]    "section.field" = value        every trial gets these (the trials' budget)
    [params]   "section.field" = { type = "float", low = 0.1, high = 10.0, log = true }
               types: float (low, high, log, step), int (low, high, log, step),
               categorical (choices = [values] or a table {name = value} for lists and tables,
               e.g. peer initialisations); any param may have when = {"path" = [allowed values]}:
               it is sampled only when that field (fixed, or a param listed before it) has one of them.
    [final]    top, seeds, baselines, encoders, reference, split (see FinalSpec)

Paths name config fields as ``section.field``; ``model.peer[*].field`` sets a field of every
peer and ``model.peer[i].field`` of one. Everything is checked before a trial runs: unknown
sections, keys and fields (with a suggestion), empty ranges, wrong types, log ranges through
zero, and every param's extreme values against the config's own validation.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onmkd.config import RunConfig, _coerce, from_dict, load_config, read_toml
from onmkd.errors import ConfigError, shown
from onmkd.io import check_component
from onmkd.training.methods import METHODS

SECTIONS = ("study", "base", "fixed", "params", "final")
PARAM_KEYS = {"float": {"type", "low", "high", "log", "step", "when"},
              "int": {"type", "low", "high", "log", "step", "when"},
              "categorical": {"type", "choices", "when"}}
# Objectives besides dev metrics: measured on the trial's selected student (lower is better).
COST_OBJECTIVES = ("query_ms_p50", "params_m", "checkpoint_mb")
METRIC_RE = re.compile(r"^(acc|recall)@\d+$|^(mrr|ndcg)@\d+$")
# The methods a final step may train beside OnMKD as same-depth baselines: every other method of the table.
METHODS_FINAL = tuple(name for name, m in METHODS.items() if m.role != "onmkd")
# The bundled search spaces are package data of ``onmkd`` (pyproject: "onmkd" = ["spaces/*.toml"]).
DEFAULT_SPACE = Path(__file__).parent.parent / "spaces" / "default.toml"


@dataclass(frozen=True)
class StudySpec:
    """``timeout``: no new trial after this many seconds of this command (0: none).
    ``budget_s``: wall-clock budget of one ``sweep`` command, trials and final step together:
    after each trial, no new one starts if the time used, one more trial and the final step
    (estimated from the trials' own durations) would pass it, and the final step's seeds and
    encoders are cut to what is left (0: none).
    ``workers``: trials run side by side in this many processes on this machine, the CPU threads
    shared out between them (the final step then runs in one process with all of them)."""

    name: str = "sweep"
    objectives: tuple[str, ...] = ("acc@20",)
    n_trials: int = 20
    timeout: float = 0.0
    budget_s: float = 0.0
    sampler: str = "tpe"
    seed: int = 0
    startup_trials: int = 4
    pruner: str = "median"
    pruner_startup_trials: int = 2
    latency_queries: int = 100
    heartbeat_s: int = 30
    grace_s: int = 120
    workers: int = 1

    @property
    def directions(self) -> list[str]:
        return ["minimize" if o in COST_OBJECTIVES else "maximize" for o in self.objectives]


@dataclass(frozen=True)
class FinalSpec:
    top: int = 1
    seeds: tuple[int, ...] = (1, 2, 3)
    baselines: tuple[str, ...] = ("dpr",)
    encoders: tuple[str, ...] = ("minilm-l6", "minilm-l3", "bm25")
    reference: bool = True  # the untrained truncation of the winner's first peer
    split: str = "test"


@dataclass(frozen=True)
class Param:
    path: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()  # what Optuna sees: scalars, or the names of named choices
    named: dict = field(default_factory=dict)  # name -> value for table-style choices
    when: tuple[tuple[str, tuple], ...] = ()

    def extremes(self) -> list:
        if self.kind == "categorical":
            return [self.named.get(c, c) for c in self.choices]
        return [self.low, self.high]

    def suggest(self, trial):
        if self.kind == "float":
            return trial.suggest_float(self.path, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.path, self.low, self.high, log=self.log, step=self.step or 1)
        name = trial.suggest_categorical(self.path, list(self.choices))
        return self.named.get(name, name)


@dataclass(frozen=True)
class Space:
    source: str
    study: StudySpec
    base: dict  # the base config as a dict (defaults or [base] config), with [fixed] applied
    fixed: dict
    params: tuple[Param, ...]
    final: FinalSpec
    text: str = ""  # the file's text, kept with the study

    def sample(self, trial) -> dict[str, Any]:
        """Draw the params (respecting ``when``) from an Optuna trial: ``{path: value}``."""
        values: dict[str, Any] = {}
        for p in self.params:
            if all(_lookup(self.base, values, path) in allowed for path, allowed in p.when):
                values[p.path] = p.suggest(trial)
        return values

    def config(self, values: dict[str, Any]) -> RunConfig:
        """The run config of a trial: the base, the fixed fields, then the sampled ``values``."""
        tree = copy.deepcopy(self.base)
        for path, value in sorted(values.items(), key=lambda kv: _depth(kv[0])):
            _assign(tree, path, value, f"params.{path!r}")
        return from_dict(tree)

    def fingerprint(self) -> str:
        """Identity of the space (what it samples and how trials are trained), not of the study's size."""
        body = json.dumps({"base": self.base, "params": [dataclasses.asdict(p) for p in self.params],
                           "objectives": self.study.objectives}, sort_keys=True, default=str)
        return hashlib.sha256(body.encode()).hexdigest()[:16]


def config_hash(cfg: RunConfig) -> str:
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


_PART = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(\*|[0-9]{1,9})\])?$")


def _parts(path: str, where: str) -> list[tuple[str, str | None]]:
    out = []
    for piece in path.split("."):
        m = _PART.match(piece)
        if not m:
            raise ConfigError(f"{where}: {path!r} is not a config path like 'loss.alpha' or 'model.peer[*].seed'")
        out.append((m.group(1), m.group(2)))
    return out


def _depth(path: str) -> int:
    return path.count(".") + path.count("[")


def _assign(tree: dict, path: str, value: Any, where: str) -> None:
    """Set ``path`` in a config dict, checking that every part of it names a real field."""
    parts = _parts(path, where)
    nodes: list = [tree]
    for i, (name, index) in enumerate(parts):
        last = i == len(parts) - 1
        nxt = []
        for node in nodes:
            if not isinstance(node, dict) or name not in node:
                keys = list(node) if isinstance(node, dict) else []
                close = difflib.get_close_matches(name, keys, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else (f" (fields: {', '.join(keys)})" if keys else "")
                raise ConfigError(f"{where}: unknown config field '{shown(name)}' in {path!r}{hint}")
            if index is None:
                if last:
                    node[name] = _complete(name, copy.deepcopy(value))
                else:
                    nxt.append(node[name])
            else:
                items = node[name]
                if not isinstance(items, list):
                    raise ConfigError(f"{where}: '{name}' in {path!r} is not a list of tables")
                chosen = items if index == "*" else ([items[int(index)]] if int(index) < len(items) else None)
                if chosen is None:
                    raise ConfigError(f"{where}: {path!r}: index {index} is beyond the {len(items)} entries of '{name}'")
                if last:
                    raise ConfigError(f"{where}: {path!r} must name a field of '{name}[{index}]'")
                nxt.extend(chosen)
        nodes = nxt


def _complete(name: str, value: Any) -> Any:
    """Peer tables given in part get the remaining PeerInit defaults (so later paths can set them)."""
    if name == "peer" and isinstance(value, list) and all(isinstance(v, dict) for v in value):
        from onmkd.config import PeerInit

        return [{**json.loads(json.dumps(dataclasses.asdict(PeerInit()))), **v} for v in value]
    return value


def _lookup(base: dict, values: dict, path: str):
    if path in values:
        return values[path]
    node: Any = base
    for name, index in _parts(path, "when"):
        node = node[name]
        if index is not None:
            node = node[0 if index == "*" else int(index)]
    return node


def _check_keys(table: dict, allowed, where: str) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(sorted(allowed))})"
            raise ConfigError(f"{where}: unknown key '{key}'{hint}")


def _spec(cls, table: dict, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    _check_keys(table, names, where)
    import typing

    types = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, types[k], f"{where}.{k}") for k, v in table.items()}
    return cls(**kwargs)


def _param(path: str, raw: Any, where: str) -> Param:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table like {{ type = \"float\", low = 0.1, high = 1.0 }}, got {raw!r}")
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in PARAM_KEYS:
        raise ConfigError(f"{where}.type: {kind!r} is not one of {', '.join(PARAM_KEYS)}")
    _check_keys(raw, PARAM_KEYS[kind], where)
    when = raw.get("when", {})
    if not isinstance(when, dict) or not all(isinstance(v, list) and v for v in when.values()):
        raise ConfigError(f"{where}.when: expected {{\"section.field\" = [allowed values]}}, got {when!r}")
    when_t = tuple((k, tuple(v)) for k, v in when.items())
    if kind == "categorical":
        choices = raw.get("choices")
        if isinstance(choices, dict):
            if not choices:
                raise ConfigError(f"{where}.choices: empty")
            return Param(path, kind, choices=tuple(choices), named=dict(choices), when=when_t)
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices: a non-empty list (or a table of named values), got {choices!r}")
        if any(isinstance(c, (list, dict)) for c in choices):
            raise ConfigError(f"{where}.choices: lists and tables need names: write choices as a table {{name = value}}")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{where}.choices: repeated values {choices!r}")
        return Param(path, kind, choices=tuple(choices), when=when_t)
    for key in ("low", "high"):
        if key not in raw:
            raise ConfigError(f"{where}: '{key}' is missing")
        v = raw[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind == "int" and not isinstance(v, int)):
            raise ConfigError(f"{where}.{key}: expected {'an integer' if kind == 'int' else 'a number'}, got {v!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{where}.{key}: expected a finite number, got {v!r}")
    low, high = raw["low"], raw["high"]
    if not low < high:
        raise ConfigError(f"{where}: empty range: low = {low} is not below high = {high}")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: expected true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
    step = raw.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise ConfigError(f"{where}.step: expected a positive number, got {step!r}")
    if step is not None and log:
        raise ConfigError(f"{where}: step and log cannot be combined")
    return Param(path, kind, low=low, high=high, log=log, step=step, when=when_t)


def load_space(path: str | Path | None = None) -> Space:
    """Read and check a search space (the bundled default when ``path`` is None)."""
    p = Path(path) if path is not None else DEFAULT_SPACE
    text, raw = read_toml(p, "search-space")
    src = str(p)
    _check_keys(raw, SECTIONS, src)
    for sec in SECTIONS:
        if sec in raw and not isinstance(raw[sec], dict):
            raise ConfigError(f"{src}: [{sec}] must be a table")
    study = _spec(StudySpec, raw.get("study", {}), f"{src}: study")
    final = _spec(FinalSpec, raw.get("final", {}), f"{src}: final")
    check_component(final.split, f"{src}: final.split")  # it names the folder each final run writes
    _check_study(study, final, src)
    base_table = raw.get("base", {})
    _check_keys(base_table, {"config"}, f"{src}: base")
    if "config" in base_table and not isinstance(base_table["config"], str):
        raise ConfigError(f"{src}: base.config: expected a path (a string), got {base_table['config']!r}")
    try:
        base_cfg = load_config((p.parent / base_table["config"]) if "config" in base_table else None)
    except ConfigError as e:
        raise ConfigError(f"{src}: base.config: {e}") from None
    tree = base_cfg.to_dict()
    fixed = raw.get("fixed", {})
    for key, value in sorted(fixed.items(), key=lambda kv: _depth(kv[0])):
        _assign(tree, key, value, f"{src}: fixed.{key!r}")
    _validated(tree, f"{src}: [fixed]")
    params_raw = raw.get("params", {})
    if not params_raw:
        raise ConfigError(f"{src}: [params] is empty: name at least one config field to search")
    params = tuple(_param(k, v, f"{src}: params.{k!r}") for k, v in params_raw.items())
    seen: set[str] = set()
    for prm in params:
        where = f"{src}: params.{prm.path!r}"
        for cond, _ in prm.when:
            if cond not in seen:
                try:
                    _lookup(tree, {}, cond)
                except (KeyError, IndexError, TypeError, ConfigError):
                    raise ConfigError(f"{where}.when: {cond!r} is neither a config field nor a param listed before it") from None
        seen.add(prm.path)
    space = Space(src, study, tree, fixed, params, final, text)
    _check_extremes(space)
    return space


def _check_study(study: StudySpec, final: FinalSpec, src: str) -> None:
    if not study.objectives:
        raise ConfigError(f"{src}: study.objectives: name at least one (a dev metric first, e.g. 'acc@20')")
    if not METRIC_RE.match(study.objectives[0]):
        raise ConfigError(f"{src}: study.objectives[0]: {study.objectives[0]!r} is not a dev metric (acc@k, recall@k, mrr@k, ndcg@k)")
    for i, o in enumerate(study.objectives[1:], 1):
        if o not in COST_OBJECTIVES and not METRIC_RE.match(o):
            raise ConfigError(f"{src}: study.objectives[{i}]: {o!r} is not a metric or one of {', '.join(COST_OBJECTIVES)}")
    if study.n_trials < 1:
        raise ConfigError(f"{src}: study.n_trials: at least 1, got {study.n_trials}")
    if study.sampler not in ("tpe", "random", "nsga2", "gp"):
        raise ConfigError(f"{src}: study.sampler: {study.sampler!r} is not one of tpe, random, nsga2, gp")
    if study.pruner not in ("median", "hyperband", "none"):
        raise ConfigError(f"{src}: study.pruner: {study.pruner!r} is not one of median, hyperband, none")
    if study.workers < 1:
        raise ConfigError(f"{src}: study.workers: at least 1, got {study.workers}")
    if study.budget_s < 0:
        raise ConfigError(f"{src}: study.budget_s: ≥ 0 seconds, got {study.budget_s}")
    if study.timeout < 0 or study.latency_queries < 1 or study.heartbeat_s < 1 or study.grace_s <= study.heartbeat_s:
        raise ConfigError(f"{src}: study: timeout ≥ 0, latency_queries ≥ 1 and grace_s > heartbeat_s ≥ 1 are needed")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", study.name):
        raise ConfigError(f"{src}: study.name: letters, digits, '.', '_' and '-' only, got {study.name!r}")
    if final.top < 0 or not final.seeds and final.top:
        raise ConfigError(f"{src}: final: top ≥ 0 and at least one seed are needed")
    for m in final.baselines:
        if m not in METHODS_FINAL:
            raise ConfigError(f"{src}: final.baselines: {m!r} is not one of {', '.join(METHODS_FINAL)}")


def _validated(tree: dict, where: str) -> RunConfig:
    try:
        cfg = from_dict(copy.deepcopy(tree))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    from onmkd.retrieval.models import REGISTRY

    for k, init in enumerate(cfg.peer_inits()):
        ck = REGISTRY.get(init.checkpoint)
        if ck is not None and cfg.model.layers > ck.layers:
            raise ConfigError(f"{where}: model.layers = {cfg.model.layers} is beyond {init.checkpoint}'s {ck.layers} layers (peer {k})")
        if ck is not None and any(x > ck.layers for x in init.layer_list):
            raise ConfigError(f"{where}: model.peer[{k}].layer_list {list(init.layer_list)} goes beyond {init.checkpoint}'s {ck.layers} layers")
    return cfg


def _check_extremes(space: Space) -> None:
    """Each param at each of its extremes (others at their first extreme) must make a valid config."""
    firsts = {p.path: p.extremes()[0] for p in space.params}
    for p in space.params:
        for value in p.extremes():
            values = {**firsts, p.path: value}
            where = f"{space.source}: params.{p.path!r} = {json.dumps(value, default=str)}"
            tree = copy.deepcopy(space.base)
            for path, v in sorted(values.items(), key=lambda kv: _depth(kv[0])):
                _assign(tree, path, v, f"{space.source}: params.{path!r}")
            _validated(tree, where)
