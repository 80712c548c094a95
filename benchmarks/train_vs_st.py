"""Single-peer training throughput: onmkd's ``Trainer`` (method dpr) against sentence-transformers'
own trainer with ``MultipleNegativesRankingLoss``, same model, data, batch and settings.

One process, one model folder: the 2-layer truncation of minilm-l6 (``build_peer``), saved with
``DualEncoder.save`` so that sentence-transformers loads the very same weights (checked). The same
(question, positive passage) pairs of bundled SQuAD train, in the same batches of 32 (batches
whose questions share a paragraph are left out, so in-batch negatives are the same for both:
our loop deduplicates a shared passage, MNRL would score it twice), max lengths 64/256
(sentence-transformers truncates every column at the model's ``max_seq_length`` = 256; no
question comes near 64 tokens), AdamW at the same learning rate and weight decay (each
library's own AdamW set-up: sentence-transformers takes the transformers default, the fused
kernel, and exempts biases and LayerNorm weights from decay), gradient clipping at 1, fp32,
no gradient accumulation, the same torch threads, MNRL scale 20 = 1/τ with τ = 0.05.

Timing: each round runs ``warmup + steps`` training steps of each system on the same batches
(sentence-transformers through ``trainer.train()`` with ``max_steps``; ours through the body of
``Trainer.run``'s loop: ``train_step`` plus its log line), the system going first alternating.
A step's time is the wall time between the ends of two consecutive steps, so it holds all
the loop's work: data loading and tokenisation (the sentence-transformers collator; our
``train_step``), forward, backward, clipping, optimiser, scheduler, callbacks and logging. The
process CPU time of each step is kept too (less sensitive to other load on a shared machine).
Whole warm-up rounds come first and are left out (the process's first steps are slow for both);
examples/s = batch / median step seconds, pooled over the timed rounds.

    python benchmarks/train_vs_st.py [--steps 5] [--warmup 1] [--rounds 4] [--warmup-rounds 1] [--threads 0] [--out reports/train_vs_st.json]

On a machine whose cores other processes hold, OpenMP's default wait policy (threads spin at each
parallel region's barrier) costs a multi-threaded loop several times its CPU time, the more the
more parallel regions it has: ``OMP_WAIT_POLICY=PASSIVE python benchmarks/train_vs_st.py`` (or
``--threads 1``) measures both without that effect; the report says which case a run was.
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

GOAL = 1.0
OMP_ENV = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5, help="timed steps per system per round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per system per round (the first one of a round holds sentence-transformers' per-train() set-up)")
    ap.add_argument("--rounds", type=int, default=4, help="timed rounds")
    ap.add_argument("--warmup-rounds", type=int, default=1,
                    help="whole rounds run first and left out (the process's first steps are slow for both: its heap grows)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads for both (0: torch's default)")
    ap.add_argument("--out", type=Path, default=Path("reports/train_vs_st.json"))
    args = ap.parse_args()
    if args.warmup < 1 or args.steps < 1:
        ap.error("--warmup and --steps must be at least 1")

    import transformers
    from datasets import Dataset as HFDataset
    from sentence_transformers import SentenceTransformer, __version__ as st_version
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback
    from transformers.utils import logging as hf_logging

    from onmkd.config import PeerInit, load_config
    from onmkd.data import load_dataset, passage_text
    from onmkd.io import write_json
    from onmkd.retrieval.dual import DualEncoder
    from onmkd.training.peers import build_peer
    from onmkd.training.train import Trainer, batches

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    n_steps = args.warmup + args.steps
    data = load_dataset("squad")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # ---- one model folder for both
        cfg = load_config(None, [
            'train.method="dpr"', "model.peers=1", "model.layers=2", 'model.pooling="mean"', "model.normalize=true",
            f'model.peer=[{{checkpoint="{tmp / "model"}"}}]', f"train.batch_size={args.batch}", f"train.lr={args.lr}",
            f"train.threads={args.threads}",
            "data.hard_negatives=0", "data.q_max_len=64", "data.p_max_len=256", "loss.tau=0.05"])
        enc, _ = build_peer(PeerInit(), layers=2, pooling="mean", normalize=True, seed=0, field="x",
                            attention_dropout=cfg.model.attention_dropout)
        DualEncoder(enc).save(tmp / "model")
        del enc

        # ---- ours
        ours = Trainer(cfg, tmp / "run", data, log=lambda m: None)
        plan = [b for b in batches(ours.examples, cfg, 0) if len(b[1]) == len(b[0]) == args.batch][:n_steps]
        corpus = ours.data.corpus
        pairs = [(ex.question, passage_text(corpus[ex.positive], cfg.data.titles)) for chunk, _, _ in plan for ex in chunk]
        q_tokens = max(len(x) for x in ours.peers[0].question.tokenizer([q for q, _ in pairs])["input_ids"])

        # ---- sentence-transformers, loading the same folder
        st_model = SentenceTransformer(str(tmp / "model"), device="cpu")
        st_model.max_seq_length = cfg.data.p_max_len
        same = {k: torch.equal(v, st_model[0].auto_model.state_dict()[k])
                for k, v in ours.peers[0].question.model.state_dict().items()}
        assert all(same.values()), f"the two start from different weights: {[k for k, v in same.items() if not v][:3]}"
        dtypes = {str(p.dtype) for p in [*st_model.parameters(), *ours.peers[0].parameters()]}
        train_ds = HFDataset.from_dict({"anchor": [q for q, _ in pairs], "positive": [p for _, p in pairs]})
        st_args = SentenceTransformerTrainingArguments(
            output_dir=str(tmp / "st"), per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
            learning_rate=args.lr, weight_decay=cfg.train.weight_decay, max_grad_norm=cfg.train.max_grad_norm,
            max_steps=n_steps, warmup_steps=0, fp16=False, bf16=False, use_cpu=True,
            # the same batches in the same order as ours (the default would shuffle them)
            batch_sampler=lambda dataset, **kw: DefaultBatchSampler(SequentialSampler(dataset), **kw),
            eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none",
            dataloader_num_workers=0, disable_tqdm=True, seed=cfg.train.seed)

        class StepEnds(TrainerCallback):
            def __init__(self):
                self.ends: list[tuple[float, float]] = []

            def on_step_end(self, *a, **k):
                self.ends.append((time.perf_counter(), time.process_time()))

        clock = StepEnds()
        loss = MultipleNegativesRankingLoss(st_model, scale=1.0 / cfg.loss.tau)
        st_trainer = SentenceTransformerTrainer(model=st_model, args=st_args, train_dataset=train_ds, loss=loss,
                                                callbacks=[clock])

        def intervals(ends: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
            """(wall, CPU) seconds of each step after the warm-up ones, from consecutive step ends."""
            ends = ends[max(args.warmup - 1, 0):]
            return [b[0] - a[0] for a, b in zip(ends, ends[1:])], [b[1] - a[1] for a, b in zip(ends, ends[1:])]

        def run_st():
            clock.ends = []
            st_trainer.train()
            assert len(clock.ends) == n_steps, f"sentence-transformers ran {len(clock.ends)} steps, not {n_steps}"
            return intervals(clock.ends)

        log_path = tmp / "run" / "log.jsonl"

        def run_ours():
            ends = []
            t_last = time.perf_counter()
            for chunk, cands, labels in plan:
                logs = ours.train_step(chunk, cands, labels)  # the body of Trainer.run's loop
                ours.step += 1
                now = time.perf_counter()
                row = {"step": ours.step, "epoch": 0, "lr": ours.scheduler.get_last_lr()[0],
                       "examples_per_s": len(chunk) / max(now - t_last, 1e-9), "candidates": len(cands), **logs}
                with open(log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                t_last = time.perf_counter()
                ends.append((t_last, time.process_time()))
            return intervals(ends)

        rounds = []
        for r in range(args.warmup_rounds + args.rounds):
            order = ["st", "ours"] if r % 2 == 0 else ["ours", "st"]
            row = {"first": order[0], "threads_at_start": torch.get_num_threads(), "load_average_1": os.getloadavg()[0],
                   "warmup": r < args.warmup_rounds}
            for name in order:
                wall, cpu = run_st() if name == "st" else run_ours()
                row[name] = [round(x, 4) for x in wall]
                row[name + "_cpu"] = [round(x, 4) for x in cpu]
            rounds.append(row)
            print(json.dumps(row), flush=True)
        threads_after = torch.get_num_threads()

    timed = [row for row in rounds if not row["warmup"]]
    st_all = [x for row in timed for x in row["st"]]
    ours_all = [x for row in timed for x in row["ours"]]
    med = {"sentence_transformers": statistics.median(st_all), "onmkd": statistics.median(ours_all)}
    eps = {k: args.batch / v for k, v in med.items()}
    ratio = eps["onmkd"] / eps["sentence_transformers"]
    per_round = [statistics.median(row["st"]) / statistics.median(row["ours"]) for row in timed]
    cpu = {"sentence_transformers": statistics.median([x for row in timed for x in row["st_cpu"]]),
           "onmkd": statistics.median([x for row in timed for x in row["ours_cpu"]])}
    result = {
        "command": "".join(f"{k}={os.environ[k]} " for k in OMP_ENV if k in os.environ) + "python " + " ".join(sys.argv),
        "machine": {"nproc": os.cpu_count(), "torch_threads": threads, "torch_threads_after": threads_after,
                    "openmp_env": {k: os.environ.get(k) for k in OMP_ENV},
                    "processor": platform.processor() or platform.machine(),
                    "load_average_1_5_15_at_end": os.getloadavg()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "sentence_transformers": st_version},
        "setup": {"model": "minilm-l6, first 2 layers, mean pooling, L2-normalised",
                  "attention_dropout": cfg.model.attention_dropout, "batch": args.batch, "lr": args.lr,
                  "weight_decay": cfg.train.weight_decay, "max_grad_norm": cfg.train.max_grad_norm,
                  "q_max_len": cfg.data.q_max_len, "p_max_len": cfg.data.p_max_len, "longest_question_tokens": q_tokens,
                  "st_loss": "MultipleNegativesRankingLoss(scale=20)", "ours": "Trainer, method dpr, tau 0.05",
                  "st_optimizer": str(getattr(st_args.optim, "value", st_args.optim)),
                  "ours_optimizer": type(ours.optimizer).__name__, "data": "bundled SQuAD train",
                  "precision": "fp32" if dtypes == {"torch.float32"} else ", ".join(sorted(dtypes))},
        "steps": {"warmup_per_round": args.warmup, "timed_per_round": args.steps, "rounds": args.rounds,
                  "warmup_rounds": args.warmup_rounds},
        "median_seconds_per_step": {k: round(v, 4) for k, v in med.items()},
        "examples_per_s": {k: round(v, 2) for k, v in eps.items()},
        "median_cpu_seconds_per_step": {k: round(v, 4) for k, v in cpu.items()},
        "cpu_ratio_st_over_ours": round(cpu["sentence_transformers"] / cpu["onmkd"], 3),
        # CPU seconds per wall second: about the thread count on an idle machine, about 1 (or less)
        # when other processes hold the cores and the threads take turns (or spin at barriers)
        "cpu_per_wall": {k: round(statistics.median([c / w for row in timed for c, w in zip(row[n + "_cpu"], row[n])]), 2)
                         for k, n in (("sentence_transformers", "st"), ("onmkd", "ours"))},
        "ratio_ours_over_st": round(ratio, 3),
        "ratio_per_round": [round(x, 3) for x in per_round],
        "rounds": rounds,
        "goal": f"ratio >= {GOAL}",
        "met": ratio >= GOAL,
    }
    write_json(args.out, result)
    write_markdown(args.out.with_suffix(".md"), result)
    print(json.dumps({k: result[k] for k in ("median_seconds_per_step", "examples_per_s", "ratio_ours_over_st", "met")}))
    return 0


def write_markdown(path: Path, r: dict) -> None:
    m, s, st = r["machine"], r["setup"], r["steps"]
    lines = [
        f"`{r['command']}`",
        "",
        "## Single-peer training throughput against sentence-transformers' own trainer",
        "",
        f"Goal (issue): ours / sentence-transformers ≥ {GOAL} in examples/s. **Ratio {r['ratio_ours_over_st']:.3f}**"
        f" ({'met' if r['met'] else 'not met'}); per round: {', '.join(f'{x:.3f}' for x in r['ratio_per_round'])}.",
        "",
        "| system | median s/step (wall) | examples/s | median CPU s/step (process) |",
        "|---|---|---|---|",
        f"| sentence-transformers {r['versions']['sentence_transformers']} `SentenceTransformerTrainer` + "
        f"`MultipleNegativesRankingLoss` | {r['median_seconds_per_step']['sentence_transformers']:.3f} | "
        f"{r['examples_per_s']['sentence_transformers']:.1f} | {r['median_cpu_seconds_per_step']['sentence_transformers']:.3f} |",
        f"| onmkd `Trainer` (method dpr) | {r['median_seconds_per_step']['onmkd']:.3f} | {r['examples_per_s']['onmkd']:.1f} | "
        f"{r['median_cpu_seconds_per_step']['onmkd']:.3f} |",
        "",
        f"CPU time (both threads' work, less sensitive to other processes on the machine): sentence-transformers / ours "
        f"= {r['cpu_ratio_st_over_ours']:.3f}. CPU seconds per wall second (median): sentence-transformers "
        f"{r['cpu_per_wall']['sentence_transformers']:.2f}, ours {r['cpu_per_wall']['onmkd']:.2f}, with "
        f"{m['torch_threads']} torch thread(s): "
        + ("the threads ran side by side." if min(r["cpu_per_wall"].values()) > 0.75 * m["torch_threads"] else
           "the threads did not get their cores (other processes held them): a contended measurement. "
           + ("With OpenMP's default wait policy a thread that reaches a parallel region's barrier spins while its "
              "partner waits for a core, burning the process's share of the CPU, and the more so the more parallel "
              "regions a step has (ours: three encoder passes to sentence-transformers' two, a per-tensor AdamW to its "
              "fused one), so the ratio then moves with the other load. `OMP_WAIT_POLICY=PASSIVE` or `--threads 1` "
              "measure without that effect."
              if (m.get("openmp_env", {}).get("OMP_WAIT_POLICY") or "").upper() != "PASSIVE" else "")),
        "",
        f"Machine: nproc {m['nproc']}, torch threads {m['torch_threads']} (after: {m['torch_threads_after']}), "
        f"{m['processor']}; load average at the end {', '.join(f'{x:.2f}' for x in m['load_average_1_5_15_at_end'])}. "
        f"torch {r['versions']['torch']}, transformers {r['versions']['transformers']}.",
        "",
        f"Steps: {st['warmup_rounds']} warm-up round(s) left out, then {st['rounds']} interleaved rounds (the system "
        f"going first alternates), each {st['warmup_per_round']} "
        f"warm-up + {st['timed_per_round']} timed steps per system on the same batches; a step is the wall time between "
        "two consecutive step ends (data loading and tokenisation, forward, backward, clipping, optimiser, scheduler, "
        "callbacks/logging). Medians pooled over rounds.",
        "",
        f"Same for both: {s['model']} (one saved folder both load), attention dropout {s['attention_dropout']} "
        f"(the folder's config, our default), hidden dropout 0.1, batch {s['batch']} (question, positive passage) pairs "
        f"from {s['data']} in the same order, in-batch negatives only, lr {s['lr']}, weight decay {s['weight_decay']}, "
        f"gradient clipping {s['max_grad_norm']}, {s['precision']}, no gradient accumulation, scale 20 = 1/τ. "
        f"Max lengths {s['q_max_len']}/{s['p_max_len']} (sentence-transformers truncates both columns at "
        f"{s['p_max_len']}; the longest question has {s['longest_question_tokens']} tokens). Optimisers: "
        f"sentence-transformers `{s['st_optimizer']}` (its default), ours `{s['ours_optimizer']}`.",
        "",
        "Per-step wall seconds, by round:",
        "",
        "| round | first | threads | load (1 min) | sentence-transformers | onmkd |",
        "|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(r["rounds"]):
        lines.append(f"| {i}{' (warm-up, left out)' if row['warmup'] else ''} | {row['first']} | {row['threads_at_start']} | {row['load_average_1']:.2f} | "
                     f"{', '.join(f'{x:.3f}' for x in row['st'])} | {', '.join(f'{x:.3f}' for x in row['ours'])} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--render"]:  # rewrite the Markdown of saved JSON results: --render reports/train_vs_st.json ...
        for name in sys.argv[2:]:
            write_markdown(Path(name).with_suffix(".md"), json.loads(Path(name).read_text()))
        raise SystemExit(0)
    raise SystemExit(main())
