"""Optuna sweeps: trials trained and selected on dev, then a final step on test, then the report.

Study directory (``--study-dir``, default ``runs/sweep/NAME``)::

    space.toml      the search space the study was created with (a rerun must use the same)
    study.db        the Optuna storage (SQLite) unless ``--storage URL`` names another
    study.json      name, storage URL, objectives and directions (what the report reads)
    runs/HASH/      one training run directory per distinct config (trials and final runs)
    baselines/NAME/ evaluation run directories of encoders used as they are (teacher, BM25, ...)
    manifest.json   the final step's runs: label, role, seed, split (written last)
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
    def __init__(self, space: Space, study_dir: Path, data, n_trials: int, log=print):
        self.space, self.dir, self.data, self.n_trials, self.log = space, study_dir, data, n_trials, log

    def _check_surplus(self, trial) -> None:
        from optuna.trial import TrialState

        ahead = [t for t in trial.study.get_trials(deepcopy=False)
                 if t.number < trial.number and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)]
        if len(ahead) >= self.n_trials:
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            raise Surplus(f"trial {trial.number}: the study already has its {self.n_trials} trials")

    def __call__(self, trial) -> float | tuple[float, ...]:
        optuna = _optuna()
        from onmkd.training.train import train

        trial.set_user_attr("worker", _worker())
        trial.set_user_attr("interrupted", False)  # a retried trial inherits its original's attributes
        self._check_surplus(trial)
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
            result = train(cfg, run, self.data, log=lambda m: None, on_epoch=on_epoch)
        except optuna.TrialPruned:
            import shutil

            shutil.rmtree(run / "checkpoint", ignore_errors=True)  # never resumed: a pruned trial is final
            self.log(f"trial {trial.number}: pruned")
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        dev = result["dev"]
        trial.set_user_attr("dev", dev)
        eff = measure_student(run, self.data, cfg, self.space.study.latency_queries)
        trial.set_user_attr("efficiency", eff)
        trial.set_user_attr("seconds", time.monotonic() - t0)
        out = tuple(eff[o] if o in eff else dev[o] for o in objectives)
        self.log(f"trial {trial.number}: dev {objectives[0]} {dev[objectives[0]]:.4f}"
                 f"  latency p50 {eff['query_ms_p50']:.2f} ms  ({result['steps']} steps)")
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
               started: float | None = None) -> None:
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
    objective = Objective(space, study_dir, data, n_trials, log)
    callbacks = [MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))]
    if space.study.budget_s and started is not None:
        callbacks.append(BudgetStop(space, started, log))
    with _sigterm_as_interrupt():
        study.optimize(objective, n_trials=None, timeout=timeout or None, callbacks=callbacks,
                       catch=(Surplus,), gc_after_trial=True)


def final_cost(space: Space, trial_s: float, chosen_s: list[float] | None = None) -> float:
    """Seconds the final step should take.

    ``trial_s``: mean duration of a complete trial (prices the encoders' evaluations);
    ``chosen_s``: durations of the trials the final step would retrain now (default: ``trial_s``
    for each of ``final.top``). A final run retrains one of them and also evaluates on test
    (x1.25, measured: a 3-layer OnMKD trial of 129 s gave final runs of about 160 s); a
    same-depth baseline trains one student (x0.6 of that)."""
    f = space.final
    chosen = list(chosen_s) if chosen_s else [trial_s] * f.top
    runs = sum(1.25 * s for s in chosen) * len(f.seeds) * (1 + 0.6 * len(f.baselines))
    return runs + trial_s * (0.4 * len(f.encoders) + (0.3 if f.reference else 0)) + 30


class BudgetStop:
    """Stop taking trials when one more trial and the final step would pass ``study.budget_s``."""

    def __init__(self, space: Space, started: float, log=print):
        self.space, self.started, self.log = space, started, log

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState

        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "seconds" in t.user_attrs]
        if not done:
            return
        mean = sum(t.user_attrs["seconds"] for t in done) / len(done)
        chosen = [t.user_attrs.get("seconds", mean) for t in best_trials(study, self.space)]
        final = final_cost(self.space, mean, chosen)
        used = time.monotonic() - self.started
        if used + mean + final > self.space.study.budget_s:
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


def final_step(space: Space, study, study_dir: Path, data, log=print) -> list[dict]:
    """Train the chosen configs with the final seeds beside same-depth baselines; evaluate all on test."""
    from onmkd.config import from_dict

    chosen = best_trials(study, space)
    if not chosen:
        log("final step: no complete trial to carry forward")
    entries: list[dict] = []
    for rank, t in enumerate(chosen, 1):
        cfg = from_dict(t.user_attrs["config"])
        tag = f" #{rank}" if len(chosen) > 1 else ""
        entries += _final_runs(space, cfg, tag, t.number, study_dir, data, log)
        if space.final.reference:
            entries.append(_untrained_reference(space, cfg, tag, study_dir, data))
    entries += _encoders_as_released(space, chosen, study_dir, data, log)
    write_json(study_dir / MANIFEST, {"kind": "sweep", "study": study.study_name, "split": space.final.split,
                                      "selection": "dev", "runs": entries})
    return entries


def _layers(n: int) -> str:
    return f"({n} layer{'s' if n != 1 else ''})"


def _final_runs(space: Space, cfg: RunConfig, tag: str, trial: int, study_dir: Path, data, log) -> list[dict]:
    """A chosen trial's config with every final seed, each beside its same-depth baselines."""
    from onmkd.study.runs import run_dir, train_and_test

    f = space.final
    rows = []

    def run(c: RunConfig, label: str, role: str) -> None:
        log(f"final: {label}, seed {c.train.seed} -> {run_dir(study_dir, c).relative_to(study_dir)}")
        rows.append(train_and_test(c, study_dir, data, f.split, label=label, role=role, stage="final",
                                   latency_queries=space.study.latency_queries, extra={"trial": trial}))

    for seed in f.seeds:
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


def _encoders_as_released(space: Space, chosen: list, study_dir: Path, data, log) -> list[dict]:
    """``final.encoders`` evaluated as released, with the lengths of the best config (else the space's)."""
    from onmkd.config import from_dict
    from onmkd.study.runs import encoder_dir, evaluate_encoder

    eval_cfg = from_dict(chosen[0].user_attrs["config"]) if chosen else space.config({})
    rows = []
    for name in space.final.encoders:
        log(f"final: {name} as it is -> {encoder_dir(study_dir, name).relative_to(study_dir)}")
        rows.append(evaluate_encoder(name, study_dir, data, eval_cfg, space.final.split,
                                     label=Path(name).name if Path(name).exists() else name, stage="final",
                                     latency_queries=space.study.latency_queries))
    return rows


def sweep(space: Space, study_dir: Path, *, storage: str | None = None, n_trials: int | None = None,
          timeout: float | None = None, final: bool = True, report: bool = True, log=print) -> Path:
    """Run (or resume) the study, then the final step and the report; returns the study directory."""
    from onmkd.data import load_dataset

    started = time.monotonic()
    os.environ.setdefault("TQDM_DISABLE", "1")  # a log line per trial and run; no encoding progress bars
    study_dir = Path(study_dir)
    n = n_trials if n_trials is not None else space.study.n_trials
    if n < 1:
        raise ConfigError(f"--n-trials: at least 1, got {n}")
    cfg0 = space.config({})
    if final and space.final.split in (cfg0.data.dev_split, cfg0.data.train_split):
        raise ConfigError(f"final.split: {space.final.split!r} is also the train or dev split; the final step needs unseen questions")
    data = load_dataset(cfg0.data.dataset)
    from onmkd.training.train import hold_out_dev

    data = hold_out_dev(data, cfg0)
    data.split(cfg0.data.dev_split)
    study = open_study(space, study_dir, storage)
    timeout = timeout if timeout is not None else (space.study.timeout or None)
    run_trials(space, study, study_dir, data, n_trials=n, timeout=timeout, log=log, started=started)
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
                final_step(space, study, study_dir, data, log)
            else:
                log(f"final step skipped: the data set has no {space.final.split!r} split")
    if report:
        from onmkd.study.report import build_report

        build_report([study_dir], study_dir / "report", log=log)
    return study_dir
