"""Floating-point tolerances from an error model, so that no test depends on one CPU's kernels.

Two computations of the same quantity that take their sums in different orders (another SIMD
width — AVX2 against AVX-512 —, another GEMM blocking for another batch shape, another number of
threads, a sharded batch) differ by rounding alone. The tests compare such pairs with tolerances
derived here, never fitted to what one machine printed.

The model (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §3.1 and §4.2):

- ``u`` is the unit round-off: 2⁻²⁴ for float32, 2⁻⁵³ for float64.
- A sum of n terms computed in **any** order satisfies ``|ŝ − s| ≤ γ(n−1) · Σ|xᵢ|`` with
  ``γ(n) = n·u / (1 − n·u)``. Two orders therefore differ by at most ``2·γ(n−1) · Σ|xᵢ|``:
  :func:`dot_atol` for inner products of unit vectors (Σ|xᵢyᵢ| ≤ 1 by Cauchy–Schwarz).
- A network of L layers, each a layer-normalised block whose longest inner product has k terms,
  with O(1) activations (the layer norm keeps them so): to first order each layer adds at most
  ``γ(k)`` relative error to its output, so a pooled unit vector is within ``L·γ(k)`` of the exact
  one and two implementations within twice that: :func:`forward_atol`. This is a worst-case bound;
  on real kernels errors are usually 10–1000 times smaller, so the tests keep their teeth only
  where a bug moves results far more (a wrong mask, pooling or weight: 1e-2 or more).
- **Identities of algorithms** (cached gradients against the plain backward, a sharded step
  against one process) are checked in float64, where the same rounding is 2²⁹ times smaller.
  The tolerance :data:`F64_RTOL` = 2⁻²⁴ · 2⁻⁵ (2⁻²⁹ ≈ 1.9e-9) admits any amplification of
  float64 rounding (sum depth × condition × optimiser steps) up to 2²⁴, the factor at which the
  same computation in float32 would have no correct digit left; a real bug in the algorithm (a lost
  chunk, a replayed dropout mask that differs, a rank's share counted twice) is off by 1e-4 or more.
"""

from __future__ import annotations

U32 = 2.0**-24
U64 = 2.0**-53
F64_RTOL = 2.0**-29


def unit_roundoff(dtype) -> float:
    """u for a torch or numpy float dtype (float32 or float64)."""
    name = str(dtype).rsplit(".", 1)[-1]
    return {"float32": U32, "float64": U64}[name]


def gamma(n: int, u: float = U32) -> float:
    """γ(n) = n·u / (1 − n·u): the relative error bound of an n-term sum in any order."""
    if n * u >= 1:
        raise ValueError(f"γ({n}) is undefined at u = {u}")
    return n * u / (1 - n * u)


def dot_atol(dim: int, u: float = U32) -> float:
    """Two computations of q·p for unit vectors of ``dim`` entries differ by at most 2·γ(dim−1)."""
    return 2 * gamma(max(dim - 1, 1), u)


def forward_atol(layers: int, inner: int, u: float = U32) -> float:
    """Entry-wise bound on the difference of two computations of an O(1) (layer-normalised or
    unit-norm) output of a ``layers``-deep network whose longest inner product has ``inner``
    terms: 2·L·γ(k), each computation within L·γ(k) of the exact output."""
    return 2 * layers * gamma(inner, u)


def bert_forward_atol(config, max_length: int, u: float = U32) -> float:
    """:func:`forward_atol` for a BERT config: the longest inner product of a layer is the
    feed-forward's (``intermediate_size``), the attention's over ``max_length`` keys, or the
    hidden size; the embedding layer norm counts as one more layer."""
    inner = max(config.intermediate_size, config.hidden_size, max_length)
    return forward_atol(config.num_hidden_layers + 1, inner, u)


def to_float64(modules) -> None:
    """Cast modules to float64 in place: parameters keep their identity (``Module.to`` swaps their
    data), so an optimiser built on them still holds them."""
    import torch

    for module in modules:
        module.to(torch.float64)


def dropout_off(modules) -> None:
    """Set every dropout of the modules to p = 0."""
    import torch

    for module in modules:
        for m in module.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0


# The tests' tiny BERT (conftest.tiny_model_dir): 2 layers, hidden 32, feed-forward 64, texts of at
# most 32 tokens: bert_forward_atol gives 2·3·γ(64) ≈ 2.3e-5 for its unit vectors.
TINY_BERT_ATOL = forward_atol(2 + 1, 64)
