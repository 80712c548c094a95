import json

import pytest
from typer.testing import CliRunner

from onmkd.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_data_info_counts_bundled_squad():
    result = invoke("data", "info", "squad")
    assert result.exit_code == 0, result.output
    lines = dict(line.split(None, 1) for line in result.output.splitlines())
    assert lines["passages"].strip() == "2,067"
    assert lines["test.questions"].strip() == "1,975"
    assert lines["dev.questions"].strip() == "908"
    assert lines["train.questions"].strip() == "7,687"


def test_models_list_shows_registry():
    result = invoke("models", "list")
    assert result.exit_code == 0, result.output
    for name in ("minilm-l6", "minilm-l6-sre", "minilm-l3", "mpnet-base"):
        assert name in result.output


def test_evaluate_writes_run_directory(tiny_beir, tmp_path):
    out = tmp_path / "run"
    result = invoke("evaluate", "--model", "bm25", "--dataset", tiny_beir, "--split", "test", "--out", out)
    assert result.exit_code == 0, result.output
    assert "ndcg@10" in result.output
    assert {p.name for p in out.iterdir()} == {"config.json", "metrics.json", "run.trec"}
    assert json.loads((out / "config.json").read_text())["index"]["kind"] == "flat"


def _squad_without_data(tmp_path):
    p = tmp_path / "squad.json"
    p.write_text(json.dumps({"version": "1.1"}))
    return f"squad:{p}", "squad.json"


def _truncated_line(tiny_beir):
    with open(tiny_beir / "queries.jsonl", "a") as f:
        f.write('{"_id": "q9", "text": "trunc\n')
    return str(tiny_beir), "queries.jsonl:4"


def _unknown_qrels(tiny_beir):
    with open(tiny_beir / "qrels" / "test.tsv", "a") as f:
        f.write("q1\tnope\t1\n")
    return str(tiny_beir), "test.tsv:6"


def _empty_corpus(tiny_beir):
    (tiny_beir / "corpus.jsonl").write_text("")
    return str(tiny_beir), "corpus.jsonl"


@pytest.mark.parametrize("case", ["squad_without_data", "truncated_line", "unknown_qrels", "empty_corpus"])
def test_bad_data_is_one_line_naming_the_place(case, tiny_beir, tmp_path):
    spec, where = {
        "squad_without_data": lambda: _squad_without_data(tmp_path),
        "truncated_line": lambda: _truncated_line(tiny_beir),
        "unknown_qrels": lambda: _unknown_qrels(tiny_beir),
        "empty_corpus": lambda: _empty_corpus(tiny_beir),
    }[case]()
    result = invoke("evaluate", "--model", "bm25", "--dataset", spec, "--out", tmp_path / "run")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and where in lines[0], result.output
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_unknown_qrels_switch_skips_with_one_warning(tiny_beir, tmp_path):
    spec, _ = _unknown_qrels(tiny_beir)
    assert invoke("data", "info", spec).exit_code == 2  # fail is the default
    info = invoke("data", "info", spec, "--unknown-qrels", "skip")
    assert info.exit_code == 0, info.output
    assert "test.qrels" in info.output
    result = invoke("evaluate", "--model", "bm25", "--dataset", spec, "--out", tmp_path / "run", "--unknown-qrels", "skip")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "metrics.json").exists()
    bad = invoke("data", "info", spec, "--unknown-qrels", "ignore")
    assert bad.exit_code == 2 and "unknown_qrels" in bad.output


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--model", "bm25", "--split", "validation"], "no split 'validation'"),
        (["--model", "bm25", "--index", "lsh"], "index: 'lsh'"),
        (["--model", "bm25", "--top-k", "0"], "top_k"),
    ],
)
def test_bad_options_are_one_line(args, expected, tiny_beir, tmp_path):
    result = invoke("evaluate", "--dataset", tiny_beir, "--out", tmp_path / "run", *args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert expected in result.output


def test_console_script_reports_errors_without_traceback(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "onmkd.cli", "data", "info", str(tmp_path / "missing")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr


def test_unavailable_device_is_one_line(tiny_beir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    result = invoke("evaluate", "--model", "bm25", "--dataset", tiny_beir, "--out", tmp_path / "r")
    assert result.exit_code == 0  # bm25 needs no device
    from onmkd.retrieval.evaluate import EvalConfig, evaluate
    from onmkd.data import load_dataset
    from onmkd.errors import ConfigError

    with pytest.raises(ConfigError, match="--device: 'cuda' asked for, but torch sees no CUDA device"):
        evaluate(EvalConfig(model="minilm-l6", dataset="x", device="cuda"), load_dataset(str(tiny_beir)))


def test_baselines_main_job_writes_table(tiny_beir, tiny_model_dir, tmp_path):
    result = invoke("baselines", "--dataset", tiny_beir, "--models", f"bm25,{tiny_model_dir}", "--out", tmp_path / "b")
    assert result.exit_code == 0, result.output
    table = (tmp_path / "b" / "table__tiny-beir__test.md").read_text()
    assert "bm25" in table and "ndcg@10" in table
    assert len(list((tmp_path / "b").glob("*/metrics.json"))) == 2
