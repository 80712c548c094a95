"""Tables from results: a row per run, rendered as Markdown (pandas + tabulate). No torch here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from onmkd.training.methods import METHODS, method_label, method_role

# Column order and number formats of the metrics table; absent metrics are left out.
METRIC_COLUMNS = [
    ("acc@1", "{:.3f}"), ("acc@5", "{:.3f}"), ("acc@20", "{:.3f}"), ("acc@100", "{:.3f}"),
    ("recall@1", "{:.3f}"), ("recall@5", "{:.3f}"), ("recall@20", "{:.3f}"), ("recall@100", "{:.3f}"),
    ("mrr@10", "{:.3f}"), ("ndcg@10", "{:.3f}"),
    ("params_m", "{:.1f}"), ("index_mb", "{:.2f}"), ("ms_per_query", "{:.2f}"), ("passages_per_s", "{:.0f}"),
]


def to_markdown(rows: Sequence[Mapping[str, object]]) -> str:
    """Rows of plain values as a Markdown table."""
    return pd.DataFrame(list(rows)).to_markdown(index=False)


def metrics_table(rows: Sequence[Mapping[str, object]]) -> str:
    """Metrics rows (``model`` plus flat metric keys) as a Markdown table with fixed formats."""
    df = pd.DataFrame(list(rows))
    cols = ["model"] + [c for c, _ in METRIC_COLUMNS if c in df.columns]
    df = df[cols].astype(object)
    for c, fmt in METRIC_COLUMNS:
        if c in df.columns:
            df[c] = [fmt.format(v) if isinstance(v, (int, float)) and v == v else "-" for v in df[c]]
    return df.to_markdown(index=False, disable_numparse=True)


def _jsonl(path) -> list[dict]:
    import json

    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def diagnostics(run_dir) -> dict:
    """Mutual-learning diagnostics of a training run directory.

    - ``kl``: the peers' KL term (log.jsonl ``kl/k``, mean over peers) averaged per tenth of
      training, as (step, value) pairs: how far apart the peers' score distributions are;
    - per dev epoch: each peer's primary dev metric, the score ensemble's, and the peers' top-20
      overlap (dev.jsonl).
    """
    from pathlib import Path

    run_dir = Path(run_dir)
    log = _jsonl(run_dir / "log.jsonl")
    peers = sorted({int(k.split("/")[1]) for k in log[0] if k.startswith("nll/")}) if log else []
    out: dict = {"steps": len(log), "peers": len(peers), "kl": [], "dev": []}
    if log and any(f"kl/{p}" in log[0] for p in peers):
        size = max(1, len(log) // 10)
        for start in range(0, len(log), size):
            part = log[start : start + size]
            vals = [sum(r[f"kl/{p}"] for p in peers) / len(peers) for r in part]
            out["kl"].append((part[-1]["step"], sum(vals) / len(vals)))
    dev_path = run_dir / "dev.jsonl"
    for row in _jsonl(dev_path) if dev_path.exists() else []:
        metric = "acc@20" if "acc@20" in row["peers"][0] else "ndcg@10"
        entry = {"epoch": row["epoch"] + 1, "metric": metric, **{f"peer{k}": p[metric] for k, p in enumerate(row["peers"])}}
        if "ensemble" in row:
            entry["ensemble"] = row["ensemble"][metric]
            entry["top20_overlap"] = row["top20_overlap"]
        out["dev"].append(entry)
    return out


# --------------------------------------------------------------------------- results -> tidy rows

# The tidy results' metric columns, in table order.
RESULT_METRICS = ["acc@1", "acc@5", "acc@20", "acc@100", "recall@1", "recall@5", "recall@20", "recall@100",
                  "mrr@10", "ndcg@10", "params_m", "checkpoint_mb", "index_mb", "query_ms_p50", "query_ms_p95",
                  "query_ms_p99", "passages_per_s", "peak_rss_mb"]
ROLES = ["teacher", "small baseline", "lexical", "reference", "same-depth baseline", "onmkd", "ablation", "trial"]
METHOD_NAMES = {m.name: m.label for m in METHODS.values()}


def _read_json(path):
    import json
    from pathlib import Path

    return json.loads(Path(path).read_text(encoding="utf-8"))


def _metric_values(metrics: Mapping) -> dict:
    return {k: float(metrics[k]) for k in RESULT_METRICS if isinstance(metrics.get(k), (int, float))}


def _training_rows(run_dir) -> list[dict]:
    """A training run directory: its dev row (metrics.json) and its test row (test/metrics.json)."""
    from pathlib import Path

    run_dir = Path(run_dir)
    cfg = _read_json(run_dir / "config.json")
    method, layers, seed = cfg["train"]["method"], cfg["model"]["layers"], cfg["train"]["seed"]
    base = {"run": str(run_dir), "label": f"{method_label(method)} ({layers} layer{'s' if layers != 1 else ''})",
            "role": method_role(method), "method": method,
            "layers": layers, "seed": seed, "dataset": cfg["data"]["dataset"], "stage": ""}
    rows = []
    if (run_dir / "metrics.json").exists():
        m = _read_json(run_dir / "metrics.json")
        rows.append({**base, "split": cfg["data"]["dev_split"], "source": str(run_dir / "metrics.json"), **_metric_values(m["dev"])})
    for sub in sorted(run_dir.iterdir()):
        if (sub / "metrics.json").exists() and (sub / "config.json").exists() and sub.name not in ("student", "peers"):
            ec = _read_json(sub / "config.json")
            rows.append({**base, "split": ec.get("split", sub.name), "source": str(sub / "metrics.json"),
                         **_metric_values(_read_json(sub / "metrics.json"))})
    return rows


def _evaluation_row(eval_dir) -> dict:
    """An evaluation run directory (``onmkd-bench evaluate``)."""
    from pathlib import Path

    eval_dir = Path(eval_dir)
    ec = _read_json(eval_dir / "config.json")
    model = ec.get("model", eval_dir.name)
    # The role of an encoder used as it is comes from the manifest that lists it (sweep, paper);
    # a bare evaluation directory is a reference point (the registry would import torch).
    role, method, layers = ("lexical", "bm25", None) if model == "bm25" else ("reference", "encoder", None)
    label = model if not Path(model).exists() else Path(model).name
    return {"run": str(eval_dir), "label": label, "role": role, "method": method, "layers": layers, "seed": None,
            "split": ec.get("split", ""), "dataset": ec.get("dataset", ""), "stage": "",
            "source": str(eval_dir / "metrics.json"), **_metric_values(_read_json(eval_dir / "metrics.json"))}


def _trial_rows(study_dir) -> list[dict]:
    """A sweep's trials (dev split): one row per complete trial, with its params."""
    from pathlib import Path

    info = _read_json(Path(study_dir) / "study.json")
    study = _load_study(info)
    rows = []
    for t in study.trials:
        if t.state.name != "COMPLETE" or "dev" not in t.user_attrs:
            continue
        cfg = t.user_attrs.get("config", {})
        rows.append({"run": str(Path(study_dir) / t.user_attrs.get("run", "")), "label": f"trial {t.number}",
                     "role": "trial", "method": cfg.get("train", {}).get("method", ""),
                     "layers": cfg.get("model", {}).get("layers"), "seed": cfg.get("train", {}).get("seed"),
                     "split": cfg.get("data", {}).get("dev_split", "dev"), "dataset": cfg.get("data", {}).get("dataset", ""),
                     "stage": "trial", "source": f"{info['storage']}#trial={t.number}", "trial": t.number,
                     **_metric_values({**t.user_attrs["dev"], **t.user_attrs.get("efficiency", {})}),
                     **{f"param:{k}": (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in t.params.items()}})
    return rows


def _load_study(info: Mapping):
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna.load_study(study_name=info["name"], storage=info["storage"])


def collect(dirs) -> pd.DataFrame:
    """Tidy results (a row per run and split) from study, paper, training and evaluation directories.

    A directory with ``manifest.json`` (a sweep's or ``paper``'s) contributes its listed runs
    with their labels and roles, and a sweep's trials; a training run directory its dev and test
    rows; an evaluation directory its row; any other directory is searched below.
    """
    from pathlib import Path

    rows: list[dict] = []

    def visit(d: Path, depth: int) -> None:
        if (d / "manifest.json").exists():
            man = _read_json(d / "manifest.json")
            for e in man["runs"]:
                path = d / e["path"]
                if (path / "config.json").exists() and "train" in _read_json(path / "config.json"):
                    found = [r for r in _training_rows(path) if r["split"] == e.get("split", r["split"])]
                else:
                    found = [_evaluation_row(path)]
                for r in found:
                    r.update({k: e[k] for k in ("label", "role", "stage", "seed", "layers", "method") if k in e and e[k] is not None})
                    r.update({k: e[k] for k in ("ablation", "experiment", "trial", "table") if k in e})
                    rows.append(r)
            if man.get("kind") == "sweep" and (d / "study.json").exists():
                rows.extend(_trial_rows(d))
            return
        if (d / "study.json").exists():  # a sweep without its final step yet
            rows.extend(_trial_rows(d))
            return
        if (d / "config.json").exists():
            if "train" in _read_json(d / "config.json"):
                rows.extend(_training_rows(d))
                return
            if (d / "metrics.json").exists():
                rows.append(_evaluation_row(d))
                return
        if depth < 4:
            for sub in sorted(p for p in d.iterdir() if p.is_dir() and p.name not in ("student", "peers", "checkpoint")):
                visit(sub, depth + 1)

    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            from onmkd.errors import DataError

            raise DataError(f"{d}: not a directory")
        visit(d, 0)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for c in RESULT_METRICS:
        if c not in df.columns:
            df[c] = float("nan")
    df["table"] = df["table"].fillna("") if "table" in df.columns else ""
    order = {r: i for i, r in enumerate(ROLES)}
    df["_order"] = df["role"].map(lambda r: order.get(r, len(order)))
    df = df.sort_values(["_order"], kind="stable").drop(columns="_order").reset_index(drop=True)
    return df


# --------------------------------------------------------------------------- tables

def _cell(values: pd.Series, digits: int = 3, *, fixed: bool = False) -> str:
    """``mean ± sample std`` over the runs; one run, or a ``fixed`` quantity that seeds cannot change
    (a size) and that is the same in every run, shows the value alone. A metric equal in every
    seed still shows ``± 0.000``, so that a reader sees it was measured more than once."""
    v = values.dropna()
    if v.empty:
        return "-"
    if len(v) == 1 or (fixed and v.nunique() == 1):
        return f"{v.iloc[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def primary(df: pd.DataFrame) -> str:
    return "acc@20" if "acc@20" in df and df["acc@20"].notna().any() else "ndcg@10"


SIZES = {"params_m", "checkpoint_mb", "index_mb"}  # the same for every seed of one configuration
EFFICIENCY = [("params_m", "params (M)", 1), ("checkpoint_mb", "checkpoint (MB)", 1), ("index_mb", "index (MB)", 2),
              ("query_ms_p50", "latency p50 (ms)", 2), ("passages_per_s", "passages/s", 0)]


def _table_rows(df: pd.DataFrame, table: str, split: str) -> pd.DataFrame:
    """The rows of one table: those a manifest assigned to it, else (no assignment) all of the split."""
    part = df[df["split"] == split]
    if (part["table"] == table).any():
        return part[part["table"] == table]
    return part[part["table"].isin(["", "main"])] if table != "ablation" else part


def main_table(df: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """(a) Teachers, small baselines, same-depth baselines and OnMKD: quality, size, speed, and
    speed-up and compression against the (first) teacher. Mean ± std over seeds; n = seeds."""
    part = _table_rows(df, "main", split)
    part = part[part["role"].isin(ROLES[:6])]
    if part.empty:
        return pd.DataFrame()
    quality = [m for m in ("acc@20", "acc@100", "recall@20", "recall@100", "mrr@10", "ndcg@10") if part[m].notna().any()]
    teacher = part[part["role"] == "teacher"]
    t_lat = teacher["query_ms_p50"].mean() if not teacher.empty else float("nan")
    t_par = teacher["params_m"].mean() if not teacher.empty else float("nan")
    out = []
    for label, g in part.groupby("label", sort=False):
        row = {"model": label, "role": g["role"].iloc[0],
               "layers": "-" if pd.isna(g["layers"].iloc[0]) else str(int(g["layers"].iloc[0])), "n": str(len(g))}
        row.update({m: _cell(g[m]) for m in quality})
        row.update({name: _cell(g[m], d, fixed=m in SIZES) for m, name, d in EFFICIENCY if part[m].notna().any()})
        lat, par = g["query_ms_p50"].mean(), g["params_m"].mean()
        row["speed-up"] = f"{t_lat / lat:.2f}×" if lat == lat and t_lat == t_lat else "-"
        row["compression"] = f"{t_par / par:.2f}×" if par == par and t_par == t_par else "-"
        out.append(row)
    return pd.DataFrame(out)


def layers_table(df: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """(b) The primary metric against the number of layers, a column per method (mean ± std, n)."""
    part = _table_rows(df, "layers", split)
    part = part[part["role"].isin(["onmkd", "same-depth baseline", "reference", "teacher"]) & part["layers"].notna()]
    if part.empty:
        return pd.DataFrame()
    metric = primary(part)
    cols: dict[int, dict[str, str]] = {}
    for (method, layers), g in part.groupby(["method", "layers"], sort=True):
        name = METHOD_NAMES.get(method, "untrained / as released" if method == "encoder" else method)
        cols.setdefault(int(layers), {})[name] = f"{_cell(g[metric])} (n={len(g)})"
    out = [{"layers": str(k), **v} for k, v in sorted(cols.items())]
    return pd.DataFrame(out).fillna("-").rename_axis(None)


def trials_by_layers(df: pd.DataFrame) -> pd.DataFrame:
    """A sweep's dev results per layer count: trials, best and median dev score (selection data)."""
    part = df[(df["role"] == "trial") & df["layers"].notna()]
    if part.empty:
        return pd.DataFrame()
    metric = primary(part)
    out = []
    for layers, g in part.groupby("layers", sort=True):
        out.append({"layers": str(int(layers)), "trials": str(len(g)), f"best dev {metric}": f"{g[metric].max():.3f}",
                    f"median dev {metric}": f"{g[metric].median():.3f}",
                    "latency p50 (ms)": _cell(g["query_ms_p50"], 2)})
    return pd.DataFrame(out)


def ablation_table(df: pd.DataFrame, split: str = "test", reference: str | None = None) -> pd.DataFrame:
    """(c) Ablations against the full method: mean ± std over seeds and the difference in points."""
    part = _table_rows(df, "ablation", split)
    part = part[part["role"] == "ablation"]
    if part.empty:
        return pd.DataFrame()
    metric = primary(part)
    ref = part[part["label"] == reference] if reference else part.iloc[:0]
    ref_mean = ref[metric].mean() if not ref.empty else float("nan")
    out = []
    groups = ([(reference, ref)] if not ref.empty else []) + [(k, g) for k, g in part.groupby("label", sort=False) if k != reference]
    for label, g in groups:
        row = {"variant": label, "n": str(len(g)), metric: _cell(g[metric])}
        for m in ("recall@20", "mrr@10"):
            if m != metric and part[m].notna().any():
                row[m] = _cell(g[m])
        diff = 100 * (g[metric].mean() - ref_mean)
        row[f"Δ {metric} (points)"] = "-" if label == reference or diff != diff else f"{diff:+.2f}"
        out.append(row)
    return pd.DataFrame(out)


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        text = text.replace(a, b)
    return text.replace("±", r"$\pm$").replace("×", r"$\times$").replace("Δ", r"$\Delta$")


def to_latex(table: pd.DataFrame, caption: str = "") -> str:
    """A booktabs table (``\\usepackage{booktabs}``); cells are already formatted strings."""
    cols = [_latex_escape(str(c)) for c in table.columns]
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}",
             r"\toprule", " & ".join(cols) + r" \\", r"\midrule"]
    for _, row in table.iterrows():
        lines.append(" & ".join(_latex_escape(str(v)) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(r"\caption{" + _latex_escape(caption) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the report

def build_report(dirs, out, *, command: str = "", reference: str | None = None, log=print) -> list:
    """Write the tidy CSV, the tables (Markdown and LaTeX) and the figures (PNG and PDF) into ``out``.

    ``reference``: the label of the full method in the ablation table (default: the first
    OnMKD label on the test split). Returns the paths written.
    """
    from pathlib import Path

    from onmkd.io import write_text
    from onmkd.study import figures

    out = Path(out)
    df = collect(dirs)
    if df.empty:
        from onmkd.errors import DataError

        raise DataError(f"{', '.join(map(str, dirs))}: no results found (no metrics.json, manifest.json or study.json)")
    written: list = []

    def text(name: str, body: str) -> None:
        write_text(out / name, body)
        written.append(out / name)

    text("results.csv", df.copy().to_csv(index=False))
    split = "test" if (df["split"] == "test").any() else df["split"].iloc[0]
    reference = _reference_label(dirs, df, split, reference)
    index = _readme_head(dirs, command)
    for name, (table, caption) in _tables(df, split, reference).items():
        if table.empty:
            continue
        md = table.to_markdown(index=False, disable_numparse=True)
        text(f"table_{name}.md", f"{caption}\n\n{md}\n")
        text(f"table_{name}.tex", to_latex(table, caption))
        index += [f"## {name}", "", caption, "", md, ""]
    for d in dirs:
        for name, (table, caption) in _study_tables(Path(d)).items():
            md = table.to_markdown(index=False, disable_numparse=True)
            text(f"table_{name}.md", f"{caption}\n\n{md}\n")
            index += [f"## {caption.split(':')[0]}", "", caption, "", md, ""]
    for name, fig in _figures(df, dirs, split, reference).items():
        if fig is not None:
            written += figures.save(fig, out / "figures" / name)
            index += [f"![{name}](figures/{name}.png)", ""]
    text("README.md", "\n".join(index) + "\n")
    log(f"report: {len(written)} files in {out}")
    return written


def _reference_label(dirs, df: pd.DataFrame, split: str, reference: str | None) -> str | None:
    """The full method's label for the ablation table: as given, else a manifest's, else the first OnMKD label."""
    from pathlib import Path

    for d in dirs:
        if reference is None and (Path(d) / "manifest.json").exists():
            reference = _read_json(Path(d) / "manifest.json").get("reference")
    onmkd_labels = df[(df["split"] == split) & (df["role"] == "onmkd")]["label"].unique()
    return reference or (onmkd_labels[0] if len(onmkd_labels) else None)


def _readme_head(dirs, command: str) -> list[str]:
    """The report README's first lines: the command, the sources and what each manifest's runs are."""
    from pathlib import Path

    index = ["# Report", "", f"Made by: `{command}`" if command else "", "",
             f"Sources: {', '.join(map(str, dirs))}. `results.csv` holds every run's numbers (a row per run and "
             "split, with the metrics.json or trial it came from); tables show mean ± std over n seeds (sample std).", ""]
    for d in dirs:
        man = Path(d) / "manifest.json"
        if man.exists():
            m = _read_json(man)
            if m.get("kind") == "sweep":
                index += [f"**{d}: final step.** The trained rows of the main table are the best configuration "
                          f"chosen on dev by the study's trials, trained again with new seeds and evaluated once on "
                          f"the {m.get('split', 'test')} split beside the baselines; the trials never read it.", ""]
            elif m.get("kind") == "paper":
                index += [f"**{d}: paper plan {m.get('plan', '')}**, seeds {m.get('seeds')}; checkpoints selected "
                          f"on dev, evaluated once on the {m.get('split', 'test')} split.", ""]
    return index


def _tables(df: pd.DataFrame, split: str, reference: str | None) -> dict:
    """name -> (table, caption) of every table of the report (an empty table is left out)."""
    return {
        "main": (main_table(df, split), f"Retrieval quality and efficiency on the {split} split: mean ± std over n seeds; "
                 "speed-up and compression against the teacher."),
        "layers": (layers_table(df, split), f"{primary(df)} on the {split} split against the number of transformer layers."),
        "ablation": (ablation_table(df, split, reference), f"Ablations on the {split} split against {reference}."),
        "trials_by_layers": (trials_by_layers(df), "Sweep trials on the dev split per layer count (selection data, not test results)."),
    }


def _study_tables(study_dir) -> dict:
    """A study directory's table of every trial (pruned ones too) and of where its time went."""
    from pathlib import Path

    out = {}
    info_path = Path(study_dir) / "study.json"
    if info_path.exists():
        study = _load_study(_read_json(info_path))
        rows = []
        for t in study.trials:
            if t.state.name not in ("COMPLETE", "PRUNED"):
                continue
            dev = t.user_attrs.get("dev", {})
            metric = next((m for m in ("acc@20", "ndcg@10", "mrr@10") if m in dev), None)
            last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
            value = dev.get(metric) if metric else last
            rows.append({"trial": str(t.number), "state": t.state.name.lower(),
                         **{k: (f"{v:.4g}" if isinstance(v, float) else _short_value(v)) for k, v in t.params.items()},
                         "dev score": "-" if value is None else f"{value:.4f}",
                         "epochs reported": str(len(t.intermediate_values)),
                         "seconds": f"{t.user_attrs['seconds']:.0f}" if "seconds" in t.user_attrs else "-"})
        if rows:
            out["trials"] = (pd.DataFrame(rows).fillna("-"), "Trials: every finished trial (complete or pruned) of "
                             "the study with its params, its dev score (the selected peer's; the last reported "
                             "epoch's for a pruned trial) and its wall time; selection data, not test results.")
    timings = _read_json(Path(study_dir) / "timings.json") if (Path(study_dir) / "timings.json").exists() else None
    if timings and timings.get("by_kind"):
        wall = timings["wall_s"]
        rows = [{"phase": r["kind"], "seconds": f"{r['seconds']:.1f}", "share": f"{r['seconds'] / wall:.1%}",
                 "times": str(r["count"])} for r in timings["by_kind"]]
        out["time"] = (pd.DataFrame(rows), f"Where the time went: the last sweep command's first {wall:.0f} s of "
                       "wall time (up to this report) by phase, from timings.json. trials/X sums phase X over every "
                       "trial (of every worker); a nested phase (dev/passages inside dev, final/RUN/train inside "
                       "final/RUN) is part of its parent's time, so only top-level rows add up to the total.")
    return out


def _short_value(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(d.get("checkpoint", "?") if isinstance(d, dict) else str(d) for d in v) + "]"
    return str(v)


def _figures(df: pd.DataFrame, dirs, split: str, reference: str | None) -> dict:
    """name -> Figure (or None) of every figure of the report, the Optuna ones for each study directory."""
    from pathlib import Path

    from onmkd.study import figures

    metric = primary(df)
    recall = "recall@20" if df["recall@20"].notna().any() else metric
    main_rows = _table_rows(df, "main", split)
    layer_rows = _table_rows(df, "layers", split)
    if (layer_rows["table"] == "layers").any():  # the teachers as reference lines
        layer_rows = pd.concat([layer_rows, main_rows[main_rows["role"] == "teacher"]])
    trials = df[df["role"] == "trial"]
    figs = {
        "recall_latency": figures.recall_latency(main_rows[main_rows["role"].isin(ROLES[:6])], metric=recall, split=split),
        "metric_by_layers": figures.metric_by_layers(layer_rows[layer_rows["role"].isin(ROLES[:6])], metric=metric, split=split),
        "ablation": figures.ablation_bars(_table_rows(df, "ablation", split).query("role == 'ablation'"), metric=metric,
                                          split=split, reference=reference),
        "trials_recall_latency": figures.recall_latency(trials, metric=recall, split=trials["split"].iloc[0]) if len(trials) else None,
    }
    for d in dirs:
        info = Path(d) / "study.json"
        if info.exists():
            study = _load_study(_read_json(info))
            target = f"dev {_read_json(info)['objectives'][0]}"
            figs["optuna_history"] = figures.optuna_history(study, target_name=target)
            figs["optuna_importances"] = figures.optuna_importances(study, target_name=target)
    return figs
