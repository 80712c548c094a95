"""The same-depth comparison: dpr, kd, dml and onmkd 2-layer students on bundled SQuAD,
several seeds each, the same budget (one epoch, batch 32, the same questions), evaluated on the
test split, beside the untrained 2-layer truncation and the full 6-layer teacher.

    python experiments/same_depth.py --seeds 0 1 2

Resumable: finished trainings and evaluations are kept and skipped on a rerun. Writes
reports/same_depth.{md,csv,json}. Test-split numbers are read only after training has ended
(selection uses dev alone). Significance: paired t-test and Wilcoxon signed-rank test over test
questions of per-question acc@20 hits (and reciprocal rank), averaged over seeds, OnMKD against
each same-depth baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("dpr", "kd", "dml", "onmkd")
COLUMNS = ("acc@5", "acc@20", "acc@100", "recall@20", "mrr@10")


def per_question(run_dir: Path, data, split: str) -> dict[str, np.ndarray]:
    """Per-question acc@20 hit and reciprocal rank (qid order of the split) from a run file."""
    from onmkd.retrieval.metrics import first_hit_ranks, qrels_metrics, rank, read_trec_run

    s = data.split(split)
    run = read_trec_run(run_dir / "run.trec")
    qids = list(s.queries)
    ranks = first_hit_ranks(rank(run), {p: d["text"] for p, d in data.corpus.items()}, s.answers, 100)
    rr = qrels_metrics(s.qrels, run, per_query=True)
    return {"acc@20": np.array([float(ranks.get(q, np.inf) <= 20) for q in qids]),
            "mrr@10": np.array([rr[q]["mrr@10"] if q in rr else 0.0 for q in qids])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--runs", type=Path, default=Path("runs/same_depth"))
    ap.add_argument("--report", type=Path, default=Path("reports/same_depth"))
    args = ap.parse_args()

    import pandas as pd
    from scipy import stats

    from onmkd.config import PeerInit, load_config
    from onmkd.data import load_dataset
    from onmkd.retrieval.evaluate import EvalConfig, evaluate
    from onmkd.io import write_json, write_text
    from onmkd.retrieval.dual import DualEncoder
    from onmkd.training.peers import build_peer
    from onmkd.training.train import train

    data = load_dataset("squad")
    rows, per_q = [], {}

    def test_eval(name: str, model: str, run_dir: Path, seed: int | None) -> None:
        out = run_dir / "test"
        if not (out / "metrics.json").exists():
            evaluate(EvalConfig(model=model, dataset="squad", split="test"), data, out_dir=out)
        m = json.loads((out / "metrics.json").read_text())
        rows.append({"method": name, "seed": seed, **{c: m[c] for c in COLUMNS}, "params_m": m.get("params_m")})
        per_q.setdefault(name, []).append(per_question(out, data, "test"))

    # Reference points: the untrained 2-layer truncation and the full teacher.
    trunc = args.runs / "untrained-l2"
    if not (trunc / "student").exists():
        enc, _ = build_peer(PeerInit(), layers=2, pooling="mean", normalize=True, seed=0, field="model.peer[0]")
        DualEncoder(enc.eval()).save(trunc / "student", {"note": "first 2 layers of minilm-l6, untrained"})
    test_eval("untrained 2-layer", str(trunc), trunc, None)
    test_eval("teacher minilm-l6 (6 layers)", "minilm-l6", args.runs / "teacher-minilm-l6", None)

    timings = {}
    for seed in args.seeds:
        for method in args.methods:
            cfg = load_config(ROOT / "experiments" / f"{method}.toml", [f"train.seed={seed}"])
            run_dir = args.runs / f"{method}-seed{seed}"
            t0 = time.perf_counter()
            train(cfg, run_dir, data, log=lambda m: print(m, file=sys.stderr))
            timings[f"{method}-seed{seed}"] = round(time.perf_counter() - t0, 1)
            test_eval(method, str(run_dir), run_dir, seed)

    df = pd.DataFrame(rows)
    agg = df.groupby("method", sort=False)[list(COLUMNS)].agg(["mean", "std", "count"])
    table = []
    for method in agg.index:
        row = {"method": method, "seeds": int(agg.loc[method, (COLUMNS[0], "count")]) if method in METHODS else "-"}
        for c in COLUMNS:
            mean, std = agg.loc[method, (c, "mean")], agg.loc[method, (c, "std")]
            row[c] = f"{mean:.4f}" + (f" ± {std:.4f}" if method in METHODS and not np.isnan(std) else "")
        table.append(row)

    tests = []
    if "onmkd" in per_q:
        ours = {k: np.mean([d[k] for d in per_q["onmkd"]], axis=0) for k in ("acc@20", "mrr@10")}
        for base in [m for m in args.methods if m != "onmkd"] + ["untrained 2-layer"]:
            theirs = {k: np.mean([d[k] for d in per_q[base]], axis=0) for k in ("acc@20", "mrr@10")}
            for k in ("acc@20", "mrr@10"):
                diff = ours[k] - theirs[k]
                t = stats.ttest_rel(ours[k], theirs[k])
                w = stats.wilcoxon(ours[k], theirs[k]) if np.any(diff) else None
                tests.append({"onmkd vs": base, "metric": k, "mean diff": f"{diff.mean():+.4f}",
                              "t-test p": f"{t.pvalue:.3g}", "wilcoxon p": f"{w.pvalue:.3g}" if w else "-",
                              "questions": len(diff)})

    cmd = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    md = [f"<!-- produced by: {cmd} -->", "", "## Same-depth comparison on SQuAD test (bundled split by article)", "",
          f"2-layer students, every method one epoch of the 7,687 train questions, batch 32; seeds {args.seeds}; "
          "mean ± sample std over seeds. Test split: 1,975 questions over all 2,067 paragraphs.", "",
          pd.DataFrame(table).to_markdown(index=False), ""]
    if tests:
        md += ["### OnMKD against each baseline: paired tests over test questions (per-question values averaged over seeds)", "",
               pd.DataFrame(tests).to_markdown(index=False), ""]
    md += [f"Command: `{cmd}`", ""]
    write_text(args.report.with_suffix(".md"), "\n".join(md))
    df.to_csv(args.report.with_suffix(".csv"), index=False)
    write_json(args.report.with_suffix(".json"), {"command": cmd, "rows": rows, "tests": tests, "train_seconds_this_call": timings})
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
