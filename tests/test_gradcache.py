"""Cached gradients: the same loss, gradients and updated weights as the uncached batch.

With dropout on, "uncached" means the same sub-batches encoded with autograd kept for the whole
batch: dropout masks depend on how a batch is split (and padded), so no split can reproduce
another's; what GradCache must do is replay pass 1's masks in pass 3 and lose nothing in the
loss. With dropout off, the cached step is compared with the trainer's plain step, which splits
the batch differently (all questions at once, passages in chunks of ``data.length_chunk``).

The identities are checked in float64 to ``numerics.F64_RTOL`` (2⁻²⁹): the two computations sum in
different orders (other batch shapes, other kernels on another CPU), and in float32 that rounding
alone reaches 1e-5 of a small loss term such as the mutual KL; in float64 it stays below 1e-13,
while a bug in the cache moves results by 1e-4 or more (tests/numerics.py has the error model).
The float32 step, the dtype training runs in, is compared against a worst-case bound.
"""

from __future__ import annotations

import pytest
import torch

from onmkd.training import gradcache
from onmkd.config import from_dict, load_config
from onmkd.data import Dataset, Split, passage_text
from onmkd.errors import ConfigError
from onmkd.training.losses import onmkd_total
from onmkd.training.train import Trainer, batches

from numerics import F64_RTOL, bert_forward_atol, dropout_off, to_float64
from test_train import PASSAGES, QUESTIONS  # the tiny QA set of the training tests

pytestmark = pytest.mark.numerics  # run again with the kernels forced to another ISA (run.sh)

RTOL = F64_RTOL


TRAIN = QUESTIONS["train"][:8]
DEV = QUESTIONS["dev"][:1]


def tiny_qa() -> Dataset:
    corpus = {p: {"title": t, "text": x} for p, (t, x) in PASSAGES.items()}
    splits = {}
    for name, rows in (("train", TRAIN), ("dev", DEV)):
        splits[name] = Split({f"{name}{i}": q for i, (q, _, _) in enumerate(rows)},
                             {f"{name}{i}": {p: 1} for i, (_, p, _) in enumerate(rows)},
                             {f"{name}{i}": [a] for i, (_, _, a) in enumerate(rows)})
    return Dataset("tiny-qa", corpus, splits, source="tiny-qa")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Peers differ (the second is randomly initialised, as is the kd student against its teacher), so
# the mutual and distillation terms are not zero even with dropout off.
TWO = 'model.peer=[{{checkpoint="{m}"}}, {{checkpoint="{m}", random=true, seed=1}}]'
METHODS = {
    "onmkd": [TWO],  # K = 2, cross-wise vectors at layer 1 and at the last layer
    "dml": [TWO, 'train.method="dml"'],
    "dpr": ['train.method="dpr"', "model.peers=1"],
    "kd": ['model.peer=[{{checkpoint="{m}", random=true, seed=1}}]', 'train.method="kd"', "model.peers=1"],
    "onmkd-untied": [TWO, "model.tied=false", "loss.cross_detach=true"],
}


def make_trainer(model_dir, out, method, *extra):
    args = [f'model.peer=[{{checkpoint="{model_dir}"}}]', "model.layers=2", "train.batch_size=6",
            "data.hard_negatives=1", "data.p_max_len=32", "data.q_max_len=16", "data.length_chunk=4",
            "train.lr=1e-3", "loss.cross_layers=[[1, 1], [-1, -1]]", f'loss.teacher="{model_dir}"',
            *(a.format(m=model_dir) for a in METHODS[method]), *extra]
    return Trainer(load_config(None, args), out, tiny_qa(), log=lambda m: None)


def grads(trainer):
    return {f"{k}.{n}": p.grad for k, dual in enumerate(trainer.peers) for n, p in dual.named_parameters()}


# Attention key biases get no gradient in exact arithmetic (the softmax over keys ignores a shift
# that every key shares): their computed gradient is rounding noise (~1e-11 here), so it is
# compared at the scale of the same layer's key-weight gradient, not at its own.
KEY_BIAS = "attention.self.key.bias"


def assert_close_rel(a: torch.Tensor, b: torch.Tensor, what: str, scale: float | None = None) -> None:
    """``‖a − b‖ ≤ RTOL · ‖b‖`` (relative over the whole tensor; ``scale`` replaces ``‖b‖``)."""
    err, ref = (a - b).norm().item(), b.norm().item() if scale is None else scale
    assert err <= RTOL * ref or err == 0, f"{what}: ‖Δ‖ = {err:.3g}, ‖ref‖ = {ref:.3g}"


def assert_grads_close(got: dict, ref: dict) -> None:
    assert got.keys() == ref.keys()
    for name, g in got.items():
        assert (g is None) == (ref[name] is None), name
        if g is not None:
            scale = ref[name.replace(KEY_BIAS, "attention.self.key.weight")].norm().item() if name.endswith(KEY_BIAS) else None
            assert_close_rel(g, ref[name], name, scale)


def uncached_loss(trainer, batch, sub: int):
    """The loss with autograd kept for the whole batch, encoded in the same ``sub``-text sub-batches."""
    chunk, cands, labels = batch
    d, l = trainer.cfg.data, trainer.cfg.loss
    texts_q = [ex.question for ex in chunk]
    texts_p = [passage_text(trainer.data.corpus[p], d.titles) for p in cands]
    qs, ps = [], []
    for dual in trainer.peers:
        qs.append(dual.question.embed_texts(texts_q, max_length=d.q_max_len, layers=trainer.layers_needed, chunk=sub))
        ps.append(dual.passage.embed_texts(texts_p, max_length=d.p_max_len, layers=trainer.layers_needed, chunk=sub))
    depth = trainer.peers[0].question.num_layers
    scores = [q[depth] @ p[depth].T for q, p in zip(qs, ps)]
    loss, _ = onmkd_total(scores, qs, ps, torch.tensor(labels), tau=l.tau, alpha=trainer.alpha,
                          kl_temperature=l.kl_temperature, beta=trainer.beta, tau_c=l.cross_temperature,
                          layer_map=trainer.layer_map, kl_detach=l.kl_detach, cross_detach=l.cross_detach)
    return loss


@pytest.mark.parametrize("method", ["onmkd", "dpr"])
def test_cached_loss_and_gradients_equal_uncached_with_dropout(method, tiny_model_dir, tmp_path):
    tr = make_trainer(tiny_model_dir, tmp_path / "gc", method, "train.grad_cache_chunk=2", "model.attention_dropout=0.1")
    to_float64(tr.peers)
    assert all(dual.training for dual in tr.peers)  # dropout on: hidden 0.1 (checkpoint) and attention 0.1
    batch = batches(tr.examples, tr.cfg, 0)[0]
    assert len(batch[0]) == 6 and len(batch[1]) > 6  # 3 question and at least 4 passage sub-batches of 2

    torch.manual_seed(123)
    start = torch.get_rng_state()
    tr.optimizer.zero_grad(set_to_none=True)
    ref_loss = uncached_loss(tr, batch, sub=2)
    ref_loss.backward()
    ref = {k: None if g is None else g.clone() for k, g in grads(tr).items()}
    ref_rng = torch.get_rng_state()

    torch.set_rng_state(start)
    logs = tr.backward(*batch)
    assert logs["total"] == pytest.approx(ref_loss.item(), rel=RTOL)
    assert torch.equal(torch.get_rng_state(), ref_rng)  # the random stream goes on as without caching
    assert_grads_close(grads(tr), ref)
    # embeddings, attention, feed-forward and norms of both layers (and both peers) got gradient
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in ref.values()) > 20 * len(tr.peers)

    # the check has teeth: another dropout draw gives another loss
    torch.manual_seed(124)
    with torch.no_grad():
        assert abs(uncached_loss(tr, batch, sub=2).item() - ref_loss.item()) > 1e-4


def plain_and_cached(model_dir, tmp_path, method, dtype):
    """Two trainers of the same start, dropout off, in ``dtype``: the plain step and sub-batches of 2."""
    plain = make_trainer(model_dir, tmp_path / f"plain-{dtype}", method)
    cached = make_trainer(model_dir, tmp_path / f"cached-{dtype}", method, "train.grad_cache_chunk=2")
    for tr in (plain, cached):
        dropout_off(tr.peers)
        if dtype == torch.float64:
            to_float64(tr.peers)
    for a, b in zip(plain.peers, cached.peers):
        for (n, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.equal(p, q), n  # the same start
    return plain, cached


@pytest.mark.parametrize("method", list(METHODS))
def test_trainer_steps_with_cached_gradients_update_weights_alike(method, tiny_model_dir, tmp_path):
    """Dropout off: a step with sub-batches of 2 gives the loss, gradients and updated weights of
    the plain step (all questions in one pass, passages in chunks of data.length_chunk = 4)."""
    # float32, as training runs: every logged loss term within the worst-case rounding bound. A
    # term is a cross-entropy or KL of logits z = score / temperature, which moves by at most
    # 2·‖Δz‖∞; a score of unit vectors moves by at most twice a vector's error.
    plain, cached = plain_and_cached(tiny_model_dir, tmp_path, method, torch.float32)
    batch = batches(plain.examples, plain.cfg, 0)[0]
    la, lb = plain.train_step(*batch), cached.train_step(*batch)
    assert la.keys() == lb.keys()
    l = plain.cfg.loss
    vec = bert_forward_atol(plain.peers[0].question.model.config, plain.cfg.data.p_max_len)
    weight = 1 + plain.alpha * l.kl_temperature**2 + plain.beta
    loss_atol = 2 * (2 * vec) / min(l.tau, l.cross_temperature) * weight * len(plain.peers)
    for k in la:
        assert abs(lb[k] - la[k]) <= loss_atol, (k, la[k], lb[k], loss_atol)

    # float64: the identity itself, to F64_RTOL
    plain, cached = plain_and_cached(tiny_model_dir, tmp_path, method, torch.float64)
    start = [{n: p.detach().clone() for n, p in dual.named_parameters()} for dual in plain.peers]
    la, lb = plain.train_step(*batch), cached.train_step(*batch)
    for k in la:
        assert lb[k] == pytest.approx(la[k], rel=RTOL), k
    for key in ("kl/0", "kd/0", "cross/0"):  # every term of the method is at work
        if key in la and (plain.alpha if key != "cross/0" else plain.beta):
            assert la[key] > 1e-4, key
    assert_grads_close(grads(cached), grads(plain))  # (as clipped; the step leaves them in .grad)
    # The updated weights, per tensor: the step taken agrees to RTOL of its size. Adam's first
    # step is lr·g / (|g| + eps) element by element, which turns a relative gradient error δ into
    # at most δ·|g| / (2·eps) of an element's step where |g| ≈ eps: at float64's δ that stays far
    # below RTOL. The attention key biases are the exception: their gradient is rounding noise.
    changed = 0
    for k, (a, b) in enumerate(zip(plain.peers, cached.peers)):
        for (n, p), q in zip(a.named_parameters(), b.parameters()):
            step = (p - start[k][n]).norm().item()
            if n.endswith(KEY_BIAS):
                # Adam scales even a noise gradient to a step: these must merely stay (almost) put
                assert (p - start[k][n]).abs().max() < 1e-4 and (q - start[k][n]).abs().max() < 1e-4, n
                continue
            delta = (p - q).norm().item()
            assert delta <= RTOL * step or delta == 0, f"peer {k} {n}: ‖Δ‖ = {delta:.3g}, step {step:.3g}"
            changed += step > 0
    assert changed > 20 * len(plain.peers)


def test_rand_context_replays_and_restores():
    torch.manual_seed(0)
    ctx = gradcache.RandContext([])
    first = torch.rand(3)
    after = torch.get_rng_state()
    with ctx:
        again = torch.rand(3)
    assert torch.equal(first, again)
    assert torch.equal(torch.get_rng_state(), after)


def test_cached_backward_on_a_toy_encoder():
    """A linear encoder with dropout and a loss coupling all rows: gradients as the plain backward."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 4).double()
    drop = torch.nn.Dropout(0.3)
    x = torch.randn(7, 5, dtype=torch.float64)
    chunks = [x[:3], x[3:5], x[5:]]
    enc = lambda c: {1: drop(lin(c)), 2: lin(c)}  # noqa: E731
    order = torch.tensor([6, 0, 5, 1, 4, 2, 3])
    loss_fn = lambda v: ((v[0][1] @ v[0][2].T).logsumexp(-1).sum() + v[0][2][order[0]].sum(), None)  # noqa: E731

    state = torch.get_rng_state()
    vecs = gradcache.assemble([enc(c) for c in chunks], order)
    loss, _ = loss_fn([vecs])
    loss.backward()
    ref = [p.grad.clone() for p in lin.parameters()]
    lin.zero_grad()
    torch.set_rng_state(state)
    got, _ = gradcache.cached_backward([gradcache.Tower(enc, chunks, order)], loss_fn)
    assert got.item() == pytest.approx(loss.item(), rel=1e-12)
    for g, r in zip((p.grad for p in lin.parameters()), ref):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def test_grad_cache_chunk_config():
    cfg = load_config(None, ["train.grad_cache_chunk=8"])
    assert cfg.train.grad_cache_chunk == 8 and from_dict(cfg.to_dict()) == cfg
    assert load_config().train.grad_cache_chunk == 0
    with pytest.raises(ConfigError, match="train.grad_cache_chunk: must be ≥ 0"):
        load_config(None, ["train.grad_cache_chunk=-1"])
    with pytest.raises(ConfigError, match="train.grad_cache_chunk: expected int"):
        load_config(None, ["train.grad_cache_chunk=1.5"])
