"""The findings plan: compute-matched controls, several benchmarks, resumable runs, paired statistics."""

import json
import shutil

import numpy as np
import pytest

from onmkd.errors import ConfigError
from onmkd.study.findings import load_findings, run_findings


def write_findings(tmp_path, model_dir, squad):
    def config(peers: int, method: str) -> str:
        blocks = "".join(f'[[model.peer]]\ncheckpoint = "{model_dir}"\nseed = {k}\n' for k in range(peers))
        return (f'[data]\ndataset = "squad"\np_max_len = 32\nq_max_len = 16\n[model]\npeers = {peers}\nlayers = 2\n'
                f'{blocks}[train]\nmethod = "{method}"\nbatch_size = 4\nepochs = 1\nlr = 1e-3\neval_batch_size = 8\n')

    (tmp_path / "onmkd.toml").write_text(config(2, "onmkd"))
    (tmp_path / "independent.toml").write_text(config(2, "independent"))
    (tmp_path / "dpr.toml").write_text(config(1, "dpr"))
    other = tmp_path / "other-squad.json"  # a second benchmark: the same tiny articles, another file
    shutil.copy(squad, other)
    plan = tmp_path / "findings.toml"
    plan.write_text(f"""
[paper]
seeds = [0, 1]
encoders = ["bm25"]
budget = {{ "train.checkpoint_every" = 2 }}

[benchmarks]
a = "squad:{squad}"
b = "squad:{other}"

[[main]]
label = "DPR"
config = "dpr.toml"

[[main]]
label = "OnMKD"
role = "onmkd"
config = "onmkd.toml"

[[main]]
label = "DPR, 2x steps"
role = "compute-matched"
config = "dpr.toml"
steps = 2

[[main]]
label = "DPR ensemble of 2"
role = "compute-matched"
config = "dpr.toml"
ensemble = 2

[[main]]
label = "Independent peers"
role = "compute-matched"
config = "independent.toml"

[curves]
epochs = [1, 2]
configs = {{ OnMKD = "onmkd.toml", DPR = "dpr.toml" }}
benchmarks = ["a"]

[settings]
reference = "onmkd.toml"
variants = {{ "beta = 0.1" = ["loss.beta=0.1"] }}
benchmarks = ["a"]

[transfer]
labels = ["OnMKD", "DPR"]

[tuning]
lr = [1e-3, 3e-3]
benchmarks = ["a"]
""")
    return plan


@pytest.fixture(scope="module")
def two_models(tiny_model_dir, tmp_path_factory):
    """The tiny model and a copy with perturbed weights: two different members."""
    import torch
    from transformers import BertModel, BertTokenizerFast

    other = tmp_path_factory.mktemp("tiny-bert-other")
    model = BertModel.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(other)
    BertTokenizerFast.from_pretrained(tiny_model_dir).save_pretrained(other)
    return [str(tiny_model_dir), str(other)]


def test_ensemble_scores_are_the_average_of_its_members_scores(two_models, tiny_squad, tmp_path):
    from numerics import gamma

    from onmkd.data import load_dataset, passage_text
    from onmkd.retrieval.ensemble import evaluate_ensemble
    from onmkd.retrieval.evaluate import EvalConfig, load_retriever
    from onmkd.retrieval.metrics import read_trec_run

    data = load_dataset(f"squad:{tiny_squad}")
    cfg = EvalConfig(model="ensemble", dataset="x", split="test", q_max_len=16, p_max_len=32, batch_size=8, cache=False)
    metrics = evaluate_ensemble(two_models, data, cfg, tmp_path / "ens")
    run = read_trec_run(tmp_path / "ens" / "run.trec")
    split = data.split("test")
    qids, pids = list(split.queries), list(data.corpus)
    texts = [passage_text(data.corpus[p], True) for p in pids]
    q, p = [], []
    for m in two_models:
        dual = load_retriever(m)
        q.append(dual.question.encode([split.queries[x] for x in qids], max_length=16, batch_size=8).astype(np.float64))
        p.append(dual.passage.encode(texts, max_length=32, batch_size=8).astype(np.float64))
    members = [qk @ pk.T for qk, pk in zip(q, p)]
    assert not np.allclose(members[0], members[1])  # two different models
    average = (members[0] + members[1]) / 2
    # faiss sums 2·dim float32 products: |error| <= gamma(2·dim) · sum_k |q_k| |p_k| / 2
    dim = q[0].shape[1]
    bound = gamma(2 * dim) * sum(np.outer(np.linalg.norm(qk, axis=1), np.linalg.norm(pk, axis=1)) for qk, pk in zip(q, p)) / 2
    seen = 0
    for i, qid in enumerate(qids):
        for pid, score in run[qid].items():
            j = pids.index(pid)
            assert abs(score - average[i, j]) <= bound[i, j] + 1e-8 * max(1.0, abs(score)), (qid, pid)  # + 9 printed digits
            seen += 1
    assert seen == len(qids) * len(pids)  # top_k 100 > 10 passages: every pair was scored
    assert metrics["members"] == 2 and metrics["questions"] == len(qids)
    with pytest.raises(ConfigError, match="at least 2 members"):
        evaluate_ensemble(two_models[:1], data, cfg)


def test_findings_plan_trains_each_run_once_resumes_and_compares_question_by_question(tmp_path, tiny_model_dir, tiny_squad):
    from onmkd.study import stats
    from onmkd.study.findings_report import collect

    plan = load_findings(write_findings(tmp_path, tiny_model_dir, tiny_squad))
    main = [r for r in plan.rows if r.table == "main" and r.benchmark == "a"]
    dpr, twice = main[0].config, main[2].config
    assert twice.train.epochs == 2 * dpr.train.epochs  # steps = 2
    assert main[3].members == 2 and [c.train.seed for c in main[3].member_configs(5)] == [5, 1005]
    assert all(r.config.data.dataset.endswith("other-squad.json") for r in plan.rows if r.benchmark == "b")
    out, logs = tmp_path / "out", []
    run_findings(plan, out, report_dir=tmp_path / "report", command="test", log=logs.append)
    assert "to go: about" in logs[0]
    man = json.loads((out / "manifest.json").read_text())
    rows = man["runs"]
    by = {(r["benchmark"], r["table"], r["label"], r.get("test_on"), r.get("x"), r.get("seed")): r for r in rows}
    one = by[("a", "main", "DPR", "a", None, 0)]
    # the compute-matched rows train what OnMKD's two peers train
    for label in ("OnMKD", "DPR, 2x steps", "DPR ensemble of 2", "Independent peers"):
        assert by[("a", "main", label, "a", None, 0)]["student_steps"] == 2 * one["student_steps"], label
    assert by[("a", "main", "DPR ensemble of 2", "a", None, 0)]["path"].startswith("ensembles/")
    # DPR at 2 epochs in the curve is the "2x steps" run: trained once
    assert by[("a", "curve", "DPR", "a", 2.0, 1)]["path"] == by[("a", "main", "DPR, 2x steps", "a", None, 1)]["path"]
    assert by[("a", "transfer", "OnMKD", "b", None, 1)]["path"].endswith("transfer-b")
    trained = {r["path"].split("/")[1] for r in rows if r["path"].startswith("runs/")}
    members = {m.split("/")[1] for r in rows for m in r.get("member_runs", [])}
    assert len(members - trained) == 2 * 2  # the ensembles' second students (2 benchmarks x 2 seeds)
    # [tuning]: every main row of benchmark a trained once per rate with seed 0; the best dev rate is the row's
    record = man["tuning"]["a"]
    assert set(record) == {"DPR", "OnMKD", "DPR, 2x steps", "DPR ensemble of 2", "Independent peers"} and "b" not in man["tuning"]
    for label, e in record.items():
        dev = {float(k): v for k, v in e["dev"].items()}
        assert set(dev) == {1e-3, 3e-3} and e["chosen"] == max(dev, key=dev.get), label
        for bench, want in (("a", e["chosen"]), ("b", 1e-3)):
            for seed in (0, 1):
                assert by[(bench, "main", label, bench, None, seed)]["lr"] == want, (label, bench, seed)
        run = json.loads((out / e["runs"][repr(e["chosen"])] / "metrics.json").read_text())
        assert run["dev"]["mrr@10"] == dev[e["chosen"]]
    assert record["DPR ensemble of 2"]["runs"] == record["DPR"]["runs"]  # its members' config: DPR's tuning runs
    assert by[("a", "transfer", "OnMKD", "b", None, 0)]["lr"] == record["OnMKD"]["chosen"]
    tuning_runs = {r for e in record.values() for r in e["runs"].values()}
    assert len(tuning_runs) == 4 * 2  # 4 training configs (the ensemble shares DPR's) x 2 rates
    assert {p.name for p in (out / "runs").iterdir()} == trained | members | {r.split("/")[1] for r in tuning_runs}
    # a rerun trains and evaluates nothing again
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    logs.clear()
    run_findings(plan, out, report_dir=tmp_path / "report", command="test", log=logs.append)
    assert "0 to go" in logs[0] and not any(line.startswith("[") for line in logs)
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    # the report's differences are those of the seed-averaged per-question scores
    _, df, scores = collect(out)
    comp = json.loads(json.dumps(__import__("pandas").read_csv(tmp_path / "report" / "comparisons.csv").to_dict("records")))
    row = next(r for r in comp if r["benchmark"] == "a" and r["baseline"] == "DPR")
    paths = lambda label: [r["path"] for r in rows if (r["benchmark"], r["table"], r["label"], r["test_on"]) == ("a", "main", label, "a")]  # noqa: E731
    mean = lambda label: {q: np.mean([scores[p][q]["mrr@10"] for p in paths(label)]) for q in scores[paths(label)[0]]}  # noqa: E731
    a, b = stats.paired_scores(mean("OnMKD"), mean("DPR"))
    assert row["mean_diff"] == pytest.approx(np.mean(a) - np.mean(b), abs=1e-12)
    # experiments/passage_length.py: the same students tested with longer passages, rows of one rate
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "experiments" / "passage_length.py"
    res = subprocess.run([sys.executable, str(script), str(out), "--benchmark", "b", "--seed", "0", "--lr", "1e-3",
                          "--length", "64", "--out", str(tmp_path / "pl")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    pl = json.loads((tmp_path / "pl" / "passage_length.json").read_text())
    assert [r["row"] for r in pl["rows"]] == ["DPR", "OnMKD", "DPR, 2x steps", "Independent peers"]  # not the ensemble
    metrics = lambda r: json.loads((out / by[("b", "main", r["row"], "b", None, 0)]["path"] / "metrics.json").read_text())  # noqa: E731
    assert all(r["mrr@10 @32"] == metrics(r)["mrr@10"] for r in pl["rows"])
    assert 0 <= pl["share_cut"]["64"] <= pl["share_cut"]["32"] <= 1 and pl["passages"] > 0
    res = subprocess.run([sys.executable, str(script), str(out), "--benchmark", "b", "--seed", "0", "--lr", "5e-5"],
                         capture_output=True, text=True)
    assert res.returncode != 0 and "no finished main-table run of b with seed 0 at learning rate 5e-05" in res.stderr
    readme = (tmp_path / "report" / "README.md").read_text()
    for text in ("**Verdict.** **a**: OnMKD", "## Training length", "## Transfer", "## OnMKD's settings", "Holm", "student-steps",
                 "### Learning rate, picked on dev", "### Main table (learning rates picked on dev)"):
        assert text in readme, text


@pytest.mark.parametrize("edit, message", [
    (("steps = 2", "steps = 0"), r"main\[2\]\.steps: expected an integer >= 1, got 0"),
    (("ensemble = 2", "ensemble = 1"), r"main\[3\]\.ensemble: expected an integer >= 2"),
    (('config = "dpr.toml"\nensemble = 2', 'config = "onmkd.toml"\nensemble = 2'), r"main\[3\]\.ensemble: members must be one-student runs"),
    (('role = "onmkd"', 'role = "same-depth baseline"'), r"exactly one row needs role = \"onmkd\""),
    (('role = "compute-matched"\nconfig = "independent.toml"', 'role = "matched"\nconfig = "independent.toml"'), r"main\[4\]\.role: 'matched' is not one of"),
    (('labels = ["OnMKD", "DPR"]', 'labels = ["OnMKD", "BM25"]'), r"transfer\.labels: 'BM25' is not a main row's label"),
    (('benchmarks = ["a"]\n\n[settings]', 'benchmarks = ["c"]\n\n[settings]'), r"curves\.benchmarks: 'c' is not one of the plan's benchmarks \(a, b\)"),
    (('"loss.beta=0.1"', '"loss.beta=-1"'), r"settings\.variants\.beta = 0\.1: .*loss\.beta"),
    (("[transfer]", "[transfers]"), r"unknown key 'transfers' \(did you mean 'transfer'\?\)"),
    (('label = "Independent peers"', 'label = "DPR"'), r"main\[4\]\.label: 'DPR' is used by another row"),
    (("seeds = [0, 1]", "seeds = [0, 0]"), r"paper\.seeds: a non-empty list of distinct integers"),
    (("lr = [1e-3, 3e-3]", "lr = []"), r"tuning\.lr: a non-empty list of distinct learning rates in \(0, 1\), got \[\]"),
    (("lr = [1e-3, 3e-3]", "lr = [1e-3, 1e-3]"), r"tuning\.lr: a non-empty list of distinct"),
    (("lr = [1e-3, 3e-3]", 'lr = [1e-3]\nmetric = "map"'), r"tuning\.metric: 'map' is not one of mrr@10"),
    (('lr = [1e-3, 3e-3]\nbenchmarks = ["a"]', 'lr = [1e-3, 3e-3]\nbenchmarks = ["z"]'), r"tuning\.benchmarks: 'z' is not one of the plan's benchmarks"),
    (("steps = 2", 'steps = 2\nset = ["train.lr=1e-4"]'), r"main\[2\]\.set: train\.lr is picked on dev by \[tuning\]"),
])
def test_bad_findings_plans_fail_with_one_line_naming_the_field(tmp_path, tiny_model_dir, tiny_squad, edit, message):
    plan = write_findings(tmp_path, tiny_model_dir, tiny_squad)
    text = plan.read_text()
    assert edit[0] in text, edit
    plan.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ConfigError, match=message) as e:
        load_findings(plan)
    assert "\n" not in str(e.value)


def test_findings_command_options_fail_with_one_line(tmp_path, tiny_model_dir, tiny_squad):
    from typer.testing import CliRunner

    from onmkd.cli import app

    plan = write_findings(tmp_path, tiny_model_dir, tiny_squad)
    cases = [(["--benchmark", "c"], "--benchmark: 'c' is not one of the plan's benchmarks (a, b)"),
             (["--table", "layers"], "--table: 'layers' is not a table of a findings plan (tuning, main, transfer, curve, settings)"),
             (["--remeasure"], "--remeasure: not supported for a findings plan")]
    for extra, message in cases:
        res = CliRunner().invoke(app, ["paper", "--plan", str(plan), "--out", str(tmp_path / "o"), *extra])
        assert res.exit_code != 0 and message in res.output, res.output
        assert len([line for line in res.output.splitlines() if line.strip()]) == 1, res.output
    res = CliRunner().invoke(app, ["paper", "--plan", str(plan), "--out", str(tmp_path / "o"), "--estimate"])
    assert res.exit_code == 0 and "0 finished, " in res.output and not (tmp_path / "o" / "manifest.json").exists()
    # benchmark a, 2 seeds: 4 trainings + the ensemble's second student and its evaluation; per seed, 2 transfers to b
    assert "18 of them wait for their learning rate" in res.output
    paper = tmp_path / "paper.toml"
    paper.write_text('[[main]]\nlabel = "x"\nconfig = "dpr.toml"\n')
    res = CliRunner().invoke(app, ["paper", "--plan", str(paper), "--estimate"])
    assert res.exit_code != 0 and "--estimate: only for a findings plan" in res.output


def test_the_shipped_findings_plan_loads_with_every_control_on_every_benchmark():
    from pathlib import Path

    plan = load_findings(Path(__file__).parent.parent / "experiments" / "findings.toml")
    assert list(plan.benchmarks) == ["nq-qed", "squad", "scifact"] and plan.seeds == (0, 1, 2)
    for bench in plan.benchmarks:
        main = {r.label: r for r in plan.rows if r.table == "main" and r.benchmark == bench}
        on, dpr = main["OnMKD"].config, main["DPR"].config
        assert main["DPR, 2x steps"].config.train.epochs == 2 * on.train.epochs
        assert main["DPR ensemble of 2"].members == 2
        assert main["Independent peers (best of 2)"].config.peer_inits() == on.peer_inits()
        assert main["DPR from minilm-l6-sre"].config.peer_inits()[0] == on.peer_inits()[1]
        assert dpr.peer_inits()[0] == on.peer_inits()[0]
        # every row of a benchmark trains with the same budget and data
        assert {(r.config.data, r.config.train.batch_size, r.config.train.lr) for r in main.values()} == {(on.data, 32, on.train.lr)}
    assert {r.x for r in plan.rows if r.table == "curve"} == {1.0, 2.0, 4.0}
    # every row tunes its learning rate on the same grid, which holds the configs' own (their finished runs count)
    assert plan.tuning.benchmarks == tuple(plan.benchmarks) and on.train.lr in plan.tuning.lrs and len(plan.tuning.lrs) == 4
