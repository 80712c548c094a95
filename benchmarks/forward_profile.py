"""Where the encoder's CPU time goes, by kernel class, and what that leaves the fused fast path.

Profiles (``torch.profiler``, CPU) the ``transformers`` forward that ``SentenceTransformer.encode``
runs and onmkd's fused forward (``onmkd/fastpath.py``) on the same batches of bundled SQuAD
passages (``title text``, length-sorted, batch 64, 256 tokens), and splits self CPU time into
matrix multiplies (``addmm``/``mm``/``bmm``/``linear``/oneDNN linear), attention
(``scaled_dot_product_attention`` and its kernels) and everything else (GELU, layer norm, adds,
copies, masks, embeddings). The fused forward can only remove work outside the matrix multiplies,
so with ``g`` the GEMM share of the ``transformers`` forward its speed-up is at most about
``1 / g`` (Amdahl). Where GEMMs run on narrower vectors (AVX2 rather than AVX-512) they take a
larger share of the time and the bound drops: that is the ratio this script reports, with the
CPU and the ISA PyTorch's kernels use.

    python benchmarks/forward_profile.py [--passages 256] [--batch-size 64] [--out reports/forward_profile]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode_vs_st import cpu_name, write_report  # noqa: E402

GEMM = ("addmm", "aten::mm", "bmm", "linear", "_linear_pointwise", "matmul", "mkldnn")
ATTENTION = ("scaled_dot_product", "flash_attention", "_efficient_attention", "softmax")


def kind(name: str) -> str:
    if any(k in name for k in ATTENTION):
        return "attention"
    if any(k in name for k in GEMM):
        return "gemm"
    return "other"


def profile(forward, batches) -> dict:
    """Self CPU seconds by kernel class over the batches, and the wall time (after one warm-up batch)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch.inference_mode():
        forward(*batches[0])
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            for b in batches:
                forward(*b)
            wall = time.perf_counter() - t
    by = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
    for ev in prof.key_averages():
        by[kind(ev.key)] += ev.self_cpu_time_total / 1e6
    total = sum(by.values())
    return {"wall_s": wall, "self_cpu_s": total, **{f"{k}_share": v / total for k, v in by.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--passages", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--out", type=Path, default=Path("reports/forward_profile"))
    args = ap.parse_args()

    from onmkd.data import load_dataset, passage_text
    from onmkd.fastpath import FusedBert
    from onmkd.models import Encoder

    enc = Encoder.load("minilm-l6").eval()
    texts = [passage_text(d) for d in list(load_dataset("squad").corpus.values())[: args.passages]]
    texts.sort(key=lambda t: len(enc.tokenizer(t, truncation=True, max_length=args.max_length)["input_ids"]))
    batches = []
    for i in range(0, len(texts), args.batch_size):
        b = enc.tokenize(texts[i:i + args.batch_size], args.max_length)
        batches.append((b["input_ids"], b["attention_mask"]))
    fused = FusedBert(enc.model)

    def hf(ids, mask):
        return enc.model(input_ids=ids, attention_mask=mask).last_hidden_state

    results = {}
    for name, fwd in (("transformers", hf), ("fused", fused), ("transformers ", hf), ("fused ", fused)):
        results.setdefault(name.strip(), []).append(profile(fwd, batches))  # twice each, interleaved
    rows = {k: min(v, key=lambda r: r["wall_s"]) for k, v in results.items()}
    g = rows["transformers"]["gemm_share"]
    summary = {
        "cpu": cpu_name(), "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(), "load_avg": os.getloadavg()[0], "passages": len(texts),
        "batch_size": args.batch_size, "max_length": args.max_length, "rows": rows,
        "fused_speedup": rows["transformers"]["wall_s"] / rows["fused"]["wall_s"],
        "amdahl_bound": 1 / g,
    }
    lines = [f"<!-- produced by: python {' '.join(sys.argv)} -->", "",
             f"# Encoder forward by kernel class: {summary['cpu']}, PyTorch kernels {summary['aten_capability']}",
             "", f"{len(texts)} SQuAD passages, batch {args.batch_size}, {args.max_length} tokens, "
             f"{summary['threads']} threads, load average {summary['load_avg']:.2f} at the end; best of 2 interleaved runs.", "",
             "| forward | wall s | GEMM share | attention share | other share |", "|---|---:|---:|---:|---:|"]
    for k, r in rows.items():
        lines.append(f"| {k} | {r['wall_s']:.2f} | {r['gemm_share']:.1%} | {r['attention_share']:.1%} | {r['other_share']:.1%} |")
    lines += ["", f"Fused speed-up over the transformers forward: **{summary['fused_speedup']:.2f}x**; "
              f"the most any fusion outside the GEMMs could give (1 / GEMM share): {summary['amdahl_bound']:.2f}x.", ""]
    write_report(f"{args.out}_{summary['aten_capability'].lower()}", summary, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
