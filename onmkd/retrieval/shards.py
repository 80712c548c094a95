"""Encode a large corpus in shards, across worker processes or GPUs, resumably.

:func:`encode_shards` splits the corpus, in its fixed passage order (the order evaluation
indexes it in), into ``shards`` consecutive pieces and encodes them with ``workers`` processes
(spawned; each loads the model once and runs ``cores // workers`` torch threads), or with one
process per CUDA device when the encoder runs on CUDA. Each shard is written atomically as
``shard-00000.npy`` (float32 ``[n, d]``) and ``shard-00000.ids.txt`` (one passage id a line);
``manifest.json`` records the model fingerprint, the corpus, the vector size and every finished
shard with the sha256 of its two files. It is rewritten after each shard, so rerunning the same
command skips the shards that are there and verify, and encodes only the rest.

:func:`load_shards` returns ``(ids, vectors)`` of a finished folder, checking every checksum;
:func:`iter_shards` yields them shard by shard; :func:`build_index_from_shards` indexes them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from onmkd.errors import ConfigError, DataError
from onmkd.io import atomic_path, file_sha256, write_json, write_text

MANIFEST = "manifest.json"
FORMAT = 1
# Fields of the manifest that must agree for a rerun to reuse the shards already written.
_KEY_FIELDS = ("fingerprint", "backend", "corpus_sha256", "count", "max_length", "titles", "dim", "shard_count")


def shard_names(i: int) -> tuple[str, str]:
    """File names of shard ``i``: vectors and ids."""
    return f"shard-{i:05d}.npy", f"shard-{i:05d}.ids.txt"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------


def _corpus(corpus: Any, titles: bool) -> tuple[str, list[str], list[str]]:
    """(label, ids, texts) of a data set spec, a :class:`~onmkd.data.Dataset`, a ``{pid: doc or
    text}`` mapping, or a sequence of ``(pid, text)`` pairs; in the corpus's own order."""
    from onmkd.data import Dataset, load_dataset, passage_text

    label = "corpus"
    if isinstance(corpus, (str, os.PathLike)):
        label = str(corpus)
        corpus = load_dataset(str(corpus))
    if isinstance(corpus, Dataset):
        label = corpus.source or corpus.name if label == "corpus" else label
        corpus = corpus.corpus
    if isinstance(corpus, dict):
        pairs = [(p, d if isinstance(d, str) else passage_text(d, titles)) for p, d in corpus.items()]
    else:
        pairs = [(p, t) for p, t in corpus]
    ids = [str(p) for p, _ in pairs]
    bad = next((p for p in ids if "\n" in p or "\r" in p), None)
    if bad is not None:
        raise DataError(f"{label}: passage id {bad!r} holds a line break; ids are stored one a line")
    if len(set(ids)) != len(ids):
        raise DataError(f"{label}: passage ids repeat")
    return label, ids, [t for _, t in pairs]


# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _passage_encoder(model: Any, backend: str, device: str):
    """The passage tower of ``model`` (a name/path, or a loaded encoder) on ``device`` and ``backend``."""
    from onmkd.retrieval.backends import with_backend

    if isinstance(model, (str, os.PathLike)):
        from onmkd.retrieval.evaluate import load_retriever

        model = load_retriever(str(model)).passage
    if backend == "torch":
        model = model.to(device)
    return with_backend(model, backend)


def _init_worker(model: Any, backend: str, devices, threads: int) -> None:
    """Runs once in each worker process: set its threads, claim a device, load the model."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    device = devices.get() if devices is not None else "cpu"
    _WORKER["encoder"] = _passage_encoder(model, backend, device)
    _WORKER["device"] = device


def _write_shard(out_dir: Path, i: int, ids: list[str], vecs: np.ndarray) -> dict[str, Any]:
    vec_name, ids_name = shard_names(i)
    with atomic_path(out_dir / vec_name) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(vecs, dtype=np.float32), allow_pickle=False)
        vec_sha = file_sha256(tmp)
    with atomic_path(out_dir / ids_name) as tmp:
        tmp.write_text("".join(p + "\n" for p in ids), encoding="utf-8")
        ids_sha = file_sha256(tmp)
    return {"vectors": vec_name, "ids": ids_name, "count": len(ids), "sha256": {"vectors": vec_sha, "ids": ids_sha}}


def _encode_task(out_dir: str, i: int, ids: list[str], texts: list[str], max_length: int, batch_size: int,
                 encoder=None, device: str = "cpu") -> dict[str, Any]:
    """Encode one shard and write its files (in a worker, or in this process with ``encoder``)."""
    enc = encoder if encoder is not None else _WORKER["encoder"]
    device = device if encoder is not None else _WORKER.get("device", "cpu")
    t0 = time.perf_counter()
    vecs = enc.encode(texts, max_length=max_length, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    entry = _write_shard(Path(out_dir), i, ids, vecs)
    entry.update(seconds=round(seconds, 3), pid=os.getpid(), device=str(device))
    return entry


# --------------------------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------------------------


def _read_manifest(out_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise DataError(f"{out_dir / MANIFEST}: unreadable ({e}); delete the folder or choose another --out") from None
    if not isinstance(data, dict) or not isinstance(data.get("shards"), list):
        raise DataError(f"{out_dir / MANIFEST}: not a shard manifest; delete the folder or choose another --out")
    return data


def _entry_ok(out_dir: Path, entry: dict[str, Any] | None) -> bool:
    """Whether a manifest entry's two files exist with the recorded checksums."""
    if not entry or not isinstance(entry.get("sha256"), dict):
        return False
    for field in ("vectors", "ids"):
        path = out_dir / str(entry.get(field, ""))
        if path.parent != out_dir or not path.is_file() or file_sha256(path) != entry["sha256"].get(field):
            return False
    return True


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def _devices(device: str, backend: str) -> list[str]:
    """CUDA devices to run one worker each on; empty for the CPU."""
    if backend != "torch" or device == "cpu":
        return []
    from onmkd.runtime import resolve_device

    dev = resolve_device(device, "--device")
    if dev.type != "cuda":
        return []
    import torch

    if device in ("auto", "cuda"):
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [str(dev)]


def encode_shards(model: Any, corpus: Any, out_dir: str | os.PathLike[str], *, shards: int = 1, workers: int = 1,
                  batch_size: int = 64, max_length: int = 256, backend: str = "torch", titles: bool = True,
                  device: str = "auto", log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Encode ``corpus`` with the passage tower of ``model`` into ``shards`` shard files in ``out_dir``.

    ``model``: a registry name, checkpoint folder or training run directory (what
    :func:`onmkd.retrieval.evaluate.load_retriever` takes), or a loaded encoder. ``corpus``: a data set
    spec, a :class:`~onmkd.data.Dataset`, a ``{pid: doc or text}`` mapping or ``(pid, text)``
    pairs. ``workers`` processes share the CPU cores; with CUDA (``device`` auto or cuda) one
    process runs on each device instead. Shards already finished (files present, checksums
    matching the manifest) are kept. Returns the manifest.
    """
    from onmkd.retrieval.backends import check_backend
    from onmkd.retrieval.evaluate import _corpus_hash

    log = log or (lambda _msg: None)
    check_backend(backend)
    for name, value in (("shards", shards), ("workers", workers), ("batch_size", batch_size), ("max_length", max_length)):
        if value < 1:
            raise ConfigError(f"{name}: must be a positive integer, got {value}")
    out = Path(out_dir)
    label, ids, texts = _corpus(corpus, titles)
    if not ids:
        raise DataError(f"{label}: the corpus is empty")
    from onmkd.retrieval.index import shard_bounds

    bounds = shard_bounds(len(ids), shards)
    base = _passage_encoder(model, "torch", "cpu") if isinstance(model, (str, os.PathLike)) else model
    base = getattr(base, "base", base)  # a backend wrapper: fingerprint its fp32 model
    key = {"fingerprint": base.fingerprint(), "backend": backend, "corpus_sha256": _corpus_hash(ids, texts),
           "count": len(ids), "max_length": max_length, "titles": titles, "dim": int(base.dim), "shard_count": len(bounds)}
    manifest = {"format": FORMAT, "model": str(model) if isinstance(model, (str, os.PathLike)) else getattr(base, "name", ""),
                "dataset": label, **key, "dtype": "float32", "complete": False, "shards": []}
    old = _read_manifest(out)
    done: dict[int, dict[str, Any]] = {}
    if old is not None:
        differ = [f for f in _KEY_FIELDS if old.get(f) != key[f]]
        if differ:
            raise ConfigError(f"{out}: holds shards of another encoding (differs in {', '.join(differ)}); "
                              "choose another --out or delete that folder")
        for entry in old["shards"]:
            i = entry.get("index")
            if isinstance(i, int) and 0 <= i < len(bounds) and entry.get("start") == bounds[i][0] and _entry_ok(out, entry):
                done[i] = entry
            elif isinstance(i, int):
                log(f"shard {i}: files missing or not matching the manifest; encoding it again")
    todo = [i for i in range(len(bounds)) if i not in done]
    out.mkdir(parents=True, exist_ok=True)

    def record() -> None:
        manifest["shards"] = [done[i] for i in sorted(done)]
        manifest["complete"] = len(done) == len(bounds)
        write_json(out / MANIFEST, manifest)

    record()
    if done:
        log(f"{len(done)} of {len(bounds)} shards already encoded; {len(todo)} to go")
    if not todo:
        return manifest

    def finished(i: int, entry: dict[str, Any]) -> None:
        done[i] = {"index": i, "start": bounds[i][0], **entry}
        record()
        log(f"shard {i}: {entry['count']:,} passages in {entry['seconds']:.1f} s ({entry['device']}, pid {entry['pid']}); "
            f"{len(done)}/{len(bounds)} done")

    devices = _devices(device, backend)
    procs = min(len(devices) if devices else workers, len(todo))
    if procs <= 1:  # in this process: no spawn, the model is loaded already
        where = devices[0] if devices else "cpu"
        enc = _passage_encoder(base, backend, where)
        for i in todo:
            a, b = bounds[i]
            finished(i, _encode_task(str(out), i, ids[a:b], texts[a:b], max_length, batch_size, encoder=enc, device=where))
        return manifest

    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = None
    if devices:
        queue = ctx.Queue()
        for d in devices[:procs]:
            queue.put(d)
    threads = max(1, _cores() // procs) if not devices else 1
    worker_model = str(model) if isinstance(model, (str, os.PathLike)) else base
    log(f"encoding {len(todo)} shard(s) with {procs} worker processes "
        + (f"on {', '.join(devices[:procs])}" if devices else f"of {threads} thread(s) each"))
    with ProcessPoolExecutor(max_workers=procs, mp_context=ctx, initializer=_init_worker,
                             initargs=(worker_model, backend, queue, threads)) as pool:
        futures = {pool.submit(_encode_task, str(out), i, ids[bounds[i][0]:bounds[i][1]],
                               texts[bounds[i][0]:bounds[i][1]], max_length, batch_size): i for i in todo}
        try:
            for fut in as_completed(futures):
                finished(futures[fut], fut.result())
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return manifest


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a finished shard folder (an error for a missing or unfinished one)."""
    out = Path(out_dir)
    manifest = _read_manifest(out)
    if manifest is None:
        raise DataError(f"{out}: no {MANIFEST}; not a folder written by `onmkd-bench encode`")
    if not manifest.get("complete") or len(manifest["shards"]) != manifest.get("shard_count"):
        raise DataError(f"{out}: only {len(manifest['shards'])} of {manifest.get('shard_count')} shards finished; "
                        "rerun the same `onmkd-bench encode` command to finish")
    return manifest


def iter_shards(out_dir: str | os.PathLike[str], *, verify: bool = True) -> Iterator[tuple[list[str], np.ndarray]]:
    """``(ids, vectors)`` of each shard in order, each checked against the manifest's sha256."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    dim = int(manifest["dim"])
    for entry in sorted(manifest["shards"], key=lambda e: e["index"]):
        vec_path, ids_path = out / entry["vectors"], out / entry["ids"]
        for field, path in (("vectors", vec_path), ("ids", ids_path)):
            if not path.is_file():
                raise DataError(f"{path}: missing; rerun the `onmkd-bench encode` command to encode it again")
            if verify and file_sha256(path) != entry["sha256"][field]:
                raise DataError(f"{path}: does not match its sha256 in {MANIFEST} (damaged or truncated); "
                                "rerun the `onmkd-bench encode` command to encode it again")
        try:
            vecs = np.load(vec_path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{vec_path}: unreadable: {e}") from None
        ids = ids_path.read_text(encoding="utf-8").split("\n")[:-1]
        if vecs.dtype != np.float32 or vecs.shape != (entry["count"], dim) or len(ids) != entry["count"]:
            raise DataError(f"{vec_path}: shape {vecs.shape} {vecs.dtype} with {len(ids)} ids; "
                            f"{MANIFEST} says ({entry['count']}, {dim}) float32")
        yield ids, vecs


def load_shards(out_dir: str | os.PathLike[str], *, verify: bool = True) -> tuple[list[str], np.ndarray]:
    """All ids and vectors ``[N, d]`` of a finished shard folder, in corpus order, checksums verified."""
    from onmkd.resources import check_memory

    manifest = read_manifest(out_dir)
    count, dim = int(manifest["count"]), int(manifest["dim"])
    check_memory(count * dim * 4, f"loading {count:,} vectors of size {dim}", "build the index from fewer shards")
    vectors = np.empty((count, dim), dtype=np.float32)
    ids: list[str] = []
    for part_ids, part in iter_shards(out_dir, verify=verify):
        vectors[len(ids):len(ids) + len(part_ids)] = part
        ids.extend(part_ids)
    if len(ids) != count:
        raise DataError(f"{out_dir}: the shards hold {len(ids)} vectors, {MANIFEST} says {count}")
    return ids, vectors


def build_index_from_shards(out_dir: str | os.PathLike[str], spec=None, shards: int = 1):
    """An index over the vectors of a shard folder: one index, or a
    :class:`~onmkd.retrieval.index.ShardedIndex` of ``shards`` over consecutive rows. Row ``i`` is the
    ``i``-th id of :func:`load_shards`. Returns ``(index, ids)``."""
    from onmkd.retrieval.index import IndexSpec, build_index, build_sharded_index

    spec = spec or IndexSpec()
    ids, vectors = load_shards(out_dir)
    index = build_index(vectors, spec) if shards <= 1 else build_sharded_index(vectors, spec, shards)
    return index, ids


def write_ids(path: str | os.PathLike[str], ids: list[str]) -> None:
    """Write row ids one a line, atomically (the ids of an index's rows)."""
    write_text(path, "".join(p + "\n" for p in ids))
