"""Reference evaluations: teacher and BM25 on bundled SQuAD test, bundled NQ (QED) and SciFact.

    python experiments/reference_evals.py [--scifact ../shared/data/scifact-beir] [--models minilm-l6 bm25]

Each evaluation is exactly `onmkd-bench evaluate --model M --dataset D --split test` (run
directories under runs/evaluate/); the table goes to reports/reference_evals.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scifact", default="../shared/data/scifact-beir")
    ap.add_argument("--models", nargs="+", default=["minilm-l6", "bm25"])
    ap.add_argument("--out", type=Path, default=Path("reports/reference_evals.md"))
    args = ap.parse_args()

    from onmkd.io import write_text
    from onmkd.study.report import metrics_table

    # (label, spec, split): nq-qed on every question (`all`), as these reference numbers always were;
    # its paragraph-held-out `test` is a 279-question subset of it
    datasets = [("squad", "squad", "test"), ("nq-qed", "nq-qed", "all")]
    if Path(args.scifact).is_dir():
        datasets.append(("scifact", args.scifact, "test"))
    blocks = [f"<!-- produced by: python {' '.join(sys.argv)} -->", ""]
    for label, spec, split in datasets:
        rows, cmds = [], []
        for model in args.models:
            out = Path("runs/evaluate") / f"{model}__{label}__{split}"
            cmd = ["onmkd-bench", "evaluate", "--model", model, "--dataset", spec, "--split", split, "--out", str(out)]
            subprocess.run([sys.executable, "-m", "onmkd.cli", *cmd[1:]], check=True, stdout=subprocess.DEVNULL)
            m = json.loads((out / "metrics.json").read_text())
            # Quality and size only: timings here depend on the cache and the machine's load
            # (`onmkd-bench profile` measures speed).
            rows.append({"model": model, **{k: v for k, v in m.items() if k not in ("ms_per_query", "passages_per_s")}})
            cmds.append(" ".join(cmd))
        blocks += [f"### {label} ({split})", "", metrics_table(rows), "", "Commands:", "",
                   *[f"    {c}" for c in cmds], ""]
    write_text(args.out, "\n".join(blocks))
    print("\n".join(blocks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
