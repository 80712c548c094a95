"""Data-parallel training over ``torch.distributed`` processes (``torchrun``), peers replicated.

Launch::

    torchrun --nproc_per_node 2 -m onmkd.cli train --config X --out D

Every rank holds all K peers and an identical optimiser. A step's *global* batch (the one a
single process would train on: :func:`onmkd.training.train.batches` is a pure function of
``(examples, seed, epoch)``, so every rank computes the same plan) is split into contiguous
shards: rank ``r`` encodes its shard of the questions and its shard of the candidate passages
with every peer, then the ranks exchange the pooled vectors (the last layer and the
intermediate layers the cross-wise term uses), so every rank holds the whole batch's vectors,
its own slice still attached to its autograd graph (:func:`gather_with_grad`). Each rank then
computes the **whole** global loss (all questions against all gathered candidates, the global
label columns, exactly :meth:`onmkd.training.train.Trainer._loss` of the single process) and
back-propagates it. The gradient reaching rank ``r``'s parameters is the part of ``∂L/∂θ``
that flows through the vectors rank ``r`` encoded,

.. math::
    g_r = \\sum_{i \\in \\text{shard}(r)} \\frac{\\partial L}{\\partial v_i}\\frac{\\partial v_i}{\\partial \\theta},
    \\qquad \\sum_r g_r = \\frac{\\partial L}{\\partial \\theta},

so the gradients are **summed** over ranks (:func:`all_reduce_grads`, not averaged; a
DDP-style average would need the loss multiplied by the world size) and every rank applies the
single process's update to its replica. Losses, logs and gradients are those of one process
on the global batch, up to float summation order.

Why the whole loss on every rank rather than each rank's own question rows (with gradients
sent back through the gather)? The loss is ``O(B·C·H)`` multiply-adds, next to ``O((B+C)·T·P)``
for encoding (``T`` tokens per text, ``P`` parameters per peer): for B = 32, C = 64, H = 384 a
few MFLOP against hundreds of GFLOP, so computing it W times costs nothing measurable, while
it keeps every collective out of ``backward()`` (no rank can deadlock by having an empty shard
or a differently ordered graph; GradCache needs no change), the logs need no reduction, and the
loss code (every method, offline KD's teacher scores included) stays exactly the single
process's. The gradient of ``L`` with respect to a rank's own vectors is complete because that
rank computed all of ``L``; the other ranks' slices need none.

Why replicated peers rather than one peer per device (rank k holding peer k, encoding the
whole batch with it and exchanging vectors with the other peers; measured in
``docs/distributed.md``, ``benchmarks/distributed_placement.py``): on 2 CPU ranks the two
layouts take the same time per step (4.80 s and 4.72 s, K = 2 MiniLM-L6 2-layer peers, batch 32),
once the replicated one pads its shards like the single process (``Trainer._backward_distributed``)
and reduces the word-embedding gradients row-sparse (:func:`all_reduce_grads`; 125 MB → 35 MB a
step). So generality decides: one peer per device uses exactly K devices, gives the single-peer
baselines (dpr, kd) no speed-up at all, and saves only the peers' parameters and optimiser
state (activations are the same), while replication scales the data over any number of ranks.

Dropout: each rank draws its masks from its own generator, seeded from ``(seed, step, rank)``
before every step (:func:`seed_step`), so a resumed run draws the same masks as an
uninterrupted one without saving every rank's generator. Dropout masks depend on how the batch
is split, so with dropout on, W ranks and one process train alike in distribution, not
bit for bit; with dropout off they agree to rounding (tests/test_distributed.py).

Only rank 0 writes (``log.jsonl``, ``dev.jsonl``, checkpoints, peers, ``metrics.json``) and
evaluates on dev; the others wait for its result (:func:`on_main`), which also carries its
exceptions to every rank so none is left waiting on a collective. Resuming reads
``checkpoint/state.pt`` on every rank, so the run directory must be visible to all of them
(always so on one machine).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch

__all__ = [
    "setup", "cleanup", "session", "is_initialized", "env_world_size", "rank", "world_size", "local_rank", "is_main",
    "barrier", "shard", "shard_sizes", "gather_with_grad", "gather_layers", "all_reduce_grads",
    "broadcast_module", "on_main", "check_same", "seed_step", "device_for",
]

T = TypeVar("T")

BUCKET = 1 << 24  # gradient elements per all-reduce (64 MiB of fp32)


def _dist():
    import torch.distributed as dist

    return dist


def is_initialized() -> bool:
    """Whether a process group is up (``False`` in a plain single-process run)."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def env_world_size() -> int:
    """``WORLD_SIZE`` as ``torchrun`` sets it (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    """This process's rank: from the process group, else ``RANK`` when ``WORLD_SIZE`` > 1, else 0."""
    if is_initialized():
        return _dist().get_rank()
    return int(os.environ.get("RANK", "0") or 0) if env_world_size() > 1 else 0


def world_size() -> int:
    """Processes in the group (1 when none is up)."""
    return _dist().get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """The rank on this machine (``LOCAL_RANK``; 0 when unset): the CUDA device this rank uses."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    """Rank 0, the one process that writes files and logs (true in a single-process run)."""
    return rank() == 0


def _timeout() -> datetime.timedelta:
    # Ranks other than 0 wait in a collective while rank 0 evaluates on dev, which on a large
    # corpus takes longer than torch's default of 30 minutes (10 for NCCL).
    return datetime.timedelta(seconds=float(os.environ.get("ONMKD_DIST_TIMEOUT", 4 * 3600)))


def setup(device: str | torch.device = "cpu") -> bool:
    """Join the process group that ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``); returns whether this call initialised it.

    Nothing happens when a group is already up or ``WORLD_SIZE`` is 1 (a plain run). Backend:
    gloo for CPU training; for CUDA, NCCL for device tensors and gloo for the small CPU messages
    (``cpu:gloo,cuda:nccl``), with this rank's device set to ``cuda:LOCAL_RANK``.
    """
    if is_initialized() or env_world_size() <= 1:
        return False
    dist = _dist()
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(local_rank())
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=_timeout())
    return True


def cleanup() -> None:
    """Leave the process group (no-op without one)."""
    if is_initialized():
        _dist().destroy_process_group()


@contextlib.contextmanager
def session(device: str | torch.device = "cpu"):
    """``setup()`` on entry when the environment asks for several processes. A group set up here
    stays up until the process exits (``cleanup`` at exit), so a second ``train()`` in the same
    process reuses it: destroying the default group and creating it again against torchrun's
    store hung in 3 of 5 runs here (both ranks waiting in the first all_gather after the re-init)."""
    if setup(device):
        atexit.register(cleanup)
    yield


def device_for(device: torch.device) -> torch.device:
    """The device a rank trains on: ``cuda:LOCAL_RANK`` when training on CUDA with several ranks."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", local_rank())
    return device


def barrier() -> None:
    if is_initialized():
        _dist().barrier()


# ----------------------------------------------------------------------------- sharding


def shard_sizes(n: int, world: int | None = None) -> list[int]:
    """Sizes of ``n`` rows split into ``world`` contiguous shards, as even as possible, larger first."""
    w = world_size() if world is None else world
    return [n // w + (1 if r < n % w else 0) for r in range(w)]


def shard(n: int, rank_: int | None = None, world: int | None = None) -> slice:
    """Rank ``rank_``'s contiguous slice of ``n`` rows (see :func:`shard_sizes`)."""
    r = rank() if rank_ is None else rank_
    sizes = shard_sizes(n, world)
    start = sum(sizes[:r])
    return slice(start, start + sizes[r])


# ----------------------------------------------------------------------------- collectives


def gather_with_grad(t: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Concatenate every rank's ``t`` along dim 0, in rank order; this rank's slice keeps its graph.

    ``t`` ``[n_r, …]`` (the ``n_r`` may differ between ranks: give them as ``sizes`` when every
    rank knows them, else they are exchanged first). Returns ``[Σ n_r, …]``, the same values on
    every rank. Gradient flows into this rank's ``t`` only; the other slices are constants here,
    so a loss whose gradient must reach every rank's vectors has to be computed whole on every
    rank (as the trainer does; see the module notes). Without a process group: ``t`` itself.
    """
    if not is_initialized() or world_size() == 1:
        return t
    dist = _dist()
    w, r = world_size(), rank()
    if sizes is None:
        n = torch.tensor([t.shape[0]], dtype=torch.long, device=t.device)
        got = [torch.zeros_like(n) for _ in range(w)]
        dist.all_gather(got, n)
        sizes = [int(x.item()) for x in got]
    sizes = list(sizes)
    if len(sizes) != w or sizes[r] != t.shape[0]:
        raise ValueError(f"gather_with_grad: sizes {sizes} do not fit rank {r}'s {t.shape[0]} rows in a world of {w}")
    m = max(sizes)
    send = t.detach()
    if t.shape[0] < m:
        send = torch.cat([send, send.new_zeros((m - t.shape[0], *t.shape[1:]))])
    bufs = [torch.empty_like(send) for _ in range(w)]
    dist.all_gather(bufs, send.contiguous())
    parts = [b[:s] for b, s in zip(bufs, sizes)]
    parts[r] = t
    return torch.cat(parts)


def gather_layers(vectors: dict[int, torch.Tensor], sizes: Sequence[int]) -> dict[int, torch.Tensor]:
    """:func:`gather_with_grad` of a ``{layer: [n_r, H_l]}`` dict, in one collective (the layers
    travel side by side as ``[n_r, Σ H_l]``)."""
    if not is_initialized() or world_size() == 1:
        return vectors
    layers = list(vectors)
    widths = [vectors[l].shape[1] for l in layers]
    packed = torch.cat([vectors[l] for l in layers], dim=1) if len(layers) > 1 else vectors[layers[0]]
    full = gather_with_grad(packed, sizes)
    return dict(zip(layers, torch.split(full, widths, dim=1)))


def all_reduce_grads(params: Iterable[torch.nn.Parameter], row_sparse: Iterable[torch.nn.Parameter] = ()) -> None:
    """Sum ``.grad`` over ranks, in place, in buckets of flattened gradients.

    A parameter without a gradient on some ranks (say a rank whose shard was empty) counts as
    zero there; one without a gradient on every rank keeps ``grad = None`` everywhere, as in the
    single process (so AdamW skips it alike).

    ``row_sparse``: parameters among ``params`` whose gradient is zero outside a few rows (the
    word-embedding tables: only the batch's tokens get gradient). Only the rows that are non-zero
    on some rank travel (a byte per row says which), with the same sums as the dense reduction:
    for a 30k-word vocabulary and a batch of a few thousand distinct tokens, about a tenth of
    the table, and the tables are most of a small student's parameters.
    """
    params = [p for p in params if p.requires_grad]
    sparse_ids = {id(p) for p in row_sparse}
    if not params or not is_initialized() or world_size() == 1:
        return
    dist = _dist()
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    grads, sparse = [], []
    for p, h in zip(params, has.tolist()):
        if h:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            (sparse if id(p) in sparse_ids and p.grad.dim() == 2 else grads).append(p.grad)
    for g in sparse:
        rows = (g != 0).any(dim=1).to(torch.uint8)
        dist.all_reduce(rows, op=dist.ReduceOp.MAX)
        rows = rows.nonzero().squeeze(1)
        if rows.numel():
            part = g.index_select(0, rows)
            dist.all_reduce(part)
            g.index_copy_(0, rows, part)
    by_kind: dict[tuple, list[torch.Tensor]] = {}
    for g in grads:
        by_kind.setdefault((g.device, g.dtype), []).append(g)
    for group in by_kind.values():
        buckets: list[list[torch.Tensor]] = []
        size = 0
        for g in group:
            if not buckets or size + g.numel() > BUCKET:
                buckets.append([])
                size = 0
            buckets[-1].append(g)
            size += g.numel()
        for bucket in buckets:
            flat = torch.cat([b.reshape(-1) for b in bucket])
            dist.all_reduce(flat)
            for b, piece in zip(bucket, torch.split(flat, [b.numel() for b in bucket])):
                b.copy_(piece.view_as(b))


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Overwrite every parameter and buffer with rank ``src``'s (replicas start identical)."""
    if not is_initialized() or world_size() == 1:
        return
    dist = _dist()
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src)


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only; every rank returns its result (or raises its exception).

    The result travels pickled (keep it small: a dict of metrics). Also a barrier: the other
    ranks wait until rank 0 is done. Without a process group: ``fn()``.
    """
    if not is_initialized() or world_size() == 1:
        return fn()
    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = ("ok", fn())
        except BaseException as e:  # noqa: BLE001 - carried to every rank, then raised there too
            try:
                import pickle

                pickle.dumps(e)
                box[0] = ("err", e)
            except Exception:  # noqa: BLE001 - an exception that does not pickle: its text
                box[0] = ("err", RuntimeError(f"rank 0: {type(e).__name__}: {e}"))
            _dist().broadcast_object_list(box, src=0)
            raise
    _dist().broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "err":
        raise value
    return value


def check_same(values: Sequence[int], what: str) -> None:
    """Raise on every rank unless ``values`` (small integers) are the same on every rank."""
    if not is_initialized() or world_size() == 1:
        return
    dist = _dist()
    mine = torch.tensor(list(values), dtype=torch.long)
    lo, hi = mine.clone(), mine.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if not torch.equal(lo, hi):
        from onmkd.errors import ConfigError

        raise ConfigError(f"{what} differs between ranks (rank {rank()}: {list(values)}); "
                          "every rank must see the same run directory")


def seed_step(seed: int, step: int) -> None:
    """Seed this rank's torch generators (CPU and CUDA) from ``(seed, step, rank)``."""
    import numpy as np

    torch.manual_seed(int(np.random.SeedSequence([seed, step, rank()]).generate_state(1, dtype=np.uint64)[0] >> 1))
