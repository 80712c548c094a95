"""faiss indexes over passage vectors: build, search, shard, save and load, size on disk.

Inner product throughout: with L2-normalised vectors it is cosine similarity.
- ``flat``: exact search (IndexFlatIP), the default.
- ``hnsw``: graph search (IndexHNSWFlat), ``hnsw_m`` links per node, ``ef_search`` at query time.
- ``ivfpq``: inverted lists with product quantisation (IndexIVFPQ), ``nlist`` lists, ``pq_m``
  sub-quantisers of ``pq_bits`` bits, ``nprobe`` lists visited per query; trained on
  ``train_size`` sampled vectors (0: faiss's default, at most 256 per list).

Before building, :func:`build_index` checks that the index fits in memory
(:func:`estimate_bytes`, :func:`onmkd.resources.check_memory`).

Sharding: :class:`ShardedIndex` holds one index per consecutive range of rows and merges their
top-k into the top-k a single index over all rows gives (:func:`build_sharded_index`).

GPU: ``IndexSpec.device`` is ``auto`` (a GPU when faiss has one, for the kinds faiss runs on a
GPU: flat and ivfpq), ``cpu`` or ``gpu`` (an error when the installed faiss cannot). GPU faiss is
the ``gpu`` extra (faiss-gpu instead of faiss-cpu).

Files: :func:`save_index` writes the index atomically and a ``<file>.sha256`` sidecar (the
``sha256sum`` format); :func:`load_index` checks it before reading, so a truncated or damaged
file is an error, never a silently shorter index. A sharded index is saved as a folder.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from onmkd.errors import ConfigError, DataError
from onmkd.io import atomic_path, file_sha256, write_json, write_text

INDEX_KINDS = ("flat", "hnsw", "ivfpq")
INDEX_DEVICES = ("auto", "cpu", "gpu")
SHARDS_FILE = "shards.json"  # the list of a sharded index's files and row offsets
GPU_HINT = "install the gpu extra (pip uninstall faiss-cpu && pip install 'onmkd[gpu]', which brings faiss-gpu)"


@dataclass(frozen=True)
class IndexSpec:
    """Which faiss index to build; the fields of the other kinds are ignored."""

    kind: str = "flat"
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    nlist: int = 0  # 0: about 4·sqrt(N), at most N/39 so that k-means has 39 points per list
    pq_m: int = 0  # 0: dim/8 sub-quantisers (dim must divide by it)
    pq_bits: int = 8
    nprobe: int = 16
    train_size: int = 0  # ivfpq: vectors sampled to train on (0: faiss's default, at most 256 per list)
    device: str = "auto"  # auto (a GPU when faiss has one and the kind runs there), cpu, gpu

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ConfigError(f"index: {self.kind!r} is not one of {', '.join(INDEX_KINDS)}")
        if self.device not in INDEX_DEVICES:
            raise ConfigError(f"index.device: {self.device!r} is not one of {', '.join(INDEX_DEVICES)}")
        for name in ("hnsw_m", "ef_construction", "ef_search", "pq_bits", "nprobe"):
            if getattr(self, name) < 1:
                raise ConfigError(f"index.{name}: must be a positive integer, got {getattr(self, name)}")
        for name in ("nlist", "pq_m", "train_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"index.{name}: must be 0 (automatic) or positive, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Sizes and the memory check
# --------------------------------------------------------------------------------------------


def _ivfpq_shape(n: int, d: int, spec: IndexSpec) -> tuple[int, int, int]:
    """(nlist, pq_m, training vectors) of an ivfpq index over ``n`` vectors of size ``d``."""
    pq_m = spec.pq_m or max(1, d // 8)
    trainable = min(n, spec.train_size) if spec.train_size else n
    nlist = spec.nlist or max(1, min(int(4 * math.sqrt(n)), trainable // 39))
    train = min(trainable, 256 * nlist)  # faiss samples at most 256 points per list
    return nlist, pq_m, train


def estimate_bytes(n: int, d: int, spec: IndexSpec = IndexSpec()) -> int:
    """Memory an index of ``spec`` over ``n`` vectors of size ``d`` takes while it is built.

    flat: the vectors (N·d·4); hnsw: the vectors and two levels' worth of links per node
    (N·(d·4 + M·2·4)); ivfpq: the training sample and the centroids, then a code and an id per
    vector (N·(pq_m·pq_bits/8 + 8)).
    """
    if spec.kind == "flat":
        return n * d * 4
    if spec.kind == "hnsw":
        return n * (d * 4 + spec.hnsw_m * 2 * 4)
    nlist, pq_m, train = _ivfpq_shape(n, d, spec)
    return train * d * 4 + nlist * d * 4 + n * (math.ceil(pq_m * spec.pq_bits / 8) + 8)


def _alternative(kind: str) -> str:
    if kind == "ivfpq":
        return "use a smaller train_size, nlist or pq_m, or --shards on separate machines"
    other = "hnsw" if kind == "flat" else "flat"
    return (f"use ivfpq (compressed codes; {other} needs as much or more), "
            "or --shards and build the shards on separate machines")


def check_index_memory(n: int, d: int, spec: IndexSpec) -> None:
    """Raise :class:`onmkd.resources.ResourceError` if the index would not fit in memory."""
    from onmkd.resources import check_memory

    check_memory(estimate_bytes(n, d, spec), f"a {spec.kind} index over {n:,} vectors of size {d}",
                 _alternative(spec.kind))


# --------------------------------------------------------------------------------------------
# GPU
# --------------------------------------------------------------------------------------------


def gpu_count() -> int:
    """GPUs the installed faiss can use (0 with faiss-cpu)."""
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # noqa: BLE001 - a broken CUDA setup counts as no GPU
        return 0


def _wants_gpu(spec: IndexSpec) -> bool:
    """Whether to build ``spec`` on the GPU; ``device="gpu"`` that cannot be met is an error."""
    if spec.device == "cpu":
        return False
    if spec.device == "gpu":
        if not hasattr(faiss, "StandardGpuResources"):
            raise ConfigError(f"index.device: 'gpu' asked for, but the installed faiss has no GPU support; {GPU_HINT}")
        if gpu_count() == 0:
            raise ConfigError("index.device: 'gpu' asked for, but faiss sees no GPU")
        if spec.kind == "hnsw":
            raise ConfigError("index.device: faiss has no GPU hnsw index; use flat or ivfpq on the GPU, or device cpu")
        return True
    return spec.kind != "hnsw" and gpu_count() > 0


def is_gpu_index(index) -> bool:
    """Whether ``index`` lives on GPUs (one GPU index, or the replicas/shards faiss spreads over several)."""
    name = type(index).__name__
    return name.startswith("Gpu") or name in ("IndexReplicas", "IndexShards")


def to_gpu(index: faiss.Index) -> faiss.Index:
    """``index`` copied to every GPU faiss sees (:func:`faiss.index_cpu_to_all_gpus`)."""
    return faiss.index_cpu_to_all_gpus(index)


def to_cpu(index):
    """A CPU copy of a GPU index; a CPU index as it is."""
    if isinstance(index, ShardedIndex):
        return ShardedIndex([to_cpu(s) for s in index.shards], index.offsets)
    return faiss.index_gpu_to_cpu(index) if is_gpu_index(index) and hasattr(faiss, "index_gpu_to_cpu") else index


# --------------------------------------------------------------------------------------------
# Build and search
# --------------------------------------------------------------------------------------------


def _empty_index(n: int, d: int, spec: IndexSpec) -> tuple[faiss.Index, bool]:
    """The untrained, empty index of ``spec``; and whether it needs training."""
    if spec.kind == "flat":
        return faiss.IndexFlatIP(d), False
    if spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.ef_construction
        index.hnsw.efSearch = spec.ef_search
        return index, False
    nlist, pq_m, train = _ivfpq_shape(n, d, spec)
    if d % pq_m:
        raise ConfigError(f"index.pq_m: {pq_m} does not divide the vector size {d}")
    trainable = min(n, spec.train_size) if spec.train_size else n
    if trainable < max(nlist, 2**spec.pq_bits):
        what = f"the corpus has {n}" if trainable == n else f"train_size is {trainable}"
        raise ConfigError(
            f"index: ivfpq needs at least {max(nlist, 2 ** spec.pq_bits)} passages to train "
            f"(nlist {nlist}, pq_bits {spec.pq_bits}); {what}: use flat or hnsw"
        )
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, spec.pq_bits, faiss.METRIC_INNER_PRODUCT)
    index.nprobe = min(spec.nprobe, nlist)
    return index, True


def _training_rows(x: np.ndarray, spec: IndexSpec) -> np.ndarray:
    if spec.train_size and spec.train_size < len(x):
        rows = np.sort(np.random.default_rng(1234).choice(len(x), spec.train_size, replace=False))
        return x[rows]
    return x


def _train(index: faiss.Index, x: np.ndarray, spec: IndexSpec) -> None:
    index.train(_training_rows(x, spec))


def _place(index: faiss.Index, spec: IndexSpec) -> faiss.Index:
    """``index`` on the GPUs when ``spec`` asks (and, for ``auto``, when faiss can)."""
    if not _wants_gpu(spec):
        return index
    try:
        gpu = to_gpu(index)
    except RuntimeError as e:  # e.g. an ivfpq code size the GPU kernels do not support
        if spec.device == "gpu":
            raise ConfigError(f"index.device: faiss cannot put this {spec.kind} index on the GPU: "
                              f"{' '.join(str(e).split())[:300]}") from None
        warnings.warn(f"faiss cannot put this {spec.kind} index on the GPU; it stays on the CPU", stacklevel=3)
        return index
    if spec.kind == "ivfpq":  # set nprobe on the GPU copy (and on every replica) explicitly
        space = faiss.GpuParameterSpace() if hasattr(faiss, "GpuParameterSpace") else faiss.ParameterSpace()
        space.set_index_parameter(gpu, "nprobe", int(faiss.extract_index_ivf(index).nprobe))
    return gpu


def build_index(vectors: np.ndarray, spec: IndexSpec = IndexSpec(), *, timings: dict | None = None) -> faiss.Index:
    """Build an inner-product index over ``vectors`` ``[N, d]`` (float32).

    Checks first that it fits in memory; ``spec.device`` puts flat and ivfpq indexes on the GPU
    (trained and filled there). ``timings``: a dict that receives ``train_s`` and ``add_s``.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    if n == 0:
        raise ConfigError("index: cannot build an index over an empty corpus")
    index, needs_training = _empty_index(n, d, spec)
    check_index_memory(n, d, spec)
    index = _place(index, spec)
    t0 = time.perf_counter()
    if needs_training:
        _train(index, x, spec)
    t1 = time.perf_counter()
    index.add(x)
    if timings is not None:
        timings.update(train_s=t1 - t0, add_s=time.perf_counter() - t1)
    return index


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, row ids) per query, best first; ``k`` is capped at the index size.

    ``index``: a faiss index or a :class:`ShardedIndex`.
    """
    k = min(k, index.ntotal)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


class ShardedIndex:
    """Indexes over consecutive ranges of rows, searched as one index.

    Shard ``i`` holds rows ``offsets[i]`` … ``offsets[i] + shards[i].ntotal - 1``. :meth:`search`
    asks every shard for its top ``k`` and keeps the best ``k`` overall: for exact shards (flat)
    the same ids and scores as one flat index over all rows. It has the faiss ``search``,
    ``ntotal`` and ``d`` that :func:`search` uses.
    """

    def __init__(self, shards: list, offsets: list[int] | None = None):
        if not shards:
            raise ConfigError("index: a sharded index needs at least one shard")
        dims = {int(s.d) for s in shards}
        if len(dims) != 1:
            raise ConfigError(f"index: shards of different vector sizes {sorted(dims)}")
        if offsets is None:
            offsets = [0]
            for s in shards[:-1]:
                offsets.append(offsets[-1] + int(s.ntotal))
        if len(offsets) != len(shards):
            raise ConfigError(f"index: {len(shards)} shards but {len(offsets)} offsets")
        self.shards = list(shards)
        self.offsets = [int(o) for o in offsets]
        self.d = dims.pop()
        self.metric_type = shards[0].metric_type

    @property
    def ntotal(self) -> int:
        return sum(int(s.ntotal) for s in self.shards)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        parts_d, parts_i = [], []
        for shard, offset in zip(self.shards, self.offsets):
            kk = min(k, int(shard.ntotal))
            if kk == 0:
                continue
            dist, ids = shard.search(q, kk)
            parts_d.append(dist)
            parts_i.append(np.where(ids >= 0, ids + offset, -1))
        dist = np.concatenate(parts_d, axis=1)
        ids = np.concatenate(parts_i, axis=1)
        larger_is_better = self.metric_type == faiss.METRIC_INNER_PRODUCT
        key = np.where(ids >= 0, -dist if larger_is_better else dist, np.inf)
        # stable: equal scores keep the lower row id first (shards are in row order)
        order = np.argsort(key, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(dist, order, axis=1), np.take_along_axis(ids, order, axis=1)


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` consecutive (start, stop) row ranges covering ``n`` rows, sizes differing by at most one."""
    if shards < 1:
        raise ConfigError(f"shards: must be a positive integer, got {shards}")
    shards = min(shards, n) or 1
    edges = [round(i * n / shards) for i in range(shards + 1)]
    return list(zip(edges[:-1], edges[1:]))


def build_sharded_index(vectors: np.ndarray, spec: IndexSpec = IndexSpec(), shards: int = 2, *,
                        timings: dict | None = None) -> ShardedIndex:
    """A :class:`ShardedIndex` of ``shards`` indexes of ``spec`` over consecutive row ranges.

    ivfpq shards share one training (on the sample ``spec`` draws from all rows), so their codes
    are comparable; each shard is then filled with its rows.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    if n == 0:
        raise ConfigError("index: cannot build an index over an empty corpus")
    check_index_memory(n, d, spec)
    bounds = shard_bounds(n, shards)
    t0 = time.perf_counter()
    if spec.kind != "ivfpq":
        index = ShardedIndex([build_index(x[a:b], spec) for a, b in bounds], [a for a, _ in bounds])
        if timings is not None:
            timings.update(train_s=0.0, add_s=time.perf_counter() - t0)
        return index
    trained, _ = _empty_index(n, d, spec)
    _train(trained, x, spec)
    t1 = time.perf_counter()
    parts = []
    for a, b in bounds:
        shard = _place(faiss.clone_index(trained), spec)
        shard.add(x[a:b])
        parts.append(shard)
    if timings is not None:
        timings.update(train_s=t1 - t0, add_s=time.perf_counter() - t1)
    return ShardedIndex(parts, [a for a, _ in bounds])


def index_bytes(index) -> int:
    """Bytes the index takes when serialised (what it occupies on disk); summed over shards."""
    if isinstance(index, ShardedIndex):
        return sum(index_bytes(s) for s in index.shards)
    return int(faiss.serialize_index(to_cpu(index)).nbytes)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Where the checksum of the index file ``path`` is kept: ``<path>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def _save_one(index: faiss.Index, path: Path) -> str:
    with atomic_path(path) as tmp:
        faiss.write_index(to_cpu(index), str(tmp))
        digest = file_sha256(tmp)
    write_text(sidecar_path(path), f"{digest}  {path.name}\n")
    return digest


def save_index(index, path: str | os.PathLike[str]) -> None:
    """Write the index to ``path`` atomically, with its sha256 in ``<path>.sha256``.

    A GPU index is copied to the CPU first. A :class:`ShardedIndex` becomes a folder ``path``
    of ``shard-00000.faiss`` … (each with its sidecar) and ``shards.json`` (offsets, checksums).
    """
    path = Path(path)
    if not isinstance(index, ShardedIndex):
        _save_one(index, path)
        return
    path.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (shard, offset) in enumerate(zip(index.shards, index.offsets)):
        name = f"shard-{i:05d}.faiss"
        entries.append({"file": name, "offset": offset, "ntotal": int(shard.ntotal), "sha256": _save_one(shard, path / name)})
    write_json(path / SHARDS_FILE, {"format": 1, "ntotal": index.ntotal, "d": index.d, "shards": entries})


def _verified(path: Path, verify: bool) -> None:
    if not path.is_file():
        raise DataError(f"{path}: no such index file")
    if not verify:
        return
    side = sidecar_path(path)
    try:
        expected = side.read_text(encoding="utf-8").split()[0].lower()
    except (OSError, IndexError):
        raise DataError(f"{path}: no checksum file {side.name} beside it (an index not written by onmkd, or "
                        "its write did not finish); rebuild it, or load it with verify=False") from None
    if file_sha256(path) != expected:
        raise DataError(f"{path}: does not match its checksum in {side.name}: the file is damaged or truncated; "
                        "rebuild the index")


def load_index(path: str | os.PathLike[str], *, verify: bool = True, device: str = "cpu"):
    """Read an index written by :func:`save_index` (a file, or a folder for a sharded index).

    With ``verify`` (the default) each file is checked against its ``.sha256`` sidecar first:
    a mismatch or a missing sidecar raises :class:`~onmkd.errors.DataError`. ``device``
    (auto, cpu, gpu) places the index as :class:`IndexSpec` ``device`` does.
    """
    path = Path(path)
    if path.is_dir():
        try:
            meta = json.loads((path / SHARDS_FILE).read_text(encoding="utf-8"))
            entries = meta["shards"]
        except (OSError, ValueError, KeyError, TypeError):
            raise DataError(f"{path}: not a sharded index folder (no readable {SHARDS_FILE})") from None
        shards = [load_index(path / e["file"], verify=verify, device=device) for e in entries]
        for e, s in zip(entries, shards):
            if int(s.ntotal) != int(e["ntotal"]):
                raise DataError(f"{path / e['file']}: {s.ntotal} vectors, {SHARDS_FILE} says {e['ntotal']}")
        return ShardedIndex(shards, [int(e["offset"]) for e in entries])
    _verified(path, verify)
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:
        raise DataError(f"{path}: faiss cannot read it: {' '.join(str(e).split())[:300]}") from None
    kind = "hnsw" if "HNSW" in type(index).__name__ else "ivfpq" if "IVF" in type(index).__name__ else "flat"
    return _place(index, IndexSpec(kind=kind, device=device))
