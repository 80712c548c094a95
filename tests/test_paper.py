"""`onmkd-bench paper`: a plan of tables trained, evaluated and reported; every number traceable."""

import json
from pathlib import Path

import pytest

from onmkd.errors import ConfigError
from onmkd.study.paper import load_plan, run_paper
from onmkd.study.report import collect


def write_plan(tmp_path, model_dir, squad):
    base = f"""
[data]
dataset = "squad:{squad}"
p_max_len = 32
q_max_len = 16
[model]
layers = 2
[[model.peer]]
checkpoint = "{model_dir}"
[train]
batch_size = 4
epochs = 1
lr = 1e-3
eval_batch_size = 8
"""
    (tmp_path / "onmkd.toml").write_text(base)
    (tmp_path / "dpr.toml").write_text(base.replace("[model]\n", "[model]\npeers = 1\n") + 'method = "dpr"\n')
    (tmp_path / "no-kl.toml").write_text(base.replace("[train]", "[loss]\nalpha = 0.0\n[train]"))
    plan = tmp_path / "plan.toml"
    plan.write_text(f"""
[paper]
seeds = [0, 1]
encoders = ["{model_dir}", "bm25"]
budget = {{ "train.checkpoint_every" = 2 }}

[[main]]
label = "DPR (2 layers)"
role = "same-depth baseline"
config = "dpr.toml"

[[main]]
label = "OnMKD (2 layers)"
config = "onmkd.toml"

[layers]
layers = [1, 2]
configs = {{ OnMKD = "onmkd.toml" }}

[ablations]
reference = "onmkd.toml"
configs = {{ "no KL" = "no-kl.toml" }}
""")
    return plan


def test_paper_plan_runs_every_table_once_per_config(tmp_path, tiny_model_dir, tiny_squad):
    plan = load_plan(write_plan(tmp_path, tiny_model_dir, tiny_squad))
    assert [e.table for e in plan.entries] == ["main", "main", "layers", "layers", "ablation", "ablation"]
    assert all(e.config.train.checkpoint_every == 2 for e in plan.entries)  # the budget reaches every run
    out = tmp_path / "paper"
    run_paper(plan, out, report_dir=tmp_path / "report", command="test", log=lambda m: None)
    man = json.loads((out / "manifest.json").read_text())
    trained = {e["path"] for e in man["runs"] if e["method"] != "bm25" and e["stage"] == "paper" and "baselines" not in e["path"]}
    # OnMKD 2 layers appears in three tables but is trained once per seed
    assert len(trained) == 2 * 4  # (dpr, onmkd-2, onmkd-1, no-kl) x 2 seeds
    assert len(list((out / "runs").iterdir())) == 8
    report = tmp_path / "report"
    for name in ("table_main.md", "table_layers.md", "table_ablation.md", "table_ablation.tex", "results.csv",
                 "figures/ablation.png", "figures/metric_by_layers.pdf", "figures/recall_latency.png"):
        assert (report / name).exists(), name
    df = collect([out])
    for _, row in df.iterrows():
        m = json.loads(Path(row["source"]).read_text())
        m = m.get("dev", m) if row["split"] != "test" else m
        assert row["acc@20"] == m["acc@20"]
    abl = (report / "table_ablation.md").read_text()
    full = df[(df["table"] == "ablation") & (df["label"] == "full OnMKD")]["acc@20"]
    nokl = df[(df["table"] == "ablation") & (df["label"] == "no KL")]["acc@20"]
    assert len(full) == 2 and f"{100 * (nokl.mean() - full.mean()):+.2f}" in abl
    layers = (report / "table_layers.md").read_text()
    assert "n=2" in layers and "| 1 " in layers


def test_bad_plans_name_the_entry(tmp_path, tiny_model_dir, tiny_squad):
    plan = write_plan(tmp_path, tiny_model_dir, tiny_squad)
    text = plan.read_text()
    plan.write_text(text.replace('config = "dpr.toml"', 'config = "dpr.toml"\nrol = "x"'))
    with pytest.raises(ConfigError, match=r"main\[0\]: unknown key 'rol' \(did you mean 'role'\?\)"):
        load_plan(plan)
    plan.write_text(text.replace('"no-kl.toml"', '"missing.toml"'))
    with pytest.raises(ConfigError, match=r"ablations.configs.no KL: .*missing.toml: no such config file"):
        load_plan(plan)
    plan.write_text(text.replace("[paper]", '[paper]\nsplit = "dev"'))
    with pytest.raises(ConfigError, match="trains or selects on the 'dev' split"):
        load_plan(plan)
