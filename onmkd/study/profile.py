"""Efficiency measurements of a retriever: size, latency, throughput, memory, FLOPs.

One code path for ``onmkd-bench profile``, the sweep's latency objective and the report's
efficiency columns (:func:`profile_retriever`, :func:`efficiency`). Latencies are wall-clock per
call after a warm-up that is not counted; throughput is measured on real texts at their real
lengths (batches sorted by length); the fraction of the machine's matrix-multiply peak compares
the analytic FLOPs of the real (non-padding) tokens with a GEMM peak measured in the same run.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np
import torch


def used_parameters(encoder) -> int:
    """Parameters the retriever uses: the transformer without BERT's pooler head.

    Mean or CLS pooling reads the token states, so a ``pooler`` (which transformers adds, even
    randomly initialised, to checkpoints that lack one) is not part of the retriever.
    """
    return sum(p.numel() for name, p in encoder.model.named_parameters() if not name.startswith("pooler."))


def retriever_parameters(dual) -> int:
    """Used parameters of a dual encoder: one tower when tied, both when not."""
    return used_parameters(dual.question) + (0 if dual.tied else used_parameters(dual.passage))


def checkpoint_mb(dual, dtype: torch.dtype = torch.float32) -> float:
    """MB of a safetensors checkpoint of the used weights in ``dtype`` (written and measured)."""
    from safetensors.torch import save_file

    total = 0
    encoders = [dual.question] if dual.tied else [dual.question, dual.passage]
    with tempfile.TemporaryDirectory() as tmp:
        for i, enc in enumerate(encoders):
            sd = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
                  for k, v in enc.model.state_dict().items() if not k.startswith("pooler.")}
            path = Path(tmp) / f"{i}.safetensors"
            save_file(sd, str(path))
            total += path.stat().st_size
    return total / 2**20


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _infer(encoder):
    """The inference call of an encoder or backend: ``(input_ids, attention_mask) -> [B, H]``."""
    if hasattr(encoder, "infer"):
        return encoder.infer
    return lambda ids, mask: encoder(ids, mask)


@contextmanager
def threads_for(encoder, threads: int | None):
    """Run ``encoder`` (PyTorch on the CPU, or an ONNX Runtime backend) with ``threads`` intra-op
    threads inside the block; ``None`` changes nothing."""
    if threads is None or getattr(encoder, "device", torch.device("cpu")).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    ort_before = encoder.set_threads(threads) if hasattr(encoder, "set_threads") else None
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if hasattr(encoder, "set_threads"):
            encoder.set_threads(ort_before)


def query_latency(encoder, texts: Sequence[str], *, max_length: int = 64, n: int = 200, warmup: int = 20,
                  threads: int | None = None) -> dict[str, float]:
    """Query-encoding latency at batch 1, tokenisation included: p50/p95/p99 in ms.

    The first ``warmup`` calls are not counted; ``n`` calls cycle over ``texts``. ``encoder``:
    an :class:`~onmkd.retrieval.models.Encoder` or a backend of :mod:`onmkd.retrieval.backends` (its ``infer``).
    ``threads``: intra-op threads during the calls (None: as set). A query of ~15 tokens gives
    each thread microseconds of work per operation, so every operation waits for all threads to be
    scheduled: on this project's 2 cores, shared with other jobs, minilm-l6 took 336 ms per query
    with 2 threads and 10 ms with 1.
    """
    if not len(texts):
        raise ValueError("query_latency: no texts")
    device = encoder.device
    was_training = encoder.training
    encoder.eval()
    times = []
    infer = _infer(encoder)
    with torch.inference_mode(), threads_for(encoder, threads):
        for i in range(warmup + n):
            text = texts[i % len(texts)]
            _sync(device)
            t0 = time.perf_counter()
            batch = encoder.tokenize([text], max_length)
            infer(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            _sync(device)
            if i >= warmup:
                times.append(1000 * (time.perf_counter() - t0))
    encoder.train(was_training)
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    return {"query_ms_p50": float(p50), "query_ms_p95": float(p95), "query_ms_p99": float(p99), "latency_calls": n,
            "query_threads": threads or torch.get_num_threads()}


def token_lengths(encoder, texts: Sequence[str], max_length: int) -> np.ndarray:
    """Tokens per text (special tokens included), truncated to ``max_length``: what is encoded."""
    ids = encoder.tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))


def _timed_encode(encoder, texts: Sequence[str], *, max_length: int, batch_size: int) -> tuple[np.ndarray, float, float]:
    """``encoder.encode(texts)`` after a one-batch warm-up: the vectors, wall seconds, process CPU seconds."""
    encoder.encode(texts[: min(len(texts), batch_size)], max_length=max_length, batch_size=batch_size)  # warm-up
    _sync(encoder.device)
    c0, t0 = time.process_time(), time.perf_counter()
    vecs = encoder.encode(texts, max_length=max_length, batch_size=batch_size)
    _sync(encoder.device)
    return vecs, time.perf_counter() - t0, time.process_time() - c0


def efficiency(dual, questions: Sequence[str], *, q_max_len: int = 64, n_latency: int = 200,
               query_threads: int | None = 1) -> dict[str, float]:
    """Size and query latency of a dual encoder: the sweep's and the report's efficiency columns.

    Latency with ``query_threads`` threads, as :func:`profile_retriever` measures it."""
    out = {"params_m": retriever_parameters(dual) / 1e6, "checkpoint_mb": checkpoint_mb(dual)}
    out.update(query_latency(dual.question, questions, max_length=q_max_len, n=n_latency, threads=query_threads))
    out["threads"] = torch.get_num_threads()
    out["pid_cpus"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return out


def checkpoint_mb_int8(dual) -> float | None:
    """MB of the used weights after int8 dynamic quantisation of the linear layers (written and
    measured with ``torch.save``: int8 weights with per-channel scales, the rest fp32), or
    ``None`` where this PyTorch build cannot quantise."""
    from onmkd.retrieval.backends import quantize_int8
    from onmkd.errors import ModelError

    total = 0
    encoders = [dual.question] if dual.tied else [dual.question, dual.passage]
    with tempfile.TemporaryDirectory() as tmp:
        for i, enc in enumerate(encoders):
            try:
                model = quantize_int8(enc.model)
            except (ModelError, RuntimeError):
                return None
            sd = {k: v for k, v in model.state_dict().items() if not k.startswith("pooler.")}
            path = Path(tmp) / f"{i}.pt"
            torch.save(sd, path)
            total += path.stat().st_size
    return total / 2**20


def matmul_peak_gflops(shapes: Sequence[tuple[int, int, int]] | None = None, *, hidden: int = 384,
                       intermediate: int = 1536, repeats: int = 5, device: str | torch.device = "cpu",
                       cpu_time: bool = False) -> float:
    """The best fp32 matrix-multiply rate (GFLOP/s) this machine reaches now, with the current
    ``torch.get_num_threads()``: ``2·M·K·N`` FLOPs per ``[M, K] @ [K, N]``, best of ``repeats``
    timed runs after one warm-up, best over ``shapes`` and, on the CPU, over both kernels an
    encoder may use (MKL through ``torch.mm`` and oneDNN's linear).

    Default shapes: the encoder's own projections at 8,192 tokens (``hidden -> intermediate``,
    ``intermediate -> hidden``, ``hidden -> 3·hidden``) and a 2,048³ square, larger than any
    multiply of encoding, so the figure is the peak the encoder's GEMMs could reach.

    ``cpu_time``: time by this process's CPU seconds divided by the thread count instead of the
    wall clock (CPU only): the rate per core-second the threads actually ran, which other
    processes on a shared machine do not lower. Compare it only with rates measured the same way.
    """
    device = torch.device(device)
    shapes = list(shapes) if shapes else [(8192, hidden, intermediate), (8192, intermediate, hidden),
                                          (8192, hidden, 3 * hidden), (2048, 2048, 2048)]
    g = torch.Generator().manual_seed(0)
    best = 0.0
    with torch.inference_mode():
        for m, k, n in shapes:
            a = torch.randn(m, k, generator=g).to(device)
            w = torch.randn(n, k, generator=g).to(device)  # [out, in], as a linear layer stores it
            kernels = [lambda: torch.mm(a, w.t())]
            if device.type == "cpu":
                from onmkd.retrieval.fastpath import _mkldnn_linear_ok

                if _mkldnn_linear_ok():
                    kernels.append(lambda: torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], ""))
            clock = (lambda: time.process_time() / torch.get_num_threads()) if cpu_time and device.type == "cpu" \
                else time.perf_counter
            for kernel in kernels:
                kernel()
                _sync(device)
                for _ in range(repeats):
                    t0 = clock()
                    kernel()
                    _sync(device)
                    best = max(best, 2.0 * m * k * n / max(clock() - t0, 1e-9) / 1e9)
    return best


def _encoder_config(encoder):
    model = getattr(encoder, "model", encoder)
    return getattr(model, "config", model)


def encoder_flops(encoder, token_lengths):
    """Analytic forward FLOPs of a BERT-style encoder, per passage, counting only real tokens.

    For a passage of ``n`` real tokens, ``L`` layers, hidden size ``h`` and feed-forward size
    ``f`` (2 FLOPs per multiply-add)::

        FLOPs(n) = L · (  2·n·h·3h      Q, K, V projections
                        + 2·n·h·h       attention output projection
                        + 2·n·h·f · 2   feed-forward, in and out
                        + 2·n·n·h       scores Q·Kᵀ (all heads: heads · head size = h)
                        + 2·n·n·h )     weighted sum of V
                 = L · (8·n·h² + 4·n·h·f + 4·n²·h)

    Matrix multiplies only: embeddings are lookups, and biases, layer norms, softmax, GELU and
    pooling (O(n·h) each, about 1 % of the total) are left out, as is the pooler head, which
    retrieval does not use. Padding tokens are not counted: the rate this gives is useful work.

    ``encoder``: an :class:`~onmkd.retrieval.models.Encoder`, a backend, a transformers model or config.
    ``token_lengths``: one length (returns a float) or a sequence (returns an array, one per passage).
    """
    cfg = _encoder_config(encoder)
    layers, h, f = int(cfg.num_hidden_layers), int(cfg.hidden_size), int(cfg.intermediate_size)
    n = np.asarray(token_lengths, dtype=np.float64)
    out = layers * (8 * n * h * h + 4 * n * h * f + 4 * n * n * h)
    return float(out) if out.ndim == 0 else out


def profile_retriever(model_or_dual, data, split: str = "test", *, q_max_len: int = 64, p_max_len: int = 256,
                      batch_size: int = 64, index=None, backend: str = "torch", n_latency: int = 200,
                      titles: bool = True, top_k: int = 100, device: str = "auto", max_passages: int | None = None,
                      peak_gflops: float | None = None, query_threads: int | None = 1) -> dict:
    """Every efficiency figure of a retriever on one data set, as one flat dict.

    ``model_or_dual``: a registry name, checkpoint folder or training run directory (loaded with
    :func:`onmkd.retrieval.evaluate.load_retriever`) or an already built dual encoder. The passages of
    ``data`` (the first ``max_passages`` when given) are encoded once on ``backend``; that pass
    gives the throughput and the vectors the ``index`` (an :class:`~onmkd.retrieval.index.IndexSpec`) is
    built from. The questions of ``split`` give the latencies, one question at a time with
    ``query_threads`` intra-op threads (1 by default: a serving worker per core; None: all of
    PyTorch's threads, as corpus encoding uses).

    Keys: ``params_m``; ``checkpoint_mb`` (fp32), ``checkpoint_mb_fp16``, ``checkpoint_mb_int8``
    (None where int8 is unsupported), ``onnx_file_mb`` (ONNX backends); ``index_mb``;
    ``query_ms_p50/p95/p99`` (batch 1, tokenisation included, warm-up excluded; ``query_threads``);
    ``passages_per_s``, ``tokens_per_s`` (real tokens), ``mean_passage_tokens``, ``encode_s``,
    ``cpu_utilisation`` (process CPU seconds / (wall seconds · threads) while encoding: well below 1
    on the CPU, other processes held the cores and every wall-clock rate here is understated);
    ``search_ms_per_query`` (all questions in one faiss call, as evaluation searches) and
    ``search_ms_batch1`` (median of single-question searches); ``qps_end_to_end`` (one question
    at a time: tokenise, encode, search top ``top_k``); ``peak_rss_mb`` (this process, loading
    included) and ``peak_cuda_mb`` on a GPU; ``flops_per_passage`` (mean, :func:`encoder_flops`),
    ``achieved_gflops`` (real-token FLOPs / encoding seconds), ``matmul_peak_gflops`` (measured
    now, or ``peak_gflops`` when given), ``peak_fraction`` (their ratio; None for the int8
    backends, whose rate is fp32-equivalent work done in int8); and the settings used.
    """
    from onmkd.retrieval.backends import check_backend, dual_with_backend
    from onmkd.data import passage_text
    from onmkd.retrieval.evaluate import load_retriever
    from onmkd.retrieval.index import IndexSpec, build_index, index_bytes, search
    from onmkd.runtime import resolve_device

    check_backend(backend, "--backend")
    index = index or IndexSpec()
    dev = resolve_device(device, "--device") if backend == "torch" else torch.device("cpu")
    name = model_or_dual if isinstance(model_or_dual, (str, os.PathLike)) else None
    dual = load_retriever(str(model_or_dual)) if name is not None else model_or_dual
    dual = dual.to(dev)
    split_data = data.split(split)
    questions = list(split_data.queries.values())
    pids = list(data.corpus)[: max_passages or None]
    texts = [passage_text(data.corpus[p], titles) for p in pids]
    if not questions or not texts:
        raise ValueError(f"profile: split {split!r} has {len(questions)} questions and the corpus {len(texts)} passages")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    out: dict = {"model": str(name) if name is not None else getattr(dual.question, "name", ""), "backend": backend}
    out["params_m"] = retriever_parameters(dual) / 1e6
    out["checkpoint_mb"] = checkpoint_mb(dual)
    out["checkpoint_mb_fp16"] = checkpoint_mb(dual, torch.float16)
    out["checkpoint_mb_int8"] = checkpoint_mb_int8(dual)

    run = dual_with_backend(dual, backend)
    if hasattr(run.passage, "file_mb"):
        out["onnx_file_mb"] = run.passage.file_mb + (0 if run.tied else run.question.file_mb)

    # corpus encoding: throughput, FLOPs, and the vectors for the index
    lengths = token_lengths(run.passage, texts, p_max_len)
    pvecs, seconds, cpu_s = _timed_encode(run.passage, texts, max_length=p_max_len, batch_size=batch_size)
    flops = encoder_flops(dual.passage, lengths)
    out.update({"passages": len(texts), "passages_per_s": len(texts) / seconds, "tokens_per_s": float(lengths.sum()) / seconds,
                "mean_passage_tokens": float(lengths.mean()), "encode_s": seconds,
                "cpu_utilisation": cpu_s / (seconds * torch.get_num_threads()),
                "flops_per_passage": float(flops.mean()), "achieved_gflops": float(flops.sum()) / seconds / 1e9})
    cfg = _encoder_config(dual.passage)
    out["matmul_peak_gflops"] = float(peak_gflops) if peak_gflops else matmul_peak_gflops(
        hidden=int(cfg.hidden_size), intermediate=int(cfg.intermediate_size), device=dev)
    # int8 backends do fp32-equivalent work with int8 arithmetic: no fraction of the fp32 peak
    out["peak_fraction"] = None if "int8" in backend else out["achieved_gflops"] / out["matmul_peak_gflops"]

    # queries: latency at batch 1, then the index and search
    out.update(query_latency(run.question, questions, max_length=q_max_len, n=n_latency, threads=query_threads))
    ix = build_index(pvecs, index)
    out["index_mb"] = index_bytes(ix) / 2**20
    qvecs = run.question.encode(questions, max_length=q_max_len, batch_size=batch_size)
    search(ix, qvecs[: min(len(qvecs), 8)], top_k)  # warm-up
    t0 = time.perf_counter()
    search(ix, qvecs, top_k)
    out["search_ms_per_query"] = 1000 * (time.perf_counter() - t0) / len(qvecs)
    n_e2e = min(n_latency, len(questions))
    single = []
    for v in qvecs[:n_e2e]:
        t0 = time.perf_counter()
        search(ix, v[None], top_k)
        single.append(time.perf_counter() - t0)
    out["search_ms_batch1"] = 1000 * float(np.median(single))

    infer = _infer(run.question)
    with torch.inference_mode(), threads_for(run.question, query_threads):
        for i in range(n_e2e + 5):
            if i == 5:  # the first five are warm-up
                _sync(dev)
                t0 = time.perf_counter()
            batch = run.question.tokenize([questions[i % len(questions)]], q_max_len)
            vec = infer(batch["input_ids"].to(dev), batch["attention_mask"].to(dev))
            search(ix, vec.float().cpu().numpy(), top_k)
        _sync(dev)
        out["qps_end_to_end"] = n_e2e / (time.perf_counter() - t0)

    out["peak_rss_mb"] = peak_rss_mb()
    if dev.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    out.update({"split": split, "questions": len(questions), "q_max_len": q_max_len, "p_max_len": p_max_len,
                "batch_size": batch_size, "index": index.kind, "top_k": top_k, "titles": titles, "device": str(dev),
                "threads": torch.get_num_threads(),
                "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                "torch": torch.__version__})
    return out
