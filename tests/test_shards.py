import json
import random

import numpy as np
import pytest

from onmkd.data import passage_text
from onmkd.errors import ConfigError, DataError
from onmkd.retrieval.shards import MANIFEST, build_index_from_shards, encode_shards, load_shards

from numerics import TINY_BERT_ATOL as TINY_ATOL  # workers batch differently: rounding only

WORDS = "the capital city of france paris germany berlin river rhine flows through tesla inventor oxygen gas".split()


def _corpus(n=23, seed=0):
    rng = random.Random(seed)
    return {f"p{i}": {"title": rng.choice(WORDS), "text": " ".join(rng.choices(WORDS, k=rng.randint(2, 30)))}
            for i in range(n)}


def _reference(model_dir, corpus, max_length=32):
    from onmkd.retrieval.models import Encoder

    enc = Encoder.load(str(model_dir))
    return enc.encode([passage_text(d) for d in corpus.values()], max_length=max_length, batch_size=4)


@pytest.mark.numerics
def test_two_workers_equal_one_process(tiny_model_dir, tmp_path):
    corpus = _corpus()
    manifest = encode_shards(str(tiny_model_dir), corpus, tmp_path / "v", shards=2, workers=2, batch_size=4,
                             max_length=32)
    assert manifest["complete"] and manifest["count"] == 23 and manifest["dim"] == 32
    assert [e["count"] for e in manifest["shards"]] == [12, 11]
    assert sorted((tmp_path / "v").iterdir())[-1].name == "shard-00001.npy"
    ids, vecs = load_shards(tmp_path / "v")
    assert ids == list(corpus)
    np.testing.assert_allclose(vecs, _reference(tiny_model_dir, corpus), atol=TINY_ATOL)


def test_rerun_encodes_only_missing_or_damaged_shards(tiny_model_dir, tmp_path):
    corpus, out = _corpus(), tmp_path / "v"
    kw = dict(shards=3, workers=1, batch_size=4, max_length=32)
    encode_shards(str(tiny_model_dir), corpus, out, **kw)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    (out / "shard-00001.npy").unlink()
    logs = []
    manifest = encode_shards(str(tiny_model_dir), corpus, out, log=logs.append, **kw)
    assert manifest["complete"]
    assert any("2 of 3 shards already encoded" in m for m in logs)
    now = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    rewritten = {n for n in now if now[n] != stamps.get(n)}
    assert rewritten <= {"shard-00001.npy", "shard-00001.ids.txt"} and "shard-00001.npy" in rewritten
    ids, vecs = load_shards(out)
    assert ids == list(corpus)
    np.testing.assert_allclose(vecs, _reference(tiny_model_dir, corpus), atol=TINY_ATOL)

    # a damaged shard: loading refuses it, rerunning encodes it again
    path = out / "shard-00002.npy"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="shard-00002.npy: does not match its sha256"):
        load_shards(out)
    logs.clear()
    encode_shards(str(tiny_model_dir), corpus, out, log=logs.append, **kw)
    assert any("shard 2: files missing or not matching" in m for m in logs)
    np.testing.assert_allclose(load_shards(out)[1], vecs, atol=0)

    # a different encoding into the same folder is refused, not mixed in
    with pytest.raises(ConfigError, match="max_length"):
        encode_shards(str(tiny_model_dir), corpus, out, **{**kw, "max_length": 16})


def test_unfinished_folder_and_index(tiny_model_dir, tmp_path):
    corpus, out = _corpus(12), tmp_path / "v"
    encode_shards(str(tiny_model_dir), corpus, out, shards=2, workers=1, max_length=32)
    manifest = json.loads((out / MANIFEST).read_text())
    index, ids = build_index_from_shards(out, shards=2)
    assert index.ntotal == 12 and ids == list(corpus)
    _, vecs = load_shards(out)
    assert (index.search(vecs[:3], 1)[1][:, 0] == [0, 1, 2]).all()
    manifest["complete"] = False
    manifest["shards"] = manifest["shards"][:1]
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="only 1 of 2 shards finished"):
        load_shards(out)
    with pytest.raises(DataError, match="no manifest.json"):
        load_shards(tmp_path)


def test_cli_encode_then_index(tiny_model_dir, tiny_beir, tmp_path):
    from typer.testing import CliRunner

    from onmkd.cli import app
    from onmkd.retrieval.index import ShardedIndex, load_index

    def invoke(*args):
        return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)

    vec = tmp_path / "vec"
    result = invoke("encode", "--model", tiny_model_dir, "--dataset", tiny_beir, "--out", vec, "--shards", "2",
                    "--max-length", "32")
    assert result.exit_code == 0, result.output
    assert "5 passages" in result.output
    result = invoke("index", vec, "--kind", "flat", "--shards", "2")
    assert result.exit_code == 0, result.output
    index = load_index(vec / "index-flat-2shards")
    assert isinstance(index, ShardedIndex) and index.ntotal == 5
    assert (vec / "index-flat-2shards" / "ids.txt").read_text().split() == ["d1", "d2", "d3", "d4", "d5"]
    result = invoke("index", vec, "--kind", "hnsw", "--out", tmp_path / "h.faiss")
    assert result.exit_code == 0, result.output
    assert load_index(tmp_path / "h.faiss").ntotal == 5 and (tmp_path / "h.faiss.ids.txt").exists()
    result = invoke("index", vec, "--kind", "ivfpq")
    assert result.exit_code == 2 and "ivfpq needs at least" in result.output
    result = invoke("index", tmp_path, "--kind", "flat")
    assert result.exit_code == 2 and "no manifest.json" in result.output
