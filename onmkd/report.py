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
