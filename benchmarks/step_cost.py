"""Cost of one OnMKD training step (K = 2 peers) against one DPR step (1 peer), same batch.

Builds both trainers on the bundled SQuAD train split, runs the same batches through each
(after warm-up steps), interleaving the two so that machine noise hits both alike, and reports
the median seconds per step and their ratio. The issue's goal: ratio ≤ 2.2.

    python benchmarks/step_cost.py [--batch 32] [--steps 6] [--hard-negatives 1] [--out reports/step_cost.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--hard-negatives", type=int, default=1)
    ap.add_argument("--p-max-len", type=int, default=256)
    ap.add_argument("--out", type=Path, default=Path("reports/step_cost.json"))
    args = ap.parse_args()

    from onmkd.config import load_config
    from onmkd.data import load_dataset
    from onmkd.io import write_json
    from onmkd.training.train import Trainer, batches

    data = load_dataset("squad")
    n = args.batch * (args.steps + args.warmup)
    common = [f"data.max_train_questions={n}", f"train.batch_size={args.batch}",
              f"data.hard_negatives={args.hard_negatives}", f"data.p_max_len={args.p_max_len}"]
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in [("dpr", ["train.method=\"dpr\"", "model.peers=1"]), ("onmkd", [])]:
            cfg = load_config(None, common + extra)
            trainers[name] = Trainer(cfg, Path(tmp) / name, data, log=lambda m: None)
        plan = batches(trainers["dpr"].examples, trainers["dpr"].cfg, 0)
        times: dict[str, list[float]] = {k: [] for k in trainers}
        for i, batch in enumerate(plan):
            for name, tr in trainers.items():
                t0 = time.perf_counter()
                tr.train_step(*batch)
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine(), "load_average_1_5_15": os.getloadavg()},
        "batch": args.batch, "hard_negatives": args.hard_negatives, "p_max_len": args.p_max_len, "steps_timed": args.steps,
        "seconds_per_step": {k: round(v, 3) for k, v in med.items()},
        "all_seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "ratio_onmkd_over_dpr": round(med["onmkd"] / med["dpr"], 3),
        "goal": "ratio <= 2.2",
        "met": med["onmkd"] / med["dpr"] <= 2.2,
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
