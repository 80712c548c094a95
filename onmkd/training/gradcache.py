"""Cached gradients (GradCache; Gao et al., 2021) for contrastive losses over large batches.

A contrastive loss couples every vector of the batch with every other one, so it cannot be split
into independent sub-batch losses; but its gradient with respect to the encoder parameters θ
factors through the vectors ``v_i``:

.. math::
    \\frac{\\partial L}{\\partial \\theta} = \\sum_i \\frac{\\partial L}{\\partial v_i}
        \\frac{\\partial v_i}{\\partial \\theta}

:func:`cached_backward` computes it in three passes:

1. encode every sub-batch without autograd (no activations kept), recording the random-number
   state before each sub-batch (:class:`RandContext`);
2. compute the loss on the detached vectors and back-propagate it to the vectors only,
   ``g_i = ∂L/∂v_i``;
3. re-encode each sub-batch with autograd under its recorded random state, so dropout draws the
   same masks as in pass 1, and back-propagate the surrogate ``Σ_i ⟨v_i, g_i⟩``, whose parameter
   gradient is that sub-batch's share of ``∂L/∂θ``.

The loss and the accumulated gradients are those of encoding the same sub-batches with autograd
kept for the whole batch (up to float summation order), at the activation memory of one
sub-batch and the cost of one extra forward pass. With dropout off they are also those of any
other split of the batch (e.g. one pass over all of it).

This module knows nothing of models or data: an encoder is any callable from one sub-batch
input to ``{layer: [n, H]}`` vectors, and the loss a closure over those vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["RandContext", "Tower", "assemble", "cached_backward"]

Vectors = dict[int, torch.Tensor]


def _cuda_devices() -> list[int]:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []


class RandContext:
    """The CPU (and CUDA) random-number state at creation, to run code under it again.

    ``with ctx:`` sets the generators to the captured state and, on exit, puts back the state they
    had on entry (``torch.random.fork_rng``), so replaying a sub-batch leaves the outer random
    stream untouched. ``devices``: CUDA devices whose generators are captured (default: every
    initialised CUDA device; none on a CPU-only machine).
    """

    def __init__(self, devices: Sequence[int | torch.device] | None = None):
        self.devices = list(_cuda_devices() if devices is None else devices)
        self.cpu_state = torch.get_rng_state()
        self.cuda_states = [torch.cuda.get_rng_state(d) for d in self.devices]
        self._fork = None

    def __enter__(self) -> "RandContext":
        self._fork = torch.random.fork_rng(devices=self.devices, enabled=True)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        for d, state in zip(self.devices, self.cuda_states):
            torch.cuda.set_rng_state(state, d)
        return self

    def __exit__(self, *exc) -> None:
        fork, self._fork = self._fork, None
        fork.__exit__(*exc)


@dataclass
class Tower:
    """One encoder call site: ``encode(chunk) -> {layer: [n, H]}`` run over ``chunks`` in order.

    ``order`` (optional, ``[N]`` long tensor) puts the concatenated rows back in input order:
    row ``i`` of the result is row ``order[i]`` of the concatenation (e.g. the inverse of a
    length sort); ``None`` keeps the concatenation's order.
    """

    encode: Callable[[Any], Mapping[int, torch.Tensor]]
    chunks: Sequence[Any]
    order: torch.Tensor | None = None


def assemble(parts: Sequence[Mapping[int, torch.Tensor]], order: torch.Tensor | None = None) -> Vectors:
    """Concatenate per-chunk ``{layer: [n_c, H]}`` dicts into ``{layer: [N, H]}``, reordered by ``order``."""
    if not parts:
        raise ValueError("assemble: no chunks")
    layers = list(parts[0])
    for p in parts[1:]:
        if list(p) != layers:
            raise ValueError(f"assemble: chunks disagree on layers ({layers} vs {list(p)})")
    out = {}
    for l in layers:
        v = torch.cat([p[l] for p in parts]) if len(parts) > 1 else parts[0][l]
        out[l] = v if order is None else v[order.to(v.device)]
    return out


def cached_backward(
    towers: Sequence[Tower],
    loss_fn: Callable[[list[Vectors]], tuple[torch.Tensor, Any]],
    devices: Sequence[int | torch.device] | None = None,
) -> tuple[torch.Tensor, Any]:
    """Accumulate ``∂ loss_fn(vectors) / ∂θ`` into the encoders' ``.grad``, one sub-batch at a time.

    ``towers``: the encoder call sites, encoded in this order (the order fixes which random
    numbers each sub-batch draws: keep it that of the uncached computation). ``loss_fn`` gets
    one ``{layer: [N, H]}`` dict per tower, in the towers' order, and returns ``(loss, aux)``
    with ``loss`` a scalar tensor. ``devices``: CUDA devices whose random state is replayed
    (default: every initialised one).

    Gradients are *added* to ``.grad`` (zero them first, as for ``loss.backward()``); a vector
    that the loss does not use costs no re-encoding. Returns ``(loss.detach(), aux)``.
    """
    # pass 1: vectors without activations, and the random state each sub-batch started from
    cached: list[list[tuple[RandContext, Vectors]]] = []
    with torch.no_grad():
        for tower in towers:
            parts = []
            for chunk in tower.chunks:
                ctx = RandContext(devices)
                out = tower.encode(chunk)
                parts.append((ctx, {l: v.detach().requires_grad_() for l, v in out.items()}))
            cached.append(parts)
    # pass 2: the loss on the whole batch of (cached) vectors, back-propagated to the vectors
    vectors = [assemble([p for _, p in parts], tower.order) for tower, parts in zip(towers, cached)]
    loss, aux = loss_fn(vectors)
    if loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar loss, got shape {list(loss.shape)}")
    if loss.requires_grad:
        loss.backward()
    del vectors
    # pass 3: each sub-batch again, with autograd, under its recorded random state
    for tower, parts in zip(towers, cached):
        for chunk, (ctx, leaves) in zip(tower.chunks, parts):
            grads = [(l, v.grad) for l, v in leaves.items() if v.grad is not None]
            if not grads:
                continue
            with ctx:
                out = tower.encode(chunk)
            surrogate = sum((out[l] * g).sum() for l, g in grads)
            surrogate.backward()
    return loss.detach(), aux
