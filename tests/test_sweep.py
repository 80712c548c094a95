"""Sweeps: search-space checks, trials, pruning, interruption and resume, workers, final step, report."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from onmkd.errors import ConfigError
from onmkd.study.space import load_space


def space_text(model_dir, squad, *, trials=3, epochs=2, extra_params="", final="", study="", fixed=""):
    return f"""
[study]
name = "tiny"
n_trials = {trials}
startup_trials = 2
latency_queries = 5
{study}

[fixed]
"data.dataset" = "squad:{squad}"
"model.peer" = [{{ checkpoint = "{model_dir}" }}]
"model.layers" = 2
"train.batch_size" = 4
"train.epochs" = {epochs}
"train.checkpoint_every" = 1
"train.lr" = 1e-3
"train.eval_batch_size" = 8
"data.p_max_len" = 32
"data.q_max_len" = 16
{fixed}

[params]
"loss.alpha" = {{ type = "float", low = 0.1, high = 10.0, log = true }}
"loss.beta" = {{ type = "float", low = 0.0, high = 2.0 }}
{extra_params}

[final]
seeds = [1, 2]
baselines = ["dpr"]
encoders = ["{model_dir}", "bm25"]
{final}
"""


def write_space(tmp_path, *args, **kwargs) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(space_text(*args, **kwargs))
    return path


def cli(*args, timeout=600, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "onmkd.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, **kwargs)


def study_of(study_dir):
    import optuna

    info = json.loads((Path(study_dir) / "study.json").read_text())
    return optuna.load_study(study_name=info["name"], storage=info["storage"])


def finished(study):
    return [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]


# --------------------------------------------------------------------------- the space


@pytest.mark.parametrize("params, message", [
    ('"loss.alpah" = { type = "float", low = 0.1, high = 1.0 }', "unknown config field 'alpah' in 'loss.alpah' (did you mean 'alpha'?)"),
    ('"loss.tau" = { type = "float", low = 0.5, high = 0.5 }', "params.'loss.tau': empty range: low = 0.5 is not below high = 0.5"),
    ('"loss.tau" = { type = "float", low = 0.0, high = 0.5, log = true }', "params.'loss.tau': a log range needs low > 0"),
    ('"loss.tau" = { type = "floot", low = 0.1, high = 0.5 }', "params.'loss.tau'.type: 'floot' is not one of float, int, categorical"),
    ('"loss.tau" = { type = "float", low = 0.1, hihg = 0.5 }', "params.'loss.tau': unknown key 'hihg' (did you mean 'high'?)"),
    ('"model.layers" = { type = "int", low = 1.5, high = 3 }', "params.'model.layers'.low: expected an integer"),
    ('"train.method" = { type = "categorical", choices = [] }', "params.'train.method'.choices: a non-empty list"),
    ('"train.method" = { type = "categorical", choices = ["onmkd", "bogus"] }', "params.'train.method' = \"bogus\": train.method: 'bogus' is not one of"),
    ('"loss.alpha" = { type = "float", low = -1.0, high = 1.0 }', "params.'loss.alpha' = -1.0: loss.alpha: must be ≥ 0"),
    ('"data.bogus" = { type = "int", low = 1, high = 3 }', "unknown config field 'bogus' in 'data.bogus'"),
    ('"loss.beta" = { type = "float", low = 0.1, high = 1.0, when = { "train.methd" = ["onmkd"] } }', "when: 'train.methd' is neither a config field"),
])
def test_bad_space_fails_naming_the_entry(tmp_path, params, message):
    path = tmp_path / "space.toml"
    path.write_text(f"[params]\n{params}\n")
    with pytest.raises(ConfigError) as e:
        load_space(path)
    assert message in str(e.value)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("[studdy]\nname = 'x'\n", "unknown key 'studdy' (did you mean 'study'?)"),
    ("[study]\nn_trails = 3\n[params]\n\"loss.tau\" = { type = \"float\", low = 0.1, high = 0.5 }\n", "study: unknown key 'n_trails' (did you mean 'n_trials'?)"),
    ("[study]\nobjectives = ['speed']\n[params]\n\"loss.tau\" = { type = \"float\", low = 0.1, high = 0.5 }\n", "study.objectives[0]: 'speed' is not a dev metric"),
    ("[params]\n", "[params] is empty"),
    ("[fixed]\n\"model.layers\" = 9\n[params]\n\"loss.tau\" = { type = \"float\", low = 0.1, high = 0.5 }\n", "model.layers = 9 is beyond minilm-l6's 6 layers"),
    ("[final]\nbaselines = ['bert']\n[params]\n\"loss.tau\" = { type = \"float\", low = 0.1, high = 0.5 }\n", "final.baselines: 'bert' is not one of"),
    ("[params\n", "space.toml: Expected"),
])
def test_bad_study_sections(tmp_path, text, message):
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_space(path)
    assert message in str(e.value)


def test_bad_space_stops_the_cli_before_any_trial(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text('[params]\n"loss.alpah" = { type = "float", low = 0.1, high = 1.0 }\n')
    r = cli("sweep", "--space", str(path), "--study-dir", str(tmp_path / "study"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "loss.alpah" in r.stderr
    assert not (tmp_path / "study").exists()


def test_default_space_and_sampled_configs():
    space = load_space()
    assert space.study.name == "default" and space.study.objectives == ("acc@20",)
    cfg = space.config({"model.peer": space.params[-1].named["same"], "model.peer[*].layer_rule": "even",
                        "model.layers": 3, "loss.alpha": 0.5})
    assert [p.checkpoint for p in cfg.model.peer] == ["minilm-l6", "minilm-l6"]
    assert [p.layer_rule for p in cfg.model.peer] == ["even", "even"]
    assert (cfg.model.layers, cfg.loss.alpha, cfg.data.max_train_questions) == (3, 0.5, 128)


def test_conditional_param_is_sampled_only_when_its_condition_holds(tmp_path, tiny_model_dir, tiny_squad):
    import optuna

    extra = ('"train.method" = { type = "categorical", choices = ["onmkd", "dml"] }\n'
             '"loss.cross_temperature" = { type = "float", low = 0.02, high = 0.2, when = { "train.method" = ["onmkd"] } }')
    space = load_space(write_space(tmp_path, tiny_model_dir, tiny_squad, extra_params=extra))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        values = space.sample(study.ask())
        assert ("loss.cross_temperature" in values) == (values["train.method"] == "onmkd")


# --------------------------------------------------------------------------- a whole sweep


def test_sweep_final_step_and_report(tmp_path, tiny_model_dir, tiny_squad):
    from onmkd.study.report import collect
    from onmkd.study.sweep import sweep

    space = load_space(write_space(tmp_path, tiny_model_dir, tiny_squad, trials=3))
    study_dir = tmp_path / "study"
    sweep(space, study_dir, log=lambda m: None)
    study = study_of(study_dir)
    assert len(finished(study)) == 3
    assert all(0 in t.intermediate_values and 1 in t.intermediate_values for t in study.trials if t.state.name == "COMPLETE")
    man = json.loads((study_dir / "manifest.json").read_text())
    roles = [e["role"] for e in man["runs"]]
    assert roles.count("onmkd") == 2 and roles.count("same-depth baseline") == 2
    assert {"reference", "lexical", "small baseline"} <= set(roles)
    assert all(e["split"] == "test" for e in man["runs"])
    # selection on dev: the final configs are the best dev trial's, with new seeds
    best = max((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    for e in man["runs"]:
        if e["role"] == "onmkd":
            cfg = json.loads((study_dir / e["path"]).parent.joinpath("config.json").read_text())
            assert cfg["loss"]["alpha"] == best.params["loss.alpha"] and cfg["train"]["seed"] in (1, 2)
    report = study_dir / "report"
    for name in ("results.csv", "table_main.md", "table_main.tex", "table_layers.md", "README.md",
                 "figures/recall_latency.png", "figures/recall_latency.pdf", "figures/optuna_history.png"):
        assert (report / name).stat().st_size > 0, name
    # every number in the tables comes from a metrics.json
    df = collect([study_dir])
    test_rows = df[df["split"] == "test"]
    for _, row in test_rows.iterrows():
        m = json.loads(Path(row["source"]).read_text())
        for k in ("acc@20", "recall@20", "query_ms_p50", "params_m"):
            if k in m:
                assert row[k] == m[k]
    main = (report / "table_main.md").read_text()
    for col in ("acc@20", "mrr@10", "query_ms_p50"):
        vals = test_rows[test_rows["role"] == "onmkd"][col]
        digits = 2 if col == "query_ms_p50" else 3
        expect = f"{vals.iloc[0]:.{digits}f}" if len(vals) == 1 else f"{vals.mean():.{digits}f} ± {vals.std(ddof=1):.{digits}f}"
        assert expect in main, col
    bm25 = json.loads((study_dir / "baselines" / "bm25" / "metrics.json").read_text())
    assert f"{bm25['acc@20']:.3f}" in main
    csv = pd.read_csv(report / "results.csv")
    assert len(csv) == len(df)
    # a rerun does nothing twice: no new trial, no retraining
    n_before = len(study.trials)
    sweep(space, study_dir, log=lambda m: None)
    assert len(study_of(study_dir).trials) == n_before


def test_pruned_trial_stops_training_and_drops_its_checkpoint(tmp_path, tiny_model_dir, tiny_squad, monkeypatch):
    import optuna

    from onmkd.study import sweep as sweep_mod

    monkeypatch.setattr(sweep_mod, "make_pruner", lambda spec: optuna.pruners.ThresholdPruner(lower=2.0))
    space = load_space(write_space(tmp_path, tiny_model_dir, tiny_squad, trials=2, epochs=3))
    sweep_mod.sweep(space, tmp_path / "study", final=False, report=False, log=lambda m: None)
    study = study_of(tmp_path / "study")
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    for t in study.trials:
        run = tmp_path / "study" / t.user_attrs["run"]
        assert list(t.intermediate_values) == [0]
        assert not (run / "checkpoint").exists() and not (run / "metrics.json").exists()


def test_budget_stops_taking_trials_when_the_final_step_would_not_fit(tmp_path, tiny_model_dir, tiny_squad):
    from onmkd.study.sweep import sweep

    space = load_space(write_space(tmp_path, tiny_model_dir, tiny_squad, trials=4, epochs=1, study="budget_s = 1"))
    logs = []
    sweep(space, tmp_path / "study", final=False, report=False, log=logs.append)
    study = study_of(tmp_path / "study")
    assert len(study.trials) == 1 and study.trials[0].user_attrs["seconds"] > 0
    assert any(m.startswith("budget: ") for m in logs)


def test_ctrl_c_marks_the_trial_and_the_rerun_retries_it(tmp_path, tiny_model_dir, tiny_squad, monkeypatch):
    from onmkd.study import sweep as sweep_mod
    from onmkd.training.train import Trainer

    space = load_space(write_space(tmp_path, tiny_model_dir, tiny_squad, trials=2, epochs=2))
    real = Trainer.dev_eval
    calls = {"n": 0}

    def interrupted_once(self, epoch):
        calls["n"] += 1
        if calls["n"] == 2:  # first trial, second epoch
            raise KeyboardInterrupt
        return real(self, epoch)

    monkeypatch.setattr(Trainer, "dev_eval", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        sweep_mod.sweep(space, tmp_path / "study", final=False, report=False, log=lambda m: None)
    study = study_of(tmp_path / "study")
    assert [(t.state.name, t.user_attrs.get("interrupted")) for t in study.trials] == [("FAIL", True)]
    assert (tmp_path / "study" / study.trials[0].user_attrs["run"] / "checkpoint" / "state.pt").exists()
    sweep_mod.sweep(space, tmp_path / "study", final=False, report=False, log=lambda m: None)
    study = study_of(tmp_path / "study")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 2 and states[0] == "FAIL"
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].params == study.trials[0].params
    assert retry[0].user_attrs["run"] == study.trials[0].user_attrs["run"]  # the same run directory, resumed


def _kill_when(proc, predicate, limit=300):
    t0 = time.time()
    while time.time() - t0 < limit:
        if predicate():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    proc.kill()
    return False


def test_kill_9_mid_trial_then_rerun_loses_and_repeats_nothing(tmp_path, tiny_model_dir, tiny_squad):
    space = write_space(tmp_path, tiny_model_dir, tiny_squad, trials=3, epochs=4)
    study_dir = tmp_path / "study"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    args = [sys.executable, "-m", "onmkd.cli", "sweep", "--space", str(space), "--study-dir", str(study_dir), "--no-final", "--no-report"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def second_trial_checkpointed():
        runs = sorted((study_dir / "runs").glob("*/checkpoint/state.pt")) if (study_dir / "runs").exists() else []
        done = list((study_dir / "runs").glob("*/metrics.json")) if (study_dir / "runs").exists() else []
        return len(done) >= 1 and runs

    assert _kill_when(proc, second_trial_checkpointed), "the sweep ended before it could be killed"
    study = study_of(study_dir)
    before = {t.number: (t.state.name, t.params) for t in study.trials}
    assert any(s == "RUNNING" for s, _ in before.values())
    complete_before = {n: p for n, (s, p) in before.items() if s == "COMPLETE"}
    r = cli("sweep", "--space", str(space), "--study-dir", str(study_dir), "--no-final", "--no-report")
    assert r.returncode == 0, r.stderr
    assert "re-queued trial(s)" in r.stderr
    study = study_of(study_dir)
    done = finished(study)
    assert len(done) == 3
    for n, p in complete_before.items():  # finished trials are kept as they were
        assert study.trials[n].state.name == "COMPLETE" and study.trials[n].params == p
    keys = [json.dumps(t.params, sort_keys=True) for t in done]
    assert len(set(keys)) == len(keys)  # nothing finished twice
    dead = [n for n, (s, _) in before.items() if s == "RUNNING"]
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") in dead]
    assert study.trials[dead[0]].state.name == "FAIL" and len(retried) == 1
    log = (study_dir / retried[0].user_attrs["run"] / "log.jsonl").read_text().splitlines()
    steps = [json.loads(x)["step"] for x in log]
    assert steps == list(range(1, len(steps) + 1))  # resumed from its checkpoint: each step once


def test_two_workers_share_one_study(tmp_path, tiny_model_dir, tiny_squad):
    space = write_space(tmp_path, tiny_model_dir, tiny_squad, trials=5, epochs=1)
    study_dir = tmp_path / "study"
    # create the study first so that both workers load the same one
    assert cli("sweep", "--space", str(space), "--study-dir", str(study_dir), "--n-trials", "1", "--no-final", "--no-report").returncode == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    args = [sys.executable, "-m", "onmkd.cli", "sweep", "--space", str(space), "--study-dir", str(study_dir), "--no-final", "--no-report"]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    study = study_of(study_dir)
    done = finished(study)
    assert len(done) == 5
    keys = [json.dumps(t.params, sort_keys=True) for t in done]
    assert len(set(keys)) == 5
    workers = {t.user_attrs["worker"]["pid"] for t in done[1:]}
    assert len(workers) == 2  # both took trials
    assert all(t.state.name in ("COMPLETE", "PRUNED") or t.user_attrs.get("surplus") for t in study.trials)


def test_two_machines_share_a_postgresql_study(tmp_path, tiny_model_dir, tiny_squad):
    """Two workers with their own study folders (two machines) and one PostgreSQL storage URL:
    N trials between them, none twice. run.sh test starts a throwaway server (.ci/postgres.sh)."""
    url = os.environ.get("ONMKD_TEST_POSTGRES")
    if not url:
        if os.environ.get("ONMKD_REQUIRE_POSTGRES"):
            pytest.fail("ONMKD_REQUIRE_POSTGRES is set but no server was started (ONMKD_TEST_POSTGRES is empty)")
        pytest.skip("no PostgreSQL server: install PostgreSQL and use ./run.sh test, or set ONMKD_TEST_POSTGRES")
    import uuid

    space = tmp_path / "space.toml"
    space.write_text(space_text(tiny_model_dir, tiny_squad, trials=4, epochs=1).replace(
        'name = "tiny"', f'name = "tiny-{uuid.uuid4().hex[:8]}"'))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "onmkd.cli", "sweep", "--space", str(space), "--storage", url,
                               "--study-dir", str(tmp_path / f"machine-{i}"), "--no-final", "--no-report"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    info = json.loads((tmp_path / "machine-0" / "study.json").read_text())
    assert info["storage"] == url
    study = study_of(tmp_path / "machine-0")
    done = finished(study)
    assert len(done) == 4
    keys = [json.dumps(t.params, sort_keys=True) for t in done]
    assert len(set(keys)) == 4
    assert {t.user_attrs["worker"]["pid"] for t in done} == {p.pid for p in procs}  # both took trials
    assert all(t.state.name in ("COMPLETE", "PRUNED") or t.user_attrs.get("surplus") for t in study.trials)


# --------------------------------------------------------------------------- the default study's time


@pytest.mark.slow
def test_default_space_on_tiny_data_accounts_for_its_wall_time(tmp_path, tiny_squad):
    """The default space (its params, pruner, final step, packaged encoders) on the tiny SQuAD: the
    phases in timings.json add up to the command's wall time within 10 %, a rerun resumes and adds
    no trial beyond n_trials, and the final step keeps to the budget's plan."""
    import time as _time

    from onmkd.study.sweep import sweep

    default = (Path(__file__).resolve().parent.parent / "onmkd" / "spaces" / "default.toml").read_text()
    text = default.replace("[fixed]\n", f'[fixed]\n"data.dataset" = "squad:{tiny_squad}"\n"train.batch_size" = 4\n', 1)
    path = tmp_path / "space.toml"
    path.write_text(text)
    space = load_space(path)
    study_dir = tmp_path / "study"
    t0 = _time.monotonic()
    sweep(space, study_dir, log=lambda m: None)
    wall = _time.monotonic() - t0
    timings = json.loads((study_dir / "timings.json").read_text())
    assert abs(timings["wall_s"] - wall) <= 0.1 * wall
    top = sum(timings["top"].values())
    assert abs(top + timings["unaccounted_s"] - timings["wall_s"]) < 1e-6
    assert timings["unaccounted_s"] <= 0.1 * timings["wall_s"], timings["top"]
    kinds = {r["kind"] for r in timings["by_kind"]}
    assert {"setup", "trials/steps", "trials/dev", "final", "report"} <= kinds
    study = study_of(study_dir)
    n = space.study.n_trials
    assert len(finished(study)) == n
    assert all("phases" in t.user_attrs for t in study.trials if t.state.name == "COMPLETE")
    report = (study_dir / "report" / "README.md").read_text()
    assert "Where the time went" in report
    # a rerun resumes: no trial beyond n_trials, nothing trained again
    sweep(space, study_dir, log=lambda m: None)
    assert len(finished(study_of(study_dir))) == n and len(study_of(study_dir).trials) == len(study.trials)
