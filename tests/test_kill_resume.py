"""kill -9 at random points of training, evaluation and a sweep: rerunning the same command gives
the result of a run that was never interrupted, and no half-written file is taken for a whole one.

The kill times are drawn from ``random.Random(ONMKD_KILL_SEED)`` (default 0) between the start of
the process and the end of an uninterrupted run of the same command, so they land in imports,
model loading, training steps, checkpoint writes, dev evaluation, encoding, indexing and the
final step alike; a failure prints the seed and the times.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from test_sweep import finished, space_text, study_of

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
SEED = int(os.environ.get("ONMKD_KILL_SEED", "0"))
# Measured quantities that are not results: wall-clock time, throughput, latency.
TIMING = ("seconds", "_per_s", "_ms", "ms_", "latency", "time", "peak_rss", "elapsed")


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "onmkd.cli", *args]


def _timed_run(args: list[str], timeout: float = 600) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return time.perf_counter() - t0


def kill_and_finish(args: list[str], span: float, kills: int, rng: random.Random) -> list[float]:
    """Start ``args`` ``kills`` times, each killed with SIGKILL after a random time in
    ``(0.05, 0.6) · span`` (or let it end if it finishes first), then run it to the end. Returns the
    kill times. (Up to 0.6: each start resumes and has less left to do, and a run on warm files can
    be faster than the timed one; with times up to the whole span, all four starts of a fast
    training could end before their kill and test nothing.)"""
    times = []
    for _ in range(kills):
        delay = rng.uniform(0.05 * span, 0.6 * span)
        proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL: no handler runs, no file is closed cleanly
            proc.wait()
            times.append(round(delay, 2))
    _timed_run(args)
    return times


def results(obj):
    """``obj`` without the timing fields (they differ between any two runs)."""
    if isinstance(obj, dict):
        return {k: results(v) for k, v in obj.items() if not (k.endswith("_s") or any(t in k for t in TIMING))}
    if isinstance(obj, list):
        return [results(v) for v in obj]
    return obj


def train_toml(tmp_path: Path, model_dir: Path, squad: Path) -> Path:
    path = tmp_path / "train.toml"
    path.write_text(f"""
[data]
dataset = "squad:{squad}"
p_max_len = 32
q_max_len = 16

[model]
peer = [{{ checkpoint = "{model_dir}" }}]
layers = 2

[train]
batch_size = 4
epochs = 3
checkpoint_every = 1
lr = 1e-3
eval_batch_size = 8
""")
    return path


def test_training_killed_at_random_points_resumes_to_the_uninterrupted_result(tmp_path, tiny_model_dir, tiny_squad):
    config = train_toml(tmp_path, tiny_model_dir, tiny_squad)
    span = _timed_run(_cmd("train", "--config", str(config), "--out", str(tmp_path / "full")))
    rng = random.Random(SEED)
    killed = kill_and_finish(_cmd("train", "--config", str(config), "--out", str(tmp_path / "cut")), span, 4, rng)
    assert killed, f"seed {SEED}: every run finished before its kill time; nothing was tested"
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert results(cut) == results(full), f"seed {SEED}, kills at {killed} s"
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1)), f"seed {SEED}, kills at {killed} s: {steps}"
    leftovers = [p.name for p in (tmp_path / "cut").rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


def test_evaluation_killed_at_random_points_gives_the_uninterrupted_metrics(tmp_path, tiny_model_dir, tiny_squad, monkeypatch):
    # the encoded-corpus cache is shared by both runs, so a vector file cut by a kill would be read back
    monkeypatch.setitem(ENV, "ONMKD_CACHE", str(tmp_path / "cache"))
    args = ["--model", str(tiny_model_dir), "--dataset", f"squad:{tiny_squad}", "--split", "test"]
    span = _timed_run(_cmd("evaluate", *args, "--out", str(tmp_path / "full"), "--no-cache"))
    rng = random.Random(SEED + 1)
    killed = kill_and_finish(_cmd("evaluate", *args, "--out", str(tmp_path / "cut")), span, 4, rng)
    full = json.loads(next((tmp_path / "full").rglob("metrics.json")).read_text())
    cut = json.loads(next((tmp_path / "cut").rglob("metrics.json")).read_text())
    assert results(cut) == results(full), f"seed {SEED + 1}, kills at {killed} s"


def test_sweep_killed_at_random_points_resumes_to_the_uninterrupted_study(tmp_path, tiny_model_dir, tiny_squad):
    space = tmp_path / "space.toml"
    space.write_text(space_text(tiny_model_dir, tiny_squad, trials=3, epochs=2))
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    span = _timed_run(_cmd("sweep", "--space", str(space), "--study-dir", str(full_dir), "--no-report"))
    rng = random.Random(SEED + 2)
    killed = kill_and_finish(_cmd("sweep", "--space", str(space), "--study-dir", str(cut_dir), "--no-report"), span, 4, rng)
    assert killed, f"seed {SEED + 2}: every run finished before its kill time; nothing was tested"
    where = f"seed {SEED + 2}, kills at {killed} s"

    def trials(study_dir):
        return sorted((json.dumps(t.params, sort_keys=True), t.state.name, t.values)
                      for t in finished(study_of(study_dir)))

    assert trials(cut_dir) == trials(full_dir), where  # the same trials, the same dev values, none twice

    def final(study_dir):
        man = json.loads((study_dir / "manifest.json").read_text())
        return sorted((e["label"], e["role"], e.get("seed"), json.dumps(results(json.loads((study_dir / e["path"] / "metrics.json").read_text())),
                                                                         sort_keys=True)) for e in man["runs"])

    assert final(cut_dir) == final(full_dir), where  # the final step's test metrics
