"""Does a sweep's dev pool rank trials as the whole corpus would? Measured on a finished study.

A study whose trials scored dev over a fixed pool (``data.dev_pool = N``) selected its winner on
that pool. For every complete trial, this evaluates the trial's student on the same dev questions
over the whole corpus, and reports both scores per trial, Spearman's and Kendall's rank
correlations between them, and whether both pick the same winner.

    python benchmarks/dev_pool_agreement.py STUDY_DIR [--max-trials 0] [--out reports/dev_pool_agreement]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode_vs_st import cpu_name, write_report  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study_dir", type=Path)
    ap.add_argument("--max-trials", type=int, default=0, help="evaluate at most this many trials (0: all)")
    ap.add_argument("--out", type=Path, default=Path("reports/dev_pool_agreement"))
    args = ap.parse_args()

    import optuna
    from scipy import stats

    from onmkd.config import from_dict
    from onmkd.data import load_dataset
    from onmkd.retrieval.evaluate import EvalConfig, evaluate
    from onmkd.training.train import hold_out_dev

    info = json.loads((args.study_dir / "study.json").read_text())
    study = optuna.load_study(study_name=info["name"], storage=info["storage"])
    trials = [t for t in study.trials if t.state.name == "COMPLETE" and "dev" in t.user_attrs]
    if args.max_trials:
        trials = trials[: args.max_trials]
    if len(trials) < 3:
        raise SystemExit(f"{args.study_dir}: {len(trials)} complete trials; at least 3 are needed")
    metric = info["objectives"][0]
    cfg0 = from_dict(trials[0].user_attrs["config"])
    data = hold_out_dev(load_dataset(cfg0.data.dataset), cfg0)
    rows = []
    for t in trials:
        cfg = from_dict(t.user_attrs["config"])
        run = args.study_dir / t.user_attrs["run"]
        d = cfg.data
        m = evaluate(EvalConfig(model=str(run), dataset=d.dataset, split=d.dev_split, q_max_len=d.q_max_len,
                                p_max_len=d.p_max_len, titles=d.titles, batch_size=cfg.train.eval_batch_size),
                     data, out_dir=run / "dev-whole-corpus")
        rows.append({"trial": t.number, "pool": t.user_attrs["dev"][metric], "corpus": m[metric],
                     "pool_size": d.dev_pool})
    pool, corpus = [r["pool"] for r in rows], [r["corpus"] for r in rows]
    rho, tau = stats.spearmanr(pool, corpus).statistic, stats.kendalltau(pool, corpus).statistic
    best_pool = max(rows, key=lambda r: r["pool"])["trial"]
    best_corpus = max(rows, key=lambda r: r["corpus"])["trial"]
    result = {"cpu": cpu_name(), "study": str(args.study_dir), "metric": metric, "rows": rows, "spearman": rho,
              "kendall": tau, "same_winner": best_pool == best_corpus, "command": "python " + " ".join(sys.argv)}
    lines = [f"<!-- produced by: {result['command']} -->", "",
             f"# Dev pool against the whole corpus: {len(rows)} trials of {args.study_dir}", "",
             f"Dev {metric} of each complete trial's student over the pool of {rows[0]['pool_size']} passages it was "
             f"selected on, and over all {len(data.corpus):,} passages. Spearman ρ = {rho:.3f}, Kendall τ = {tau:.3f}; "
             f"same winner: {result['same_winner']} (pool: trial {best_pool}, corpus: trial {best_corpus}).", "",
             "| trial | pool | whole corpus |", "|---:|---:|---:|",
             *[f"| {r['trial']} | {r['pool']:.4f} | {r['corpus']:.4f} |" for r in rows], ""]
    write_report(str(args.out), result, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
