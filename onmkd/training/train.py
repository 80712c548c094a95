"""One training loop for K peers (K = 1 is the plain DPR or offline-KD baseline).

Every step, each peer scores the batch's questions against the same candidates (the batch's
gold passages, then its hard negatives; in-batch negatives come for free) and all peers are
updated together with ``L_nll + α·L_kl + β·L_cross`` (:func:`onmkd.training.losses.onmkd_total`).
Randomness comes from ``(seed, epoch)`` and the saved torch RNG, so a run killed mid-epoch and
started again resumes from its last checkpoint to the same result.

Run directory::

    config.json      the full config (enough to rerun)
    log.jsonl        a line per step: every loss term per peer, learning rate, examples/s
    dev.jsonl        a line per epoch: dev metrics per peer, of the peers' score ensemble,
                     the peers' top-20 overlap
    peers/peer{k}/   each peer at its best dev epoch (transformers + sentence-transformers)
    student/         the selected student (the best peer), what `evaluate --model RUN_DIR` loads
    checkpoint/      resumable state (removed when the run finishes)
    metrics.json     final dev metrics of the selected student, written last
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from onmkd import __version__
from onmkd.training import distributed, gradcache, losses
from onmkd.training.methods import METHODS, loss_weights
from onmkd.config import RunConfig, from_dict
from onmkd.data import Dataset, Split, load_dataset, passage_text
from onmkd.errors import ConfigError, DataError, ModelError
from onmkd.retrieval.evaluate import EvalConfig, dense_run, encode_cached, primary_metric, score_run
from onmkd.io import atomic_path, write_json
from onmkd.retrieval.metrics import has_answer, rank
from onmkd.retrieval.models import token_ids
from onmkd.retrieval.dual import DualEncoder
from onmkd.training.peers import build_peer
from onmkd.runtime import resolve_device, tune_allocator
from onmkd.timing import Phases

MINED_POOL = 10  # hard negatives are drawn from each question's top-10 valid BM25 passages


@dataclass(frozen=True)
class Example:
    qid: str
    question: str
    positive: str
    negatives: tuple[str, ...]


def hold_out_dev(data: Dataset, cfg: RunConfig) -> Dataset:
    """With ``data.dev_from_train`` and no dev split: move every k-th train question (by id) to dev."""
    d = cfg.data
    if not d.dev_from_train or d.dev_split in data.splits:
        return data
    train = data.split(d.train_split)
    every = max(2, round(1 / d.dev_from_train))
    dev_ids = set(sorted(train.queries)[every - 1 :: every])

    def part(keep) -> Split:
        qs = [q for q in train.queries if keep(q)]
        return Split({q: train.queries[q] for q in qs}, {q: train.qrels[q] for q in qs if q in train.qrels},
                     {q: train.answers[q] for q in qs if q in train.answers},
                     {q: train.hard_negatives[q] for q in qs if q in train.hard_negatives})

    splits = dict(data.splits)
    splits[d.train_split] = part(lambda q: q not in dev_ids)
    splits[d.dev_split] = part(lambda q: q in dev_ids)
    return dataclasses.replace(data, splits=splits)


def dev_pool(data: Dataset, cfg: RunConfig) -> list[str]:
    """The passages dev retrieval searches: the whole corpus, or with ``data.dev_pool = N`` the dev
    questions' positive passages and then the other passages in sha256 order of their ids up to N
    (fixed by the data alone, so every run and trial of a sweep sees the same pool)."""
    n = cfg.data.dev_pool
    if not n or n >= len(data.corpus):
        return list(data.corpus)
    gold = {p for rel in data.split(cfg.data.dev_split).qrels.values() for p, g in rel.items() if g > 0 and p in data.corpus}
    if n < len(gold):
        raise ConfigError(f"data.dev_pool: {n} passages cannot hold the {len(gold)} positives of the "
                          f"{cfg.data.dev_split!r} split; use at least {len(gold)} (or 0 for the whole corpus)")
    import hashlib

    rest = sorted((p for p in data.corpus if p not in gold), key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    keep = gold | set(rest[: n - len(gold)])
    return [p for p in data.corpus if p in keep]


def build_examples(data: Dataset, cfg: RunConfig) -> list[Example]:
    """Training questions with their gold passage and a pool of hard negatives.

    BM25 negatives exclude the gold passages and any passage whose text holds an answer string.
    """
    split = data.split(cfg.data.train_split)
    qids = [q for q in split.queries if any(g > 0 for g in split.qrels.get(q, {}).values())]
    if not qids:
        raise DataError(f"{data.source or data.name}: split {cfg.data.train_split!r} has no question with a relevant passage")
    if cfg.data.max_train_questions:
        order = np.random.default_rng(cfg.train.seed).permutation(len(qids))
        qids = [qids[i] for i in sorted(order[: cfg.data.max_train_questions])]
    pools: dict[str, list[str]] = {q: [] for q in qids}
    if cfg.data.hard_negatives and cfg.data.negatives == "given":
        pools = {q: list(split.hard_negatives.get(q, [])) for q in qids}
    elif cfg.data.hard_negatives:
        from onmkd.retrieval.bm25 import BM25

        pids = list(data.corpus)
        bm25 = BM25().index([passage_text(data.corpus[p], cfg.data.titles) for p in pids])
        _, rows = bm25.search([split.queries[q] for q in qids], 4 * MINED_POOL)
        for q, row in zip(qids, rows):
            gold = {p for p, g in split.qrels[q].items() if g > 0}
            answers = split.answers.get(q, [])
            for r in row:
                pid = pids[r]
                if pid in gold or (answers and has_answer(data.corpus[pid].get("text", ""), answers)):
                    continue
                pools[q].append(pid)
                if len(pools[q]) == MINED_POOL:
                    break
    return [Example(q, split.queries[q], max(split.qrels[q], key=split.qrels[q].get), tuple(pools[q])) for q in qids]


def batches(examples: list[Example], cfg: RunConfig, epoch: int) -> list[tuple[list[Example], list[str], list[int]]]:
    """The epoch's batches: (examples, candidate passage ids, label column per question).

    Candidates are the gold passages (deduplicated: questions sharing a paragraph share its
    column) followed by ``hard_negatives`` drawn per question from its pool.
    """
    rng = np.random.default_rng([cfg.train.seed, epoch])
    order = rng.permutation(len(examples))
    out = []
    for start in range(0, len(order), cfg.train.batch_size):
        chunk = [examples[i] for i in order[start : start + cfg.train.batch_size]]
        cands: list[str] = []
        col: dict[str, int] = {}
        for ex in chunk:
            if ex.positive not in col:
                col[ex.positive] = len(cands)
                cands.append(ex.positive)
        labels = [col[ex.positive] for ex in chunk]
        for ex in chunk:
            pool = list(ex.negatives)
            take = min(cfg.data.hard_negatives, len(pool))
            for i in (rng.choice(len(pool), size=take, replace=False) if take else []):
                pid = pool[int(i)]
                if pid not in col:
                    col[pid] = len(cands)
                    cands.append(pid)
        out.append((chunk, cands, labels))
    return out


# --------------------------------------------------------------------------- set-up

def build_peers(cfg: RunConfig) -> tuple[list[DualEncoder], list[list[int]]]:
    """The K peers as ``cfg.model`` says (one encoder per peer, or untied question and passage
    towers), on the CPU, with the checkpoint layers each one kept.

    Every peer must share one structure (layers and hidden size): the mutual terms compare
    their scores and vectors.
    """
    m = cfg.model
    peers: list[DualEncoder] = []
    kept_layers: list[list[int]] = []
    for k, init in enumerate(cfg.peer_inits()):
        enc, keep = build_peer(init, layers=m.layers, pooling=m.pooling, normalize=m.normalize,
                               seed=cfg.train.seed + init.seed, field=f"model.peer[{min(k, len(m.peer) - 1)}]",
                               attention_dropout=m.attention_dropout)
        peers.append(DualEncoder(enc) if m.tied else DualEncoder.untie(enc))
        kept_layers.append(keep)
    depth = peers[0].question.num_layers
    if any(p.question.num_layers != depth or p.question.dim != peers[0].question.dim for p in peers):
        raise ConfigError("model.peer: peers must share one structure (layers and hidden size)")
    return peers, kept_layers


@dataclass(frozen=True)
class LossSetup:
    """What a training step computes: the weights of the method (:func:`onmkd.training.methods.loss_weights`),
    the cross-wise layer map in student layers, and the layers whose pooled vectors are needed."""

    alpha: float
    beta: float
    layer_map: list[tuple[int, ...]]
    layers_needed: list[int]
    teacher: bool


def loss_setup(cfg: RunConfig, depth: int) -> LossSetup:
    """The loss of ``cfg``'s method for students of ``depth`` layers (``-1`` in ``loss.cross_layers`` is the last)."""
    layer_map = [tuple(depth if l == -1 else l for l in pair) for pair in cfg.loss.cross_layers]
    for pair in layer_map:
        if max(pair) > depth:
            raise ConfigError(f"loss.cross_layers: layer {max(pair)} is beyond the students' {depth} layers")
    alpha, beta = loss_weights(cfg)
    layers_needed = sorted({depth} | ({l for pair in layer_map for l in pair} if beta else set()))
    return LossSetup(alpha, beta, layer_map, layers_needed, METHODS[cfg.train.method].teacher)


def make_optimizer(peers: list[DualEncoder], cfg: RunConfig, steps_per_epoch: int):
    """AdamW over every peer's trainable parameters (a parameter group per peer) and its schedule:
    linear warm-up over ``train.warmup`` of the steps, then linear decay to 0 at the last step."""
    params = [{"params": [p for p in dual.parameters() if p.requires_grad]} for dual in peers]
    impl = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[cfg.train.adamw]
    try:
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, **impl)
    except RuntimeError:  # fused AdamW not built for this device or PyTorch: the multi-tensor one
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, foreach=True)
    total = steps_per_epoch * cfg.train.epochs
    warm = int(cfg.train.warmup * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(1, warm) if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    return optimizer, scheduler


def teacher_vectors(cfg: RunConfig, data: Dataset, examples: list[Example]):
    """``loss.teacher``'s vectors of the training questions and of the corpus, encoded once (and
    cached by fingerprint): ``(question row by qid, question vectors, passage row by pid, passage vectors)``."""
    from onmkd.retrieval.models import Encoder

    try:
        teacher = Encoder.load(cfg.loss.teacher)
    except Exception as e:  # noqa: BLE001 - any load failure is a config problem here
        raise ConfigError(f"loss.teacher: {e}") from None
    d = cfg.data
    pids = list(data.corpus)
    pvecs = encode_cached(teacher, pids, [passage_text(data.corpus[p], d.titles) for p in pids],
                          d.p_max_len, cfg.train.eval_batch_size, "teacher passages")
    qids = [ex.qid for ex in examples]
    qvecs = encode_cached(teacher, qids, [ex.question for ex in examples], d.q_max_len,
                          cfg.train.eval_batch_size, "teacher questions")
    return ({q: i for i, q in enumerate(qids)}, torch.from_numpy(qvecs),
            {p: i for i, p in enumerate(pids)}, torch.from_numpy(pvecs))


# --------------------------------------------------------------------------- the trainer

class Trainer:
    """Holds the peers, the optimiser and the run directory; ``run()`` trains to the end."""

    def __init__(self, cfg: RunConfig, out_dir: str | Path, data: Dataset | None = None, log=print, on_epoch=None,
                 phases: Phases | None = None):
        self.phases = phases or Phases()  # where the time goes: setup, steps, checkpoint, dev, prune, select
        with self.phases("setup"):
            self._setup(cfg, out_dir, data, log, on_epoch)

    def _setup(self, cfg: RunConfig, out_dir: str | Path, data: Dataset | None, log, on_epoch) -> None:
        # Under torchrun (onmkd.training.distributed) every rank builds the same trainer; rank 0
        # alone logs and writes, and each rank encodes its shard of every batch.
        self.world = distributed.world_size()
        self.rank = distributed.rank() if self.world > 1 else 0
        self.is_main = self.rank == 0
        self.cfg, self.out, self.log = cfg, Path(out_dir), log if self.is_main else _quiet
        self.on_epoch = on_epoch  # called as on_epoch(epoch, dev_row) after each dev evaluation; may raise to stop
        self._check_run_dir(write=False)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        tune_allocator()
        torch.manual_seed(cfg.train.seed)
        self.data = hold_out_dev(data or load_dataset(cfg.data.dataset), cfg)
        self.data.split(cfg.data.dev_split)
        self.examples = build_examples(self.data, cfg)
        self._check_run_dir()
        self.peers, self.kept_layers = build_peers(cfg)
        self.device = distributed.device_for(resolve_device(cfg.train.device))
        for dual in self.peers:
            dual.to(self.device)
            distributed.broadcast_module(dual)  # replicas start as rank 0's (no-op in one process)
        self.method = cfg.train.method
        setup = loss_setup(cfg, self.peers[0].question.num_layers)
        self.alpha, self.beta, self.layer_map, self.layers_needed = setup.alpha, setup.beta, setup.layer_map, setup.layers_needed
        self.teacher = teacher_vectors(cfg, self.data, self.examples) if setup.teacher else None
        self.steps_per_epoch = math.ceil(len(self.examples) / cfg.train.batch_size)
        self.optimizer, self.scheduler = make_optimizer(self.peers, cfg, self.steps_per_epoch)
        self.step = 0
        self.history: list[dict] = []
        self.best = {"score": -1.0, "peer": 0, "epoch": -1}
        self.peer_best = [-1.0] * len(self.peers)
        self.dev_pids = dev_pool(self.data, cfg)
        self._dev_vectors: tuple[int, list[np.ndarray], list[str], list[str]] | None = None  # the last dev encoding

    # ----------------------------------------------------------------- run directory

    def _check_run_dir(self, write: bool = True) -> None:
        distributed.on_main(lambda: check_run_dir(self.cfg, self.out, write))

    # ----------------------------------------------------------------- checkpoints

    def _save_state(self, epoch: int, batch_in_epoch: int) -> None:
        state = {
            "step": self.step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
            "peers": [dual.state_dict() for dual in self.peers],
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(), "history": json.dumps(self.history),
            **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
            "best": json.dumps(self.best), "peer_best": json.dumps(self.peer_best),
        }
        from onmkd.resources import check_disk

        def nbytes(obj) -> int:
            if isinstance(obj, torch.Tensor):
                return obj.numel() * obj.element_size()
            if isinstance(obj, dict):
                return sum(nbytes(v) for v in obj.values())
            return sum(nbytes(v) for v in obj) if isinstance(obj, (list, tuple)) else 0

        check_disk(self.out / "checkpoint", nbytes(state), "the training checkpoint (checkpoint/state.pt)")
        with atomic_path(self.out / "checkpoint" / "state.pt") as tmp:
            torch.save(state, tmp)

    def _load_state(self) -> tuple[int, int]:
        path = self.out / "checkpoint" / "state.pt"
        if not path.exists():  # a fresh start, or a run killed before its first checkpoint: drop its lines
            self._truncate_jsonl("log.jsonl", lambda r: False)
            self._truncate_jsonl("dev.jsonl", lambda r: False)
            return 0, 0
        state = load_state_file(path, self.device)
        for dual, sd in zip(self.peers, state["peers"]):
            dual.load_state_dict(sd)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"].cpu())
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
        self.step = int(state["step"])
        self.history = json.loads(state["history"])
        self.best = json.loads(state["best"])
        self.peer_best = json.loads(state["peer_best"])
        self._truncate_jsonl("log.jsonl", lambda r: r["step"] <= self.step)
        self._truncate_jsonl("dev.jsonl", lambda r: r["epoch"] < int(state["epoch"]) or
                             (r["epoch"] == int(state["epoch"]) and int(state["batch_in_epoch"]) == 0))
        self.log(f"resuming from step {self.step} (epoch {state['epoch']}, batch {state['batch_in_epoch']})")
        return int(state["epoch"]), int(state["batch_in_epoch"])

    def _truncate_jsonl(self, name: str, keep) -> None:
        path = self.out / name
        if self.is_main and path.exists():
            rows = [line for line in path.read_text().splitlines() if line.strip() and keep(json.loads(line))]
            with atomic_path(path) as tmp:
                tmp.write_text("".join(r + "\n" for r in rows))

    def _append(self, name: str, row: dict) -> None:
        if not self.is_main:
            return
        with open(self.out / name, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    # ----------------------------------------------------------------- one step

    def _encode(self, dual: DualEncoder, texts_q: list[str], texts_p: list[str]):
        d = self.cfg.data
        qv = dual.question.embed_texts(texts_q, max_length=d.q_max_len, layers=self.layers_needed, chunk=len(texts_q))
        pv = dual.passage.embed_texts(texts_p, max_length=d.p_max_len, layers=self.layers_needed, chunk=d.length_chunk)
        return qv, pv

    def _tower(self, enc, texts: list[str], max_length: int, chunk: int) -> gradcache.Tower:
        """``texts`` as GradCache sub-batches of ``chunk``: sorted by length, each padded to its
        longest member (as :meth:`Encoder.embed_texts` splits them), then put back in input order."""
        ids = token_ids(enc.tokenizer, texts, max_length)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        chunks = []
        for start in range(0, len(order), chunk):
            batch = enc.tokenizer.pad({"input_ids": [ids[i] for i in order[start : start + chunk]]}, return_tensors="pt")
            chunks.append((batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)))
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        layers = self.layers_needed
        return gradcache.Tower(lambda c: enc(c[0], c[1], layers), chunks, inverse.to(self.device))

    def _loss(self, qs, ps, chunk: list[Example], cands: list[str], y: torch.Tensor):
        """The step's loss and its logs from each peer's ``{layer: vectors}`` of questions and candidates."""
        depth = self.peers[0].question.num_layers
        scores = [qv[depth] @ pv[depth].T for qv, pv in zip(qs, ps)]
        l = self.cfg.loss
        if self.teacher is not None:
            qi, tq, pi, tp = self.teacher
            t_scores = (tq[[qi[ex.qid] for ex in chunk]] @ tp[[pi[p] for p in cands]].T).to(self.device)
            l_nll = losses.nll(scores[0], y, l.tau)
            l_kd = losses.offline_kd(scores[0], t_scores, l.tau, l.kl_temperature)
            loss = l_nll + self.alpha * l_kd
            return loss, {"nll/0": l_nll.item(), "kd/0": l_kd.item(), "total/0": loss.item(), "total": loss.item()}
        return losses.onmkd_total(
            scores, qs, ps, y, tau=l.tau, alpha=self.alpha, kl_temperature=l.kl_temperature, beta=self.beta,
            tau_c=l.cross_temperature, layer_map=self.layer_map, kl_detach=l.kl_detach, cross_detach=l.cross_detach)

    def backward(self, chunk: list[Example], cands: list[str], labels: list[int]) -> dict[str, float]:
        """Zero the gradients, then accumulate the step's loss gradients into every peer; returns the logs.

        With ``train.grad_cache_chunk`` the vectors are computed and back-propagated sub-batch by
        sub-batch (:func:`onmkd.training.gradcache.cached_backward`), in the same tower order as the plain
        path (peer 0 questions, peer 0 passages, peer 1 questions, …), so the random stream
        after the step is the same either way.
        """
        if self.world > 1:
            return self._backward_distributed(chunk, cands, labels)
        corpus, titles = self.data.corpus, self.cfg.data.titles
        texts_q = [ex.question for ex in chunk]
        texts_p = [passage_text(corpus[p], titles) for p in cands]
        y = torch.tensor(labels, device=self.device)
        self.optimizer.zero_grad(set_to_none=True)
        n = self.cfg.train.grad_cache_chunk
        if n:
            d = self.cfg.data
            towers = []
            for dual in self.peers:
                towers.append(self._tower(dual.question, texts_q, d.q_max_len, n))
                towers.append(self._tower(dual.passage, texts_p, d.p_max_len, n))
            devices = [self.device] if self.device.type == "cuda" else []
            _, logs = gradcache.cached_backward(
                towers, lambda vecs: self._loss(vecs[0::2], vecs[1::2], chunk, cands, y), devices=devices)
            return logs
        qs, ps = [], []
        for dual in self.peers:
            qv, pv = self._encode(dual, texts_q, texts_p)
            qs.append(qv)
            ps.append(pv)
        loss, logs = self._loss(qs, ps, chunk, cands, y)
        loss.backward()
        return logs

    def _backward_distributed(self, chunk: list[Example], cands: list[str], labels: list[int]) -> dict[str, float]:
        """:meth:`backward` on one rank of several: this rank encodes its contiguous shard of the
        questions and of the candidates with every peer, the vectors are gathered from all ranks
        (this rank's slice keeping its graph), the *whole* batch's loss is computed here as in one
        process, and after ``backward()`` the gradients are summed over ranks: every rank then
        holds the single process's gradient of the global batch (see :mod:`onmkd.training.distributed`).
        Tower order is the plain path's. Sub-batches: GradCache's ``train.grad_cache_chunk`` texts
        (a memory bound, per rank), else all of the rank's questions at once and its passages in
        chunks of ``data.length_chunk / W``, so that the ranks' chunks together are as many, and
        pad as little, as the single process's (chunks of ``length_chunk`` each holding a shard
        would pad every shard to its longest passage: a quarter more tokens measured on SQuAD).
        """
        d = self.cfg.data
        qsl, psl = distributed.shard(len(chunk)), distributed.shard(len(cands))
        texts_q = [ex.question for ex in chunk[qsl]]
        texts_p = [passage_text(self.data.corpus[p], d.titles) for p in cands[psl]]
        y = torch.tensor(labels, device=self.device)
        self.optimizer.zero_grad(set_to_none=True)
        n = self.cfg.train.grad_cache_chunk
        towers = []
        for dual in self.peers:
            towers.append(self._local_tower(dual.question, texts_q, d.q_max_len, n or max(1, len(texts_q))))
            towers.append(self._local_tower(dual.passage, texts_p, d.p_max_len,
                                            n or max(1, math.ceil(d.length_chunk / self.world))))
        sizes = [distributed.shard_sizes(len(chunk)), distributed.shard_sizes(len(cands))] * len(self.peers)

        def loss_fn(vecs):
            full = [distributed.gather_layers(v, s) for v, s in zip(vecs, sizes)]
            return self._loss(full[0::2], full[1::2], chunk, cands, y)

        if n:
            devices = [self.device] if self.device.type == "cuda" else []
            _, logs = gradcache.cached_backward(towers, loss_fn, devices=devices)
        else:
            loss, logs = loss_fn([gradcache.assemble([t.encode(c) for c in t.chunks], t.order) for t in towers])
            if loss.requires_grad:  # not when this rank encoded nothing (a batch smaller than the world)
                loss.backward()
        embeddings = [m.weight for dual in self.peers for m in dual.modules() if isinstance(m, torch.nn.Embedding)]
        distributed.all_reduce_grads((p for dual in self.peers for p in dual.parameters()), row_sparse=embeddings)
        return logs

    def _local_tower(self, enc, texts: list[str], max_length: int, chunk: int) -> gradcache.Tower:
        """:meth:`_tower`, or for no texts (an empty shard) a tower of empty ``[0, H]`` vectors."""
        if texts:
            return self._tower(enc, texts, max_length, chunk)
        layers, dim, device = self.layers_needed, enc.dim, self.device
        dtype = next(enc.parameters()).dtype  # every rank's vectors must share one dtype to be gathered
        return gradcache.Tower(lambda _: {l: torch.zeros(0, dim, device=device, dtype=dtype, requires_grad=True)
                                          for l in layers}, [None])

    def train_step(self, chunk: list[Example], cands: list[str], labels: list[int]) -> dict[str, float]:
        logs = self.backward(chunk, cands, labels)
        if self.cfg.train.max_grad_norm:
            for dual in self.peers:
                torch.nn.utils.clip_grad_norm_(dual.parameters(), self.cfg.train.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return logs

    # ----------------------------------------------------------------- dev evaluation

    def dev_eval(self, epoch: int) -> dict:
        """Dev metrics per peer and of the peers' score ensemble, and the peers' top-20 overlap.

        The ensemble scores a passage by the mean of the peers' inner products, searched exactly
        as one index over the peers' concatenated vectors (each scaled by 1/K on the question side).
        """
        d, data = self.cfg.data, self.data
        split = data.split(d.dev_split)
        ecfg = EvalConfig(model="dev", dataset=d.dataset, split=d.dev_split, q_max_len=d.q_max_len,
                          p_max_len=d.p_max_len, batch_size=self.cfg.train.eval_batch_size, titles=d.titles)
        pids = self.dev_pids
        ptexts = [passage_text(data.corpus[p], d.titles) for p in pids]
        qids = list(split.queries)
        qtexts = [split.queries[q] for q in qids]
        row: dict = {"epoch": epoch, "step": self.step, "peers": []}
        qall, pall, runs = [], [], []
        for dual in self.peers:
            with self.phases("passages"):  # (the sweep prices test encodings from this rate)
                pv = dual.passage.encode(ptexts, max_length=d.p_max_len, batch_size=ecfg.batch_size)
            qv = dual.question.encode(qtexts, max_length=d.q_max_len, batch_size=ecfg.batch_size)
            run, _ = dense_run(qv, pv, qids, pids, ecfg)
            runs.append(run)
            row["peers"].append(score_run(run, data, d.dev_split))
            qall.append(qv / len(self.peers))
            pall.append(pv)
        self._dev_vectors = (epoch, pall, pids, ptexts)
        if len(self.peers) > 1:
            run, _ = dense_run(np.hstack(qall), np.hstack(pall), qids, pids, ecfg)
            row["ensemble"] = score_run(run, data, d.dev_split)
            top = [rank(r, 20) for r in runs]
            row["top20_overlap"] = float(np.mean([len(set(top[0][q]) & set(top[1][q])) / max(1, len(top[0][q]))
                                                  for q in qids]))
        return row

    # ----------------------------------------------------------------- the loop

    def run(self) -> dict:
        cfg = self.cfg
        start_epoch, skip = self._load_state()
        distributed.check_same([start_epoch, skip, self.step], "the checkpoint to resume from")
        bad_epochs = 0
        for epoch in range(start_epoch, cfg.train.epochs):
            self.log(f"epoch {epoch + 1}/{cfg.train.epochs}: {self.steps_per_epoch} steps of {cfg.train.batch_size} questions")
            for dual in self.peers:
                dual.train()
            plan = batches(self.examples, cfg, epoch)
            t_last, n_last = time.perf_counter(), 0
            for b, (chunk, cands, labels) in enumerate(plan):
                if b < skip:
                    continue
                if self.world > 1:
                    distributed.seed_step(cfg.train.seed, self.step)
                with self.phases("steps"):
                    logs = self.train_step(chunk, cands, labels)
                self.step += 1
                n_last += len(chunk)
                now = time.perf_counter()
                row = {"step": self.step, "epoch": epoch, "lr": self.scheduler.get_last_lr()[0],
                       "examples_per_s": n_last / max(now - t_last, 1e-9), "candidates": len(cands), **logs}
                t_last, n_last = now, 0
                self._append("log.jsonl", row)
                if self.step % 10 == 0:
                    self.log(f"step {self.step}: loss {logs['total']:.4f}  {row['examples_per_s']:.1f} q/s")
                if self.step % cfg.train.checkpoint_every == 0 and b + 1 < len(plan) and self.is_main:
                    with self.phases("checkpoint"):
                        self._save_state(epoch, b + 1)
            skip = 0
            with self.phases("dev"):
                dev = distributed.on_main(lambda: self.dev_eval(epoch))  # the other ranks wait for it
            self._append("dev.jsonl", dev)
            self.history.append(dev)
            with self.phases("checkpoint"):
                improved = self._keep_best(dev, epoch)
                if self.is_main:
                    self._save_state(epoch + 1, 0)
            metric = primary_metric(dev["peers"][0])
            self.log(f"dev {metric}: " + ", ".join(f"peer{k} {p[metric]:.4f}" for k, p in enumerate(dev["peers"]))
                     + (f", ensemble {dev['ensemble'][metric]:.4f}" if "ensemble" in dev else ""))
            if self.on_epoch is not None:
                with self.phases("prune"):
                    distributed.on_main(lambda: self.on_epoch(epoch, dev))
            bad_epochs = 0 if improved else bad_epochs + 1
            if cfg.train.patience and bad_epochs >= cfg.train.patience:
                self.log(f"early stop: no dev improvement for {bad_epochs} epochs")
                break
        with self.phases("select"):
            return distributed.on_main(self._finish)

    def _keep_best(self, dev: dict, epoch: int) -> bool:
        metric = primary_metric(dev["peers"][0])
        improved = False
        for k, (dual, m) in enumerate(zip(self.peers, dev["peers"])):
            if m[metric] > self.peer_best[k]:
                self.peer_best[k] = m[metric]
                if self.is_main:
                    dual.save(self.out / "peers" / f"peer{k}", {"peer": k, "epoch": epoch, "dev": m,
                                                               "layers_kept": self.kept_layers[k]})
            if m[metric] > self.best["score"]:
                self.best = {"score": m[metric], "peer": k, "epoch": epoch, "metric": metric}
                improved = True
        return improved

    def _finish(self) -> dict:
        k = self.best["peer"]
        student = self.out / "student"
        tmp = self.out / "student.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(self.out / "peers" / f"peer{k}", tmp)
        shutil.rmtree(student, ignore_errors=True)
        tmp.rename(student)
        dev = self.history[self.best["epoch"]]
        result = {"selected_peer": k, "selected_epoch": self.best["epoch"], "primary": self.best["metric"],
                  "dev": dev["peers"][k], "dev_per_peer": dev["peers"], "steps": self.step}
        if "ensemble" in dev:
            result["dev_ensemble"] = dev["ensemble"]
            result["top20_overlap"] = dev["top20_overlap"]
        self._cache_student_vectors(k)
        write_json(self.out / "metrics.json", result)
        shutil.rmtree(self.out / "checkpoint", ignore_errors=True)
        return result

    def _cache_student_vectors(self, k: int) -> None:
        """When the student is the peer as it stands after the last dev evaluation, its corpus vectors
        from that evaluation are the ones a test evaluation would compute (same weights, texts,
        length and batches): put them in the encoded-corpus cache instead of encoding again."""
        if self._dev_vectors is None or self.world > 1:
            return
        epoch, pvecs, pids, ptexts = self._dev_vectors
        if epoch != self.best["epoch"] or epoch != self.history[-1]["epoch"] or len(pids) != len(self.data.corpus):
            return
        from onmkd.retrieval.evaluate import store_encoded

        store_encoded(self.peers[k].passage, pids, ptexts, self.cfg.data.p_max_len, pvecs[k])


STATE_KEYS = ("step", "epoch", "batch_in_epoch", "peers", "optimizer", "scheduler", "rng", "history", "best", "peer_best")


def load_state_file(path: Path, device) -> dict:
    """A training state written by ``Trainer._save_state``, read with ``torch.load(weights_only=True)``.

    Only tensors and plain containers load: a file that pickles anything else (which could run
    code on loading) is refused with a :class:`ModelError` naming it, and its payload never runs.
    """
    import pickle

    hint = "remove the run directory (or choose another --out) to train from the start"
    try:
        state = torch.load(path, weights_only=True, map_location=device)
    except pickle.UnpicklingError:
        raise ModelError(f"{path}: refused: the training state holds pickled objects other than tensors "
                         f"(only weights load, and its code was not run); {hint}") from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"{path}: unreadable training state ({first}); {hint}") from None
    if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
        raise ModelError(f"{path}: not a training state of this tool; {hint}")
    return state


def check_run_dir(cfg: RunConfig, out: Path, write: bool = True) -> None:
    """Refuse a run directory that holds another config; else (``write``) record ``config.json``
    in a new one. The trainer checks first and writes only once the data set has loaded, so a
    broken data file leaves no config behind that the corrected config would then clash with."""
    saved = out / "config.json"
    if saved.exists():
        old = json.loads(saved.read_text())
        old.pop("onmkd_version", None)
        if from_dict(old) != cfg:
            raise ConfigError(f"{out}: holds a run with a different config; choose another --out or delete it")
    elif write:
        write_json(saved, {"onmkd_version": __version__, **cfg.to_dict()})


def train(cfg: RunConfig, out_dir: str | Path, data: Dataset | None = None, log=print, on_epoch=None,
          phases: Phases | None = None) -> dict:
    """Train as ``cfg`` says into ``out_dir`` (resuming a run left there); returns final dev metrics.

    ``on_epoch(epoch, dev_row)`` is called after every dev evaluation (the sweep reports to
    Optuna and prunes there); the run directory is locked while training. ``phases``
    (:class:`onmkd.timing.Phases`) receives the time of set-up, steps, checkpoints, dev evaluation,
    pruning and selection.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) this joins the process group (:mod:`onmkd.training.distributed`)
    and trains data-parallel; rank 0 alone logs, locks and writes the run directory, and every
    rank returns the same metrics.
    """
    multi = distributed.env_world_size() > 1
    with distributed.session(resolve_device(cfg.train.device) if multi else "cpu"):
        out = Path(out_dir)
        if not distributed.is_main():
            log = _quiet

        def finished() -> dict | None:
            if (out / "metrics.json").exists() and not (out / "checkpoint").exists():
                check_run_dir(cfg, out)
                return json.loads((out / "metrics.json").read_text())
            out.mkdir(parents=True, exist_ok=True)
            return None

        done = distributed.on_main(finished)
        if done is not None:
            log(f"{out_dir}: finished already; metrics.json kept")
            return done
        with contextlib.ExitStack() as lock:
            distributed.on_main(lambda: lock.enter_context(run_lock(out)))  # a refusal reaches every rank
            return Trainer(cfg, out, data, log, on_epoch, phases).run()


def _quiet(message: str) -> None:
    """The log of ranks other than 0."""


@contextlib.contextmanager
def run_lock(folder: Path):
    """Hold an exclusive lock on ``folder/.lock`` (released when the process dies, even by kill -9)."""
    import fcntl

    f = open(folder / ".lock", "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{folder}: another process is training in this run directory") from None
        yield
    finally:
        f.close()
