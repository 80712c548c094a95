"""Paper figures (matplotlib) from the tidy results frame. No torch here.

The input is one row per (run, split) with the columns ``label role method layers seed split`` and
metric columns such as ``recall@20`` or ``query_ms_p50``. Rows that share a label (and split) are
seeds of one configuration: they are shown as mean with a standard-deviation error bar.

Every figure function returns a :class:`matplotlib.figure.Figure` (or ``None`` when there is nothing
to plot) and writes nothing; :func:`save` writes PNG and PDF. Figures are built with
:class:`~matplotlib.figure.Figure` directly (no pyplot), sized for one paper column, and styled
inside a :func:`matplotlib.rc_context` so the global rcParams stay untouched. Only the Optuna plots
need pyplot; for them the Agg backend is selected if no backend was chosen yet.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from onmkd.io import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = [
    "ROLE_ORDER", "pareto_front", "recall_latency", "metric_by_layers", "ablation_bars",
    "optuna_history", "optuna_importances", "save",
]

# One paper column.
WIDTH_IN = 3.4
HEIGHT_IN = 2.6
FONT_SIZE = 8
SMALL_FONT = 6.5  # legends
TINY_FONT = 5.5  # point annotations

STYLE: dict[str, Any] = {
    "font.size": FONT_SIZE,
    "axes.titlesize": FONT_SIZE,
    "axes.labelsize": FONT_SIZE,
    "xtick.labelsize": FONT_SIZE - 1,
    "ytick.labelsize": FONT_SIZE - 1,
    "legend.fontsize": SMALL_FONT,
    "legend.title_fontsize": SMALL_FONT,
    "legend.framealpha": 0.8,
    "lines.markersize": 4,
    "lines.linewidth": 1.0,
    "errorbar.capsize": 1.5,
    "axes.linewidth": 0.6,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.4,
    "figure.figsize": (WIDTH_IN, HEIGHT_IN),
    "figure.dpi": 100,
    "savefig.dpi": 300,
    "pdf.fonttype": 42,  # embed TrueType: editable text, accepted by publishers
    "ps.fonttype": 42,
}

ROLE_ORDER = ("teacher", "small baseline", "same-depth baseline", "onmkd", "ablation", "lexical", "reference")
# role -> (colour, marker)
ROLE_STYLE: dict[str, tuple[str, str]] = {
    "teacher": ("black", "*"),
    "small baseline": ("tab:blue", "s"),
    "same-depth baseline": ("tab:orange", "^"),
    "onmkd": ("tab:red", "o"),
    "ablation": ("tab:purple", "D"),
    "lexical": ("tab:green", "X"),
    "reference": ("tab:gray", "v"),
    "trial": ("silver", "."),
}
_OTHER_STYLE = ("tab:brown", "P")

METHOD_ORDER = ("onmkd", "kd", "dml", "dpr", "encoder", "bm25")
# method -> (colour, marker)
METHOD_STYLE: dict[str, tuple[str, str]] = {
    "onmkd": ("tab:red", "o"),
    "kd": ("tab:blue", "s"),
    "dml": ("tab:orange", "^"),
    "dpr": ("tab:green", "D"),
    "encoder": ("tab:gray", "v"),
    "bm25": ("tab:olive", "X"),
}
_EXTRA_COLOURS = ("tab:purple", "tab:brown", "tab:pink", "tab:cyan")
_EXTRA_MARKERS = ("P", "h", "<", ">")

LATENCY_LABELS = {
    "query_ms_p50": "query latency p50 (ms, batch 1)",
    "query_ms_p95": "query latency p95 (ms, batch 1)",
    "query_ms_p99": "query latency p99 (ms, batch 1)",
}


# --------------------------------------------------------------------------------------------------
# helpers


def _new_figure(width: float = WIDTH_IN, height: float = HEIGHT_IN) -> tuple[Figure, Any]:
    """A pyplot-free figure with one Axes and the tight layout engine (call inside the rc_context)."""
    fig = Figure(figsize=(width, height), layout="tight")
    ax = fig.add_subplot()
    # Ticks are created lazily at draw time, possibly outside the rc_context: pin their font size.
    ax.tick_params(labelsize=FONT_SIZE - 1, width=0.6, length=2.5)
    ax.tick_params(which="minor", width=0.4, length=1.5)
    return fig, ax


def _rows(df: pd.DataFrame, split: str | None, *columns: str) -> pd.DataFrame:
    """The rows of ``split`` (all rows when the frame has no split column) with finite ``columns``."""
    if df is None or len(df) == 0 or any(c not in df.columns for c in columns):
        return pd.DataFrame(columns=list(df.columns) if df is not None else [])
    out = df
    if split is not None and "split" in out.columns:
        out = out[out["split"] == split]
    for c in columns:
        values = pd.to_numeric(out[c], errors="coerce")
        out = out[np.isfinite(values.to_numpy(dtype=float))]
    return out


def _aggregate(df: pd.DataFrame, keys: list[str], columns: Sequence[str]) -> pd.DataFrame:
    """Mean, std (ddof 1; 0 for a single seed) and n of ``columns`` per ``keys``, in first-seen order."""
    grouped = df.groupby(keys, sort=False, dropna=False)
    out = grouped.size().rename("n").to_frame()
    for c in columns:
        values = pd.to_numeric(df[c], errors="coerce").groupby([df[k] for k in keys], sort=False, dropna=False)
        out[f"{c}_mean"] = values.mean()
        out[f"{c}_std"] = values.std(ddof=1).fillna(0.0)
    if "role" in df.columns and "role" not in keys:
        out["role"] = grouped["role"].first()
    return out.reset_index()


def _errors(std: pd.Series) -> np.ndarray | None:
    """Error-bar half-widths, or None when every one is zero (single seeds)."""
    arr = np.nan_to_num(np.asarray(std, dtype=float), nan=0.0)
    return arr if np.any(arr > 0) else None


def _role_style(role: Any) -> tuple[str, str]:
    return ROLE_STYLE.get(str(role), _OTHER_STYLE)


def _method_styles(methods: Sequence[str]) -> dict[str, tuple[str, str]]:
    styles: dict[str, tuple[str, str]] = {}
    extra = 0
    for m in methods:
        if m in METHOD_STYLE:
            styles[m] = METHOD_STYLE[m]
        else:
            styles[m] = (_EXTRA_COLOURS[extra % len(_EXTRA_COLOURS)], _EXTRA_MARKERS[extra % len(_EXTRA_MARKERS)])
            extra += 1
    return styles


def _ordered(values: Sequence[Any], order: Sequence[Any]) -> list[Any]:
    """Distinct ``values``: those in ``order`` first (in that order), then the rest as first seen."""
    seen = list(dict.fromkeys(values))
    return [v for v in order if v in seen] + [v for v in seen if v not in order]


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Overlap area of two (x0, y0, x1, y1) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _annotate_points(ax: Any, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str],
                     fontsize: float = TINY_FONT) -> None:
    """Label every point with offset text, greedily choosing one of four offsets to limit overlaps.

    Call after everything that sets the data limits has been drawn. Positions are estimated in
    axes-fraction units from the current limits and an approximate text size, so no renderer is
    needed; it is a cheap heuristic, not a solver.
    """
    if not len(xs):
        return
    fig = ax.figure
    pos = ax.get_position()
    ax_w_pt = max(pos.width * fig.get_figwidth() * 72.0, 1.0)
    ax_h_pt = max(pos.height * fig.get_figheight() * 72.0, 1.0)
    # Data -> axes fraction; reading the limits first applies any pending autoscaling.
    ax.get_xlim(), ax.get_ylim()
    frac = ax.transAxes.inverted().transform(ax.transData.transform(np.column_stack([xs, ys])))
    nx, ny = frac[:, 0], frac[:, 1]
    char_w, text_h = 0.55 * fontsize / ax_w_pt, 1.15 * fontsize / ax_h_pt
    dx, dy = 3.0, 2.0  # offset in points
    candidates = [(dx, dy, "left", "bottom"), (dx, -dy, "left", "top"),
                  (-dx, dy, "right", "bottom"), (-dx, -dy, "right", "top")]
    placed: list[tuple[float, float, float, float]] = []
    # Markers are obstacles too (a small box around each).
    r_x, r_y = 3.0 / ax_w_pt, 3.0 / ax_h_pt
    markers = [(x - r_x, y - r_y, x + r_x, y + r_y) for x, y in zip(nx, ny)]
    for i in np.argsort(-ny, kind="stable"):
        w = char_w * len(str(labels[i]))
        best, best_box, best_cost = candidates[0], (0.0, 0.0, 0.0, 0.0), math.inf
        for cand in candidates:
            ox, oy = cand[0] / ax_w_pt, cand[1] / ax_h_pt
            x0 = nx[i] + ox if cand[2] == "left" else nx[i] + ox - w
            y0 = ny[i] + oy if cand[3] == "bottom" else ny[i] + oy - text_h
            box = (x0, y0, x0 + w, y0 + text_h)
            cost = sum(_overlap(box, p) for p in placed)
            cost += sum(_overlap(box, m) for j, m in enumerate(markers) if j != i)
            cost += (max(0.0, box[2] - 1.0) + max(0.0, -box[0])) * text_h  # leaving the axes
            cost += (max(0.0, box[3] - 1.0) + max(0.0, -box[1])) * w
            if cost < best_cost - 1e-12:
                best, best_box, best_cost = cand, box, cost
        placed.append(best_box)
        ax.annotate(str(labels[i]), (xs[i], ys[i]), xytext=(best[0], best[1]), textcoords="offset points",
                    ha=best[2], va=best[3], fontsize=fontsize, color="0.2", annotation_clip=False)


def _plain_log_ticks(axis: Any) -> None:
    """Plain numbers (2, 5, 10) rather than 2×10⁰ on a log axis; minor labels only when few decades."""
    from matplotlib.ticker import LogFormatter

    axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1.5, 0.6)))


def _ensure_backend() -> None:
    """Select Agg only if no backend was chosen yet (explicitly, by MPLBACKEND, or by pyplot)."""
    try:
        chosen = matplotlib.get_backend(auto_select=False)
    except TypeError:  # matplotlib < 3.10
        chosen = matplotlib.rcParams._get_backend_or_none()  # type: ignore[attr-defined]
    if chosen is None:
        matplotlib.use("Agg")


# --------------------------------------------------------------------------------------------------
# Pareto front


def pareto_front(xs: Sequence[float], ys: Sequence[float]) -> list[int]:
    """Indices of the points not dominated when lower x and higher y are better, sorted by x.

    A point is dominated by another that is no worse on both and better on one. Of points equal on
    both coordinates only the first (lowest index) is kept. Pairs with a NaN (or infinite) coordinate
    are ignored.
    """
    x = np.asarray(xs, dtype=float).ravel()
    y = np.asarray(ys, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"xs and ys differ in length: {x.size} != {y.size}")
    idx = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    # Sweep by x ascending; among equal x the highest y first, then the lowest index.
    order = sorted(idx.tolist(), key=lambda i: (x[i], -y[i], i))
    front: list[int] = []
    best_y = -math.inf
    for i in order:
        if y[i] > best_y:
            front.append(i)
            best_y = y[i]
    return front


# --------------------------------------------------------------------------------------------------
# figures


def recall_latency(df: pd.DataFrame, metric: str = "recall@20", latency: str = "query_ms_p50",
                   split: str = "test", annotate: bool = True) -> Figure | None:
    """Quality against query latency: one point per label, coloured by role, with the Pareto front.

    Points are means over seeds with std error bars on both axes (when a label has several seeds).
    Rows lacking the metric or a positive latency (e.g. BM25 without a latency) are skipped. The x
    axis is logarithmic. The Pareto front (lower latency, higher metric) is a step line.
    """
    rows = _rows(df, split, metric, latency)
    if len(rows):
        rows = rows[pd.to_numeric(rows[latency]).to_numpy(dtype=float) > 0]
    if not len(rows) or "label" not in rows.columns:
        return None
    agg = _aggregate(rows, ["label"], [metric, latency])
    if "role" not in agg.columns:
        agg["role"] = "other"
    x, y = agg[f"{latency}_mean"].to_numpy(float), agg[f"{metric}_mean"].to_numpy(float)

    with matplotlib.rc_context(STYLE):
        fig, ax = _new_figure()
        ax.set_xscale("log")
        front = pareto_front(x, y)
        if len(front) > 1:
            fx, fy = x[front], y[front]
            ax.plot(fx, fy, drawstyle="steps-post", color="0.55", linestyle="-", linewidth=0.8,
                    zorder=1, label="Pareto front")
        for role in _ordered(agg["role"].astype(str).tolist(), ROLE_ORDER):
            part = agg[agg["role"].astype(str) == role]
            colour, marker = _role_style(role)
            ax.errorbar(part[f"{latency}_mean"], part[f"{metric}_mean"],
                        xerr=_errors(part[f"{latency}_std"]), yerr=_errors(part[f"{metric}_std"]),
                        fmt=marker, color=colour, ecolor=colour, elinewidth=0.6,
                        markersize=6 if marker == "*" else 4, markeredgewidth=0.4,
                        markeredgecolor="white" if marker not in {".", "X"} else colour,
                        label=role, zorder=3)
        ax.set_xlabel(LATENCY_LABELS.get(latency, f"{latency} (ms)"))
        ax.set_ylabel(metric)
        ax.grid(True, which="major")
        ax.margins(x=0.12, y=0.1)
        _plain_log_ticks(ax.xaxis)
        if annotate:
            _annotate_points(ax, x, y, agg["label"].astype(str).tolist())
        ax.legend(loc="best", fontsize=SMALL_FONT, handletextpad=0.3, borderpad=0.3, labelspacing=0.25)
    return fig


def metric_by_layers(df: pd.DataFrame, metric: str = "acc@20", split: str = "test",
                     exclude_roles: Sequence[str] = ("ablation", "trial")) -> Figure | None:
    """The metric against the number of transformer layers: one line per method.

    Points are means over seeds per (method, layers) with std error bars. Teacher rows are drawn as
    horizontal dashed reference lines (one per teacher label) rather than joining a method line.
    Rows of ``exclude_roles`` (ablations and sweep trials by default) and rows without layers (BM25)
    are left out of the method lines.
    """
    rows = _rows(df, split, metric)
    if not len(rows):
        return None
    roles = rows["role"].astype(str) if "role" in rows.columns else pd.Series("", index=rows.index)
    teachers = rows[roles == "teacher"]
    lines = rows[(roles != "teacher") & ~roles.isin(list(exclude_roles))]
    if "layers" in lines.columns and "method" in lines.columns:
        lines = lines[np.isfinite(pd.to_numeric(lines["layers"], errors="coerce").to_numpy(dtype=float))]
    else:
        lines = lines.iloc[0:0]
    if not len(lines) and not len(teachers):
        return None

    with matplotlib.rc_context(STYLE):
        fig, ax = _new_figure()
        layer_values: set[int] = set()
        if len(lines):
            lines = lines.assign(layers=pd.to_numeric(lines["layers"]).astype(float),
                                 method=lines["method"].astype(str))
            agg = _aggregate(lines, ["method", "layers"], [metric])
            methods = _ordered(agg["method"].tolist(), METHOD_ORDER)
            styles = _method_styles(methods)
            for m in methods:
                part = agg[agg["method"] == m].sort_values("layers")
                colour, marker = styles[m]
                ax.errorbar(part["layers"], part[f"{metric}_mean"], yerr=_errors(part[f"{metric}_std"]),
                            fmt=f"-{marker}", color=colour, elinewidth=0.6, markersize=3.5, label=m, zorder=3)
                layer_values.update(int(round(v)) for v in part["layers"])
        if len(teachers) and "label" in teachers.columns:
            tagg = _aggregate(teachers, ["label"], [metric])
            styles_t = ("--", "-.", ":", (0, (5, 1, 1, 1)))
            for k, (_, t) in enumerate(tagg.iterrows()):
                ax.axhline(t[f"{metric}_mean"], color="black" if k == 0 else "0.4", linewidth=0.8,
                           linestyle=styles_t[k % len(styles_t)], label=str(t["label"]), zorder=2)
        if layer_values:
            ticks = sorted(layer_values)
            if len(ticks) > 12:  # too many for one column: let the locator thin them, integers only
                from matplotlib.ticker import MaxNLocator
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            else:
                ax.set_xticks(ticks)
            ax.margins(x=0.08)
        else:
            ax.set_xticks([])
        ax.set_xlabel("transformer layers")
        ax.set_ylabel(metric)
        ax.grid(True, which="major")
        ax.legend(loc="best", fontsize=SMALL_FONT, handletextpad=0.4, borderpad=0.3, labelspacing=0.25)
    return fig


def ablation_bars(df: pd.DataFrame, metric: str = "acc@20", split: str = "test",
                  reference: str | None = None) -> Figure | None:
    """Horizontal bars, one per label in first-appearance order, mean ± std over seeds.

    Tick labels carry the number of seeds, e.g. ``no KL (n=3)``. If ``reference`` names a label
    present in the frame, a vertical dashed line marks its mean. The height grows with the bars.
    """
    rows = _rows(df, split, metric)
    if not len(rows) or "label" not in rows.columns:
        return None
    agg = _aggregate(rows, ["label"], [metric])
    n_bars = len(agg)
    height = max(HEIGHT_IN, 0.7 + 0.22 * n_bars)
    means = agg[f"{metric}_mean"].to_numpy(float)

    with matplotlib.rc_context(STYLE):
        fig, ax = _new_figure(WIDTH_IN, height)
        pos = np.arange(n_bars)
        colours = [_role_style(r)[0] if "role" in agg.columns else "tab:blue"
                   for r in (agg["role"] if "role" in agg.columns else [None] * n_bars)]
        ax.barh(pos, means, xerr=_errors(agg[f"{metric}_std"]), height=0.65, color=colours, alpha=0.85,
                edgecolor="none", error_kw={"elinewidth": 0.7, "capsize": 1.5, "ecolor": "0.15"}, zorder=2)
        ax.set_yticks(pos, [f"{lab} (n={n})" for lab, n in zip(agg["label"].astype(str), agg["n"])])
        ax.invert_yaxis()  # first label on top
        if reference is not None and reference in set(agg["label"].astype(str)):
            ref = float(agg.loc[agg["label"].astype(str) == reference, f"{metric}_mean"].iloc[0])
            ax.axvline(ref, color="black", linestyle="--", linewidth=0.8, zorder=3)
        # Zoom on the bars' range when they are all far from zero, so differences stay visible.
        lo = float(np.nanmin(means - np.nan_to_num(agg[f"{metric}_std"].to_numpy(float))))
        hi = float(np.nanmax(means + np.nan_to_num(agg[f"{metric}_std"].to_numpy(float))))
        if lo > 0 and hi > 0 and (hi - lo) < 0.5 * hi:
            pad = 0.15 * (hi - lo) or 0.05 * hi
            ax.set_xlim(max(0.0, lo - 2 * pad), hi + pad)
        ax.set_xlabel(metric)
        ax.grid(True, axis="x", which="major")
    return fig


# --------------------------------------------------------------------------------------------------
# Optuna


def _completed(study: optuna.Study) -> list[Any]:
    from optuna.trial import TrialState

    return list(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _first_objective(study: optuna.Study, lower_is_better: bool = False) -> Any:
    """``target`` for a multi-objective study: its first objective (negated for a maximised one when
    ``lower_is_better``, as PED-ANOVA importances assume a user target is to be minimised); None for
    a single-objective study, where Optuna knows the direction itself."""
    if len(study.directions) <= 1:
        return None
    from optuna.study import StudyDirection

    if lower_is_better and study.directions[0] == StudyDirection.MAXIMIZE:
        return lambda t: -t.values[0]
    return lambda t: t.values[0]


def _optuna_plot(plot: Any, study: optuna.Study, target_name: str, target: Any) -> Figure | None:
    """Call an Optuna matplotlib plot quietly and restyle its figure for one paper column."""
    _ensure_backend()
    import matplotlib.pyplot as plt
    import optuna

    before = set(plt.get_fignums())
    with matplotlib.rc_context(STYLE), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # We pass a minimisable target on purpose (see _first_objective): Optuna's reminder is noise.
        warnings.filterwarnings("ignore", message=r".*importances of params to achieve low", category=UserWarning)
        try:
            ax = plot(study, target=target, target_name=target_name)
        except (ValueError, RuntimeError, ZeroDivisionError):
            for num in set(plt.get_fignums()) - before:  # do not leak a half-built figure
                plt.close(num)
            return None
        fig = ax.figure
        fig.set_size_inches(WIDTH_IN, HEIGHT_IN)
        for a in fig.axes:
            for loc in ("left", "center", "right"):  # the caption belongs to the paper
                a.set_title("", loc=loc)
            # Undo Optuna's ggplot look so the figure matches the others.
            a.set_facecolor("white")
            for spine in a.spines.values():
                spine.set_visible(True)
                spine.set_color("black")
                spine.set_linewidth(0.6)
            a.grid(True, color="0.85", linewidth=0.4)
            a.tick_params(labelsize=FONT_SIZE - 1, labelcolor="black", color="black", width=0.6, length=2.5)
            for label in (a.xaxis.label, a.yaxis.label):
                label.set_fontsize(FONT_SIZE)
                label.set_color("black")
            for text in a.texts:
                text.set_fontsize(TINY_FONT + 0.5)
            if a.get_legend() is not None:  # Optuna puts it outside, which squeezes a column-wide plot
                legend = a.legend(loc="best", fontsize=SMALL_FONT, handletextpad=0.4, borderpad=0.3, labelspacing=0.25)
                legend.get_frame().set_facecolor("white")
                legend.get_frame().set_edgecolor("0.8")
        fig.set_layout_engine("tight")
    return fig


def optuna_history(study: optuna.Study, target_name: str = "dev acc@20") -> Figure | None:
    """Optuna's optimisation history (objective and best value per trial); None below 2 completed trials.

    For a multi-objective study the first objective is shown (Optuna draws no best-value line then).
    """
    if len(_completed(study)) < 2:
        return None
    from optuna.visualization.matplotlib import plot_optimization_history

    fig = _optuna_plot(plot_optimization_history, study, target_name, _first_objective(study))
    if fig is not None:
        from matplotlib.ticker import MaxNLocator

        for ax in fig.axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def optuna_importances(study: optuna.Study, target_name: str = "dev acc@20") -> Figure | None:
    """Optuna's hyperparameter importances, or None when they would say nothing.

    None unless at least 2 completed trials vary at least 2 parameters and the objective; errors
    Optuna raises for other degenerate studies also give None. For a multi-objective study the
    importances of the first objective are shown.
    """
    trials = _completed(study)
    if len(trials) < 2:
        return None
    names = {name for t in trials for name in t.params}
    varying = [n for n in names if len({repr(t.params.get(n)) for t in trials}) > 1]
    objective = {float(t.values[0]) for t in trials if t.values}
    if len(varying) < 2 or len(objective) < 2:
        return None
    from optuna.visualization.matplotlib import plot_param_importances

    return _optuna_plot(plot_param_importances, study, target_name, _first_objective(study, lower_is_better=True))


# --------------------------------------------------------------------------------------------------
# output


def save(fig: Figure, stem: str | os.PathLike[str]) -> list[Path]:
    """Write ``stem.png`` (300 dpi) and ``stem.pdf`` atomically, close ``fig``, return both paths.

    The suffixes are appended to ``stem`` (so a stem such as ``fig.v2`` keeps its dot); parent
    folders are created. The PDF carries no creation date, so reruns give identical files.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.pdf"]
    try:
        with matplotlib.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42}):
            for path, fmt in zip(paths, ("png", "pdf")):
                metadata = {"CreationDate": None} if fmt == "pdf" else None
                with atomic_path(path) as tmp:
                    fig.savefig(tmp, format=fmt, dpi=300, metadata=metadata)
    finally:
        if "matplotlib.pyplot" in sys.modules:  # figures made by pyplot (Optuna's) live in its registry
            sys.modules["matplotlib.pyplot"].close(fig)
    return paths
