"""Corpus encoding: onmkd against ``SentenceTransformer.encode``, and the matmul-peak fraction.

In one process, on the same model, texts (the bundled SQuAD passages as "title text"), maximum
length and batch size, times ``SentenceTransformer(folder).encode`` and onmkd's encoders — PyTorch
fp32 (``Encoder.encode``), int8 dynamic quantisation, ONNX Runtime fp32 and ONNX Runtime int8.
The passages are cut into strided chunks (each with the corpus's mix of lengths); in every round
each encoder encodes each chunk, the order rotating per chunk, so that the shared machine's
changing load hits all encoders alike; round totals give medians and ratios to
sentence-transformers. Then acc@20 on the SQuAD test split for every backend
(``onmkd.retrieval.evaluate.evaluate``, encoded-corpus cache keyed by backend), and, for fp32, the analytic
FLOPs of the real tokens per second against the fp32 matrix-multiply peak measured in the same
run (before and after every round; the highest is used), by the wall clock and by CPU time.
Models: the 6-layer teacher (minilm-l6) and a 2-layer student (its first two layers).

The issue's goals: fp32 ratio >= 1.0; int8 or ONNX ratio >= 1.3 at an acc@20 drop of at most
0.5 points; teacher encoding at >= 60 % of the measured fp32 matmul peak.

    python benchmarks/encode_vs_st.py [--rounds 3] [--batch-size 64] [--max-length 256]
        [--passages 0 (all)] [--chunk 256] [--models teacher,student] [--no-accuracy] [--out reports/encode_vs_st.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # evaluate() shows progress bars

import numpy as np  # noqa: E402
import torch  # noqa: E402

BACKENDS = ("torch", "int8", "onnx", "onnx-int8")
LABEL = {"st": "sentence-transformers", "torch": "onmkd fp32", "int8": "onmkd int8 (torch dynamic)",
         "onnx": "onmkd ONNX Runtime fp32", "onnx-int8": "onmkd ONNX Runtime int8"}


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_report(stem: str, result: dict, lines: list[str]) -> None:
    """Write ``STEM.md`` (the lines) and ``STEM.json`` (the result) and print the lines."""
    import json

    Path(stem).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.md").write_text("\n".join(lines))
    Path(f"{stem}.json").write_text(json.dumps(result, indent=2))
    print("\n".join(lines))


def build(which: str, tmp: Path):
    """(name, onmkd Encoder, sentence-transformers folder) of the teacher or the 2-layer student."""
    from onmkd.retrieval.models import Encoder, resolve

    if which == "teacher":
        return "minilm-l6 (6 x 384)", Encoder.load("minilm-l6").eval(), resolve("minilm-l6")
    from onmkd.config import PeerInit
    from onmkd.retrieval.dual import save_encoder
    from onmkd.training.peers import build_peer

    enc, keep = build_peer(PeerInit(), layers=2, pooling="mean", normalize=True, seed=0, field="x")
    enc.eval()
    folder = tmp / "student2"
    save_encoder(enc, folder)
    return f"minilm-l6 layers {keep} (2 x 384)", enc, str(folder)


def sustained_gemm_gflops(seconds: float, hidden: int, intermediate: int) -> float:
    """fp32 GFLOP/s of back-to-back encoder-shaped GEMMs (MKL and oneDNN, 8,192 tokens) for ``seconds``."""
    from onmkd.retrieval.fastpath import _mkldnn_linear_ok

    g = torch.Generator().manual_seed(0)
    work = []
    for k, n in ((hidden, intermediate), (intermediate, hidden), (hidden, 3 * hidden)):
        a, w = torch.randn(8192, k, generator=g), torch.randn(n, k, generator=g)
        work.append((2.0 * 8192 * k * n, lambda a=a, w=w: torch.mm(a, w.t())))
        if _mkldnn_linear_ok():
            work.append((2.0 * 8192 * k * n, lambda a=a, w=w: torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")))
    flops, i, t0 = 0.0, 0, time.perf_counter()
    with torch.inference_mode():
        while True:
            f, fn = work[i % len(work)]
            fn()
            flops += f
            i += 1
            if time.perf_counter() - t0 >= seconds:
                return flops / (time.perf_counter() - t0) / 1e9


def time_encoders(fns: dict, chunks: list[list[str]], rounds: int, peak, gemm, log):
    """Time each ``fns[k](chunk)`` on every chunk, rotating the order per chunk, for ``rounds`` rounds.

    Contestants alternate every few seconds, so that a change of the machine's load hits all of
    them alike. After each chunk, ``gemm(seconds)`` runs plain GEMMs for as long as the fp32
    encoder took on it: a matrix-multiply rate measured under the same load. Returns per-round
    totals of wall and CPU seconds, per-chunk paired ratios to ``st``, per-chunk seconds, the
    per-chunk GEMM rates, the vectors of the last round (chunk-major), and the matmul peaks
    measured between rounds (``peak()`` -> (wall GFLOP/s, CPU-time GFLOP/s)).
    """
    names = list(fns)
    wall = {k: [0.0] * rounds for k in names}
    cpu = {k: [0.0] * rounds for k in names}
    chunk_ratio = {k: [] for k in names}
    chunk_s = {k: [] for k in names}
    gemm_rates: list[float] = []
    outs: dict[str, list[np.ndarray]] = {}
    peaks = [peak()]
    for r in range(rounds):
        outs = {k: [] for k in names}
        for ci, chunk in enumerate(chunks):
            shift = (r * len(chunks) + ci) % len(names)
            order = names[shift:] + names[:shift]
            if (r + ci) % 2:
                order = order[::-1]
            took = {}
            for k in order:
                c0, t0 = time.process_time(), time.perf_counter()
                outs[k].append(fns[k](chunk))
                took[k] = time.perf_counter() - t0
                wall[k][r] += took[k]
                cpu[k][r] += time.process_time() - c0
            for k in names:
                chunk_ratio[k].append(took["st"] / took[k])
                chunk_s[k].append(took[k])
            gemm_rates.append(gemm(took["torch"]))
        log(f"  round {r + 1}: " + ", ".join(f"{k} {wall[k][r]:.1f} s (cpu {cpu[k][r]:.1f})" for k in names)
            + f"; load {os.getloadavg()[0]:.2f}")
        peaks.append(peak())
    return wall, cpu, chunk_ratio, chunk_s, gemm_rates, {k: np.concatenate(v) for k, v in outs.items()}, peaks


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--passages", type=int, default=0, help="time on every k-th passage to keep about N (0: all)")
    ap.add_argument("--chunk", type=int, default=256, help="passages per timed call; contestants alternate per chunk")
    ap.add_argument("--models", default="teacher,student")
    ap.add_argument("--accuracy", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", type=Path, default=Path("reports/encode_vs_st.json"))
    args = ap.parse_args()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731

    from sentence_transformers import SentenceTransformer

    from onmkd.retrieval.backends import BackendDual, has_vnni, with_backend
    from onmkd.data import load_dataset, passage_text
    from onmkd.retrieval.evaluate import EvalConfig, evaluate
    from onmkd.io import write_json, write_text
    from onmkd.study.profile import encoder_flops, matmul_peak_gflops, token_lengths

    data = load_dataset("squad")
    texts = [passage_text(d, True) for d in data.corpus.values()]
    step = max(1, len(texts) // args.passages) if args.passages else 1
    texts = texts[::step]
    n_chunks = max(1, round(len(texts) / args.chunk))
    chunks = [texts[i::n_chunks] for i in range(n_chunks)]  # strided: each has the corpus's mix of lengths
    bs, ml = args.batch_size, args.max_length
    threads = torch.get_num_threads()
    command = "python " + " ".join(sys.argv)
    result: dict = {
        "command": command,
        "machine": {"cpu": cpu_name(), "nproc": len(os.sched_getaffinity(0)), "torch_threads": threads,
                    "vnni": has_vnni(), "torch": torch.__version__, "load_average_at_start": os.getloadavg()},
        "passages_timed": len(texts), "chunks": n_chunks, "batch_size": bs, "max_length": ml, "rounds": args.rounds,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for which in [m.strip() for m in args.models.split(",") if m.strip()]:
            name, enc, folder = build(which, Path(tmp))
            log(f"== {name}")
            st = SentenceTransformer(folder, device="cpu")
            st.max_seq_length = ml
            encoders = {b: with_backend(enc, b) for b in BACKENDS}
            fns = {"st": lambda x: st.encode(x, batch_size=bs, convert_to_numpy=True, show_progress_bar=False)}
            for b, e in encoders.items():
                fns[b] = (lambda x, e=e: e.encode(x, max_length=ml, batch_size=bs))
            for f in fns.values():  # warm-up: two batches, longest and shortest
                f(texts[:bs] + texts[-bs:])
            shape = {"hidden": enc.dim, "intermediate": int(enc.model.config.intermediate_size)}
            peak = lambda: (matmul_peak_gflops(**shape), matmul_peak_gflops(**shape, cpu_time=True))  # noqa: E731
            gemm = lambda seconds: sustained_gemm_gflops(seconds, **shape)  # noqa: E731
            wall, cpu, chunk_ratio, chunk_s, gemm_rates, outs, peaks = time_encoders(fns, chunks, args.rounds, peak, gemm, log)
            lengths = token_lengths(enc, texts, ml)
            flops = float(encoder_flops(enc, lengths).sum())
            chunk_flops = [float(encoder_flops(enc, token_lengths(enc, c, ml)).sum()) for c in chunks] * args.rounds
            peak_wall, peak_cpu = max(p[0] for p in peaks), max(p[1] for p in peaks)
            med = {k: statistics.median(v) for k, v in wall.items()}
            med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
            rows = {}
            for k in fns:
                cos = (outs[k] * outs["st"]).sum(1)
                rows[k] = {
                    "label": LABEL[k], "median_s": round(med[k], 3), "passages_per_s": round(len(texts) / med[k], 2),
                    "ratio_vs_st": round(med["st"] / med[k], 3),
                    "ratio_vs_st_per_round": [round(a / b, 3) for a, b in zip(wall["st"], wall[k])],
                    "ratio_vs_st_median_of_chunks": round(statistics.median(chunk_ratio[k]), 3),
                    "all_s": [round(x, 3) for x in wall[k]], "all_cpu_s": [round(x, 3) for x in cpu[k]],
                    # CPU seconds / (wall seconds x threads): below 1, other processes took the cores
                    "cpu_utilisation": round(med_cpu[k] / (med[k] * threads), 3),
                    "achieved_gflops": round(flops / med[k] / 1e9, 2),
                    "peak_fraction": round(flops / med[k] / 1e9 / peak_wall, 4),
                    # the same work per core-second our threads ran, against the peak measured the same way
                    "achieved_gflops_cpu_time": round(flops / (med_cpu[k] / threads) / 1e9, 2),
                    "peak_fraction_cpu_time": round(flops / (med_cpu[k] / threads) / 1e9 / peak_cpu, 4),
                    # per chunk: this encoder's rate / the GEMM rate sustained right after it, same load
                    "gemm_fraction_paired": round(statistics.median(
                        f / t / 1e9 / g for f, t, g in zip(chunk_flops, chunk_s[k], gemm_rates)), 4),
                    "cosine_to_st_min": round(float(cos.min()), 6), "max_abs_diff_to_st": float(np.abs(outs[k] - outs["st"]).max()),
                }
            entry = {"name": name, "layers": enc.num_layers, "st_folder": folder,
                     "attention": enc.model.config._attn_implementation,
                     "mean_real_tokens": round(float(lengths.mean()), 2), "flops_per_passage": flops / len(texts),
                     "matmul_peak_gflops_measured": [[round(a, 1), round(b, 1)] for a, b in peaks],
                     "matmul_peak_gflops": round(peak_wall, 2), "matmul_peak_gflops_cpu_time": round(peak_cpu, 2),
                     "sustained_gemm_gflops_per_chunk": [round(x, 1) for x in gemm_rates],
                     "encoders": rows}
            if args.accuracy:
                acc = {}
                for b, e in encoders.items():
                    log(f"  acc@20 with {b}")
                    dual = BackendDual(e)  # the encoder timed above; evaluate keeps it on backend b
                    cfg = EvalConfig(model=f"{which}", dataset="squad", split="test", p_max_len=ml, batch_size=bs, backend=b)
                    m = evaluate(cfg, data, retriever=dual)
                    acc[b] = {"acc@20": m["acc@20"], "acc@5": m["acc@5"], "acc@100": m["acc@100"]}
                for b in BACKENDS:
                    acc[b]["acc@20_drop_points"] = round(100 * (acc["torch"]["acc@20"] - acc[b]["acc@20"]), 3)
                entry["accuracy_squad_test"] = acc
            result["models"][which] = entry
            del st, encoders, outs
    result["machine"]["load_average_at_end"] = os.getloadavg()
    result["goals"] = goals(result)
    write_json(args.out, result)
    write_text(args.out.with_suffix(".md"), markdown(result))
    print(markdown(result))
    return 0


def goals(result: dict) -> dict:
    out = {}
    t = result["models"].get("teacher")
    if t:
        e = t["encoders"]
        # judged on the lower of two ratios: of the median round totals, and the median of the paired per-chunk ratios
        low = {k: min(v["ratio_vs_st"], v["ratio_vs_st_median_of_chunks"]) for k, v in e.items()}
        out["fp32 ratio >= 1.0"] = {"value": low["torch"], "met": low["torch"] >= 1.0}
        for b in ("int8", "onnx", "onnx-int8"):
            drop = t.get("accuracy_squad_test", {}).get(b, {}).get("acc@20_drop_points")
            ok = low[b] >= 1.3 and (drop is not None and drop <= 0.5)
            out[f"{b} ratio >= 1.3 at acc@20 drop <= 0.5"] = {"ratio": low[b], "drop_points": drop, "met": ok}
        out["teacher fp32 >= 60 % of matmul peak (wall clock)"] = {
            "value": e["torch"]["peak_fraction"], "cpu use": e["torch"]["cpu_utilisation"],
            "met": e["torch"]["peak_fraction"] >= 0.6}
        out["teacher fp32 >= 60 % of matmul peak (CPU time)"] = {
            "value": e["torch"]["peak_fraction_cpu_time"], "met": e["torch"]["peak_fraction_cpu_time"] >= 0.6}
        out["teacher fp32 >= 60 % of the GEMM rate under the same load (paired)"] = {
            "value": e["torch"]["gemm_fraction_paired"], "met": e["torch"]["gemm_fraction_paired"] >= 0.6}
    s = result["models"].get("student")
    if s:
        r = s["encoders"]["torch"]
        out["student fp32 fraction of matmul peak (reported)"] = {
            "wall": r["peak_fraction"], "CPU time": r["peak_fraction_cpu_time"], "paired": r["gemm_fraction_paired"]}
    return out


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"`{result['command']}`", "",
             f"Machine: {m['cpu']}, nproc {m['nproc']}, torch threads {m['torch_threads']}, VNNI {m['vnni']}, "
             f"torch {m['torch']}; load average (1/5/15 min) {tuple(round(x, 2) for x in m['load_average_at_start'])} "
             f"at start, {tuple(round(x, 2) for x in m.get('load_average_at_end', ()))} at end (the CPU is shared "
             "with other jobs).", "",
             f"{result['passages_timed']} SQuAD passages (\"title text\"), max length {result['max_length']}, batch "
             f"{result['batch_size']}, cut into {result['chunks']} strided chunks; in each of {result['rounds']} rounds "
             "every encoder encodes every chunk, the order rotating per chunk, so that the machine's changing load "
             "hits all encoders alike. Times are round totals, medians over rounds.",
             "",
             "- **Ratio** = sentence-transformers seconds / onmkd seconds (above 1: onmkd faster): of the median round "
             "totals, and the median of the paired per-chunk ratios; the goals use the lower of the two.",
             "- **CPU use** = process CPU seconds / (wall seconds x threads): below 1, other processes held the cores.",
             "- **GFLOP/s** count the real (non-padding) tokens' matrix-multiply FLOPs (`onmkd.study.profile.encoder_flops`). "
             "**Of peak**: against the best fp32 GEMM rate measured in this run before and after every round "
             "(`onmkd.study.profile.matmul_peak_gflops`), wall clock. **Of peak, CPU time**: both rates per core-second our "
             "threads actually ran (CPU seconds / threads), which other jobs on the machine do not lower. "
             "**Of GEMM, paired**: after each chunk, plain encoder-shaped GEMMs run for as long as the fp32 encoder "
             "took on that chunk; the median over chunks of (encoder rate on the chunk / that GEMM rate) compares the "
             "two under the same load. "
             "For the int8 rows GFLOP/s is fp32-equivalent work, so no fraction of the fp32 peak is given.", ""]
    for which, t in result["models"].items():
        lines += [f"## {which}: {t['name']}", "",
                  f"Mean real tokens per passage {t['mean_real_tokens']}, {t['flops_per_passage'] / 1e9:.3f} GFLOP per "
                  f"passage. fp32 matmul peak (wall, CPU-time) measured before and after each round: "
                  f"{t['matmul_peak_gflops_measured']} GFLOP/s; used: {t['matmul_peak_gflops']} and "
                  f"{t['matmul_peak_gflops_cpu_time']}. Attention implementation of the transformers model (used by "
                  f"sentence-transformers and the int8 backend): {t['attention']}.", "",
                  "| encoder | median s | passages/s | ratio vs ST | ratio, median of chunks | ratio per round | CPU use "
                  "| GFLOP/s | of peak | of peak, CPU time | of GEMM, paired | min cosine to ST |",
                  "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
        for k, r in t["encoders"].items():
            fp32 = "int8" not in k
            frac = f"{100 * r['peak_fraction']:.1f} %" if fp32 else "n/a (int8)"
            frac_cpu = f"{100 * r['peak_fraction_cpu_time']:.1f} %" if fp32 else "n/a (int8)"
            paired = f"{100 * r['gemm_fraction_paired']:.1f} %" if fp32 else "n/a (int8)"
            lines.append(f"| {r['label']} | {r['median_s']:.2f} | {r['passages_per_s']:.1f} | {r['ratio_vs_st']:.3f} | "
                         f"{r['ratio_vs_st_median_of_chunks']:.3f} | "
                         f"{', '.join(f'{x:.2f}' for x in r['ratio_vs_st_per_round'])} | {r['cpu_utilisation']:.2f} | "
                         f"{r['achieved_gflops']:.1f} | {frac} | {frac_cpu} | {paired} | {r['cosine_to_st_min']:.4f} |")
        acc = t.get("accuracy_squad_test")
        if acc:
            lines += ["", "SQuAD test (1,975 questions, all 2,067 passages), `onmkd.retrieval.evaluate.evaluate` per backend:", "",
                      "| backend | acc@5 | acc@20 | acc@100 | acc@20 drop (points) |", "|---|---:|---:|---:|---:|"]
            for b, a in acc.items():
                lines.append(f"| {b} | {a['acc@5']:.4f} | {a['acc@20']:.4f} | {a['acc@100']:.4f} | {a['acc@20_drop_points']:+.2f} |")
        lines.append("")
    lines += ["## Goals", "", "| goal | measured | met |", "|---|---|---|"]
    for g, v in result["goals"].items():
        shown = ", ".join(f"{k} {x}" for k, x in v.items() if k != "met")
        lines.append(f"| {g} | {shown} | {'-' if 'met' not in v else ('yes' if v['met'] else 'no')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
