"""Build the students: a peer is a dual encoder of n transformer layers taken from a checkpoint.

Layer rules pick which checkpoint layers (1-based) a student keeps: ``first`` (1..n), ``last``
(L-n+1..L), ``even`` (round(i·L/n) for i = 1..n: evenly spaced, top layer included) or an
explicit ``list``. ``random`` keeps the architecture and draws fresh weights (a control).
"""

from __future__ import annotations

import torch

from onmkd.config import PeerInit
from onmkd.errors import ConfigError, ModelError
from onmkd.retrieval.dual import DualEncoder, save_encoder  # noqa: F401 - DualEncoder was defined here
from onmkd.retrieval.models import Encoder, remote_code_allowed, resolve


def select_layers(rule: str, n: int, depth: int, explicit: tuple[int, ...] = ()) -> list[int]:
    """The 1-based checkpoint layers a student of ``n`` layers keeps (``n = 0``: all ``depth``)."""
    if n == 0 or n == depth and rule != "list":
        return list(range(1, depth + 1))
    if n > depth:
        raise ValueError(f"{n} layers asked of a {depth}-layer checkpoint")
    if rule == "first":
        return list(range(1, n + 1))
    if rule == "last":
        return list(range(depth - n + 1, depth + 1))
    if rule == "even":
        return [round(i * depth / n) for i in range(1, n + 1)]
    bad = [x for x in explicit if not 1 <= x <= depth]
    if bad:
        raise ValueError(f"layer {bad[0]} is beyond the checkpoint's {depth} layers")
    return list(explicit)


def _truncate(model, keep: list[int]) -> None:
    enc = getattr(model, "encoder", None)
    layers = getattr(enc, "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ModelError(f"{type(model).__name__}: no encoder.layer list to select layers from")
    enc.layer = torch.nn.ModuleList([layers[i - 1] for i in keep])
    model.config.num_hidden_layers = len(keep)


def set_attention_dropout(model: torch.nn.Module, p: float) -> None:
    """Set the attention-probability dropout of every attention module (and the config)."""
    for name, module in model.named_modules():
        if name.endswith("attention.self") or type(module).__name__.endswith("SelfAttention"):
            drop = getattr(module, "dropout", None)
            if isinstance(drop, torch.nn.Dropout):
                drop.p = p
    if hasattr(model.config, "attention_probs_dropout_prob"):
        model.config.attention_probs_dropout_prob = p


def build_peer(init: PeerInit, *, layers: int, pooling: str, normalize: bool, seed: int, field: str,
               attention_dropout: float | None = None) -> tuple[Encoder, list[int]]:
    """A student encoder from ``init``; returns it with the checkpoint layers it kept.

    ``field`` names the config entry (``model.peer[1]``) in error messages.
    """
    enc, keep = _build_peer(init, layers=layers, pooling=pooling, normalize=normalize, seed=seed, field=field)
    if attention_dropout is not None:
        set_attention_dropout(enc.model, attention_dropout)
    return enc, keep


def _build_peer(init: PeerInit, *, layers: int, pooling: str, normalize: bool, seed: int, field: str) -> tuple[Encoder, list[int]]:
    from transformers import AutoConfig, AutoModel

    try:
        where = resolve(init.checkpoint)
    except ModelError as e:
        raise ConfigError(f"{field}.checkpoint: {e}") from None
    if init.random:
        config = AutoConfig.from_pretrained(where, trust_remote_code=remote_code_allowed())
        depth = int(config.num_hidden_layers)
        keep = _keep(init, layers, depth, field)
        config.num_hidden_layers = len(keep)
        torch.manual_seed(seed)
        enc = Encoder.load(init.checkpoint, pooling=pooling, normalize=normalize)
        enc.model = AutoModel.from_config(config, trust_remote_code=remote_code_allowed())
        enc.model.train()
        return enc, keep
    enc = Encoder.load(init.checkpoint, pooling=pooling, normalize=normalize)
    keep = _keep(init, layers, enc.num_layers, field)
    _truncate(enc.model, keep)
    enc.train()
    return enc, keep


def _keep(init: PeerInit, layers: int, depth: int, field: str) -> list[int]:
    try:
        return select_layers(init.layer_rule, layers, depth, init.layer_list)
    except ValueError as e:
        name = f"{field}.layer_list" if init.layer_rule == "list" else "model.layers"
        raise ConfigError(f"{name}: {e} ({init.checkpoint})") from None
