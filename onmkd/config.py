"""Run configuration: frozen dataclasses with help text; TOML in, JSON out (DESIGN.md §5.2).

A TOML file has the sections ``[data]``, ``[model]`` (with ``[[model.peer]]`` tables), ``[loss]``
and ``[train]``; every field has a default, so an empty file is a valid OnMKD run. Overrides
``section.field=value`` (values in TOML syntax; bare words are strings) apply on top. Every
problem is a :class:`~onmkd.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onmkd.errors import ConfigError, shown
from onmkd.io import parse_text
from onmkd.training.methods import METHODS, check_peers, methods_help
LAYER_RULES = ("first", "last", "even", "list")


def _f(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class PeerInit:
    """How one peer's encoder is initialised."""

    checkpoint: str = _f("minilm-l6", "registry name, local folder or hub id the peer starts from")
    layer_rule: str = _f("first", "which checkpoint layers the student keeps: first, last, even (evenly spaced, top layer included) or list")
    layer_list: tuple[int, ...] = _f((), "with layer_rule = 'list': the checkpoint layers to keep, 1-based, e.g. [1, 6]")
    random: bool = _f(False, "random initialisation with the checkpoint's architecture (a control)")
    seed: int = _f(0, "added to train.seed for this peer's random parts (random init, dropout)")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _f("squad", "data set spec (see `onmkd-bench data info --help`)")
    train_split: str = _f("train", "split the students are trained on")
    dev_split: str = _f("dev", "split used for model selection and early stopping; the test split is never read in training")
    dev_from_train: float = _f(0.0, "for data sets without a dev split (BEIR's SciFact): hold out this fraction of the train questions as dev (every k-th by id, fixed)")
    hard_negatives: int = _f(0, "hard negatives per question, besides in-batch negatives (0 by default: each one doubles the passages encoded per step, and the default run must fit 15 minutes on 2 CPU cores; 1 is DPR's setting)")
    negatives: str = _f("bm25", "where hard negatives come from: bm25 (mined, excluding the gold passage and any passage holding an answer) or given (the data set's own, e.g. DPR files)")
    q_max_len: int = _f(64, "question tokens kept")
    p_max_len: int = _f(256, "passage tokens kept")
    titles: bool = _f(True, "encode passages as 'title text'")
    length_chunk: int = _f(16, "training encodes a batch's passages in chunks of this many, sorted by length, so padding costs little (the loss still sees the whole batch)")
    dev_pool: int = _f(0, "0: dev retrieval over the whole corpus; N: over a fixed pool of N passages, the dev questions' positives and the other passages first in sha256 order of their ids (the same pool for every run and trial): a cheaper selection signal for sweeps, as dev scores over N candidates (the test evaluation always searches the whole corpus)")
    max_train_questions: int = _f(0, "train on the first N questions of the shuffled split (0: all); for quick runs")


@dataclass(frozen=True)
class ModelConfig:
    peers: int = _f(2, "K, the number of peers trained together (1 for dpr and kd)")
    layers: int = _f(2, "n, transformer layers per student (0: all of the checkpoint's layers, i.e. full-depth fine-tuning)")
    tied: bool = _f(True, "one encoder for questions and passages (sentence-transformers); false: separate towers (DPR)")
    pooling: str = _f("mean", "mean or cls")
    normalize: bool = _f(True, "L2-normalise pooled vectors (scores are then cosines)")
    attention_dropout: float = _f(0.0, "dropout on attention probabilities while training (the checkpoints use 0.1); 0 lets PyTorch's fused attention kernel run, about a quarter faster per step on CPU. Hidden-state dropout stays as the checkpoint has it")
    peer: tuple[PeerInit, ...] = _f(
        (PeerInit(), PeerInit(checkpoint="minilm-l6-sre", seed=1)),
        "per-peer initialisation ([[model.peer]] tables); one table is reused for every peer with seed + peer index",
    )


@dataclass(frozen=True)
class LossConfig:
    tau: float = _f(0.05, "temperature of the supervised NLL on cosine scores")
    alpha: float = _f(1.0, "weight of the distillation term: KL to the other peers (onmkd, dml) or to the teacher (kd)")
    kl_temperature: float = _f(1.0, "T, softening of both distributions in the KL term (scaled by T²)")
    kl_detach: bool = _f(True, "the other peer's distribution is a fixed target in the KL term")
    beta: float = _f(1.0, "weight of the cross-wise contrastive term (onmkd only; dml is onmkd with beta = 0)")
    cross_temperature: float = _f(0.05, "tau_c of the cross-wise InfoNCE")
    cross_layers: tuple[tuple[int, int], ...] = _f(((1, 1),), "layer map [[layer of peer a, layer of peer b], ...] (student layers, 1-based; -1 = last)")
    cross_detach: bool = _f(False, "the other peer's vectors receive no gradient from the cross-wise term (false: each pair term trains both peers, so for K = 2 the effective weight is 2β)")
    teacher: str = _f("minilm-l6", "kd only: the teacher whose scores are distilled (computed once, cached)")


@dataclass(frozen=True)
class TrainConfig:
    method: str = _f("onmkd", methods_help())
    seed: int = _f(0, "seed of data order, hard-negative sampling and initialisation")
    epochs: int = _f(1, "passes over the training questions")
    batch_size: int = _f(32, "questions per step")
    lr: float = _f(5e-5, "peak learning rate (AdamW), linear warm-up and decay")
    warmup: float = _f(0.1, "fraction of steps spent warming up")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    max_grad_norm: float = _f(1.0, "gradient clipping per peer (0: off)")
    checkpoint_every: int = _f(50, "steps between resumable checkpoints")
    eval_batch_size: int = _f(64, "encoding batch for dev evaluation")
    patience: int = _f(0, "stop after this many epochs without dev improvement (0: never)")
    select: str = _f("best", "the student to deploy: best (the peer with the highest dev score; every peer is saved too)")
    threads: int = _f(0, "torch threads (0: torch's default)")
    device: str = _f("auto", "auto (cuda when available, else cpu), cpu, cuda or cuda:N")
    adamw: str = _f("fused", "AdamW implementation: fused (one kernel over all of a peer's tensors per step: about 15x faster than loop on CPU, measured in benchmarks/train_profile.py), foreach, or loop (PyTorch's per-tensor loop, what runs made before this field used: set it to reproduce them bit for bit); the three agree to float rounding")
    grad_cache_chunk: int = _f(0, "0: off; N: cached gradients (GradCache): encode the batch in sub-batches of N texts without keeping activations, compute the loss on the detached vectors, then re-encode each sub-batch with gradients (same dropout masks: the random state is replayed) and back-propagate the vectors' gradients: the same loss and gradients as the full batch (up to float rounding; with dropout on, the masks are those of N-text sub-batches) with the activation memory of N texts, for one extra forward pass. Questions and passages alike; every method")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def peer_inits(self) -> list[PeerInit]:
        """One initialisation per peer (a single table is reused with seed + index)."""
        inits = list(self.model.peer)
        if len(inits) == 1 and self.model.peers > 1:
            inits = [dataclasses.replace(inits[0], seed=inits[0].seed + k) for k in range(self.model.peers)]
        return inits[: self.model.peers]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


# --------------------------------------------------------------------------- loading

def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer beyond float's range
                raise ConfigError(f"{where}: an integer of {len(str(abs(value)))} digits is beyond the range of a float") from None
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
            if len(value) == len(args):
                return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return _build(tp, value, where)
    name = getattr(tp, "__name__", str(tp)).replace("tuple", "list")
    raise ConfigError(f"{where}: expected {name}, got {value!r}")


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{(where + '.') if where else ''}{close[0]}'?)" if close else f" (fields: {', '.join(names)})"
            raise ConfigError(f"unknown field '{shown(full)}'{hint}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.field=value")
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError, ValueError):
        value = raw  # a bare word: a string
    return key.split("."), value


def _merge(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {'.'.join(path)}: '{part}' is not a section")
        node = nxt
    node[path[-1]] = value


# The largest config, search-space or plan file read (bytes): real ones are a few KB, so a
# larger file is another kind of file, and the cap bounds the memory and parse time.
MAX_TOML_BYTES = 4 * 1024 * 1024


def read_toml(path: str | Path, what: str) -> tuple[str, dict[str, Any]]:
    """The text and parsed tables of a TOML file; any problem is one ConfigError naming the file."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(MAX_TOML_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such {what} file") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a folder, expected a {what} file") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the {what} file ({e.strerror or type(e).__name__})") from None
    if len(data) > MAX_TOML_BYTES:
        raise ConfigError(f"{p}: larger than {MAX_TOML_BYTES:,} bytes (MAX_TOML_BYTES); not a {what} file?")
    try:
        # Universal newlines, as a text-mode read gives them.
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{p}:{line}: not UTF-8 text (byte {e.start})") from None
    return text, parse_text(tomllib.loads, text, str(p), ConfigError)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a TOML file (or start from the defaults), apply ``section.field=value`` overrides, validate."""
    tree: dict[str, Any] = read_toml(path, "config")[1] if path is not None else {}
    for text in overrides:
        keys, value = _parse_override(text)
        _merge(tree, keys, value)
    if isinstance(tree.get("model"), dict) and isinstance(tree["model"].get("peer"), dict):
        tree["model"]["peer"] = [tree["model"]["peer"]]
    try:
        cfg = _build(RunConfig, tree, "")
        validate(cfg)
    except ConfigError as e:
        if path is None:
            raise
        raise ConfigError(f"{path}: {e}") from None
    return cfg


def from_dict(tree: dict[str, Any]) -> RunConfig:
    """The inverse of :meth:`RunConfig.to_dict` (a saved ``config.json``)."""
    cfg = _build(RunConfig, tree, "")
    validate(cfg)
    return cfg


ADAMW = ("fused", "foreach", "loop")


def validate(cfg: RunConfig) -> None:
    """Checks that need no model or data; checkpoint depths are checked when peers are built."""
    d, m, l, t = cfg.data, cfg.model, cfg.loss, cfg.train
    positive = {"data.q_max_len": d.q_max_len, "data.p_max_len": d.p_max_len, "train.epochs": t.epochs,
                "train.batch_size": t.batch_size, "train.checkpoint_every": t.checkpoint_every,
                "train.eval_batch_size": t.eval_batch_size, "model.peers": m.peers, "data.length_chunk": d.length_chunk}
    for name, v in positive.items():
        if v < 1:
            raise ConfigError(f"{name}: must be at least 1, got {v}")
    nonneg = {"data.hard_negatives": d.hard_negatives, "data.dev_pool": d.dev_pool, "data.max_train_questions": d.max_train_questions,
              "model.layers": m.layers, "model.attention_dropout": m.attention_dropout, "loss.alpha": l.alpha, "loss.beta": l.beta, "train.warmup": t.warmup,
              "train.weight_decay": t.weight_decay, "train.max_grad_norm": t.max_grad_norm,
              "train.patience": t.patience, "train.threads": t.threads,
              "train.grad_cache_chunk": t.grad_cache_chunk}
    for name, v in nonneg.items():
        if v < 0:
            raise ConfigError(f"{name}: must be ≥ 0, got {v}")
    for name, v in {"loss.tau": l.tau, "loss.kl_temperature": l.kl_temperature,
                    "loss.cross_temperature": l.cross_temperature, "train.lr": t.lr}.items():
        if v <= 0:
            raise ConfigError(f"{name}: must be > 0, got {v}")
    if not 0 <= d.dev_from_train < 1:
        raise ConfigError(f"data.dev_from_train: a fraction in [0, 1), got {d.dev_from_train}")
    if m.attention_dropout >= 1:
        raise ConfigError(f"model.attention_dropout: a probability below 1, got {m.attention_dropout}")
    if t.warmup > 1:
        raise ConfigError(f"train.warmup: a fraction of the steps, at most 1; got {t.warmup}")
    if t.method not in METHODS:
        raise ConfigError(f"train.method: {t.method!r} is not one of {', '.join(METHODS)}")
    if t.adamw not in ADAMW:
        raise ConfigError(f"train.adamw: {t.adamw!r} is not one of {', '.join(ADAMW)}")
    if d.negatives not in ("bm25", "given"):
        raise ConfigError(f"data.negatives: {d.negatives!r} is not one of bm25, given")
    if m.pooling not in ("mean", "cls"):
        raise ConfigError(f"model.pooling: {m.pooling!r} is not one of mean, cls")
    if not (t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:")):
        raise ConfigError(f"train.device: {t.device!r} is not auto, cpu, cuda or cuda:N")
    if t.select not in ("best",):
        raise ConfigError(f"train.select: {t.select!r} is not one of best")
    problem = check_peers(t.method, m.peers)
    if problem:
        raise ConfigError(f"model.peers: {problem}")
    if not m.peer:
        raise ConfigError("model.peer: at least one [[model.peer]] table is needed")
    if len(m.peer) not in (1,) and len(m.peer) < m.peers:
        raise ConfigError(f"model.peer: {len(m.peer)} tables for {m.peers} peers; give one per peer, or one for all")
    for i, p in enumerate(m.peer):
        if p.layer_rule not in LAYER_RULES:
            raise ConfigError(f"model.peer[{i}].layer_rule: {p.layer_rule!r} is not one of {', '.join(LAYER_RULES)}")
        if p.layer_rule == "list":
            if len(p.layer_list) != m.layers or m.layers == 0:
                raise ConfigError(f"model.peer[{i}].layer_list: {len(p.layer_list)} layers listed for model.layers = {m.layers}")
            if any(x < 1 for x in p.layer_list):
                raise ConfigError(f"model.peer[{i}].layer_list: layers are 1-based, got {list(p.layer_list)}")
    for j, pair in enumerate(l.cross_layers):
        for x in pair:
            if x == 0 or (m.layers and x > m.layers) or x < -1:
                raise ConfigError(f"loss.cross_layers[{j}]: layer {x} is not a student layer (1..{m.layers or 'n'} or -1)")


def describe() -> list[tuple[str, str, str]]:
    """(field, default, help) for every config field, for documentation and `--help`."""
    rows = []
    for section in dataclasses.fields(RunConfig):
        cls = typing.get_type_hints(RunConfig)[section.name]
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            plain = [dataclasses.asdict(x) for x in default] if f.name == "peer" else default
            rows.append((f"{section.name}.{f.name}", json.dumps(plain), f.metadata.get("help", "")))
    return rows
