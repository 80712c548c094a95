import json

import numpy as np
import pytest
import torch

from onmkd.retrieval import backends, fastpath
from onmkd.data import load_dataset
from onmkd.errors import ConfigError
from onmkd.retrieval.evaluate import EvalConfig, evaluate
from onmkd.retrieval.models import Encoder

from numerics import bert_forward_atol

TEXTS = ["paris is the capital city of france", "tesla", "the rhine river flows through germany and france",
         "who was the king", "oxygen is a gas with atomic number eight", "berlin"]


def _reference(enc, texts, max_length=32):
    """The transformers forward, one text at a time (no padding, no fused kernels)."""
    with torch.inference_mode():
        rows = []
        for t in texts:
            b = enc.tokenize([t], max_length)
            rows.append(enc.forward(b["input_ids"], b["attention_mask"])[enc.num_layers].numpy())
    return np.vstack(rows)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return Encoder.load(str(tiny_model_dir))


# ---- the PyTorch fast path that Encoder.encode uses


@pytest.mark.numerics
@pytest.mark.parametrize("pooling, ffn_rows", [("mean", 2048), ("cls", 2048), ("mean", 5)])
def test_fused_forward_equals_transformers_forward(tiny_model_dir, pooling, ffn_rows, monkeypatch):
    monkeypatch.setattr(fastpath.FusedBert, "FFN_ROWS", ffn_rows)  # 5: the feed-forward in blocks
    enc = Encoder.load(str(tiny_model_dir), pooling=pooling)
    assert fastpath.supported(enc.model)
    b = enc.tokenize(TEXTS, 32)  # padded batch
    with torch.inference_mode():
        ref = enc.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
        got = fastpath.FusedBert(enc.model)(b["input_ids"], b["attention_mask"])
    real = b["attention_mask"].bool()
    tol = bert_forward_atol(enc.model.config, 32)  # two kernels, two summation orders (tests/numerics.py)
    assert torch.allclose(got[real], ref[real], atol=tol * ref[real].abs().max().item())
    assert np.allclose(enc.encode(TEXTS, max_length=32, batch_size=4), _reference(enc, TEXTS), atol=tol)


@pytest.mark.numerics
def test_encode_follows_weight_updates_and_keeps_training_mode(tiny_model_dir):
    enc = Encoder.load(str(tiny_model_dir)).train()
    before = enc.encode(TEXTS, max_length=32)
    assert enc.training  # encode gives the mode back
    with torch.no_grad():  # an optimiser step changes Q, K, V in place
        enc.model.encoder.layer[0].attention.self.value.weight.add_(torch.randn(32, 32, generator=torch.Generator().manual_seed(1)))
    after = enc.encode(TEXTS, max_length=32)
    enc.eval()
    tol = bert_forward_atol(enc.model.config, 32)
    assert not np.allclose(before, after, atol=100 * tol)
    assert np.allclose(after, _reference(enc, TEXTS), atol=tol)


def test_unsupported_models_use_the_transformers_forward(tiny):
    assert not fastpath.supported(tiny.model.train())  # training mode: never the fused path
    tiny.model.eval()
    q = backends.quantize_int8(tiny.model)
    assert not fastpath.supported(q)


# ---- int8 and ONNX Runtime backends


@pytest.mark.numerics
@pytest.mark.parametrize("backend", ["int8", "onnx", "onnx-int8"])
def test_backend_vectors_close_to_fp32(tiny, backend):
    ref = tiny.encode(TEXTS, max_length=32)
    enc = backends.with_backend(tiny, backend)
    got = enc.encode(TEXTS, max_length=32, batch_size=4)
    assert got.shape == ref.shape and got.dtype == np.float32
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99, cos
    tol = bert_forward_atol(tiny.model.config, 32)  # ONNX Runtime's kernels: rounding only
    if backend == "onnx":
        assert np.allclose(got, ref, atol=tol)
    # the same contract as Encoder: one text at a time gives the same vectors (order kept)
    batches = [enc.tokenize([t], 32) for t in TEXTS]
    one = np.vstack([enc.infer(b["input_ids"], b["attention_mask"]).numpy() for b in batches])
    # int8: activations are quantised with a scale from each batch's range, so a batch of one and a
    # batch of four differ by quantisation steps (about 1e-2 of a unit vector), not by rounding
    assert np.allclose(one, got, atol=tol if backend == "onnx" else 2e-2)
    assert enc.fingerprint() == f"{tiny.fingerprint()}-{backend}"
    assert enc.parameters_count() == tiny.parameters_count() and enc.dim == tiny.dim


def test_onnx_graph_is_cached_by_fingerprint(tiny, monkeypatch):
    first = backends.with_backend(tiny, "onnx")
    assert first.path.exists() and first.path.parent.name == "onnx" and tiny.fingerprint() in first.path.name
    monkeypatch.setattr(backends, "_export", lambda *a: pytest.fail("exported again"))
    again = backends.with_backend(tiny, "onnx")
    assert again.path == first.path
    before = again.set_threads(1)  # a one-thread session for latency, and back
    assert again.threads == 1 and again.set_threads(before) == 1 and again.threads == before
    assert not [p for p in first.path.parent.iterdir() if p.name.endswith(".tmp")]


def test_unknown_backend_is_refused():
    with pytest.raises(ConfigError, match="backend: 'fp8' is not one of torch, int8, onnx, onnx-int8"):
        EvalConfig(model="x", dataset="y", backend="fp8")


def test_evaluation_under_a_backend_has_its_own_cache_entry(tiny_model_dir, tiny_beir, tmp_path, monkeypatch):
    monkeypatch.setenv("ONMKD_CACHE", str(tmp_path / "cache"))
    data = load_dataset(str(tiny_beir))
    results = {}
    for backend in ("torch", "onnx"):
        cfg = EvalConfig(model=str(tiny_model_dir), dataset="tiny", split="test", batch_size=2, backend=backend)
        results[backend] = evaluate(cfg, data, out_dir=tmp_path / backend)
        assert json.loads((tmp_path / backend / "config.json").read_text())["backend"] == backend
    metas = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "embeddings").glob("*.json")]
    assert sorted(m["backend"] for m in metas) == ["onnx", "torch"]
    assert results["onnx"]["ndcg@10"] == pytest.approx(results["torch"]["ndcg@10"], abs=1e-6)
