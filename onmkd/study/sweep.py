"""Optuna sweeps: trials trained and selected on dev, then a final step on test, then the report.

Study directory (``--study-dir``, default ``runs/sweep/NAME``)::

    space.toml      the search space the study was created with (a rerun must use the same)
    study.db        the Optuna storage (SQLite) unless ``--storage URL`` names another
    study.json      name, storage URL, objectives and directions (what the report reads)
    runs/HASH/      one training run directory per distinct config (trials and final runs)
    baselines/NAME/ evaluation run directories of encoders used as they are (teacher, BM25, ...)
    manifest.json   the final step's runs: label, role, seed, split (written last)
    timings.json    where the last ``sweep`` command's wall time went, phase by phase
    report/         tables and figures (``onmkd-bench report``)

Nothing is lost on interruption. A run directory is keyed by its full config, so a trial that
died mid-training and is retried resumes from its checkpoint. Trials left RUNNING by a dead
worker are failed and re-queued with the same params: at once when the worker ran on this host
(its pid is gone), otherwise once its Optuna heartbeat is older than the grace period; Ctrl-C
and SIGTERM mark the trial interrupted, and the next start re-queues it. ``n_trials`` is the
study's total of finished (complete or pruned) trials, shared by all workers: a worker stops
taking trials once that many are finished or running. Sampling is seeded per fresh trial (retries
of a failed trial do not count), so workers never draw the same random sequence and a study that
was killed and resumed draws the same params as one that ran through.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from onmkd.config import PeerInit, RunConfig
from onmkd.errors import ConfigError
from onmkd.io import write_json, write_text
from onmkd.study.runs import test_evaluate  # noqa: F401 - importable from here as before
from onmkd.study.space import Space, config_hash
from onmkd.training.methods import METHODS, as_method
from onmkd.training.methods import as_method as baseline_config  # noqa: F401 - its name here before methods.py
from onmkd.timing import Phases, by_kind

MANIFEST = "manifest.json"


class Surplus(Exception):
    """A trial started after the study had its n_trials finished or running (several workers)."""


# --------------------------------------------------------------------------- Optuna objects

def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def default_storage(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'study.db').resolve()}"


def make_storage(url: str, spec) -> Any:
    optuna = _optuna()
    from sqlalchemy.exc import IntegrityError

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=spec.heartbeat_s, grace_period=spec.grace_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))
        except IntegrityError:
            # Workers started together on an empty database both create Optuna's tables; the
            # loser's insert of the schema version fails. The tables exist now: connect again.
            if attempt == 5:
                raise ConfigError(f"--storage {url}: could not initialise the database schema (other workers kept racing)") from None
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.3)
        except Exception as e:  # noqa: BLE001 - a bad URL or unreachable server: one line for the user
            raise ConfigError(f"--storage {url}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def fresh_index(study, number: int) -> int:
    """How many trials before ``number`` were sampled afresh (not retries of a failed trial).

    Distinct for every fresh trial even with several workers: each retry counted for a later
    trial but not for an earlier one was created between the two and holds a number between them.
    """
    earlier = [t for t in study.get_trials(deepcopy=False) if t.number < number]
    return sum(1 for t in earlier if "failed_trial" not in t.system_attrs)


def trial_seed(seed: int, index: int) -> int:
    """A well-mixed 32-bit seed for the ``index``-th fresh trial of a study seeded ``seed``.

    Not ``seed + index``: NumPy's first draws for neighbouring seeds happen to be close (0.55,
    0.42, 0.44 for seeds 0, 1, 2), so three random trials over ``layers`` in 1..3 all drew 2."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


class PerTrialSeedSampler:
    """Delegates to a fresh sampler seeded with :func:`trial_seed` ``(seed, i)`` for the i-th freshly sampled trial.

    Optuna's samplers keep their random state per process, so two workers (or a resumed
    worker) with one seed would draw the same random params; seeding per trial keeps a study
    reproducible and its workers apart. ``i`` counts the earlier trials that were not retries of
    a failed one (:func:`fresh_index`), so a study that was killed, failed a trial and retried it
    draws the same params for its later trials as one that ran through.
    """

    def __init__(self, factory: Callable[[int], Any], seed: int):
        self._factory, self._seed = factory, seed
        self._current = factory(seed)

    def infer_relative_search_space(self, study, trial):
        return self._current.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._current.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._current.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self._current = self._factory(trial_seed(self._seed, fresh_index(study, trial.number)))
        self._current.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self._current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._current.reseed_rng()


def make_sampler(spec):
    optuna = _optuna()

    def factory(seed: int):
        if spec.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if spec.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        if spec.sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=spec.startup_trials)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.startup_trials, multivariate=True,
                                          group=True, constant_liar=True)

    base = optuna.samplers.BaseSampler
    cls = type("PerTrialSeed", (PerTrialSeedSampler, base), {})
    return cls(factory, spec.seed)


def make_pruner(spec):
    optuna = _optuna()
    if spec.pruner == "none" or len(spec.objectives) > 1:
        return optuna.pruners.NopPruner()
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.MedianPruner(n_startup_trials=spec.pruner_startup_trials, n_warmup_steps=0)


def open_study(space: Space, study_dir: Path, storage_url: str | None, create: bool = True):
    """Create or load the study; refuse to mix search spaces in one study."""
    optuna = _optuna()
    study_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url or default_storage(study_dir)
    storage = make_storage(url, space.study)
    name = space.study.name
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(space.study),
                                  pruner=make_pruner(space.study))
        existed = True
    except KeyError:
        if not create:
            raise ConfigError(f"{url}: no study named {name!r}") from None
        study = optuna.create_study(study_name=name, storage=storage, directions=space.study.directions,
                                    sampler=make_sampler(space.study), pruner=make_pruner(space.study),
                                    load_if_exists=True)
        existed = False
    fp = study.user_attrs.get("space_fingerprint")
    if fp is None:
        study.set_user_attr("space_fingerprint", space.fingerprint())
        study.set_user_attr("objectives", list(space.study.objectives))
    elif fp != space.fingerprint():
        raise ConfigError(f"study {name!r} in {url} was created with another search space "
                          f"(its space.toml is in {study_dir}); use another --study-dir or study.name")
    if [d.name.lower() for d in study.directions] != space.study.directions:
        raise ConfigError(f"study {name!r}: its directions {[d.name.lower() for d in study.directions]} differ from the space's objectives")
    saved = study_dir / "space.toml"
    if not saved.exists() or not existed:
        write_text(saved, space.text)
    write_json(study_dir / "study.json", {"name": name, "storage": url, "objectives": list(space.study.objectives),
                                          "directions": space.study.directions, "space": space.source})
    return study


# --------------------------------------------------------------------------- recovery

def _worker() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(study, log=print) -> list[int]:
    """Fail and re-queue trials whose worker is gone; returns the numbers of the re-queued trials.

    - RUNNING trials of a dead process on this host: failed now;
    - RUNNING trials elsewhere: failed by Optuna once their heartbeat is stale;
    - FAIL trials marked ``interrupted`` (Ctrl-C, SIGTERM) not yet retried.
    Each is re-queued once with the same params (its run directory resumes the training).
    """
    optuna = _optuna()
    from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
    from optuna.trial import TrialState

    fail_stale_trials(study)  # heartbeat-stale trials of other hosts (re-queued by the storage's callback)
    storage = study._storage
    retry = RetryHeartbeatStaleTrialCallback(max_retry=3)
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    here = socket.gethostname()
    requeued = []
    for t in trials:
        w = t.user_attrs.get("worker") or {}
        dead_here = (t.state == TrialState.RUNNING and w.get("host") == here and "pid" in w
                     and w["pid"] != os.getpid() and not _pid_alive(int(w["pid"])))
        interrupted = t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and t.number not in retried
        if dead_here:
            try:
                storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker got there first
        if dead_here or interrupted:
            retry(study, storage.get_trial(t._trial_id))
            requeued.append(t.number)
    if requeued:
        log(f"re-queued trial(s) {requeued} left unfinished by an interrupted or dead worker")
    return requeued


def counts(study) -> dict[str, int]:
    from optuna.trial import TrialState

    out = {s.name.lower(): 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name.lower()] += 1
    return out


# --------------------------------------------------------------------------- trials

@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt in the main thread, so it is handled like Ctrl-C."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def dev_value(dev_row: dict, metric: str) -> float:
    """A dev evaluation's score: the best peer's ``metric`` (the student a run would deploy)."""
    return max(p[metric] for p in dev_row["peers"])


class Objective:
    def __init__(self, space: Space, study_dir: Path, data, n_trials: int, log=print, phases: Phases | None = None,
                 progress: Callable[[], str] | None = None):
        self.space, self.dir, self.data, self.n_trials, self.log = space, study_dir, data, n_trials, log
        self.phases = phases or Phases()
        self.progress = progress or (lambda: "")

    def _check_surplus(self, trial) -> None:
        from optuna.trial import TrialState

        ahead = [t for t in trial.study.get_trials(deepcopy=False)
                 if t.number < trial.number and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)]
        if len(ahead) >= self.n_trials:
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            raise Surplus(f"trial {trial.number}: the study already has its {self.n_trials} trials")

    def __call__(self, trial) -> float | tuple[float, ...]:
        with self.phases(f"trial {trial.number}"):
            return self._run(trial)

    def _run(self, trial) -> float | tuple[float, ...]:
        optuna = _optuna()
        from onmkd.training.train import train

        trial.set_user_attr("worker", _worker())
        trial.set_user_attr("interrupted", False)  # a retried trial inherits its original's attributes
        self._check_surplus(trial)
        with self.phases("sample"):
            values = self.space.sample(trial)
        cfg = self.space.config(values)
        run = self.dir / "runs" / config_hash(cfg)
        trial.set_user_attr("run", str(run.relative_to(self.dir)))
        trial.set_user_attr("config", cfg.to_dict())
        objectives = self.space.study.objectives
        single = len(objectives) == 1
        self.log(f"trial {trial.number}: " + ", ".join(f"{k}={_short(v)}" for k, v in values.items()))

        def on_epoch(epoch: int, dev: dict) -> None:
            value = dev_value(dev, objectives[0])
            if single:
                trial.report(value, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"epoch {epoch + 1}: dev {objectives[0]} {value:.4f}")

        t0 = time.monotonic()
        try:
            result = train(cfg, run, self.data, log=lambda m: None, on_epoch=on_epoch, phases=self.phases)
        except optuna.TrialPruned as e:
            import shutil

            shutil.rmtree(run / "checkpoint", ignore_errors=True)  # never resumed: a pruned trial is final
            trial.set_user_attr("seconds", time.monotonic() - t0)
            self.log(f"trial {trial.number}: pruned at {e} after {time.monotonic() - t0:.0f} s{self.progress()}")
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        dev = result["dev"]
        trial.set_user_attr("dev", dev)
        mine = self.phases.current() + "/"  # this trial's phases (the final step prices its retrain from them)
        trial.set_user_attr("phases", {k[len(mine):]: round(v, 3) for k, v in self.phases.seconds.items()
                                       if k.startswith(mine)})
        with self.phases("efficiency"):
            eff = measure_student(run, self.data, cfg, self.space.study.latency_queries)
        trial.set_user_attr("efficiency", eff)
        trial.set_user_attr("seconds", time.monotonic() - t0)
        out = tuple(eff[o] if o in eff else dev[o] for o in objectives)
        self.log(f"trial {trial.number}: finished, dev {objectives[0]} {dev[objectives[0]]:.4f}, latency p50 "
                 f"{eff['query_ms_p50']:.2f} ms, {result['steps']} steps, {time.monotonic() - t0:.0f} s{self.progress()}")
        return out[0] if single else out


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(d.get("checkpoint", "?") + (f"/s{d['seed']}" if d.get("seed") else "") for d in v) + "]"
    return str(v)


def measure_student(run: Path, data, cfg: RunConfig, n: int) -> dict:
    """Parameters, checkpoint size and batch-1 query latency of a run's student on dev questions."""
    from onmkd.retrieval.evaluate import load_retriever
    from onmkd.study.profile import efficiency

    dual = load_retriever(str(run))
    split = data.split(cfg.data.dev_split)
    return efficiency(dual, list(split.queries.values()), q_max_len=cfg.data.q_max_len, n_latency=n)


def run_trials(space: Space, study, study_dir: Path, data, *, n_trials: int, timeout: float | None, log=print,
               started: float | None = None, phases: Phases | None = None) -> None:
    optuna = _optuna()
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    recover(study, log)
    c = counts(study)
    done = c["complete"] + c["pruned"]
    if done >= n_trials:
        log(f"study {study.study_name}: {done} of {n_trials} trials finished already")
        return
    log(f"study {study.study_name}: {done} of {n_trials} trials finished; running the rest")
    phases = phases or Phases()

    def progress() -> str:  # said as a trial ends, before Optuna records it: count it as done
        c = counts(study)
        done = c["complete"] + c["pruned"] + 1
        text = f"; {done}/{n_trials} trials done, {phases.wall():.0f} s into the sweep"
        if space.study.budget_s:
            text += f", {max(0.0, space.study.budget_s - phases.wall()):.0f} s of the budget left"
        return text

    objective = Objective(space, study_dir, data, n_trials, log, phases, progress)
    callbacks = [MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))]
    if space.study.budget_s and started is not None:
        callbacks.append(BudgetStop(space, started, log, len(data.corpus), REPORT_S))
    with _sigterm_as_interrupt():
        study.optimize(objective, n_trials=None, timeout=timeout or None, callbacks=callbacks,
                       catch=(Surplus,), gc_after_trial=True)


class BudgetStop:
    """Stop taking trials when one more trial and the final step would pass ``study.budget_s``.

    The final step is priced by :func:`plan_final` from the best trials' measured phases, with
    the first two final seeds (the least that gives a spread); what is left over buys a third."""

    def __init__(self, space: Space, started: float, log=print, corpus: int = 0, reserve: float = 0.0):
        self.space, self.started, self.log, self.corpus, self.reserve = space, started, log, corpus, reserve

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState

        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
                if "seconds" in t.user_attrs]
        if not any(t.state == TrialState.COMPLETE for t in done):
            return
        mean = sum(t.user_attrs["seconds"] for t in done) / len(done)
        final = plan_final(self.space, best_trials(study, self.space), None, self.corpus, min_seeds=2)["seconds"]
        used = time.monotonic() - self.started
        if used + mean + final + self.reserve > self.space.study.budget_s:
            self.log(f"budget: {used:.0f} s used, a trial takes about {mean:.0f} s and the final step about "
                     f"{final:.0f} s; no new trial within study.budget_s = {self.space.study.budget_s:.0f} s")
            study.stop()


def wait_for_running(study, log=print, poll_s: float = 10.0) -> None:
    """Wait until no trial is RUNNING (other workers finish theirs; dead ones are recovered)."""
    told = False
    while counts(study)["running"]:
        if not told:
            log("waiting for other workers' running trials before the final step")
            told = True
        recover(study, log)
        time.sleep(poll_s)


# --------------------------------------------------------------------------- final step

def best_trials(study, space: Space) -> list:
    """The configurations carried to the final step, chosen on dev only.

    Single objective: the ``final.top`` best complete trials (distinct configs). Several
    objectives: the Pareto front, ordered by the first objective.
    """
    from optuna.trial import TrialState

    top = space.final.top
    if len(space.study.objectives) > 1:
        front = sorted(study.best_trials, key=lambda t: -t.values[0])
        return front[:top]
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    done.sort(key=lambda t: (-t.value, t.number))
    chosen, seen = [], set()
    for t in done:
        key = t.user_attrs.get("run")
        if key not in seen:
            seen.add(key)
            chosen.append(t)
    return chosen[:top]


def final_step(space: Space, study, study_dir: Path, data, log=print, phases: Phases | None = None,
               seconds_left: float | None = None) -> list[dict]:
    """Train the chosen configs with the final seeds beside same-depth baselines; evaluate all on test.

    ``seconds_left``: what the budget leaves for this step; seeds (never below one) and then the
    encoders as released are cut to fit it, and the manifest says what was cut and why."""
    from onmkd.config import from_dict

    phases = phases or Phases()
    chosen = best_trials(study, space)
    if not chosen:
        log("final step: no complete trial to carry forward")
    plan = plan_final(space, chosen, seconds_left, len(data.corpus))
    for note in plan["cut"]:
        log(f"final step: {note}")
    entries: list[dict] = []
    for rank, t in enumerate(chosen, 1):
        cfg = from_dict(t.user_attrs["config"])
        tag = f" #{rank}" if len(chosen) > 1 else ""
        entries += _final_runs(space, cfg, tag, t.number, study_dir, data, log, phases, plan["seeds"])
        if space.final.reference:
            with phases(f"untrained{tag}"):
                entries.append(_untrained_reference(space, cfg, tag, study_dir, data))
    entries += _encoders_as_released(space, chosen, study_dir, data, log, phases, plan["encoders"])
    write_json(study_dir / MANIFEST, {"kind": "sweep", "study": study.study_name, "split": space.final.split,
                                      "selection": "dev", "runs": entries, "cut": plan["cut"],
                                      "planned_s": plan["seconds"]})
    return entries


def plan_final(space: Space, chosen: list, seconds_left: float | None, corpus: int = 0, min_seeds: int = 0) -> dict:
    """The final seeds and encoders that fit ``seconds_left`` (all of them when ``None``), priced
    from the chosen trials' own measured phases; ``cut`` says in words what was dropped.

    Prices: a final run of a chosen config costs its trial's training (set-up, steps, checkpoints,
    dev evaluation) plus a test evaluation, one encoding of the whole corpus (``corpus`` passages)
    at the trial's measured rate per passage and layer; a one-peer baseline costs a peer's share
    of that training plus its own test encoding; an encoder as released of L layers one corpus
    encoding at L layers plus 10 s to load (BM25: 10 s). ``min_seeds`` prices only that many seeds."""
    from onmkd.retrieval.models import REGISTRY

    f = space.final
    seeds, encoders = list(f.seeds)[: min_seeds or None], list(f.encoders)
    if not chosen:
        return {"seeds": seeds, "encoders": encoders, "cut": [], "seconds": 0.0}
    per_seed, reference, rate = 0.0, 0.0, 0.0
    for t in chosen:
        cfg, ph = t.user_attrs["config"], t.user_attrs.get("phases", {})
        peers, epochs, layers = int(cfg["model"].get("peers", 2)), max(1, int(cfg["train"]["epochs"])), int(cfg["model"]["layers"])
        train_s = sum(ph.get(k, 0.0) for k in ("setup", "steps", "checkpoint", "dev", "select")) or float(t.user_attrs.get("seconds", 60.0))
        pool = int(cfg["data"].get("dev_pool") or 0) or corpus or 1
        # seconds per passage and layer, from the dev evaluations (passages dominate their cost)
        r = ph.get("dev/passages", ph.get("dev", 0.2 * train_s)) / max(1, peers * epochs * min(pool, corpus or pool) * max(1, layers))
        rate = max(rate, r)
        test = r * (corpus or pool) * max(1, layers) + 5.0
        per_seed += train_s + test + len(f.baselines) * (train_s / max(1, peers) + test)
        reference += test if f.reference else 0.0

    def encoder_cost(name: str) -> float:
        if name == "bm25":
            return 10.0
        ck = REGISTRY.get(name)
        return rate * (corpus or 1) * (ck.layers if ck else 6) + 10.0

    def total(n_seeds: int, encs: list[str]) -> float:
        return per_seed * n_seeds + reference + sum(encoder_cost(e) for e in encs)

    cut = []
    if seconds_left is not None:
        while len(seeds) > min(2, len(f.seeds)) and total(len(seeds), encoders) > seconds_left:
            seeds.pop()  # never below two: a spread needs two seeds (the encoders go first)
        if len(seeds) < len(f.seeds):
            cut.append(f"seeds {seeds} of {list(f.seeds)}: the budget left {seconds_left:.0f} s and each seed "
                       f"costs about {per_seed:.0f} s")
        for name in sorted(encoders, key=encoder_cost, reverse=True):
            if total(len(seeds), encoders) <= seconds_left:
                break
            encoders.remove(name)
            cut.append(f"encoder {name} not evaluated: about {encoder_cost(name):.0f} s past the budget")
        if total(len(seeds), encoders) > seconds_left:
            cut.append(f"over the budget by about {total(len(seeds), encoders) - seconds_left:.0f} s with "
                       f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} and no encoder as released")
    return {"seeds": seeds, "encoders": encoders, "cut": cut, "seconds": total(len(seeds), encoders)}


def _layers(n: int) -> str:
    return f"({n} layer{'s' if n != 1 else ''})"


def _final_runs(space: Space, cfg: RunConfig, tag: str, trial: int, study_dir: Path, data, log,
                phases: Phases, seeds: list[int]) -> list[dict]:
    """A chosen trial's config with every final seed, each beside its same-depth baselines."""
    from onmkd.study.runs import run_dir, train_and_test

    f = space.final
    rows = []

    def run(c: RunConfig, label: str, role: str) -> None:
        log(f"final: {label}, seed {c.train.seed} -> {run_dir(study_dir, c).relative_to(study_dir)}")
        t0 = time.monotonic()
        with phases(f"{label} seed {c.train.seed}"):
            rows.append(train_and_test(c, study_dir, data, f.split, label=label, role=role, stage="final",
                                       latency_queries=space.study.latency_queries, extra={"trial": trial},
                                       phases=phases))
        log(f"final: {label}, seed {c.train.seed}: test {_first_metric(study_dir / rows[-1]['path'])} "
            f"in {time.monotonic() - t0:.0f} s ({phases.wall():.0f} s into the sweep)")

    for seed in seeds:
        seeded = replace(cfg, train=replace(cfg.train, seed=seed))
        run(seeded, f"OnMKD{tag} {_layers(cfg.model.layers)}", "onmkd")
        for method in f.baselines:
            run(as_method(seeded, method), f"{METHODS[method].label}{tag} {_layers(cfg.model.layers)}", "same-depth baseline")
    return rows


def _untrained_reference(space: Space, cfg: RunConfig, tag: str, study_dir: Path, data) -> dict:
    """The untrained truncation of the config's first peer, evaluated as a reference point."""
    from onmkd.study.runs import evaluate_folder
    from onmkd.retrieval.dual import DualEncoder
    from onmkd.training.peers import build_peer

    init, n = cfg.peer_inits()[0], cfg.model.layers
    out = study_dir / "baselines" / f"untrained-{config_hash(cfg)}"
    if not (out / "student").exists():
        enc, _ = build_peer(init, layers=n, pooling=cfg.model.pooling, normalize=cfg.model.normalize,
                            seed=0, field="model.peer[0]")
        DualEncoder(enc.eval()).save(out / "student", {"note": f"untrained truncation of {init.checkpoint}"})
    return evaluate_folder(str(out), out, study_dir, data, cfg, space.final.split, label=f"untrained{tag} {_layers(n)}",
                           role="reference", stage="final", latency_queries=space.study.latency_queries, layers=n)


def _encoders_as_released(space: Space, chosen: list, study_dir: Path, data, log, phases: Phases,
                          names: list[str]) -> list[dict]:
    """``final.encoders`` evaluated as released, with the lengths of the best config (else the space's)."""
    from onmkd.config import from_dict
    from onmkd.study.runs import encoder_dir, evaluate_encoder

    eval_cfg = from_dict(chosen[0].user_attrs["config"]) if chosen else space.config({})
    rows = []
    for name in names:
        log(f"final: {name} as it is -> {encoder_dir(study_dir, name).relative_to(study_dir)}")
        t0 = time.monotonic()
        with phases(name):
            rows.append(evaluate_encoder(name, study_dir, data, eval_cfg, space.final.split,
                                         label=Path(name).name if Path(name).exists() else name, stage="final",
                                         latency_queries=space.study.latency_queries))
        log(f"final: {name}: test {_first_metric(study_dir / rows[-1]['path'])} in {time.monotonic() - t0:.0f} s "
            f"({phases.wall():.0f} s into the sweep)")
    return rows


def _first_metric(folder: Path) -> str:
    import json

    try:
        m = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return "?"
    key = "acc@20" if "acc@20" in m else "ndcg@10"
    return f"{key} {m.get(key, float('nan')):.4f}"


def sweep(space: Space, study_dir: Path, *, storage: str | None = None, n_trials: int | None = None,
          timeout: float | None = None, final: bool = True, report: bool = True, log=print,
          workers: int | None = None, threads: int | None = None) -> Path:
    """Run (or resume) the study, then the final step and the report; returns the study directory.

    ``workers`` (default ``study.workers``): processes taking trials side by side on this machine,
    this one and ``workers - 1`` started here, sharing the CPU threads (``threads``, default
    PyTorch's) between them; the final step and the report run here with all threads."""
    from onmkd.data import load_dataset

    phases = Phases()
    started = phases.started
    os.environ.setdefault("TQDM_DISABLE", "1")  # a log line per trial and run; no encoding progress bars
    study_dir = Path(study_dir)
    n = n_trials if n_trials is not None else space.study.n_trials
    if n < 1:
        raise ConfigError(f"--n-trials: at least 1, got {n}")
    cfg0 = space.config({})
    if final and space.final.split in (cfg0.data.dev_split, cfg0.data.train_split):
        raise ConfigError(f"final.split: {space.final.split!r} is also the train or dev split; the final step needs unseen questions")
    with phases("setup"):
        data = load_dataset(cfg0.data.dataset)
        from onmkd.training.train import hold_out_dev

        data = hold_out_dev(data, cfg0)
        data.split(cfg0.data.dev_split)
        study = open_study(space, study_dir, storage)
    timeout = timeout if timeout is not None else (space.study.timeout or None)
    import torch

    total = threads or torch.get_num_threads()
    workers = workers if workers is not None else space.study.workers
    if workers < 1:
        raise ConfigError(f"--workers: at least 1, got {workers}")
    each = max(1, total // workers)
    name = "timings.json" if final or report else f"timings-{socket.gethostname()}-{os.getpid()}.json"
    helpers = []
    try:
        torch.set_num_threads(each)
        if workers > 1:
            helpers = start_workers(study_dir, storage, n, timeout, workers - 1, each, log)
        with phases("trials"):
            run_trials(space, study, study_dir, data, n_trials=n, timeout=timeout, log=log, started=phases.started,
                       phases=phases)
            for p in helpers:
                p.wait()
        torch.set_num_threads(total)
        _final_and_report(space, study, study_dir, data, final, report, log, phases)
    finally:
        for p in helpers:
            if p.poll() is None:
                p.terminate()
        torch.set_num_threads(total)
        save_timings(study_dir, phases, log, name)
    return study_dir


def start_workers(study_dir: Path, storage: str | None, n: int, timeout, count: int, threads: int, log) -> list:
    """Start ``count`` more trial workers on this study (``--no-final --no-report``), each with ``threads``."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "onmkd.cli", "sweep", "--space", str(study_dir / "space.toml"), "--study-dir",
           str(study_dir), "--n-trials", str(n), "--no-final", "--no-report", "--workers", "1", "--threads", str(threads)]
    if storage:
        cmd += ["--storage", storage]
    if timeout:
        cmd += ["--timeout", str(timeout)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log(f"{count} more worker{'s' if count > 1 else ''} on this study, {threads} thread{'s' if threads > 1 else ''} each")
    return [subprocess.Popen(cmd, env=env) for _ in range(count)]


def _final_and_report(space: Space, study, study_dir: Path, data, final: bool, report: bool, log, phases: Phases):
    if final:
        import fcntl

        with open(study_dir / ".final.lock", "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log("another worker is running the final step; this one stops here")
                return study_dir
            wait_for_running(study, log)
            if space.final.split in data.splits:
                left = space.study.budget_s - phases.wall() - REPORT_S if space.study.budget_s else None
                with phases("final"):
                    final_step(space, study, study_dir, data, log, phases, seconds_left=left)
            else:
                log(f"final step skipped: the data set has no {space.final.split!r} split")
    if report:
        from onmkd.study.report import build_report

        save_timings(study_dir, phases, None)  # the report's time table reads it
        with phases("report"):
            build_report([study_dir], study_dir / "report", log=log)


REPORT_S = 30.0  # what the report takes (tables and figures), kept out of the final step's budget


def save_timings(study_dir: Path, phases: Phases, log=print, name: str = "timings.json") -> dict:
    """Write ``timings.json`` (this command's phases and the rows by kind of work); print the table."""
    summary = phases.summary()
    others = []
    if name == "timings.json":  # workers started by this command left theirs beside it
        from onmkd.timing import read_summary

        others = [o for f in sorted(study_dir.glob("timings-*.json")) if (o := read_summary(f))
                  and o.get("started_unix", 0) >= summary["started_unix"] - 60]
    summary["workers"] = 1 + len(others)
    summary["by_kind"] = [{"kind": k, "seconds": s, "count": c} for k, s, c in by_kind(summary, others)]
    write_json(study_dir / name, summary)
    if log is not None:
        log(f"where the {summary['wall_s']:.0f} s went:")
        for row in summary["by_kind"]:
            log(f"  {row['kind']:<28} {row['seconds']:8.1f} s  ({row['count']}x)")
    return summary
