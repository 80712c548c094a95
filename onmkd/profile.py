"""Efficiency measurements of a retriever: size, latency, throughput, memory.

One code path for ``onmkd-bench profile``, the sweep's latency objective and the report's
efficiency columns. Latencies are wall-clock per call after a warm-up that is not counted;
throughput is measured on real texts at their real lengths (batches sorted by length).
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
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


def query_latency(encoder, texts: Sequence[str], *, max_length: int = 64, n: int = 200, warmup: int = 20) -> dict[str, float]:
    """Query-encoding latency at batch 1, tokenisation included: p50/p95/p99 in ms.

    The first ``warmup`` calls are not counted; ``n`` calls cycle over ``texts``.
    """
    if not len(texts):
        raise ValueError("query_latency: no texts")
    device = encoder.device
    was_training = encoder.training
    encoder.eval()
    times = []
    with torch.inference_mode():
        for i in range(warmup + n):
            text = texts[i % len(texts)]
            _sync(device)
            t0 = time.perf_counter()
            batch = encoder.tokenize([text], max_length)
            encoder(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            _sync(device)
            if i >= warmup:
                times.append(1000 * (time.perf_counter() - t0))
    encoder.train(was_training)
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    return {"query_ms_p50": float(p50), "query_ms_p95": float(p95), "query_ms_p99": float(p99), "latency_calls": n}


def corpus_throughput(encoder, texts: Sequence[str], *, max_length: int, batch_size: int = 64) -> dict[str, float]:
    """Passages per second (and real, non-padding tokens per second) encoding ``texts``."""
    lengths = [len(x) for x in encoder.tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]
    encoder.encode(texts[: min(len(texts), batch_size)], max_length=max_length, batch_size=batch_size)  # warm-up
    _sync(encoder.device)
    t0 = time.perf_counter()
    encoder.encode(texts, max_length=max_length, batch_size=batch_size)
    _sync(encoder.device)
    seconds = time.perf_counter() - t0
    return {"passages_per_s": len(texts) / seconds, "tokens_per_s": sum(lengths) / seconds,
            "mean_passage_tokens": float(np.mean(lengths)), "encode_s": seconds}


def efficiency(dual, questions: Sequence[str], *, q_max_len: int = 64, n_latency: int = 200) -> dict[str, float]:
    """Size and query latency of a dual encoder: the sweep's and the report's efficiency columns."""
    out = {"params_m": retriever_parameters(dual) / 1e6, "checkpoint_mb": checkpoint_mb(dual)}
    out.update(query_latency(dual.question, questions, max_length=q_max_len, n=n_latency))
    out["threads"] = torch.get_num_threads()
    out["pid_cpus"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return out
