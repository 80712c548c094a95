"""Distributed training on the CPU: 2 gloo processes give the losses and gradients of one process.

One torchrun launch of 2 ranks (module fixture ``ranks``) runs every distributed scenario, since starting
processes costs more than the tiny model's work: a step's loss and gradients for several
methods (compared with a single process on the same global batch, dropout off), an empty shard,
``gather_with_grad`` itself, and ``train()`` end to end, uninterrupted and interrupted then
resumed, and ``onmkd-bench train`` as ``torchrun`` launches it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from onmkd.training import distributed
from onmkd.config import load_config
from onmkd.training.train import Trainer, batches, train

from numerics import F64_RTOL, dropout_off, to_float64
from test_train import tiny_qa  # the tiny QA set the single-process tests train on

pytestmark = pytest.mark.numerics  # run again with the kernels forced to another ISA (run.sh)

WORLD = 2
TIMEOUT_S = 120



# Peers differ (the second randomly initialised), so the mutual terms are not zero with dropout off.
TWO = 'model.peer=[{{checkpoint="{m}"}}, {{checkpoint="{m}", random=true, seed=1}}]'
STEP_CASES = {
    "onmkd": [TWO],  # KL and cross-wise (layer 1 and the last layer) on
    "dpr": ['train.method="dpr"', "model.peers=1"],
    "onmkd-gradcache": [TWO, "train.grad_cache_chunk=3"],
    "kd": ['model.peer=[{{checkpoint="{m}", random=true, seed=1}}]', 'train.method="kd"', "model.peers=1"],
    # one question and its hard negative: rank 1 encodes no question, one passage
    "onmkd-one-question": [TWO, "train.batch_size=1"],
    # one question, one candidate: rank 1 encodes nothing at all (and every gradient is 0)
    "onmkd-empty-shard": [TWO, "train.batch_size=1", "data.hard_negatives=0"],
}


def step_config(model_dir, case):
    return load_config(None, [
        f'model.peer=[{{checkpoint="{model_dir}"}}]', "model.layers=2", "train.batch_size=8",
        "data.hard_negatives=1", "data.p_max_len=32", "data.q_max_len=16", "data.length_chunk=4",
        "train.lr=1e-3", "loss.cross_layers=[[1, 1], [-1, -1]]", "loss.alpha=1.0", "loss.beta=1.0",
        f'loss.teacher="{model_dir}"', *(a.format(m=model_dir) for a in STEP_CASES[case])])


def run_config(model_dir):
    return load_config(None, [
        f'model.peer=[{{checkpoint="{model_dir}"}}]', "model.layers=2", "train.batch_size=4", "train.epochs=2",
        "train.checkpoint_every=2", "data.hard_negatives=1", "data.p_max_len=32", "data.q_max_len=16",
        "train.eval_batch_size=8", "train.lr=1e-3", "loss.cross_layers=[[1, 1], [2, 2]]"])


def one_step(model_dir, out, case):
    """A trainer with dropout off, in float64, and the loss logs and gradients of its first batch
    (8 questions). Float64 because the ranks pad their shards differently from the single process
    and so sum in other orders: in float32 that rounding alone is 1e-5 of a small term; in float64
    it stays far below ``F64_RTOL`` (tests/numerics.py), while a lost or doubled share is O(1)."""
    tr = Trainer(step_config(model_dir, case), out, tiny_qa(), log=lambda m: None)
    dropout_off(tr.peers)
    to_float64(tr.peers)
    batch = batches(tr.examples, tr.cfg, 0)[0]
    logs = tr.backward(*batch)
    grads = {f"{k}.{n}": None if p.grad is None else p.grad.clone()
             for k, dual in enumerate(tr.peers) for n, p in dual.named_parameters()}
    return logs, grads, batch


# ----------------------------------------------------------------------------- the 2 ranks


def cli_args(model_dir, squad, out) -> list[str]:
    sets = [f'model.peer=[{{checkpoint="{model_dir}"}}]', "model.layers=2", "train.batch_size=4",
            "train.epochs=1", "data.hard_negatives=1", "data.p_max_len=32", "data.q_max_len=16",
            "train.eval_batch_size=8", "loss.cross_layers=[[1, 1], [2, 2]]", f'data.dataset="squad:{squad}"']
    return ["train", "--out", str(out)] + [a for s in sets for a in ("--set", s)]


def _rank_main(out: Path, model_dir: str, squad: str) -> None:
    """What each rank runs, launched by torchrun (``python THIS_FILE OUT MODEL SQUAD``)."""
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])

    # 1. `onmkd-bench train` as torchrun runs it: train() joins the group from torchrun's
    #    environment, and trains; the group stays up for the rest of the process
    from onmkd.cli import app

    app(cli_args(model_dir, squad, out / "cli"), prog_name="onmkd-bench", standalone_mode=False)
    assert distributed.is_initialized()  # the group train() made stays up for the process
    assert not distributed.setup("cpu")  # and is reused, not made again
    try:
        # 2. gather_with_grad: uneven slices, values from every rank, gradient into this rank's only
        t = torch.full((rank + 1, 2), float(rank + 1), requires_grad=True)
        full = distributed.gather_with_grad(t)
        (full * torch.arange(1.0, full.shape[0] + 1).unsqueeze(1)).sum().backward()
        torch.save({"full": full.detach(), "grad": t.grad}, out / f"gather-{rank}.pt")

        # 3. one step of each case, dropout off
        for case in STEP_CASES:
            logs, grads, _ = one_step(model_dir, out / f"step-{case}", case)
            torch.save({"logs": logs, "grads": grads}, out / f"step-{case}-{rank}.pt")

        # 4. train(): uninterrupted; interrupted after the checkpoint at step 4, then resumed
        cfg = run_config(model_dir)
        results = {"full": train(cfg, out / "full", tiny_qa(), log=lambda m: None)}
        real = Trainer.train_step

        def dies_at_step_5(self, *args):
            if self.step == 4:  # mid-epoch 2, on both ranks
                raise KeyboardInterrupt
            return real(self, *args)

        Trainer.train_step = dies_at_step_5
        try:
            train(cfg, out / "cut", tiny_qa(), log=lambda m: None)
        except KeyboardInterrupt:
            results["interrupted"] = (out / "cut" / "checkpoint" / "state.pt").exists()
        finally:
            Trainer.train_step = real
        messages: list[str] = []
        results["resumed"] = train(cfg, out / "cut", tiny_qa(), log=messages.append)
        results["messages"] = messages
        (out / f"train-{rank}.json").write_text(json.dumps(results))
    finally:
        distributed.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tiny_model_dir, tiny_squad, tmp_path_factory):
    """Run :func:`_rank_main` on 2 gloo processes under torchrun; the folder of what they wrote
    (``torchrun.out`` / ``torchrun.err``: the ranks' standard output and error).

    One launch for every scenario: starting a rank (torch and transformers imports) costs more
    than all the tiny model's work."""
    out = tmp_path_factory.mktemp("ranks")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), __file__, str(out), str(tiny_model_dir), str(tiny_squad)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the {WORLD} ranks did not finish in {TIMEOUT_S} s")
    (out / "torchrun.out").write_text(proc.stdout)
    (out / "torchrun.err").write_text(proc.stderr)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return out


# ----------------------------------------------------------------------------- tests


def test_shards_cover_the_batch_in_order():
    assert distributed.shard_sizes(13, 2) == [7, 6]
    assert distributed.shard_sizes(1, 2) == [1, 0]
    assert [distributed.shard(13, r, 2) for r in range(2)] == [slice(0, 7), slice(7, 13)]
    assert [distributed.shard(5, r, 3) for r in range(3)] == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert distributed.world_size() == 1 and distributed.is_main()  # no group in the test process


def test_gather_with_grad(ranks):
    a, b = (torch.load(ranks / f"gather-{r}.pt") for r in range(WORLD))
    expected = torch.tensor([[1.0, 1.0], [2.0, 2.0], [2.0, 2.0]])
    assert torch.equal(a["full"], expected) and torch.equal(b["full"], expected)
    # d/dt of Σ_i i·full_i: rank 0 owns row 1, rank 1 rows 2 and 3; nothing crosses ranks
    assert torch.equal(a["grad"], torch.full((1, 2), 1.0))
    assert torch.equal(b["grad"], torch.tensor([[2.0, 2.0], [3.0, 3.0]]))


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_step_equals_single_process(case, ranks, tiny_model_dir, tmp_path):
    """Losses and every parameter gradient of both peers as one process on the same global batch."""
    ref_logs, ref_grads, batch = one_step(tiny_model_dir, tmp_path / "single", case)
    chunk, cands, _ = batch
    assert (len(chunk), len(cands)) == {"onmkd-one-question": (1, 2), "onmkd-empty-shard": (1, 1)}.get(
        case, (8, len(cands)))
    got = [torch.load(ranks / f"step-{case}-{r}.pt") for r in range(WORLD)]
    for g in got:
        assert g["logs"].keys() == ref_logs.keys()
        for key, value in ref_logs.items():
            assert g["logs"][key] == pytest.approx(value, rel=F64_RTOL), key
    if case in ("onmkd", "onmkd-gradcache", "onmkd-one-question"):
        assert ref_logs["kl/0"] > 1e-4 and ref_logs["cross/0"] > 1e-4  # every term is at work
    if case == "kd":
        assert ref_logs["kd/0"] > 1e-4
    assert got[0]["logs"] == got[1]["logs"]
    used = 0
    for name, ref in ref_grads.items():
        g0, g1 = got[0]["grads"][name], got[1]["grads"][name]
        assert (g0 is None) == (ref is None) and (g1 is None) == (ref is None), name
        if ref is None:
            continue
        assert g0.dtype == torch.float64, name
        assert torch.equal(g0, g1), name  # the replicas take identical steps
        # Elementwise to F64_RTOL relative, or F64_RTOL of the tensor's largest entry where an
        # element is a sum that cancels (an embedding row many tokens share); the attention key
        # biases get no gradient in exact arithmetic, so theirs (rounding noise) is measured at
        # the scale of the same layer's key weights. A lost or doubled rank's share is off by O(1).
        scale = ref_grads[name.replace("key.bias", "key.weight")] if name.endswith("attention.self.key.bias") else ref
        atol = F64_RTOL * scale.abs().max().item()
        torch.testing.assert_close(g0, ref, rtol=F64_RTOL, atol=atol, msg=lambda m: f"{name}: {m}")
        used += bool(ref.abs().sum() > 0)
    if case != "onmkd-empty-shard":
        assert used > 20 * (2 if case.startswith("onmkd") else 1)  # embeddings, attention, FFN, norms


def test_train_end_to_end_and_resume(ranks):
    """train() on 2 ranks writes the run directory once; interrupted and resumed, it ends as the
    uninterrupted run, every rank returning the same metrics."""
    r0, r1 = (json.loads((ranks / f"train-{r}.json").read_text()) for r in range(WORLD))
    assert r0["full"] == r1["full"] and r0["resumed"] == r1["resumed"]
    assert r0["interrupted"] and r1["interrupted"]
    assert r0["resumed"] == r0["full"]
    assert any("resuming from step 4" in m for m in r0["messages"]) and not r1["messages"]
    strip = lambda line: {k: v for k, v in json.loads(line).items() if k != "examples_per_s"}  # noqa: E731
    logs = {}
    for name in ("full", "cut"):
        run = ranks / name
        assert {"config.json", "log.jsonl", "dev.jsonl", "peers", "student", "metrics.json"} <= {p.name for p in run.iterdir()}
        assert not (run / "checkpoint").exists()
        logs[name] = [strip(l) for l in (run / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in logs[name]] == list(range(1, 7))  # 10 questions / 4: 3 steps × 2 epochs, once
        assert len((run / "dev.jsonl").read_text().splitlines()) == 2
        assert json.loads((run / "metrics.json").read_text()) == r0["full"]
    assert logs["cut"] == logs["full"]
    assert logs["full"][0]["kl/0"] > 0 and logs["full"][0]["cross/0"] > 0


def test_cli_train_under_torchrun(ranks):
    """``onmkd-bench train`` under torchrun trains one epoch on 2 ranks; rank 0 alone reports and writes."""
    out, err = (ranks / "torchrun.out").read_text(), (ranks / "torchrun.err").read_text()
    assert out.count("selected peer") == 1, out
    assert err.count("epoch 1/1") == 1, err[-3000:]  # only rank 0 logs
    run = ranks / "cli"
    steps = [json.loads(l)["step"] for l in (run / "log.jsonl").read_text().splitlines()]
    assert steps and steps == list(range(1, len(steps) + 1))
    assert len((run / "dev.jsonl").read_text().splitlines()) == 1
    assert (run / "metrics.json").exists() and (run / "student").is_dir() and not (run / "checkpoint").exists()


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
