"""Training throughput against the machine's own GEMM peak, and where a training step's time goes.

Builds the trainer of the default sweep's trials (bundled SQuAD, 2 peers, 2 layers, batch 32,
passages of 128 tokens, ``onmkd``) and runs ``--steps`` steps after ``--warmup``. Reports:

- useful training FLOP/s: 3 × the analytic forward FLOPs of the real tokens of every question and
  passage each peer encodes (``onmkd.study.profile.encoder_flops``; the backward costs about twice
  the forward), over the wall time of the steps;
- the fp32 GEMM peak measured in the same run (encoder-shaped GEMMs, before and after; the higher),
  and the ratio of the two: the issue's goal is ≥ 50 %;
- a torch.profiler split of self CPU time into GEMMs (forward and backward), attention and
  everything else, for the last step.

    python benchmarks/train_profile.py [--steps 4] [--warmup 1] [--threads 0] [--out reports/train_profile]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode_vs_st import cpu_name, sustained_gemm_gflops, write_report  # noqa: E402
from forward_profile import kind  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--p-max-len", type=int, default=128)
    ap.add_argument("--adamw", default="fused", help="train.adamw: fused (the default), foreach or loop")
    ap.add_argument("--out", type=Path, default=Path("reports/train_profile"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from torch.profiler import ProfilerActivity, profile

    from onmkd.config import load_config
    from onmkd.data import load_dataset, passage_text
    from onmkd.retrieval.models import token_ids
    from onmkd.study.profile import encoder_flops
    from onmkd.training.train import Trainer, batches

    data = load_dataset("squad")
    n = 32 * (args.steps + args.warmup)
    cfg = load_config(None, [f"data.max_train_questions={n}", f"data.p_max_len={args.p_max_len}",
                             f"model.layers={args.layers}", f'train.adamw="{args.adamw}"'])
    peak_before = sustained_gemm_gflops(3.0, 384, 1536)
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, Path(tmp) / "run", data, log=lambda m: None)
        plan = batches(tr.examples, tr.cfg, 0)[: args.warmup + args.steps]
        enc = tr.peers[0].question
        flops, seconds = 0.0, 0.0
        for i, (chunk, cands, labels) in enumerate(plan):
            q = [len(x) for x in token_ids(enc.tokenizer, [ex.question for ex in chunk], cfg.data.q_max_len)]
            p = [len(x) for x in token_ids(enc.tokenizer, [passage_text(data.corpus[c], cfg.data.titles) for c in cands],
                                           cfg.data.p_max_len)]
            step_flops = 3 * len(tr.peers) * (encoder_flops(enc, q).sum() + encoder_flops(enc, p).sum())
            last = i == len(plan) - 1
            if last:
                prof = profile(activities=[ProfilerActivity.CPU])
                prof.__enter__()
            t0 = time.perf_counter()
            tr.train_step(chunk, cands, labels)
            dt = time.perf_counter() - t0
            if last:
                prof.__exit__(None, None, None)
            elif i >= args.warmup:
                flops, seconds = flops + step_flops, seconds + dt
    peak = max(peak_before, sustained_gemm_gflops(3.0, 384, 1536))
    by = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
    for ev in prof.key_averages():
        by[kind(ev.key)] += ev.self_cpu_time_total / 1e6
    total = sum(by.values())
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
    top_ops = [(e.key, e.self_cpu_time_total / 1e6 / total, e.count) for e in top]
    achieved = flops / seconds / 1e9
    result = {"cpu": cpu_name(), "aten_capability": torch.backends.cpu.get_cpu_capability(),
              "threads": torch.get_num_threads(), "load_avg_end": os.getloadavg()[0],
              "steps": args.steps - 1, "seconds_per_step": seconds / max(1, args.steps - 1),
              "achieved_gflops": achieved, "gemm_peak_gflops": peak, "peak_fraction": achieved / peak,
              "profile_shares": {k: v / total for k, v in by.items()},
              "top_ops": top_ops, "layers": args.layers,
              "p_max_len": args.p_max_len, "adamw": args.adamw, "command": "python " + " ".join(sys.argv)}
    lines = [f"<!-- produced by: {result['command']} -->", "",
             f"# Training throughput: {result['cpu']}, PyTorch kernels {result['aten_capability']}, "
             f"{result['threads']} threads", "",
             f"The default trial's OnMKD step (2 peers, {args.layers} layers, batch 32, passages of {args.p_max_len} tokens, "
             f"AdamW {args.adamw}): "
             f"{result['seconds_per_step']:.2f} s per step over {result['steps']} timed steps; "
             f"{achieved:.1f} GFLOP/s of useful work (3 × forward FLOPs of real tokens) against a measured fp32 GEMM "
             f"peak of {peak:.1f} GFLOP/s: **{achieved / peak:.1%}** of the peak. Load average at the end "
             f"{result['load_avg_end']:.2f}.", "",
             "Self CPU time of one step: " + ", ".join(f"{k} {v / total:.1%}" for k, v in by.items()) + ".", "",
             "| op (self CPU time) | share | calls |", "|---|---:|---:|",
             *[f"| `{k}` | {v:.1%} | {c} |" for k, v, c in top_ops], ""]
    tag = result["aten_capability"].lower() + ("" if args.adamw == "fused" else f"_{args.adamw}")
    write_report(f"{args.out}_{tag}", result, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
