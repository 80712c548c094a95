import pytest

from onmkd.config import PeerInit, RunConfig, describe, from_dict, load_config
from onmkd.errors import ConfigError


def test_defaults_are_a_valid_onmkd_run():
    cfg = load_config()
    assert cfg.train.method == "onmkd" and cfg.model.peers == 2 and cfg.model.layers == 2
    assert [p.checkpoint for p in cfg.peer_inits()] == ["minilm-l6", "minilm-l6-sre"]


def test_toml_and_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[loss]\nalpha = 0.5\ncross_layers = [[1, 2], [2, -1]]\n[[model.peer]]\ncheckpoint = "minilm-l6"\nlayer_rule = "even"\n')
    cfg = load_config(path, ["train.seed=3", "loss.beta=0.25", "data.dataset=nq-qed", 'train.method="onmkd"'])
    assert cfg.loss.alpha == 0.5 and cfg.loss.beta == 0.25 and cfg.train.seed == 3
    assert cfg.loss.cross_layers == ((1, 2), (2, -1))
    assert cfg.data.dataset == "nq-qed"  # a bare word is a string
    # one peer table serves every peer, with seed + index
    assert cfg.peer_inits() == [PeerInit(layer_rule="even", seed=0), PeerInit(layer_rule="even", seed=1)]


def test_json_round_trip():
    cfg = load_config(None, ["model.peers=3", "loss.alpha=2", 'model.peer=[{checkpoint="minilm-l3"}]'])
    assert from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss.alpha=-1"], "loss.alpha: must be ≥ 0"),
        (["loss.alpah=1"], "unknown field 'loss.alpah' (did you mean 'loss.alpha'?)"),
        (["lose.alpha=1"], "unknown field 'lose'"),
        (["model.peers=1"], "model.peers: onmkd needs at least 2 peers"),
        (['train.method="dpr"'], "model.peers: dpr trains one student"),
        (['train.method="distil"'], "train.method: 'distil'"),
        (["model.layers=two"], "model.layers: expected int"),
        (["loss.tau=0"], "loss.tau: must be > 0"),
        (["train.batch_size=0"], "train.batch_size: must be at least 1"),
        (['model.peer=[{layer_rule="evn"}]'], "model.peer[0].layer_rule"),
        (['model.peer=[{layer_rule="list", layer_list=[1]}]'], "model.peer[0].layer_list: 1 layers listed for model.layers = 2"),
        (["loss.cross_layers=[[1, 3]]"], "loss.cross_layers[0]: layer 3"),
        (["train.warmup=2"], "train.warmup"),
        (["loss"], "expected section.field=value"),
    ],
)
def test_bad_configs_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_bad_toml_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[loss\nalpha = 1\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")


def test_every_field_has_help():
    rows = describe()
    assert len(rows) > 30 and all(help_ for _, _, help_ in rows)
    assert RunConfig().model.peer[1].checkpoint == "minilm-l6-sre"


def test_an_unknown_key_with_a_line_break_still_fails_on_one_line(tmp_path):
    """U+0085 (NEL) is a line break to str.splitlines: an unknown key holding it is shown escaped."""
    path = tmp_path / "run.toml"
    path.write_text('[train]\n"ep\\u0085ochs" = 1\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert len(str(err.value).splitlines()) == 1 and "\\x85" in str(err.value)
