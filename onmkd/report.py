"""Tables from results: a row per run, rendered as Markdown (pandas + tabulate). No torch here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

# Column order and number formats of the metrics table; absent metrics are left out.
METRIC_COLUMNS = [
    ("acc@1", "{:.3f}"), ("acc@5", "{:.3f}"), ("acc@20", "{:.3f}"), ("acc@100", "{:.3f}"),
    ("recall@1", "{:.3f}"), ("recall@5", "{:.3f}"), ("recall@20", "{:.3f}"), ("recall@100", "{:.3f}"),
    ("mrr@10", "{:.3f}"), ("ndcg@10", "{:.3f}"),
    ("params_m", "{:.1f}"), ("index_mb", "{:.2f}"), ("ms_per_query", "{:.2f}"), ("passages_per_s", "{:.0f}"),
]


def to_markdown(rows: Sequence[Mapping[str, object]]) -> str:
    """Rows of plain values as a Markdown table."""
    return pd.DataFrame(list(rows)).to_markdown(index=False)


def metrics_table(rows: Sequence[Mapping[str, object]]) -> str:
    """Metrics rows (``model`` plus flat metric keys) as a Markdown table with fixed formats."""
    df = pd.DataFrame(list(rows))
    cols = ["model"] + [c for c, _ in METRIC_COLUMNS if c in df.columns]
    df = df[cols].astype(object)
    for c, fmt in METRIC_COLUMNS:
        if c in df.columns:
            df[c] = [fmt.format(v) if isinstance(v, (int, float)) and v == v else "-" for v in df[c]]
    return df.to_markdown(index=False, disable_numparse=True)


def _jsonl(path) -> list[dict]:
    import json

    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def diagnostics(run_dir) -> dict:
    """Mutual-learning diagnostics of a training run directory.

    - ``kl``: the peers' KL term (log.jsonl ``kl/k``, mean over peers) averaged per tenth of
      training, as (step, value) pairs: how far apart the peers' score distributions are;
    - per dev epoch: each peer's primary dev metric, the score ensemble's, and the peers' top-20
      overlap (dev.jsonl).
    """
    from pathlib import Path

    run_dir = Path(run_dir)
    log = _jsonl(run_dir / "log.jsonl")
    peers = sorted({int(k.split("/")[1]) for k in log[0] if k.startswith("nll/")}) if log else []
    out: dict = {"steps": len(log), "peers": len(peers), "kl": [], "dev": []}
    if log and any(f"kl/{p}" in log[0] for p in peers):
        size = max(1, len(log) // 10)
        for start in range(0, len(log), size):
            part = log[start : start + size]
            vals = [sum(r[f"kl/{p}"] for p in peers) / len(peers) for r in part]
            out["kl"].append((part[-1]["step"], sum(vals) / len(vals)))
    dev_path = run_dir / "dev.jsonl"
    for row in _jsonl(dev_path) if dev_path.exists() else []:
        metric = "acc@20" if "acc@20" in row["peers"][0] else "ndcg@10"
        entry = {"epoch": row["epoch"] + 1, "metric": metric, **{f"peer{k}": p[metric] for k, p in enumerate(row["peers"])}}
        if "ensemble" in row:
            entry["ensemble"] = row["ensemble"][metric]
            entry["top20_overlap"] = row["top20_overlap"]
        out["dev"].append(entry)
    return out
