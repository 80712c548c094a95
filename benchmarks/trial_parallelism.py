"""Threads or parallel trials? The default sweep's trial budget trained two ways on this machine.

Two trainings with the default sweep's trial budget (256 SQuAD training questions, 2 epochs,
passages of 128 tokens, 2 layers, OnMKD with two peers; two seeds, so two distinct runs) are run
(a) one after the other with all the cores' threads each, and (b) side by side in two processes
with the threads shared out (``--threads`` each), as ``onmkd-bench sweep --workers 2`` would. The
ratio of the wall times says which a sweep on this machine should use (``study.workers``).

    python benchmarks/trial_parallelism.py [--out reports/trial_parallelism]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode_vs_st import cpu_name, write_report  # noqa: E402

TRIAL = ["data.max_train_questions=256", "data.p_max_len=128", "train.epochs=2", "train.checkpoint_every=8",
         "model.layers=2"]


def train(out: Path, seed: int, threads: int) -> subprocess.Popen:
    sets = [a for s in [*TRIAL, f"train.seed={seed}", f"train.threads={threads}"] for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "onmkd.cli", "train", "--out", str(out), *sets], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", type=Path, default=Path("reports/trial_parallelism"))
    args = ap.parse_args()
    import torch

    result = {"cpu": cpu_name(), "aten_capability": torch.backends.cpu.get_cpu_capability(), "threads": args.threads,
              "load_avg_start": os.getloadavg()[0], "command": "python " + " ".join(sys.argv)}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        for seed in (0, 1):
            assert train(Path(tmp) / f"seq{seed}", seed, args.threads).wait() == 0
        result["sequential_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        each = max(1, args.threads // 2)
        procs = [train(Path(tmp) / f"par{seed}", seed, each) for seed in (0, 1)]
        assert all(p.wait() == 0 for p in procs)
        result["parallel_s"] = time.monotonic() - t0
        same = all(json.loads((Path(tmp) / f"seq{s}" / "metrics.json").read_text())["dev"]
                   == json.loads((Path(tmp) / f"par{s}" / "metrics.json").read_text())["dev"] for s in (0, 1))
    result["load_avg_end"] = os.getloadavg()[0]
    result["speedup_parallel"] = result["sequential_s"] / result["parallel_s"]
    result["same_dev_metrics"] = same
    lines = [f"<!-- produced by: {result['command']} -->", "",
             f"# Threads or parallel trials: {result['cpu']}, PyTorch kernels {result['aten_capability']}", "",
             f"Two trainings of the default sweep's trial budget: one after the other with {args.threads} threads each "
             f"**{result['sequential_s']:.0f} s**; side by side with {each} thread(s) each **{result['parallel_s']:.0f} s**: "
             f"parallel trials are **{result['speedup_parallel']:.2f}x** as fast. Dev metrics identical either way: "
             f"{same}. Load average {result['load_avg_start']:.2f} before, {result['load_avg_end']:.2f} after.", ""]
    write_report(str(args.out), result, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
