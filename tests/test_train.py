import json

import pytest
import torch

from onmkd.config import load_config
from onmkd.data import Dataset, Split
from onmkd.errors import ConfigError
from onmkd.training.train import Trainer, batches, build_examples, train

from numerics import TINY_BERT_ATOL

PASSAGES = {
    "p1": ("France", "paris is the capital city of france"),
    "p2": ("Germany", "berlin is the capital city of germany"),
    "p3": ("Rhine", "the rhine river flows through germany and france"),
    "p4": ("Tesla", "tesla was an inventor of electricity current"),
    "p5": ("Oxygen", "oxygen is a gas with atomic number eight"),
    "p6": ("Super Bowl", "the denver broncos won the super bowl game"),
    "p7": ("King", "the king and queen of france were born in paris"),
    "p8": ("War", "the war was won in the year eight"),
}
QUESTIONS = {
    "train": [("what is the capital of france", "p1", "paris"), ("what is the capital of germany", "p2", "berlin"),
              ("which river flows through germany", "p3", "rhine"), ("who was an inventor", "p4", "tesla"),
              ("what gas has atomic number eight", "p5", "oxygen"), ("who won the super bowl", "p6", "denver broncos"),
              ("where were the king and queen born", "p7", "paris"), ("when was the war won", "p8", "eight"),
              ("which city is the capital of france", "p1", "paris"), ("what is a gas", "p5", "oxygen")],
    "dev": [("capital city of germany", "p2", "berlin"), ("inventor of electricity", "p4", "tesla"),
            ("which team won the game", "p6", "denver broncos")],
    "test": [("river through france", "p3", "rhine")],
}


def tiny_qa() -> Dataset:
    corpus = {p: {"title": t, "text": x} for p, (t, x) in PASSAGES.items()}
    splits = {}
    for name, rows in QUESTIONS.items():
        qs = {f"{name}{i}": q for i, (q, _, _) in enumerate(rows)}
        qrels = {f"{name}{i}": {p: 1} for i, (_, p, _) in enumerate(rows)}
        answers = {f"{name}{i}": [a] for i, (_, _, a) in enumerate(rows)}
        splits[name] = Split(qs, qrels, answers)
    return Dataset("tiny-qa", corpus, splits, source="tiny-qa")


def config(model_dir, *extra):
    return load_config(None, [
        f'model.peer=[{{checkpoint="{model_dir}"}}]', "model.layers=2", "train.batch_size=4", "train.epochs=2",
        "train.checkpoint_every=2", "data.hard_negatives=1", "data.p_max_len=32", "data.q_max_len=16",
        "train.eval_batch_size=8", "train.lr=1e-3", "loss.cross_layers=[[1, 1], [2, 2]]", *extra])


def test_hard_negatives_exclude_gold_and_answer_passages(tiny_model_dir):
    examples = build_examples(tiny_qa(), config(tiny_model_dir))
    by_q = {ex.qid: ex for ex in examples}
    assert "p1" not in by_q["train0"].negatives  # the gold passage
    assert "p7" not in by_q["train0"].negatives  # holds the answer "paris"
    assert "p3" in by_q["train0"].negatives  # mentions france, has no answer: a hard negative


def test_batches_share_a_column_for_a_shared_positive(tiny_model_dir):
    cfg = config(tiny_model_dir, "train.batch_size=10")
    (chunk, cands, labels), = batches(build_examples(tiny_qa(), cfg), cfg, epoch=0)
    assert len(set(cands)) == len(cands)
    for ex, col in zip(chunk, labels):
        assert cands[col] == ex.positive
    assert labels[[e.qid for e in chunk].index("train0")] == labels[[e.qid for e in chunk].index("train8")]


def test_onmkd_run_directory(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = train(config(tiny_model_dir), out, tiny_qa(), log=lambda m: None)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "log.jsonl", "dev.jsonl", "peers", "student", "metrics.json"} <= names
    assert "checkpoint" not in names
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))  # 10 questions / 4 = 3 steps × 2 epochs
    for key in ("nll/0", "kl/0", "cross/0", "nll/1", "kl/1", "cross/1", "lr", "examples_per_s"):
        assert key in log[0]
    assert log[0]["cross/0"] > 0 and log[0]["kl/0"] >= 0
    dev = [json.loads(l) for l in (out / "dev.jsonl").read_text().splitlines()]
    assert len(dev) == 2 and {"peers", "ensemble", "top20_overlap"} <= set(dev[0])
    assert result["dev"] == dev[result["selected_epoch"]]["peers"][result["selected_peer"]]


@pytest.mark.numerics
def test_student_loads_with_transformers_and_sentence_transformers(tiny_model_dir, tmp_path):
    import numpy as np
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from onmkd.data import passage_text
    from onmkd.retrieval.evaluate import EvalConfig, evaluate

    out = tmp_path / "run"
    result = train(config(tiny_model_dir), out, tiny_qa(), log=lambda m: None)
    assert AutoModel.from_pretrained(out / "student").config.num_hidden_layers == 2
    st = SentenceTransformer(str(out / "student"), device="cpu")
    from onmkd.retrieval.evaluate import load_retriever

    ours = load_retriever(str(out)).passage.encode(["paris is the capital"], max_length=32)
    assert np.abs(st.encode(["paris is the capital"]) - ours).max() < TINY_BERT_ATOL  # two forwards, two orders
    # `evaluate --model RUN_DIR` on dev reproduces the dev score the run selected its student by
    m = evaluate(EvalConfig(model=str(out), dataset="tiny", split="dev", p_max_len=32, q_max_len=16, cache=False), tiny_qa())
    assert m["acc@20"] == pytest.approx(result["dev"]["acc@20"])
    assert passage_text({"title": "a", "text": "b"}) == "a b"


def test_test_evaluation_reuses_the_last_dev_encoding_of_the_student(tiny_model_dir, tmp_path):
    """One epoch: the student is the peer as the last dev evaluation encoded it, so evaluating it
    reads those corpus vectors from the cache (no second encoding) and gives the dev score."""
    from onmkd.retrieval.evaluate import EvalConfig, evaluate

    out = tmp_path / "run"
    result = train(config(tiny_model_dir, "train.epochs=1"), out, tiny_qa(), log=lambda m: None)
    assert result["selected_epoch"] == 0
    m = evaluate(EvalConfig(model=str(out), dataset="tiny", split="dev", p_max_len=32, q_max_len=16,
                            batch_size=8), tiny_qa(), out_dir=tmp_path / "eval")
    assert "corpus_encode_s" not in m  # read from the cache
    assert m["acc@20"] == pytest.approx(result["dev"]["acc@20"]) and m["mrr@10"] == pytest.approx(result["dev"]["mrr@10"])


def test_same_seed_same_metrics(tiny_model_dir, tmp_path):
    a = train(config(tiny_model_dir), tmp_path / "a", tiny_qa(), log=lambda m: None)
    b = train(config(tiny_model_dir), tmp_path / "b", tiny_qa(), log=lambda m: None)
    assert a == b
    la = (tmp_path / "a" / "log.jsonl").read_text().splitlines()
    lb = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    strip = lambda line: {k: v for k, v in json.loads(line).items() if k != "examples_per_s"}  # noqa: E731
    assert [strip(x) for x in la] == [strip(x) for x in lb]


def test_resume_after_interruption_matches_uninterrupted(tiny_model_dir, tmp_path, monkeypatch):
    full = train(config(tiny_model_dir), tmp_path / "full", tiny_qa(), log=lambda m: None)
    real = Trainer.train_step

    def dies_at_step_5(self, *args):
        if self.step == 4:  # after the checkpoint at step 4, mid-epoch 2
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(Trainer, "train_step", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(config(tiny_model_dir), tmp_path / "cut", tiny_qa(), log=lambda m: None)
    assert (tmp_path / "cut" / "checkpoint" / "state.pt").exists()
    monkeypatch.setattr(Trainer, "train_step", real)
    messages = []
    resumed = train(config(tiny_model_dir), tmp_path / "cut", tiny_qa(), log=messages.append)
    assert any("resuming from step 4" in m for m in messages)
    assert resumed == full
    steps = [json.loads(l)["step"] for l in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


def test_a_run_killed_before_its_first_checkpoint_starts_its_logs_again(tiny_model_dir, tmp_path, monkeypatch):
    cfg = config(tiny_model_dir, "train.checkpoint_every=50")
    real = Trainer.train_step

    def dies_at_step_3(self, *args):
        if self.step == 2:  # mid-epoch 1 (3 steps an epoch): no checkpoint yet
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(Trainer, "train_step", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", tiny_qa(), log=lambda m: None)
    assert not (tmp_path / "cut" / "checkpoint" / "state.pt").exists()
    assert len((tmp_path / "cut" / "log.jsonl").read_text().splitlines()) == 2
    monkeypatch.setattr(Trainer, "train_step", real)
    train(cfg, tmp_path / "cut", tiny_qa(), log=lambda m: None)
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "cut" / "dev.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7)) and epochs == [0, 1]  # each step and dev epoch once


def test_changed_config_in_same_run_dir_is_refused(tiny_model_dir, tmp_path):
    train(config(tiny_model_dir, "train.epochs=1"), tmp_path / "r", tiny_qa(), log=lambda m: None)
    with pytest.raises(ConfigError, match="different config"):
        train(config(tiny_model_dir, "train.epochs=1", "loss.alpha=0.3"), tmp_path / "r", tiny_qa(), log=lambda m: None)


@pytest.mark.parametrize("method", ["dpr", "kd", "dml"])
def test_baselines(method, tiny_model_dir, tmp_path):
    extra = ["model.peers=1", f'train.method="{method}"'] if method != "dml" else ['train.method="dml"']
    if method == "kd":
        extra.append(f'loss.teacher="{tiny_model_dir}"')
    result = train(config(tiny_model_dir, "train.epochs=1", *extra), tmp_path / method, tiny_qa(), log=lambda m: None)
    log = [json.loads(l) for l in (tmp_path / method / "log.jsonl").read_text().splitlines()]
    if method == "dpr":
        assert log[0]["kl/0"] == 0 and log[0]["cross/0"] == 0 and "nll/1" not in log[0]
    if method == "kd":
        assert log[0]["kd/0"] >= 0
    if method == "dml":
        assert log[0]["cross/0"] == 0 and log[0]["kl/0"] > 0
    assert 0 <= result["dev"]["acc@20"] <= 1


def test_untied_towers_and_random_init(tiny_model_dir, tmp_path):
    from onmkd.retrieval.evaluate import load_retriever

    cfg = config(tiny_model_dir, "train.epochs=1", "model.tied=false",
                 f'model.peer=[{{checkpoint="{tiny_model_dir}"}}, {{checkpoint="{tiny_model_dir}", random=true}}]')
    train(cfg, tmp_path / "u", tiny_qa(), log=lambda m: None)
    assert (tmp_path / "u" / "student" / "query").is_dir()
    dual = load_retriever(str(tmp_path / "u"))
    assert not dual.tied
    q, p = dual.question.model.state_dict(), dual.passage.model.state_dict()
    assert any(not torch.equal(q[k], p[k]) for k in q)  # the towers trained apart


@pytest.mark.parametrize(
    "extra, message",
    [
        (["model.layers=3"], "model.layers: 3 layers asked of a 2-layer checkpoint"),
        (['model.peer=[{checkpoint="CKPT", layer_rule="list", layer_list=[1, 5]}]'], "model.peer[0].layer_list: layer 5"),
        (['model.peer=[{checkpoint="no-such-model"}]'], "model.peer[0].checkpoint: unknown model"),
    ],
)
def test_configs_that_need_the_checkpoint_fail_before_training(extra, message, tiny_model_dir, tmp_path):
    extra = [e.replace("CKPT", str(tiny_model_dir)) for e in extra]
    with pytest.raises(ConfigError) as err:
        train(config(tiny_model_dir, *extra), tmp_path / "bad", tiny_qa(), log=lambda m: None)
    assert message in str(err.value)
    assert not (tmp_path / "bad" / "log.jsonl").exists()


def test_dev_held_out_from_train_when_missing(tiny_model_dir):
    from onmkd.training.train import hold_out_dev

    data = tiny_qa()
    del data.splits["dev"]
    cfg = config(tiny_model_dir, "data.dev_from_train=0.2")
    held = hold_out_dev(data, cfg)
    assert len(held.splits["dev"].queries) == 2 and len(held.splits["train"].queries) == 8
    assert not set(held.splits["dev"].queries) & set(held.splits["train"].queries)
    assert "test" in held.splits and "dev" not in data.splits  # the original is untouched


def test_training_on_dpr_biencoder_files_with_given_negatives(tiny_model_dir, tmp_path):
    from onmkd.data import load_dataset

    def ctx(pid):
        title, text = PASSAGES[pid]
        return {"passage_id": pid, "title": title, "text": text}

    for name, rows in (("train", QUESTIONS["train"]), ("dev", QUESTIONS["dev"])):
        items = [{"question": q, "answers": [a], "positive_ctxs": [ctx(p)], "negative_ctxs": [],
                  "hard_negative_ctxs": [ctx("p8" if p != "p8" else "p5")]} for q, p, a in rows]
        (tmp_path / f"nq-{name}.json").write_text(json.dumps(items))
    spec = f"dpr:{tmp_path / 'nq-train.json'},{tmp_path / 'nq-dev.json'}"
    data = load_dataset(spec)
    cfg = config(tiny_model_dir, "train.epochs=1", 'data.negatives="given"', f'data.dataset="{spec}"')
    examples = build_examples(data, cfg)
    assert all(ex.negatives for ex in examples)
    result = train(cfg, tmp_path / "run", data, log=lambda m: None)
    assert 0 <= result["dev"]["acc@20"] <= 1


def test_broken_data_leaves_no_config_behind(tiny_model_dir, tmp_path):
    from onmkd.errors import DataError

    broken = tmp_path / "broken.json"
    broken.write_text('{"version": "1.1", "data": [')
    with pytest.raises(DataError, match="broken.json"):
        train(config(tiny_model_dir, f'data.dataset="squad:{broken}"', "train.epochs=1"), tmp_path / "r", log=lambda m: None)
    assert not (tmp_path / "r" / "config.json").exists()
    # the corrected config may use the same run directory
    train(config(tiny_model_dir, "train.epochs=1"), tmp_path / "r", tiny_qa(), log=lambda m: None)
    assert (tmp_path / "r" / "metrics.json").exists()


# --------------------------------------------------------------------------- set-up functions


def test_build_peers_one_structure_kept_layers(tiny_model_dir):
    from onmkd.training.train import build_peers

    peers, kept = build_peers(config(tiny_model_dir, "model.layers=1", "loss.cross_layers=[[1, 1]]"))
    assert len(peers) == 2 and kept == [[1], [1]]
    assert all(p.question.num_layers == 1 and p.question is p.passage for p in peers)  # tied by default
    untied, _ = build_peers(config(tiny_model_dir, "model.tied=false"))
    assert all(p.question is not p.passage for p in untied)


def test_loss_setup_weights_follow_the_method(tiny_model_dir):
    from onmkd.training.train import loss_setup

    expect = {"onmkd": (0.5, 2.0, [1, 2], False), "dml": (0.5, 0.0, [2], False),
              "dpr": (0.0, 0.0, [2], False), "kd": (0.5, 0.0, [2], True)}
    for method, (alpha, beta, layers, teacher) in expect.items():
        one = [] if method in ("onmkd", "dml") else ["model.peers=1"]
        s = loss_setup(config(tiny_model_dir, f"train.method={method}", "loss.alpha=0.5", "loss.beta=2.0",
                              "loss.cross_layers=[[1, -1]]", *one), depth=2)
        assert (s.alpha, s.beta, s.layers_needed, s.teacher) == (alpha, beta, layers, teacher), method
        assert s.layer_map == [(1, 2)]  # -1 is the students' last layer
    with pytest.raises(ConfigError, match="loss.cross_layers: layer 2 is beyond the students' 1 layers"):
        loss_setup(config(tiny_model_dir), depth=1)


def test_make_optimizer_warms_up_then_decays_to_zero():
    from onmkd.training.train import make_optimizer

    class Peer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    cfg = load_config(None, ["train.lr=1.0", "train.epochs=2", "train.warmup=0.2", "train.weight_decay=0"])
    peers = [Peer(), Peer()]
    optimizer, scheduler = make_optimizer(peers, cfg, steps_per_epoch=5)
    assert len(optimizer.param_groups) == 2  # a group per peer
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])


def test_teacher_vectors_cover_training_questions_and_corpus(tiny_model_dir):
    from onmkd.training.train import teacher_vectors

    cfg = config(tiny_model_dir, "train.method=kd", "model.peers=1", f'loss.teacher="{tiny_model_dir}"')
    data = tiny_qa()
    examples = build_examples(data, cfg)
    qi, qv, pi, pv = teacher_vectors(cfg, data, examples)
    assert sorted(qi) == sorted(ex.qid for ex in examples) and sorted(pi) == sorted(data.corpus)
    assert qv.shape == (len(examples), 32) and pv.shape == (len(data.corpus), 32)
    with pytest.raises(ConfigError, match="loss.teacher"):
        teacher_vectors(config(tiny_model_dir, 'loss.teacher="no-such-teacher-folder"'), data, examples)


def test_method_table_drives_validation_and_baselines(tiny_model_dir):
    from onmkd.training.methods import METHODS, as_method, loss_weights, methods_help

    assert methods_help().startswith("onmkd, dml (onmkd without the cross-wise term), dpr (NLL alone, one student), "
                                     "kd (offline distillation from loss.teacher) or independent (K peers")
    cfg = config(tiny_model_dir, "loss.alpha=0.5", "loss.beta=2.0")
    assert loss_weights(cfg) == (0.5, 2.0)
    dml = as_method(cfg, "dml")
    assert (dml.train.method, dml.loss.beta, dml.loss.alpha, dml.model.peers) == ("dml", 0.0, 0.5, 2)
    dpr = as_method(cfg, "dpr")
    assert (dpr.train.method, dpr.model.peers, dpr.model.peer, dpr.loss) == ("dpr", 1, (cfg.peer_inits()[0],), cfg.loss)
    indep = as_method(cfg, "independent")
    assert (indep.model.peers, loss_weights(indep), indep.loss.alpha, indep.loss.beta) == (2, (0.0, 0.0), 0.0, 0.0)
    assert [m.role for m in METHODS.values()] == ["onmkd"] + ["same-depth baseline"] * 4
    with pytest.raises(ConfigError, match="model.peers: dml needs at least 2 peers, got 1"):
        config(tiny_model_dir, "train.method=dml", "model.peers=1")
    with pytest.raises(ConfigError, match="model.peers: kd trains one student; set model.peers = 1 \\(got 2\\)"):
        config(tiny_model_dir, "train.method=kd")


def test_dev_pool_holds_the_dev_positives_and_is_fixed(tiny_model_dir):
    from onmkd.errors import ConfigError
    from onmkd.training.train import dev_pool

    data = tiny_qa()
    gold = {p for rel in data.split("dev").qrels.values() for p in rel}
    pool = dev_pool(data, config(tiny_model_dir, "data.dev_pool=5"))
    assert len(pool) == 5 and gold <= set(pool)
    # fixed by the data alone: the same pool from a corpus in another order, and for another seed
    reordered = Dataset("tiny-qa", dict(reversed(list(data.corpus.items()))), data.splits, source="tiny-qa")
    assert set(dev_pool(reordered, config(tiny_model_dir, "data.dev_pool=5", "train.seed=3"))) == set(pool)
    assert dev_pool(data, config(tiny_model_dir)) == list(data.corpus)  # 0: the whole corpus
    with pytest.raises(ConfigError, match=r"data.dev_pool: 1 passages cannot hold the \d+ positives"):
        dev_pool(data, config(tiny_model_dir, "data.dev_pool=1"))
    with pytest.raises(ConfigError, match="data.dev_pool: must be ≥ 0"):
        config(tiny_model_dir, "data.dev_pool=-1")


def test_training_with_a_dev_pool_scores_dev_over_the_pool(tiny_model_dir, tmp_path, monkeypatch):
    from onmkd.retrieval.evaluate import EvalConfig, evaluate

    monkeypatch.setenv("ONMKD_CACHE", str(tmp_path / "cache"))  # (another test may cache these very weights)

    out = tmp_path / "run"
    result = train(config(tiny_model_dir, "data.dev_pool=5", "train.epochs=1"), out, tiny_qa(), log=lambda m: None)
    assert result["dev"]["questions"] == len(tiny_qa().split("dev").queries)
    # the student's vectors of a 5-passage pool are not the corpus's: nothing is cached for a test run
    m = evaluate(EvalConfig(model=str(out), dataset="tiny", split="dev", p_max_len=32, q_max_len=16, batch_size=8),
                 tiny_qa(), out_dir=tmp_path / "eval")
    assert "corpus_encode_s" in m
