"""The retriever: a question tower and a passage tower (one module when tied), saved as
sentence-transformers folders that ``Encoder.load`` and ``SentenceTransformer`` both read."""

from __future__ import annotations

import copy
import importlib.metadata
import shutil
from pathlib import Path
from typing import Any

import torch

from onmkd.io import write_json
from onmkd.retrieval.models import Encoder


class DualEncoder(torch.nn.Module):
    """A question tower and a passage tower; the same module when tied."""

    def __init__(self, question: Encoder, passage: Encoder | None = None):
        super().__init__()
        self.question = question
        self.passage = passage if passage is not None else question

    @property
    def tied(self) -> bool:
        return self.passage is self.question

    @classmethod
    def untie(cls, enc: Encoder) -> "DualEncoder":
        return cls(enc, copy.deepcopy(enc))

    def save(self, folder: str | Path, meta: dict | None = None) -> None:
        """Save as a sentence-transformers folder (tied) or ``query/`` + ``passage/`` folders."""
        from onmkd.resources import check_disk

        folder = Path(folder)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        towers = [self.question] if self.tied else [self.question, self.passage]
        need = sum(t.numel() * t.element_size() for enc in towers for t in enc.model.state_dict().values())
        check_disk(folder.parent, need, f"saving the model to {folder}")  # the old folder goes only after
        if self.tied:
            save_encoder(self.question, tmp)
        else:
            save_encoder(self.question, tmp / "query")
            save_encoder(self.passage, tmp / "passage")
        if meta:
            write_json(tmp / "onmkd_student.json", meta)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)

    @classmethod
    def load(cls, folder: str | Path) -> "DualEncoder":
        folder = Path(folder)
        if (folder / "query").is_dir():
            return cls(Encoder.load(str(folder / "query")), Encoder.load(str(folder / "passage")))
        return cls(Encoder.load(str(folder)))


def save_encoder(enc: Encoder, folder: Path, max_seq_length: int = 256) -> None:
    """``save_pretrained`` plus the files sentence-transformers reads (pooling, normalisation)."""
    folder.mkdir(parents=True, exist_ok=True)
    enc.model.save_pretrained(folder)
    enc.tokenizer.save_pretrained(folder)
    write_sentence_transformers_files(folder, dim=enc.dim, max_seq_length=max_seq_length, pooling=enc.pooling,
                                      normalize=enc.normalize)


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
