import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from onmkd.data import load_dataset
from onmkd.retrieval.models import Encoder
from onmkd.study.profile import encoder_flops, matmul_peak_gflops, profile_retriever, token_lengths


def test_flops_formula_against_a_count_by_hand(tiny_model_dir):
    enc = Encoder.load(str(tiny_model_dir))  # 2 layers, hidden 32, feed-forward 64
    # one layer, n = 5 real tokens, 2 FLOPs per multiply-add:
    qkv = 3 * 2 * 5 * 32 * 32  # 30720
    out = 2 * 5 * 32 * 32  # 10240
    ffn = 2 * (2 * 5 * 32 * 64)  # 40960
    attention = 2 * (2 * 5 * 5 * 32)  # scores and weighted sum: 3200
    assert qkv + out + ffn + attention == 85120
    assert encoder_flops(enc, 5) == 2 * 85120
    per_passage = encoder_flops(enc, [5, 1, 10])
    assert per_passage.shape == (3,)
    assert per_passage[1] == 2 * (8 * 32 * 32 + 4 * 32 * 64 + 4 * 32)
    assert per_passage[2] == 2 * (8 * 10 * 1024 + 4 * 10 * 32 * 64 + 4 * 100 * 32)
    # the formula takes a config as well, e.g. the teacher's shape: L 6, h 384, f 1536
    from transformers import BertConfig

    teacher = BertConfig(num_hidden_layers=6, hidden_size=384, intermediate_size=1536)
    assert encoder_flops(teacher, 128) == 6 * (24 * 128 * 384**2 + 4 * 128**2 * 384)


def test_matmul_peak_is_a_positive_rate():
    gflops = matmul_peak_gflops([(64, 32, 48)], repeats=2)
    assert math.isfinite(gflops) and gflops > 0


def test_profile_retriever_keys_and_sanity(tiny_model_dir, tiny_beir):
    data = load_dataset(str(tiny_beir))
    threads = torch.get_num_threads()
    r = profile_retriever(str(tiny_model_dir), data, "test", q_max_len=16, p_max_len=32, batch_size=2, n_latency=6,
                          peak_gflops=100.0)
    assert r["query_threads"] == 1 and r["threads"] == threads == torch.get_num_threads()  # set back after the timings
    for key in ("params_m", "checkpoint_mb", "checkpoint_mb_fp16", "checkpoint_mb_int8", "index_mb", "query_ms_p50",
                "query_ms_p95", "query_ms_p99", "passages_per_s", "tokens_per_s", "search_ms_per_query",
                "search_ms_batch1", "qps_end_to_end", "peak_rss_mb", "flops_per_passage", "achieved_gflops",
                "matmul_peak_gflops", "peak_fraction", "backend", "threads", "batch_size", "p_max_len"):
        assert key in r, key
    assert "peak_cuda_mb" not in r  # CPU run
    assert r["passages"] == 5 and r["questions"] == 3
    assert 0 < r["checkpoint_mb_fp16"] < r["checkpoint_mb"]
    assert 0 < r["checkpoint_mb_int8"]
    assert r["query_ms_p50"] <= r["query_ms_p95"] <= r["query_ms_p99"]
    assert r["index_mb"] * 2**20 >= 5 * 32 * 4  # flat index: 5 vectors of 32 floats at least
    assert r["passages_per_s"] > 0 and r["qps_end_to_end"] > 0 and r["peak_rss_mb"] > 0
    enc = Encoder.load(str(tiny_model_dir))
    texts = [f"{d['title']} {d['text']}" for d in data.corpus.values()]
    lengths = token_lengths(enc, texts, 32)
    assert r["tokens_per_s"] == pytest.approx(r["passages_per_s"] * lengths.mean())
    assert r["flops_per_passage"] == pytest.approx(encoder_flops(enc, lengths).mean())
    assert r["matmul_peak_gflops"] == 100.0
    assert r["peak_fraction"] == pytest.approx(r["achieved_gflops"] / 100.0)
    assert r["achieved_gflops"] == pytest.approx(r["flops_per_passage"] * r["passages_per_s"] / 1e9)


def test_profile_under_int8_reports_no_fp32_peak_fraction(tiny_model_dir, tiny_beir):
    data = load_dataset(str(tiny_beir))
    r = profile_retriever(str(tiny_model_dir), data, "test", p_max_len=32, batch_size=2, n_latency=3, peak_gflops=100.0,
                          backend="int8")
    assert r["backend"] == "int8" and r["peak_fraction"] is None and r["achieved_gflops"] > 0
    assert r["query_ms_p50"] > 0 and r["index_mb"] > 0


def test_profile_command_writes_json_and_prints_table(tiny_model_dir, tiny_beir, tmp_path, monkeypatch):
    import onmkd.study.profile
    from onmkd.cli import app

    monkeypatch.setattr(onmkd.study.profile, "matmul_peak_gflops", lambda **kw: 50.0)  # the real one takes seconds
    out = tmp_path / "p.json"
    result = CliRunner().invoke(app, ["profile", "--model", str(tiny_model_dir), "--dataset", str(tiny_beir),
                                      "--n-latency", "4", "--batch-size", "2", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["matmul_peak_gflops"] == 50.0 and saved["backend"] == "torch" and saved["dataset"] == str(tiny_beir)
    assert saved["command"].startswith("onmkd-bench profile --model ")
    assert "| query_ms_p95" in result.output and "peak_fraction" in result.output


def test_profile_command_refuses_a_bad_backend(tiny_model_dir, tiny_beir, tmp_path):
    from onmkd.cli import app

    result = CliRunner().invoke(app, ["profile", "--model", str(tiny_model_dir), "--dataset", str(tiny_beir),
                                      "--backend", "fp8", "--out", str(tmp_path / "p.json")])
    assert result.exit_code == 2
    assert "error: --backend: 'fp8' is not one of torch, int8, onnx, onnx-int8" in result.output
    assert not (tmp_path / "p.json").exists()


def test_efficiency_and_latency_still_work_for_the_sweep(tiny_model_dir):
    from onmkd.retrieval.dual import DualEncoder
    from onmkd.study.profile import efficiency

    dual = DualEncoder(Encoder.load(str(tiny_model_dir))).train()
    eff = efficiency(dual, ["what is the capital of france", "who was tesla"], q_max_len=16, n_latency=3)
    assert eff["params_m"] > 0 and eff["query_ms_p50"] > 0 and eff["latency_calls"] == 3
    assert np.isfinite(eff["checkpoint_mb"])
    assert dual.question.training  # the training mode is given back
    assert torch.is_grad_enabled()
