"""One entry of a plan, run: train it (or take an encoder as released), evaluate it on the test
split, and return its manifest row. The sweep's final step and the paper both run their entries here.

Where things go under a study or paper folder ``ROOT``::

    runs/HASH/           a training run directory, keyed by the run's full config (trained once,
                         resumed when cut short), with SPLIT/ its test evaluation
    baselines/NAME/      the evaluation of an encoder (or bm25) used as released

A row holds ``path`` (the evaluation folder, relative to ``ROOT``), ``label``, ``role``, ``method``,
``layers``, ``seed``, ``split`` and ``stage``, plus what the caller adds (``table``, ``trial``, ...);
the report reads the rows from ``ROOT/manifest.json``. Test numbers are read only after training,
which selects on dev alone.
"""

from __future__ import annotations

import json
from pathlib import Path

from onmkd.config import RunConfig
from onmkd.io import safe_name, write_json
from onmkd.study.space import config_hash
from onmkd.timing import Phases


def run_dir(root: Path, cfg: RunConfig) -> Path:
    """The training run directory of ``cfg`` under ``root``."""
    return root / "runs" / config_hash(cfg)


def encoder_dir(root: Path, name: str) -> Path:
    """The evaluation folder of the encoder ``name`` (as released) under ``root``."""
    return root / "baselines" / safe_name(name)


def encoder_role(name: str) -> str:
    """``lexical`` for bm25, ``teacher`` for a registry teacher, else ``small baseline``."""
    from onmkd.retrieval.models import REGISTRY

    if name == "bm25":
        return "lexical"
    ck = REGISTRY.get(name)
    return "teacher" if ck and ck.role == "teacher" else "small baseline"


def test_evaluate(model: str, out: Path, data, cfg: RunConfig, split: str, latency_queries: int, retriever=None,
                  remeasure: bool = False) -> dict:
    """Evaluate on ``split`` with the run's lengths; efficiency in the same metrics.json. Kept when done.

    ``remeasure``: keep the retrieval metrics of a finished evaluation but measure its efficiency
    (size, latency) again, e.g. on a quiet machine after runs that shared it.
    """
    from onmkd.retrieval.evaluate import EvalConfig, evaluate, load_retriever
    from onmkd.study.profile import efficiency

    path = out / "metrics.json"
    if path.exists():
        m = json.loads(path.read_text())
        if model != "bm25" and "query_ms_p50" in m and remeasure:
            questions = list(data.split(split).queries.values())
            m.update(efficiency(retriever or load_retriever(model), questions, q_max_len=cfg.data.q_max_len,
                                n_latency=latency_queries))
            write_json(path, m)
            return m
        if model == "bm25" or "query_ms_p50" in m:
            return m
    d = cfg.data
    ecfg = EvalConfig(model=model, dataset=d.dataset, split=split, q_max_len=d.q_max_len, p_max_len=d.p_max_len,
                      titles=d.titles, batch_size=cfg.train.eval_batch_size)
    if model != "bm25" and retriever is None:
        retriever = load_retriever(model)
    questions = list(data.split(split).queries.values())
    extra = None if model == "bm25" else (lambda dual: efficiency(dual, questions, q_max_len=d.q_max_len, n_latency=latency_queries))
    evaluate(ecfg, data, out_dir=out, retriever=retriever, extra=extra)
    return json.loads(path.read_text())


def _row(path: Path, root: Path, label: str, role: str, table: str | None, method: str, layers, seed, split: str,
         stage: str, extra: dict) -> dict:
    return {"path": str(path.relative_to(root)), "label": label, "role": role,
            **({"table": table} if table is not None else {}),
            "method": method, "layers": layers, "seed": seed, "split": split, "stage": stage, **extra}


def train_and_test(cfg: RunConfig, root: Path, data, split: str, *, label: str, role: str, stage: str,
                   latency_queries: int, remeasure: bool = False, table: str | None = None,
                   extra: dict | None = None, phases: Phases | None = None) -> dict:
    """Train ``cfg`` into :func:`run_dir` (resuming; kept when finished), evaluate its student on
    ``split`` into ``RUN/SPLIT`` and return the entry's row. ``phases`` times ``train/…`` and ``test``."""
    from onmkd.training.train import train

    phases = phases or Phases()
    run = run_dir(root, cfg)
    with phases("train"):
        train(cfg, run, data, log=lambda m: None, phases=phases)
    with phases("test"):
        test_evaluate(str(run), run / split, data, cfg, split, latency_queries, remeasure=remeasure)
    return _row(run / split, root, label, role, table, cfg.train.method, cfg.model.layers, cfg.train.seed, split,
                stage, extra or {})


def evaluate_folder(model: str, out: Path, root: Path, data, cfg: RunConfig, split: str, *, label: str, role: str,
                    stage: str, latency_queries: int, layers=None, remeasure: bool = False,
                    table: str | None = None) -> dict:
    """Evaluate a model folder that is not trained here (e.g. an untrained truncation) on ``split``
    into ``out/SPLIT`` and return its row (method ``encoder``)."""
    test_evaluate(model, out / split, data, cfg, split, latency_queries, remeasure=remeasure)
    return _row(out / split, root, label, role, table, "encoder", layers, None, split, stage, {})


def evaluate_encoder(name: str, root: Path, data, cfg: RunConfig, split: str, *, label: str, stage: str,
                     latency_queries: int, remeasure: bool = False, table: str | None = None) -> dict:
    """Evaluate the encoder ``name`` as released (or bm25) on ``split`` with ``cfg``'s lengths into
    :func:`encoder_dir` and return its row."""
    from onmkd.retrieval.models import REGISTRY

    out = encoder_dir(root, name)
    test_evaluate(name, out, data, cfg, split, latency_queries, remeasure=remeasure)
    ck = REGISTRY.get(name)
    return _row(out, root, label, encoder_role(name), table, "bm25" if name == "bm25" else "encoder",
                ck.layers if ck else None, None, split, stage, {})
