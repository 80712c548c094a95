"""Does the findings plan's 128-token passage budget change how its rows rank against 256 tokens?

    python experiments/passage_length.py runs/findings --benchmark nq-qed --seed 0 [--lr 5e-5]

Takes the finished main-table students of one benchmark and seed from a findings folder (trained
with passages of ``data.p_max_len`` tokens, 128 in experiments/findings.toml), evaluates each on
the test split again with passages of 256 tokens (the students' training length is unchanged: this
checks the evaluation length only), and compares the order of the rows by MRR@10 and acc@20
(Kendall's tau, and whether the best row is the same), with the share of the corpus's passages that
128 tokens cut (the check can only matter for those). ``--lr`` picks the rows trained at one learning
rate when the folder has rows at several (a tuned plan). Writes
``reports/findings/passage_length.{md,json}`` beside the findings report.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from scipy.stats import kendalltau

from onmkd.config import from_dict
from onmkd.data import load_dataset
from onmkd.io import write_json, write_text
from onmkd.study.findings import row_lr
from onmkd.study.runs import test_evaluate

METRICS = ("mrr@10", "acc@20", "ndcg@10")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("findings", type=Path, help="a findings folder (runs/findings)")
    ap.add_argument("--benchmark", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--lr", type=float, default=None, help="only rows trained at this learning rate")
    ap.add_argument("--out", type=Path, default=Path("reports/findings"))
    args = ap.parse_args()
    man = json.loads((args.findings / "manifest.json").read_text())
    rows = [r for r in man["runs"] if r.get("table") == "main" and r.get("benchmark") == args.benchmark
            and r.get("test_on") == args.benchmark and r.get("seed") == args.seed and r["path"].startswith("runs/")]
    for r in rows:  # a manifest written before rows carried their learning rate
        if "lr" not in r:
            r["lr"] = row_lr(args.findings, r)
    if args.lr is not None:
        rows = [r for r in rows if abs(r["lr"] - args.lr) <= 1e-12]
    if not rows:
        raise SystemExit(f"{args.findings}: no finished main-table run of {args.benchmark} with seed {args.seed}"
                         + (f" at learning rate {args.lr:g}" if args.lr is not None else ""))
    labels = [r["label"] for r in rows]
    if len(set(labels)) != len(labels):
        rates = ", ".join(sorted({str(r.get("lr")) for r in rows}))
        raise SystemExit(f"{args.findings}: rows of {args.benchmark} at several learning rates ({rates}): pick one with --lr")
    data = load_dataset(man["benchmarks"][args.benchmark])
    table = []
    for r in rows:
        run = (args.findings / r["path"]).parent
        tree = json.loads((run / "config.json").read_text())
        tree.pop("onmkd_version", None)
        cfg = from_dict(tree)
        short = json.loads((args.findings / r["path"] / "metrics.json").read_text())
        long_cfg = replace(cfg, data=replace(cfg.data, p_max_len=args.length))
        target = run / f"{man['split']}-p{args.length}"
        print(f"{r['label']}: {cfg.data.p_max_len} -> {args.length} tokens", flush=True)
        m = test_evaluate(str(run), target, data, long_cfg, man["split"], latency_queries=1)
        table.append({"row": r["label"], **{f"{k} @{cfg.data.p_max_len}": short.get(k) for k in METRICS},
                      **{f"{k} @{args.length}": m.get(k) for k in METRICS}, "short": cfg.data.p_max_len})
    short_len = table[0]["short"]
    from onmkd.data import passage_text
    from onmkd.retrieval.evaluate import load_retriever

    tok = load_retriever(str((args.findings / rows[0]["path"]).parent / "student")).passage.tokenizer
    texts = [passage_text(p, cfg.data.titles) for p in data.corpus.values()]
    lengths = [len(ids) for ids in tok(texts, add_special_tokens=True)["input_ids"]]
    cut = {n: sum(x > n for x in lengths) / len(lengths) for n in (short_len, args.length)}
    summary = {}
    for k in METRICS:
        a = [t[f"{k} @{short_len}"] for t in table]
        b = [t[f"{k} @{args.length}"] for t in table]
        if None in a or None in b:
            continue
        tau = kendalltau(a, b)
        summary[k] = {"kendall_tau": float(tau.statistic), "p": float(tau.pvalue),
                      "best_short": table[a.index(max(a))]["row"], "best_long": table[b.index(max(b))]["row"]}
    cmd = (f"python experiments/passage_length.py {args.findings} --benchmark {args.benchmark} --seed {args.seed} "
           f"--length {args.length}" + (f" --lr {args.lr:g}" if args.lr is not None else ""))
    write_json(args.out / "passage_length.json", {"command": cmd, "benchmark": args.benchmark, "seed": args.seed,
                                                  "passages": len(lengths), "share_cut": cut, "rows": table, "summary": summary})
    lines = [f"# Passage length: {short_len} against {args.length} tokens at test time ({args.benchmark}, seed {args.seed})", "",
             f"Produced by `{cmd}`. The students were trained with {short_len}-token passages; only the test "
             f"encoding length changes. Of the corpus's {len(lengths)} passages, {cut[short_len]:.1%} are longer than "
             f"{short_len} tokens and {cut[args.length]:.1%} longer than {args.length}.", "", "| row | " + " | ".join(f"{k} @{short_len} | {k} @{args.length}" for k in METRICS) + " |",
             "|---|" + "---|" * (2 * len(METRICS))]
    for t in table:
        lines.append(f"| {t['row']} | " + " | ".join(f"{t[f'{k} @{short_len}']:.4f} | {t[f'{k} @{args.length}']:.4f}"
                                                    if t[f"{k} @{short_len}"] is not None and t[f"{k} @{args.length}"] is not None
                                                    else "– | –" for k in METRICS) + " |")
    lines += [""] + [f"- {k}: Kendall's τ between the two orders of the rows {s['kendall_tau']:.2f} (p = {s['p']:.2g}); best row "
                     f"{s['best_short']} at {short_len} tokens, {s['best_long']} at {args.length}." for k, s in summary.items()]
    write_text(args.out / "passage_length.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
