"""Where the peers live in distributed training: replicated on every rank, or one peer per rank.

Times a training step of K = 2 peers on the same global batches three ways, on this machine's
CPU cores with gloo:

- ``single``: one process, 2 threads (the baseline: the whole machine, no messages), and
  ``single_1thread``, the same on one thread (what each rank has);
- ``replicated`` (what ``onmkd.training.distributed`` does): 2 ranks of one thread each; every
  rank holds both peers, encodes its shard of the batch with both, the vectors are gathered and
  the gradients all-reduced;
- ``per_peer`` (the alternative): 2 ranks of one thread, rank k holds peer k alone and encodes
  the *whole* batch with it; the ranks exchange their vectors (every layer the loss needs), each
  computes the whole loss with its own vectors attached to its graph and the other peer's as
  constants (the gradient on its own peer is then complete; no gradient all-reduce), and steps
  its own peer. A prototype: only for timing.

Also reports the bytes each rank sends per step (vectors; gradients) and, for ``replicated``,
the seconds spent in the gradient all-reduce.

    python benchmarks/distributed_placement.py [--batch 32] [--steps 4] [--hard-negatives 0] \\
        [--out reports/distributed_placement.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def _config(args):
    from onmkd.config import load_config

    n = args.batch * (args.steps + args.warmup)
    return load_config(None, [f"data.max_train_questions={n}", f"train.batch_size={args.batch}",
                              f"data.hard_negatives={args.hard_negatives}", f"data.p_max_len={args.p_max_len}",
                              "train.epochs=1"])


def _per_peer_step(tr, chunk, cands, labels):
    """Rank k trains peer k on the whole batch; the peers' vectors are exchanged, not gradients."""
    import torch.distributed as dist

    from onmkd.data import passage_text

    k = dist.get_rank()
    d = tr.cfg.data
    texts_q = [ex.question for ex in chunk]
    texts_p = [passage_text(tr.data.corpus[p], d.titles) for p in cands]
    y = torch.tensor(labels)
    tr.optimizer.zero_grad(set_to_none=True)
    qv, pv = tr._encode(tr.peers[k], texts_q, texts_p)
    layers = list(qv)

    def exchange(own):
        packed = torch.cat([own[l] for l in layers], dim=1).detach().contiguous()
        bufs = [torch.empty_like(packed) for _ in range(dist.get_world_size())]
        dist.all_gather(bufs, packed)
        out = []
        for j, b in enumerate(bufs):
            out.append(own if j == k else dict(zip(layers, torch.split(b, [own[l].shape[1] for l in layers], 1))))
        return out

    qs, ps = exchange(qv), exchange(pv)
    loss, logs = tr._loss(qs, ps, chunk, cands, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(tr.peers[k].parameters(), tr.cfg.train.max_grad_norm)
    tr.optimizer.step()  # the other peer has no gradient here: AdamW leaves it alone
    tr.scheduler.step()
    return logs


def _rank(rank: int, world: int, port: int, args, out: str) -> None:
    """Both distributed layouts, and on rank 0 the single process, interleaved batch by batch so
    that the machine's noise hits them alike."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from onmkd.training import distributed
    from onmkd.data import load_dataset
    from onmkd.training.train import Trainer, batches

    distributed.setup("cpu")
    try:
        data = load_dataset("squad")
        with tempfile.TemporaryDirectory() as tmp:
            rep = Trainer(_config(args), Path(tmp) / "rep", data, log=lambda m: None)
            per = Trainer(_config(args), Path(tmp) / "per", data, log=lambda m: None)
            single = None
            if rank == 0:  # a trainer that knows nothing of the group: the single-process path
                real_world, real_rank = distributed.world_size, distributed.rank
                distributed.world_size, distributed.rank = (lambda: 1), (lambda: 0)
                try:
                    single = Trainer(_config(args), Path(tmp) / "single", data, log=lambda m: None)
                finally:
                    distributed.world_size, distributed.rank = real_world, real_rank
            reduce_s = [0.0]
            real = distributed.all_reduce_grads

            def timed(*a, **kw):
                t0 = time.perf_counter()
                real(*a, **kw)
                reduce_s[0] += time.perf_counter() - t0

            distributed.all_reduce_grads = timed
            # payload bytes this rank hands to each kind of collective, per step and mode
            import torch.distributed as dist

            sent = {"all_reduce": 0, "all_gather": 0}
            real_reduce, real_gather = dist.all_reduce, dist.all_gather

            def counting_reduce(t, *a, **kw):
                sent["all_reduce"] += t.numel() * t.element_size()
                return real_reduce(t, *a, **kw)

            def counting_gather(bufs, t, *a, **kw):
                sent["all_gather"] += t.numel() * t.element_size()
                return real_gather(bufs, t, *a, **kw)

            dist.all_reduce, dist.all_gather = counting_reduce, counting_gather
            payload: dict[str, list[dict]] = {"replicated": [], "per_peer": []}
            times: dict[str, list[float]] = {"single": [], "single_1thread": [], "replicated": [], "per_peer": []}
            reduces = []
            plan = batches(rep.examples, rep.cfg, 0)
            for i, batch in enumerate(plan):
                for mode in ("replicated", "per_peer", "single", "single_1thread"):
                    distributed.barrier()
                    reduce_s[0] = 0.0
                    sent.update(all_reduce=0, all_gather=0)
                    t0 = time.perf_counter()
                    if mode == "replicated":
                        rep.train_step(*batch)
                    elif mode == "per_peer":
                        _per_peer_step(per, *batch)
                    elif rank == 0:  # the same trainer twice: its second step is on the next weights
                        torch.set_num_threads(world if mode == "single" else 1)
                        single.train_step(*batch)
                        torch.set_num_threads(1)
                    elapsed = time.perf_counter() - t0
                    if mode in payload:
                        payload[mode].append(dict(sent))
                    distributed.barrier()
                    if i >= args.warmup:
                        times[mode].append(elapsed)
                        if mode == "replicated":
                            reduces.append(reduce_s[0])
            if rank == 0:
                Path(out).write_text(json.dumps({
                    "times": times, "reduce": reduces, "payload": payload, "params": [sum(p.numel() for p in d.parameters()) for d in rep.peers],
                    "candidates": [len(b[1]) for b in plan], "layers": rep.layers_needed, "dim": rep.peers[0].question.dim}))
    finally:
        distributed.cleanup()


def _spawn(world: int, args) -> dict:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        mp.start_processes(_rank, args=(world, port, args, out), nprocs=world, start_method="spawn")
        return json.loads(Path(out).read_text())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--hard-negatives", type=int, default=0)
    ap.add_argument("--p-max-len", type=int, default=256)
    ap.add_argument("--world", type=int, default=2, help="ranks (2: the per-peer layout needs one rank per peer)")
    ap.add_argument("--out", type=Path, default=Path("reports/distributed_placement.json"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from onmkd.io import write_json

    if args.world != 2:
        raise SystemExit("per_peer places K = 2 peers one per rank: --world must be 2")
    res = _spawn(args.world, args)
    single, single1 = res["times"]["single"], res["times"]["single_1thread"]
    rep, per = {"times": res["times"]["replicated"]}, {"times": res["times"]["per_peer"]}
    rep.update({k: res[k] for k in ("params", "layers", "dim")})
    rep["reduce"] = res["reduce"]
    res["payload"] = {m: v[args.warmup:] or v for m, v in res["payload"].items()}
    rep["candidates"] = statistics.mean(res["candidates"])
    b, c, h, n_layers = args.batch, rep["candidates"], rep["dim"], len(rep["layers"])
    vec = 4 * h * n_layers
    p = sum(rep["params"])
    w = args.world
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "setting": {"batch": b, "candidates_mean": c, "hidden": h, "layers_gathered": rep["layers"],
                    "params_per_peer": rep["params"], "world": w, "p_max_len": args.p_max_len},
        "s_per_step": {"single": statistics.median(single), "single_1thread": statistics.median(single1),
                       "replicated": statistics.median(rep["times"]), "per_peer": statistics.median(per["times"])},
        "s_per_step_all": {"single": single, "single_1thread": single1, "replicated": rep["times"], "per_peer": per["times"]},
        "replicated_grad_allreduce_s": statistics.median(rep["reduce"]),
        # measured: bytes rank 0 handed to all_gather / all_reduce per step (median over steps); a
        # ring all-reduce sends 2(W-1)/W of its payload, an all-gather W-1 times its own part
        "payload_bytes_per_step": {m: {k: statistics.median(s[k] for s in res["payload"][m]) for k in ("all_gather", "all_reduce")}
                                   for m in ("replicated", "per_peer")},
        "dense_gradient_bytes": 4 * p,
        "vector_bytes_per_text": vec,
    }
    result["replicated_over_single"] = result["s_per_step"]["replicated"] / result["s_per_step"]["single"]
    result["per_peer_over_single"] = result["s_per_step"]["per_peer"] / result["s_per_step"]["single"]
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("s_per_step", "replicated_grad_allreduce_s", "payload_bytes_per_step",
                                             "replicated_over_single", "per_peer_over_single")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
