"""Safe loading, path safety and resource checks (the "Robustness" issue).

- weights load only from safetensors or ``torch.load(weights_only=True)``: a pickle payload is
  refused with one line naming the file, and never runs;
- checkpoint code runs only with ``--trust-remote-code``;
- names from user input cannot make a write leave the run directory;
- an allocation or write that cannot fit fails first, naming the alternative.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from onmkd import resources
from onmkd.cli import app
from onmkd.errors import ConfigError, ModelError, OnmkdError
from onmkd.resources import ResourceError

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


class _Payload:
    """Pickles as a call to ``exec`` that writes ``marker``: a stand-in for malicious code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.fixture(autouse=True)
def _checks_on(monkeypatch):
    monkeypatch.delenv("ONMKD_SKIP_RESOURCE_CHECKS", raising=False)
    monkeypatch.delenv("ONMKD_TRUST_REMOTE_CODE", raising=False)


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _one_line_error(result) -> str:
    """The CLI's error line (exit 2, no traceback); progress or log lines may come before it."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.output
    assert sum(line.startswith("error: ") for line in lines) == 1, result.output
    return lines[-1]


def _tokenizer_and_config(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy(f, dest / f.name)


# ------------------------------------------------------------------------------- safe loading


def test_payload_is_live(tmp_path):
    """The payload used below really runs when unpickled: the refusals are meaningful."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def test_pickle_checkpoint_folder_is_refused_and_never_run(tiny_model_dir, tmp_path):
    from onmkd.retrieval.models import Encoder

    folder = tmp_path / "pickled-model"
    _tokenizer_and_config(tiny_model_dir, folder)
    marker = tmp_path / "ran"
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(2, 2), "x": _Payload(marker)},
               folder / "pytorch_model.bin")
    with pytest.raises(ModelError) as e:
        Encoder.load(str(folder))
    msg = str(e.value)
    assert str(folder) in msg and "safetensors" in msg and "pytorch_model.bin" in msg and "\n" not in msg
    assert not marker.exists()


def test_cli_refuses_pickle_checkpoint_in_one_line(tiny_model_dir, tiny_beir, tmp_path):
    folder = tmp_path / "pickled-model"
    _tokenizer_and_config(tiny_model_dir, folder)
    marker = tmp_path / "ran"
    torch.save({"x": _Payload(marker)}, folder / "pytorch_model.bin")
    line = _one_line_error(invoke("evaluate", "--model", folder, "--dataset", tiny_beir, "--out", tmp_path / "r"))
    assert str(folder) in line and "weights must be safetensors" in line
    assert not marker.exists() and not (tmp_path / "r" / "metrics.json").exists()


@pytest.mark.parametrize("kind", ["torch.save", "raw pickle"])
def test_training_state_with_pickle_payload_is_refused(kind, tmp_path):
    from onmkd.training.train import Trainer

    run = tmp_path / "run"
    path = run / "checkpoint" / "state.pt"
    path.parent.mkdir(parents=True)
    marker = tmp_path / "ran"
    state = {"step": 3, "peers": [{"w": torch.zeros(2)}], "payload": _Payload(marker)}
    if kind == "torch.save":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state, protocol=2))
    fake = SimpleNamespace(out=run, device=torch.device("cpu"))
    with pytest.raises(ModelError) as e:
        Trainer._load_state(fake)
    msg = str(e.value)
    assert str(path) in msg and "refused" in msg and "\n" not in msg
    assert not marker.exists()


def test_training_resume_refuses_poisoned_state_in_one_line(tiny_model_dir, tiny_squad, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    marker = tmp_path / "ran"
    torch.save({"step": 1, "payload": _Payload(marker)}, run / "checkpoint" / "state.pt")
    sets = [f'model.peer=[{{checkpoint="{tiny_model_dir}"}}]', "model.layers=1", f'data.dataset="squad:{tiny_squad}"',
            "train.epochs=1", "data.p_max_len=16", "data.q_max_len=8", "data.hard_negatives=0"]
    args = ["train", "--out", run] + [x for s in sets for x in ("--set", s)]
    line = _one_line_error(invoke(*args))
    assert str(run / "checkpoint" / "state.pt") in line and "refused" in line
    assert not marker.exists()


def test_truncated_training_state_is_one_line(tmp_path):
    from onmkd.training.train import load_state_file

    path = tmp_path / "state.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelError, match="unreadable training state"):
        load_state_file(path, "cpu")


def test_remote_code_is_off_by_default_and_opt_in(tiny_model_dir, tmp_path, monkeypatch):
    """A checkpoint whose config asks for its own code is refused (and the code never runs)."""
    from onmkd.retrieval.models import Encoder

    folder = tmp_path / "custom-code"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    (folder / "configuration_evil.py").write_text(code)
    (folder / "modeling_evil.py").write_text(code)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="evil-bert", auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                                                  "AutoModel": "modeling_evil.EvilModel"})
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="--trust-remote-code") as e:
        Encoder.load(str(folder))
    assert "\n" not in str(e.value)
    assert not marker.exists()

    import transformers

    seen = []

    def spy(where, **kw):
        seen.append(kw)
        raise ValueError("stop here")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", spy)
    with pytest.raises(ModelError):
        Encoder.load(str(tiny_model_dir))
    assert seen[-1]["trust_remote_code"] is False and seen[-1]["use_safetensors"] is True
    monkeypatch.setenv("ONMKD_TRUST_REMOTE_CODE", "0")  # restored after the test, whatever the CLI sets
    _one_line_error(invoke("--trust-remote-code", "evaluate", "--model", tiny_model_dir, "--dataset",
                           tmp_path / "missing", "--out", tmp_path / "r"))
    assert os.environ["ONMKD_TRUST_REMOTE_CODE"] == "1"
    with pytest.raises(ModelError):
        Encoder.load(str(tiny_model_dir))
    assert seen[-1]["trust_remote_code"] is True


def test_safetensors_checkpoint_still_loads(tiny_model_dir):
    from onmkd.retrieval.models import Encoder

    enc = Encoder.load(str(tiny_model_dir))
    assert enc.dim == 32


# ------------------------------------------------------------------------------- path safety


def test_safe_join_and_safe_name(tmp_path):
    from onmkd.io import check_component, safe_join, safe_name

    assert safe_join(tmp_path, "a", "b/c") == tmp_path / "a" / "b" / "c"
    for bad in ("..", "../x", "a/../../x", "/etc/passwd", "C:\\x", "a\\..\\..\\x", ""):
        with pytest.raises(ConfigError):
            safe_join(tmp_path, bad)
    for text in ("..", ".", "", "beir:../../x", "/abs/path", "a\\b", "x\0y"):
        name = safe_name(text)
        assert name not in ("", ".", "..") and "/" not in name and "\\" not in name and "\0" not in name
    assert safe_name("test") == "test"
    with pytest.raises(ConfigError, match="split"):
        check_component("../x", "split")


def test_dataset_path_with_dotdot_writes_only_inside_run_dir(tiny_model_dir, tiny_beir, tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    cache = tmp_path / "cache"
    monkeypatch.setenv("ONMKD_CACHE", str(cache))
    monkeypatch.chdir(work)
    spec = os.path.join("sub", "..", "..", tiny_beir.name, "..", tiny_beir.name)  # tmp_path/tiny-beir
    before = _files(tmp_path)

    run = work / "run"
    result = invoke("evaluate", "--model", tiny_model_dir, "--dataset", spec, "--split", "test", "--out", run)
    assert result.exit_code == 0, result.output
    new = _files(tmp_path) - before
    assert new and all(p.is_relative_to(run) or p.is_relative_to(cache) for p in new), sorted(map(str, new))
    assert (run / "metrics.json").exists()

    before = _files(tmp_path)  # the default run directory: one folder under runs/evaluate
    result = invoke("evaluate", "--model", "bm25", "--dataset", spec, "--split", "test")
    assert result.exit_code == 0, result.output
    new = _files(tmp_path) - before
    base = work / "runs" / "evaluate"
    assert new and all(p.is_relative_to(base) and len(p.relative_to(base).parts) == 2 for p in new)


@pytest.mark.parametrize("split", ["../../escape", "..", "/tmp/abs"])
def test_split_names_cannot_leave_the_run_dir(split, tiny_beir, tmp_path, monkeypatch):
    from onmkd.retrieval.evaluate import EvalConfig

    with pytest.raises(ConfigError, match="split"):
        EvalConfig(model="bm25", dataset="x", split=split)
    monkeypatch.chdir(tmp_path)
    before = _files(tmp_path)
    _one_line_error(invoke("evaluate", "--model", "bm25", "--dataset", tiny_beir, "--split", split))
    assert _one_line_error(invoke("baselines", "--models", "bm25", "--dataset", tiny_beir, "--split", split,
                                  "--out", tmp_path / "b")).startswith("error: split")
    assert _files(tmp_path) == before


def test_split_named_dotdot_in_a_data_set_is_refused(tiny_beir, tmp_path, monkeypatch):
    shutil.copy(tiny_beir / "qrels" / "test.tsv", tiny_beir / "qrels" / "...tsv")  # a split named '..'
    monkeypatch.chdir(tmp_path)
    before = _files(tmp_path)
    line = _one_line_error(invoke("evaluate", "--model", "bm25", "--dataset", tiny_beir, "--split", ".."))
    assert "split" in line
    assert _files(tmp_path) == before


def test_sweep_study_name_cannot_leave_runs(tmp_path, monkeypatch):
    import onmkd
    import onmkd.study.sweep

    text = (Path(onmkd.__file__).parent / "spaces" / "default.toml").read_text()
    space = tmp_path / "space.toml"
    space.write_text(text.replace('name = "default"', 'name = "../../../evil"', 1))
    monkeypatch.setattr(onmkd.study.sweep, "sweep", lambda *a, **k: pytest.fail("sweep ran with an escaping study name"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    line = _one_line_error(invoke("sweep", "--space", space))
    assert "study.name" in line
    assert not (tmp_path / "evil").exists()


# ------------------------------------------------------------------------------- resources


def test_flat_index_too_large_names_ivfpq_and_hnsw(monkeypatch):
    from onmkd.retrieval.evaluate import EvalConfig, dense_run
    from onmkd.retrieval.index import IndexSpec

    monkeypatch.setattr(resources, "available_memory", lambda: 10_000)
    pvecs = np.zeros((100, 32), dtype=np.float32)  # 12.5 KiB flat
    qvecs = np.zeros((1, 32), dtype=np.float32)
    cfg = EvalConfig(model="m", dataset="d")
    with pytest.raises(ResourceError) as e:
        dense_run(qvecs, pvecs, ["q"], [f"p{i}" for i in range(100)], cfg)
    msg = str(e.value)
    assert "flat index over 100 passages" in msg and "--index ivfpq" in msg and "--index hnsw" in msg
    assert isinstance(e.value, OnmkdError)
    with pytest.raises(ResourceError, match="shard"):
        dense_run(qvecs, pvecs, ["q"], [f"p{i}" for i in range(100)], EvalConfig(model="m", dataset="d", index=IndexSpec(kind="hnsw")))
    monkeypatch.setenv("ONMKD_SKIP_RESOURCE_CHECKS", "1")
    run, _ = dense_run(qvecs, pvecs, ["q"], [f"p{i}" for i in range(100)], cfg)
    assert len(run["q"]) == 100


def test_evaluate_refuses_corpus_that_cannot_fit_in_memory(tiny_model_dir, tiny_beir, tmp_path, monkeypatch):
    from onmkd.data import load_dataset
    from onmkd.retrieval.evaluate import EvalConfig, evaluate

    monkeypatch.setenv("ONMKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(resources, "available_memory", lambda: 100)
    cfg = EvalConfig(model=str(tiny_model_dir), dataset="tiny", split="test")
    with pytest.raises(ResourceError) as e:
        evaluate(cfg, load_dataset(str(tiny_beir)), out_dir=tmp_path / "run")
    msg = str(e.value)
    assert "encoding 5 passages" in msg and "shards" in msg and "--index ivfpq" in msg
    assert not (tmp_path / "run").exists()
    line = _one_line_error(invoke("evaluate", "--model", tiny_model_dir, "--dataset", tiny_beir, "--out", tmp_path / "r"))
    assert "memory" in line and "shards" in line


def _full_disk(monkeypatch, free=1024):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * free, 9 * free, free))


def test_disk_checks_before_large_writes(tiny_model_dir, tiny_beir, tmp_path, monkeypatch):
    from onmkd.data import load_dataset
    from onmkd.retrieval.evaluate import EvalConfig, evaluate
    from onmkd.retrieval.models import Encoder
    from onmkd.retrieval.dual import DualEncoder

    monkeypatch.setenv("ONMKD_CACHE", str(tmp_path / "cache"))
    enc = Encoder.load(str(tiny_model_dir))
    _full_disk(monkeypatch)

    with pytest.raises(ResourceError, match="--no-cache") as e:
        evaluate(EvalConfig(model=str(tiny_model_dir), dataset="tiny", split="test"), load_dataset(str(tiny_beir)))
    assert "disk" in str(e.value)
    assert not list((tmp_path / "cache").rglob("*.npy"))
    m = evaluate(EvalConfig(model=str(tiny_model_dir), dataset="tiny", split="test", cache=False), load_dataset(str(tiny_beir)))
    assert m["questions"] == 3  # --no-cache writes nothing large

    with pytest.raises(ResourceError, match="saving the model"):
        DualEncoder(enc).save(tmp_path / "student")
    assert not (tmp_path / "student").exists() and not (tmp_path / "student.tmp").exists()


def test_disk_check_before_extracting_an_archive(tmp_path, monkeypatch):
    import zipfile

    from onmkd.retrieval.mpnet import extract_zip_safely

    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("model/config.json", "{}")
        zf.writestr("model/model.safetensors", b"\0" * 4096)
    _full_disk(monkeypatch)
    with pytest.raises(ResourceError, match="extracting the archive"):
        extract_zip_safely(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
