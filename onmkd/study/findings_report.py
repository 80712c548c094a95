"""The findings report (``reports/findings/README.md``) from a findings folder's manifest.

Per benchmark: the main table (same-step and compute-matched rows, the teacher ceiling), OnMKD
against every other row question by question (seeds averaged: 95 % paired bootstrap interval,
paired t-test and Wilcoxon p, Holm's adjustment over the whole family), the curve of OnMKD − DPR
against training length, the settings study with the peers' KL and top-20 overlap, and transfer
to the other benchmarks' test sets. The first paragraph is the verdict, written from those numbers:
a benchmark is a win (or a loss) only when the interval of OnMKD minus the best other trained row
excludes 0, and a tie otherwise.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pandas as pd

from onmkd.io import write_json, write_text
from onmkd.study import stats
from onmkd.training.methods import METHODS

LEAD = "mrr@10"  # the verdict's metric: defined on every benchmark, and far from saturated
SHOWN = ("acc@1", "acc@5", "acc@20", "mrr@10", "ndcg@10")


def per_question(eval_dir: Path, data, split: str) -> dict[str, dict[str, float]]:
    """``{qid: {metric: value}}`` of one evaluation (its ``run.trec``), cached as ``per_question.json``."""
    from onmkd.retrieval.metrics import first_hit_ranks, qrels_metrics, rank, read_trec_run

    cache = eval_dir / "per_question.json"
    if cache.exists() and cache.stat().st_mtime >= (eval_dir / "run.trec").stat().st_mtime:
        return json.loads(cache.read_text())
    run = read_trec_run(eval_dir / "run.trec")
    part = data.split(split)
    out: dict[str, dict[str, float]] = {q: dict(v) for q, v in qrels_metrics(part.qrels, run, per_query=True).items()}
    if part.answers:
        passages = {pid: doc.get("text", "") for pid, doc in data.corpus.items()}
        ranked = rank({q: run.get(q, {}) for q in part.answers})
        for q, r in first_hit_ranks(ranked, passages, part.answers).items():
            out.setdefault(q, {}).update({f"acc@{k}": float(r <= k) for k in (1, 5, 20, 100)})
    write_json(cache, out)
    return out


def _diagnostics(out: Path, path: str) -> dict:
    """The peers' KL (mean of the last tenth of training) and top-20 overlap at the last dev epoch."""
    from onmkd.study.report import diagnostics

    run = (out / path).parent
    if not (run / "log.jsonl").exists():
        return {}
    d = diagnostics(run)
    res = {}
    if d["kl"]:
        res["kl"] = d["kl"][-1][1]
    overlaps = [e["top20_overlap"] for e in d["dev"] if "top20_overlap" in e]
    if overlaps:
        res["top20_overlap"] = overlaps[-1]
        res["overlap_by_epoch"] = overlaps
    return res


def collect(out: Path) -> tuple[dict, pd.DataFrame, dict]:
    """The manifest, one row per evaluation (its metrics and diagnostics) and the per-question scores
    ``{row path: {qid: {metric: value}}}``."""
    from onmkd.data import load_dataset

    manifest = json.loads((out / "manifest.json").read_text())
    datasets: dict[str, object] = {}
    rows, scores = [], {}
    for r in manifest["runs"]:
        path = out / r["path"]
        if not (path / "metrics.json").exists():
            continue
        bench = r.get("test_on") or r.get("benchmark")
        if bench not in datasets:
            datasets[bench] = load_dataset(manifest["benchmarks"][bench])
        m = json.loads((path / "metrics.json").read_text())
        run = path.parent / "metrics.json"  # a trained run's selection: dev, over data.dev_pool passages
        dev = json.loads(run.read_text()).get("dev", {}) if r.get("table") != "transfer" and run.exists() else {}
        diag = _diagnostics(out, r["path"])
        if r.get("method") not in METHODS or not METHODS[r["method"]].kl:
            diag.pop("kl", None)  # a method without the KL term logs 0 for it: not a measured distance
        rows.append({**r, **{k: m.get(k) for k in (*SHOWN, "params_m", "query_ms_p50")}, "dev": dev.get(LEAD), **diag})
        if (path / "run.trec").exists():
            scores[r["path"]] = per_question(path, datasets[bench], r["split"])
    return manifest, pd.DataFrame(rows), scores


def _mean_scores(scores: dict, paths: list[str], metric: str) -> dict[str, float]:
    """Per question, ``metric`` averaged over the evaluations ``paths`` (one per seed)."""
    per = [{q: v[metric] for q, v in scores[p].items() if metric in v} for p in paths]
    qids = set.intersection(*(set(x) for x in per)) if per else set()
    return {q: float(np.mean([x[q] for x in per])) for q in qids}


def paired(df: pd.DataFrame, scores: dict, a: pd.DataFrame, b: pd.DataFrame, metric: str = LEAD) -> dict | None:
    """OnMKD-style comparison of two rows' evaluations over the seeds both have (seeds averaged)."""
    seeds = sorted(set(a["seed"]) & set(b["seed"]))
    if not seeds:
        return None
    pa = [p for p, s in zip(a["path"], a["seed"]) if s in seeds]
    pb = [p for p, s in zip(b["path"], b["seed"]) if s in seeds]
    x, y = stats.paired_scores(_mean_scores(scores, pa, metric), _mean_scores(scores, pb, metric))
    if not x:
        return None
    return {**stats.compare(x, y), "seeds": len(seeds)}


def _cell(values: pd.Series) -> str:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return "–"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def _signed(x: float) -> str:
    return f"{x:+.3f}"


def _ci(c: dict) -> str:
    return f"{_signed(c['mean_diff'])} [{_signed(c['ci_low'])}, {_signed(c['ci_high'])}]"


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else "<1e-4"


def _outcome(c: dict) -> str:
    return "beats" if c["ci_low"] > 0 else "loses to" if c["ci_high"] < 0 else "ties with"


def _md(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, disable_numparse=True) if len(df) else "(no finished runs)"


def main_table(df: pd.DataFrame, bench: str) -> pd.DataFrame:
    """Trained rows (plan order) and encoders of one benchmark: mean ± sd over seeds."""
    sub = df[(df["table"] == "main") & (df["benchmark"] == bench) & (df["test_on"] == bench)]
    out = []
    for label, g in sub.groupby("label", sort=False):
        trained = g["seed"].notna().any()
        row = {"row": label, "role": g["role"].iloc[0],
               "seeds": str(int(g["seed"].notna().sum())) if trained else "–",
               "student-steps": f"{int(g['student_steps'].iloc[0])}" if trained and "student_steps" in g and pd.notna(g["student_steps"].iloc[0]) else "–",
               "train s": f"{pd.to_numeric(g['train_steps_s'], errors='coerce').mean():.0f}" if trained and "train_steps_s" in g and pd.to_numeric(g['train_steps_s'], errors='coerce').notna().any() else "–"}
        for m in SHOWN:
            if pd.to_numeric(g[m], errors="coerce").notna().any():
                row[m] = _cell(g[m])
        row[f"dev {LEAD}"] = _cell(g["dev"])
        out.append(row)
    return pd.DataFrame(out)


def comparisons(df: pd.DataFrame, scores: dict) -> pd.DataFrame:
    """OnMKD against every other trained main row, per benchmark, on the lead metric (Holm over all)."""
    out = []
    for bench in df["benchmark"].dropna().unique():
        sub = df[(df["table"] == "main") & (df["benchmark"] == bench) & (df["test_on"] == bench) & df["seed"].notna()]
        on = sub[sub["role"] == "onmkd"]
        if on.empty:
            continue
        for label, g in sub[sub["role"] != "onmkd"].groupby("label", sort=False):
            c = paired(df, scores, on, g)
            if c:
                out.append({"benchmark": bench, "baseline": label, "role": g["role"].iloc[0],
                            "baseline mean": float(pd.to_numeric(g[LEAD]).mean()), **c})
    res = pd.DataFrame(out)
    if len(res):
        res["p_holm"] = stats.holm_bonferroni(list(res["p_t"]))
    return res


def lr_views(df: pd.DataFrame, tuning: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(tuned, untuned)``: the rows with, for the main and transfer rows of a tuned benchmark, only
    those trained at the learning rate picked on dev (``tuned``; none while the pick waits for its
    runs) or at the config's own (``untuned``). Other rows are in both."""
    def keep(r, field: str) -> bool:
        entry = tuning.get(r["benchmark"], {}).get(r["label"])
        if r["table"] not in ("main", "transfer") or pd.isna(r["seed"]) or entry is None:
            return True
        target = entry[field]
        return target is not None and r.get("lr") is not None and bool(np.isclose(r["lr"], target, rtol=1e-9, atol=0))

    if not tuning or df.empty:
        return df, df.iloc[:0]
    return (df[df.apply(lambda r: keep(r, "chosen"), axis=1)].reset_index(drop=True),
            df[df.apply(lambda r: keep(r, "config_lr"), axis=1)].reset_index(drop=True))


def tuning_table(tuning: dict, bench: str) -> pd.DataFrame:
    """Each main row's dev score at every learning rate tried, and the one it got."""
    out = []
    for label, e in tuning.get(bench, {}).items():
        row = {"row": label}
        for lr, v in e["dev"].items():
            row[f"lr {float(lr):g}"] = "–" if v is None else f"{v:.3f}"
        grid = sorted(float(x) for x in e["dev"])
        edge = e["chosen"] is not None and len(grid) > 1 and e["chosen"] in (grid[0], grid[-1])
        row["picked"] = (f"{e['chosen']:g}" + (" (grid edge: the best rate may lie beyond it)" if edge else "")
                         if e["chosen"] is not None else "waiting for its runs")
        out.append(row)
    if not out:
        return pd.DataFrame()
    t = pd.DataFrame(out)
    lrs = sorted((c for c in t.columns if c.startswith("lr ")), key=lambda c: float(c[3:]))
    return t[["row", *lrs, "picked"]].fillna("–")


def verdict(df: pd.DataFrame, comp: pd.DataFrame, qualifier: str = "") -> list[str]:
    """One sentence per benchmark: OnMKD against the best other trained row (by mean lead metric);
    ``qualifier`` follows the benchmark's name (e.g. which learning rates the rows were trained at)."""
    lines = []
    for bench, g in comp.groupby("benchmark", sort=False):
        best = g.loc[g["baseline mean"].idxmax()]
        dpr = g[g["baseline"] == "DPR"]
        onmean = pd.to_numeric(df[(df["benchmark"] == bench) & (df["role"] == "onmkd") & (df["table"] == "main")
                                  & (df["test_on"] == bench)][LEAD]).mean()
        text = (f"**{bench}{qualifier}**: OnMKD {_outcome(best)} the best other row, {best['baseline']} "
                f"({LEAD} {onmean:.3f} vs {best['baseline mean']:.3f}; OnMKD − it {_ci(best)}, 95 % CI over "
                f"{int(best['n'])} questions, {int(best['seeds'])} seeds averaged; paired t p = {_p(best['p_t'])}, "
                f"Holm-adjusted {_p(best['p_holm'])})")
        if len(dpr) and dpr.iloc[0]["baseline"] != best["baseline"]:
            d = dpr.iloc[0]
            text += f"; it {_outcome(d)} DPR ({_ci(d)})"
        lines.append(text + ".")
    return lines


def curve_table(df: pd.DataFrame, scores: dict) -> pd.DataFrame:
    """Per benchmark and training length: each curve method's mean, and OnMKD − DPR with its CI."""
    sub = df[df["table"] == "curve"]
    out = []
    for (bench, x), g in sub.groupby(["benchmark", "x"], sort=True):
        row = {"benchmark": bench, "epochs": f"{x:g}"}
        for label, h in g.groupby("label", sort=False):
            row[f"{label} {LEAD}"] = _cell(h[LEAD])
        on, dpr = g[g["role"] == "onmkd"], g[g["label"] == "DPR"]
        c = paired(df, scores, on, dpr) if len(on) and len(dpr) else None
        row["OnMKD − DPR"] = _ci(c) if c else "–"
        row["seeds"] = c["seeds"] if c else "–"
        row["_c"] = c
        if c:  # a point of the curve needs both methods' runs
            out.append(row)
    return pd.DataFrame(out)


def settings_table(df: pd.DataFrame, scores: dict) -> pd.DataFrame:
    sub = df[df["table"] == "settings"]
    out = []
    for bench, g in sub.groupby("benchmark", sort=False):
        ref = g[g["label"] == "reference"]
        for label, h in g.groupby("label", sort=False):
            c = paired(df, scores, h, ref) if label != "reference" and len(ref) else None
            out.append({"benchmark": bench, "setting": label, f"dev {LEAD}": _cell(h["dev"]), LEAD: _cell(h[LEAD]),
                        "acc@20": _cell(h["acc@20"]),
                        "− reference": _ci(c) if c else "–", "peers' KL (end)": _cell(h.get("kl", pd.Series(dtype=float))),
                        "top-20 overlap": _cell(h.get("top20_overlap", pd.Series(dtype=float))),
                        "seeds": int(h["seed"].notna().sum())})
    return pd.DataFrame(out)


def transfer_table(df: pd.DataFrame, scores: dict) -> pd.DataFrame:
    sub = df[df["table"] == "transfer"]
    out = []
    for (bench, test_on), g in sub.groupby(["benchmark", "test_on"], sort=False):
        row = {"trained on": bench, "tested on": test_on}
        for label, h in g.groupby("label", sort=False):
            row[f"{label} {LEAD}"] = _cell(h[LEAD])
        on = g[g["role"] == "onmkd"]
        others = [h for lab, h in g.groupby("label", sort=False) if h["role"].iloc[0] != "onmkd"]
        c = paired(df, scores, on, others[0]) if len(on) and others else None
        row[f"OnMKD − {others[0]['label'].iloc[0]}" if others else "difference"] = _ci(c) if c else "–"
        out.append(row)
    return pd.DataFrame(out)


def dynamics_table(df: pd.DataFrame) -> pd.DataFrame:
    """The peers' top-20 overlap per dev epoch and KL at the end, for main rows that train peers."""
    sub = df[(df["table"] == "main") & df.get("overlap_by_epoch", pd.Series(dtype=object)).notna()] if "overlap_by_epoch" in df else df.iloc[:0]
    out = []
    for (bench, label), g in sub.groupby(["benchmark", "label"], sort=False):
        by = np.array([list(v) for v in g["overlap_by_epoch"]], dtype=float)
        out.append({"benchmark": bench, "row": label,
                    "top-20 overlap per epoch": ", ".join(f"{v:.3f}" for v in by.mean(axis=0)),
                    "peers' KL (end)": _cell(g.get("kl", pd.Series(dtype=float)))})
    return pd.DataFrame(out)


def _comparison_lines(comp: pd.DataFrame, bench: str) -> list[str]:
    c = comp[comp["benchmark"] == bench] if len(comp) else comp
    if not len(c):
        return []
    t = pd.DataFrame({"OnMKD −": c["baseline"], "role": c["role"],
                      f"Δ {LEAD} [95 % CI]": [_ci(r) for r in c.to_dict("records")],
                      "t p": [_p(p) for p in c["p_t"]], "Wilcoxon p": [_p(p) for p in c["p_wilcoxon"]],
                      "Holm p": [_p(p) for p in c["p_holm"]], "questions": c["n"], "seeds": c["seeds"]})
    return [_md(t), ""]


def _machine() -> str:
    import torch

    name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads, PyTorch kernels {torch.backends.cpu.get_cpu_capability()}"


def _curve_figure(curves: pd.DataFrame, target: Path) -> list[Path]:
    from onmkd.study.figures import _ensure_backend, _new_figure, save

    _ensure_backend()
    fig, ax = _new_figure()
    for bench, g in curves.groupby("benchmark", sort=False):
        g = g[g["_c"].notna()]
        if g.empty:
            continue
        xs = [float(x) for x in g["epochs"]]
        cs = list(g["_c"])
        ys = [c["mean_diff"] for c in cs]
        err = np.array([[c["mean_diff"] - c["ci_low"] for c in cs], [c["ci_high"] - c["mean_diff"] for c in cs]])
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=2, label=bench)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("training epochs")
    ax.set_ylabel(f"OnMKD − DPR, test {LEAD}")
    ax.legend(fontsize=6)
    return save(fig, target)


def build_findings_report(out: Path, report_dir: Path, *, command: str = "", log=print) -> Path:
    out, report_dir = Path(out), Path(report_dir)
    manifest, df, scores = collect(out)
    if df.empty:
        write_text(report_dir / "README.md", "# Findings\n\nNo run has finished yet.\n")
        return report_dir
    for col in ("x", "seed", "student_steps", "train_steps_s", "kl", "top20_overlap", "dev", "lr"):
        if col not in df:
            df[col] = np.nan
    tuning = manifest.get("tuning", {})
    everything = df
    df, untuned = lr_views(everything, tuning)
    comp = comparisons(df, scores)
    comp_untuned = comparisons(untuned, scores) if len(untuned) else pd.DataFrame()
    # a benchmark whose picked rates are not all trained yet is judged at the configs' rate, and says so
    waiting = [b for b in tuning if b not in set(comp.get("benchmark", [])) and len(comp_untuned)
               and b in set(comp_untuned["benchmark"])]
    curves = curve_table(df, scores)
    seconds = json.loads((out / "seconds.json").read_text()) if (out / "seconds.json").exists() else {}
    lines = ["# Where does OnMKD help a small retriever?", ""]
    said = verdict(df, comp) if len(comp) else []
    if waiting:
        said += verdict(untuned, comp_untuned[comp_untuned["benchmark"].isin(waiting)],
                        " (at the configs' learning rate: the rows at the rates picked on dev have not finished)")
    lines += ["**Verdict.** " + (" ".join(said) if said else "no comparison has finished yet."), ""]
    lines += [f"Test metric {LEAD} (question by question; every row selected on dev alone, test searched over the whole "
              "corpus). A win or a loss needs the 95 % paired bootstrap interval of the difference to exclude 0; "
              "otherwise it is a tie. Many settings were compared: the Holm-adjusted p values below account for "
              "the family of main-table comparisons (with [tuning], the tables at the picked rates form one family and "
              "those at the configs' rate another).", ""]
    pending = manifest.get("pending", [])
    lines += ["## How these numbers were made", "",
              "- Commands that made these runs (in order; each resumes the runs before it): "
              + "; ".join(f"`{c}`" for c in manifest.get("commands", [command])),
              f"- Report: `{command}`",
              f"- Plan: `{manifest['plan']}`; budget overrides on every run: {', '.join(f'`{b}`' for b in manifest.get('budget', [])) or 'none'}",
              f"- Benchmarks: {', '.join(f'{k} (`{v}`)' for k, v in manifest['benchmarks'].items())}",
              f"- Seeds: {', '.join(str(s) for s in manifest['seeds'])}",
              "- Learning rate: " + ("each main row's, picked on dev from the tuning runs (per benchmark below); the "
                                     "curves and the settings keep their configs' rate" if tuning else "the configs'"),
              f"- Machine: {_machine()}",
              f"- Time: the runs of the plan{' this report selected' if manifest.get('selection_estimate') else ''} cost "
              f"about {manifest.get('selection_estimate', '?')} on this machine (every run priced at the rates measured "
              f"here); the runs timed here took {sum(seconds.values()) / 60:.0f} min over {len(seconds)} runs"
              + (f"; {len(pending)} runs of the plan not run yet (estimated {manifest.get('pending_estimate', '?')}): "
                 + ", ".join(pending[:12]) + (" …" if len(pending) > 12 else "") if pending else "; every run of the plan finished."),
              ""]
    figures = []
    for bench in manifest["benchmarks"]:
        table = main_table(df, bench)
        tt = tuning_table(tuning, bench)
        old = main_table(untuned, bench) if bench in tuning and len(untuned) else pd.DataFrame()
        if table.empty and old.empty and tt.empty:
            continue
        lines += [f"## {bench}", ""]
        if len(tt):
            e = next(iter(tuning[bench].values()))
            lines += ["### Learning rate, picked on dev", "", f"Dev {e['metric']} of each row's selected student, trained "
                      f"once per learning rate with seed {e['seed']} (rows that share a training config share these runs). "
                      "The picked rate trains every seed of the row below.", "", _md(tt), ""]
        lines += ["### Main table" + (" (learning rates picked on dev)" if bench in tuning else ""), "",
                  "Mean ± sd over seeds. *student-steps*: training steps × students trained (the "
                  "compute-matched rows match OnMKD's); *train s*: measured seconds of those steps (wall time: it grows when other "
                  "work shares the machine, so student-steps are the measure to compare); *dev*: the selection split.", "",
                  _md(table), ""]
        lines += _comparison_lines(comp, bench)
        if len(old) and not old.equals(table):
            lines += ["### At the configs' learning rate (not tuned)", "", "The same rows, each at its config's "
                      "learning rate (Holm over this table's own family of comparisons).", "", _md(old), ""]
            lines += _comparison_lines(comp_untuned, bench)
    if len(curves):
        fig = _curve_figure(curves, report_dir / "figures" / "onmkd_minus_dpr_by_epochs")
        figures += fig
        lines += ["## Training length", "", "OnMKD − DPR against the number of epochs (same budget otherwise; 95 % CI over "
                  "questions).", "", _md(curves.drop(columns="_c")), "",
                  "![OnMKD − DPR against epochs](figures/onmkd_minus_dpr_by_epochs.png)", ""]
    dyn = dynamics_table(df)
    if len(dyn):
        lines += ["## How far apart the peers are", "", "Top-20 overlap of the two peers' dev rankings after each "
                  "epoch, and their KL term at the end of training (log.jsonl).", "", _md(dyn), ""]
    st = settings_table(df, scores)
    if len(st):
        lines += ["## OnMKD's settings", "", "Each setting against the reference OnMKD config on the same benchmark. "
                  f"A setting is chosen by its dev {LEAD} (the selection split, over the runs' dev pool), never by "
                  "its test column, which is shown to measure the lever, not to pick it.", "", _md(st), ""]
    tr = transfer_table(df, scores)
    if len(tr):
        lines += ["## Transfer", "", "Students trained on one benchmark, searching another's test set zero-shot.", "",
                  _md(tr), ""]
    write_text(report_dir / "README.md", "\n".join(lines))
    everything.drop(columns=[c for c in ("overlap_by_epoch",) if c in everything]).to_csv(report_dir / "results.csv", index=False)
    if len(comp) or len(comp_untuned):
        both = [c.assign(learning_rate=kind) for c, kind in ((comp, "picked on dev" if tuning else "config"),
                                                             (comp_untuned, "config")) if len(c)]
        pd.concat(both, ignore_index=True).to_csv(report_dir / "comparisons.csv", index=False)
    log(f"findings report -> {report_dir / 'README.md'}")
    return report_dir
