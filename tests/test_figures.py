"""Paper figures: Pareto front, each figure on a small hand-made frame, Optuna plots, saving."""

from __future__ import annotations

import subprocess
import sys
from io import BytesIO

import matplotlib
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from onmkd.study import figures

NAN = float("nan")


# ---------------------------------------------------------------------------------------------------
# pareto_front


def test_pareto_front_removes_dominated_points():
    # (latency, recall): 1 dominates 2 (slower and worse); 3 is slowest but best; 0 is fastest.
    xs = [1.0, 2.0, 3.0, 10.0, 2.5]
    ys = [0.5, 0.7, 0.6, 0.9, 0.7]  # 4 equals 1 on y but is slower -> dominated
    assert figures.pareto_front(xs, ys) == [0, 1, 3]


def test_pareto_front_ties_nan_and_order():
    xs = [5.0, 1.0, 1.0, NAN, 3.0, 1.0]
    ys = [0.9, 0.5, 0.5, 0.99, NAN, 0.4]
    # 1 and 2 are identical: kept once (the first); 5 has the same x but lower y: dominated;
    # 3 and 4 have a NaN and are ignored; the result is sorted by x.
    assert figures.pareto_front(xs, ys) == [1, 0]
    assert figures.pareto_front([], []) == []
    assert figures.pareto_front([NAN], [1.0]) == []
    assert figures.pareto_front([2.0, 1.0], [1.0, 1.0]) == [1]  # same y, faster wins


def test_pareto_front_length_mismatch():
    with pytest.raises(ValueError):
        figures.pareto_front([1.0, 2.0], [1.0])


# ---------------------------------------------------------------------------------------------------
# a small tidy frame: 2 seeds per trained label, a teacher, BM25 without latency


def _row(label, role, method, layers, seed, split="test", **metrics):
    base = {"label": label, "role": role, "method": method, "layers": layers, "seed": seed, "split": split}
    base.update(metrics)
    return base


@pytest.fixture
def results() -> pd.DataFrame:
    rows = [
        _row("BERT-base teacher", "teacher", "dpr", 12.0, 0.0, **{"acc@20": 0.80, "recall@20": 0.75, "query_ms_p50": 9.0}),
        _row("BM25", "lexical", "bm25", NAN, NAN, **{"acc@20": 0.60, "recall@20": 0.55, "query_ms_p50": NAN}),
        _row("ONMKD 4L", "onmkd", "onmkd", 4.0, 0.0, **{"acc@20": 0.72, "recall@20": 0.68, "query_ms_p50": 3.1}),
        _row("ONMKD 4L", "onmkd", "onmkd", 4.0, 1.0, **{"acc@20": 0.74, "recall@20": 0.70, "query_ms_p50": 3.3}),
        _row("ONMKD 2L", "onmkd", "onmkd", 2.0, 0.0, **{"acc@20": 0.64, "recall@20": 0.60, "query_ms_p50": 1.9}),
        _row("ONMKD 2L", "onmkd", "onmkd", 2.0, 1.0, **{"acc@20": 0.66, "recall@20": 0.62, "query_ms_p50": 2.1}),
        _row("KD 4L", "same-depth baseline", "kd", 4.0, 0.0, **{"acc@20": 0.69, "recall@20": 0.65, "query_ms_p50": 3.2}),
        _row("KD 4L", "same-depth baseline", "kd", 4.0, 1.0, **{"acc@20": 0.71, "recall@20": 0.66, "query_ms_p50": 3.0}),
        _row("KD 2L", "small baseline", "kd", 2.0, 0.0, **{"acc@20": 0.60, "recall@20": 0.57, "query_ms_p50": 2.0}),
        _row("KD 2L", "small baseline", "kd", 2.0, 1.0, **{"acc@20": 0.62, "recall@20": 0.58, "query_ms_p50": 2.0}),
        _row("no KL", "ablation", "onmkd", 4.0, 0.0, **{"acc@20": 0.70, "recall@20": 0.66, "query_ms_p50": 3.2}),
        _row("no KL", "ablation", "onmkd", 4.0, 1.0, **{"acc@20": 0.68, "recall@20": 0.64, "query_ms_p50": 3.2}),
        # a dev row that must not leak into the test figures
        _row("ONMKD 4L", "onmkd", "onmkd", 4.0, 0.0, split="dev", **{"acc@20": 0.10, "recall@20": 0.10, "query_ms_p50": 100.0}),
    ]
    return pd.DataFrame(rows)


def _plotted_points(ax) -> int:
    return sum(len(c.lines[0].get_xdata()) for c in ax.containers if isinstance(c, ErrorbarContainer))


def _render(fig: Figure) -> None:
    """Draw the figure once (layout engine, tick creation) without touching the disk."""
    fig.savefig(BytesIO(), format="png", dpi=50)


def test_recall_latency(results):
    fig = figures.recall_latency(results)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "query latency p50 (ms, batch 1)"
    assert ax.get_ylabel() == "recall@20"
    assert ax.get_xscale() == "log"
    test = results[results["split"] == "test"]
    with_both = test.dropna(subset=["recall@20", "query_ms_p50"])["label"].nunique()
    assert with_both == 6  # BM25 lacks a latency
    assert _plotted_points(ax) == with_both
    labels = set(test.dropna(subset=["query_ms_p50"])["label"])
    assert "BM25" not in labels
    assert {t.get_text() for t in ax.texts} == labels  # one annotation per point
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:1] == ["Pareto front"]
    assert legend[1:] == ["teacher", "small baseline", "same-depth baseline", "onmkd", "ablation"]
    # the Pareto step line goes through the non-dominated label means
    (front,) = [ln for ln in ax.get_lines() if ln.get_label() == "Pareto front"]
    assert list(front.get_xdata()) == pytest.approx([2.0, 3.1, 3.2, 9.0])  # ONMKD 2L, KD 4L, ONMKD 4L, teacher
    _render(fig)


def test_recall_latency_nothing_to_plot(results):
    assert figures.recall_latency(results, split="nope") is None
    assert figures.recall_latency(results, latency="query_ms_p99") is None  # column missing
    only_bm25 = results[results["method"] == "bm25"]
    assert figures.recall_latency(only_bm25) is None


def test_recall_latency_other_latency_label(results):
    df = results.assign(query_ms_p95=results["query_ms_p50"] * 2)
    fig = figures.recall_latency(df, metric="acc@20", latency="query_ms_p95")
    assert fig.axes[0].get_xlabel() == "query latency p95 (ms, batch 1)"
    assert fig.axes[0].get_ylabel() == "acc@20"


def test_metric_by_layers(results):
    fig = figures.metric_by_layers(results)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "transformer layers"
    assert ax.get_ylabel() == "acc@20"
    assert list(ax.get_xticks()) == [2, 4]
    containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert [c.get_label() for c in containers] == ["onmkd", "kd"]
    onmkd = containers[0].lines[0]
    assert list(onmkd.get_xdata()) == [2.0, 4.0]
    assert list(onmkd.get_ydata()) == pytest.approx([0.65, 0.73])  # mean over seeds, ablations excluded
    teacher = [ln for ln in ax.get_lines() if ln.get_label() == "BERT-base teacher"]
    assert len(teacher) == 1 and teacher[0].get_linestyle() == "--"
    assert teacher[0].get_ydata()[0] == pytest.approx(0.80)
    assert "BERT-base teacher" in [t.get_text() for t in ax.get_legend().get_texts()]
    _render(fig)


def test_metric_by_layers_without_teacher_or_rows(results):
    fig = figures.metric_by_layers(results[results["role"] != "teacher"], metric="recall@20")
    assert fig.axes[0].get_ylabel() == "recall@20"
    assert figures.metric_by_layers(results, split="nope") is None


def test_ablation_bars(results):
    df = results[results["label"].isin(["ONMKD 4L", "no KL", "KD 4L"])]
    fig = figures.ablation_bars(df, reference="ONMKD 4L")
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "acc@20"
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert ticks == ["ONMKD 4L (n=2)", "KD 4L (n=2)", "no KL (n=2)"]  # first-appearance order
    assert ax.yaxis_inverted()  # first label on top
    widths = [p.get_width() for p in ax.patches]
    assert widths == pytest.approx([0.73, 0.70, 0.69])
    vlines = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(vlines) == 1 and vlines[0].get_xdata()[0] == pytest.approx(0.73)
    _render(fig)


def test_ablation_bars_grows_and_handles_empty(results):
    many = pd.concat([results.assign(label=results["label"] + f" v{i}") for i in range(4)])
    fig = figures.ablation_bars(many)
    assert fig.get_figheight() > 2.6
    assert figures.ablation_bars(results, reference="missing label") is not None
    assert figures.ablation_bars(results, metric="mrr@10") is None


def test_functions_leave_global_rcparams_alone(results):
    before = dict(matplotlib.rcParams)
    figures.recall_latency(results)
    figures.metric_by_layers(results)
    figures.ablation_bars(results)
    after = dict(matplotlib.rcParams)
    assert {k for k in before if before[k] != after[k]} == set()


def test_save_writes_png_and_pdf(results, tmp_path):
    fig = figures.recall_latency(results)
    paths = figures.save(fig, tmp_path / "figs" / "recall_latency.v1")
    assert [p.name for p in paths] == ["recall_latency.v1.png", "recall_latency.v1.pdf"]
    png, pdf = paths
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert png.stat().st_size > 1000 and pdf.stat().st_size > 1000
    assert sorted(p.name for p in paths[0].parent.iterdir()) == sorted(p.name for p in paths)  # no temp left
    # 300 dpi at 3.4 x 2.6 inches
    from matplotlib.image import imread

    h, w = imread(png).shape[:2]
    assert (w, h) == (1020, 780)


# ---------------------------------------------------------------------------------------------------
# Optuna


@pytest.fixture
def study():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    s.optimize(lambda t: -((t.suggest_float("lr", 0.0, 1.0) - 0.3) ** 2) - 0.1 * (t.suggest_int("k", 1, 5) - 2) ** 2,
               n_trials=6)
    return s


def test_optuna_figures(study, tmp_path):
    import matplotlib.pyplot as plt

    before = dict(matplotlib.rcParams)
    hist = figures.optuna_history(study)
    imp = figures.optuna_importances(study)
    assert isinstance(hist, Figure) and isinstance(imp, Figure)
    assert tuple(hist.get_size_inches()) == pytest.approx((3.4, 2.6))
    assert hist.axes[0].get_ylabel() == "dev acc@20"
    assert {k for k in before if before[k] != matplotlib.rcParams[k]} == set()  # Optuna's ggplot style undone
    paths = figures.save(hist, tmp_path / "history")
    assert all(p.stat().st_size > 0 for p in paths)
    assert hist.number not in plt.get_fignums()  # closed
    plt.close(imp)


def test_optuna_multi_objective(tmp_path):
    import optuna

    s = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    s.optimize(lambda t: (t.suggest_float("a", 0, 1) + t.suggest_float("b", 0, 1), t.params["a"]), n_trials=5)
    fig = figures.optuna_history(s, target_name="dev recall@20")
    assert isinstance(fig, Figure) and fig.axes[0].get_ylabel() == "dev recall@20"
    imp = figures.optuna_importances(s)
    assert isinstance(imp, Figure)
    import matplotlib.pyplot as plt

    plt.close(fig)
    plt.close(imp)


def test_optuna_too_few_trials():
    import optuna

    s = optuna.create_study()
    s.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2 + t.suggest_float("y", -1, 1), n_trials=1)
    assert figures.optuna_history(s) is None
    assert figures.optuna_importances(s) is None
    assert figures.optuna_history(optuna.create_study()) is None


def test_optuna_importances_degenerate():
    import matplotlib.pyplot as plt
    import optuna

    one_param = optuna.create_study()
    one_param.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=4)
    assert figures.optuna_importances(one_param) is None
    constant = optuna.create_study()
    constant.optimize(lambda t: 0.0 * t.suggest_float("x", -1, 1) + 0.0 * t.suggest_float("y", -1, 1), n_trials=4)
    open_before = set(plt.get_fignums())
    assert figures.optuna_importances(constant) is None  # constant objective: nothing to explain
    assert set(plt.get_fignums()) == open_before


# ---------------------------------------------------------------------------------------------------
# no torch


def test_import_does_not_pull_torch():
    code = "import onmkd.study.figures, sys; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_optuna_errors_give_none_and_close_the_figure(study, monkeypatch):
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    def broken(study, **kwargs):
        plt.figure()  # half-built figure, then Optuna gives up
        raise RuntimeError("Encountered zero total variance in all trees.")

    monkeypatch.setattr(ovm, "plot_param_importances", broken)
    open_before = set(plt.get_fignums())
    assert figures.optuna_importances(study) is None
    assert set(plt.get_fignums()) == open_before


def test_multi_objective_importance_target_is_minimised():
    import optuna

    s = optuna.create_study(directions=["maximize", "minimize"])
    trial = optuna.trial.create_trial(values=[0.7, 2.0], params={}, distributions={})
    assert figures._first_objective(s)(trial) == 0.7
    assert figures._first_objective(s, lower_is_better=True)(trial) == -0.7
    assert figures._first_objective(optuna.create_study()) is None
