"""Training losses for dense passage retrieval with Online Mutual Knowledge Distillation.

Every function here is a pure function of tensors: no models, no data, no state.

Notation used throughout
------------------------
- ``B``: questions in the batch.
- ``C``: candidate passages per batch, ``C = B * (1 + h)``: the batch's positive passages,
  then ``h`` hard negatives per question. The other questions' positives are the in-batch
  negatives.
- ``labels``: ``[B]`` integer tensor; question ``i``'s positive passage is candidate column
  ``labels[i]``.
- ``S``: a score matrix ``[B, C]`` of *raw* similarities (dot products of L2-normalised
  vectors, i.e. cosines, in ``[-1, 1]``). The temperature ``tau`` that turns them into logits is
  always a separate argument: the logits are ``S / tau`` (and ``S / tau / T`` for distillation
  at temperature ``T``).
- ``K``: the number of peers trained together.

Detach semantics in one place
-----------------------------
- ``mutual_kl(..., detach=True)`` (the default, as in Deep Mutual Learning): the target peer's
  distribution is a constant; gradient reaches only the learning peer's scores.
- ``cross_wise(..., detach=True)``: the other peer's passage vectors are a constant; gradient
  reaches only the question vectors.
- ``offline_kd``: the teacher is always a constant.
- ``onmkd_total(..., cross_detach=True)``: peer ``k``'s cross-wise term sends gradient only into
  peer ``k``'s own vectors (see :func:`onmkd_total`).

All inputs are checked for shape and the errors are ``ValueError`` naming the shapes. Scores and
vectors must be finite (a ``-inf`` mask in a score matrix would make the KL terms NaN).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "nll",
    "mutual_kl",
    "mutual_kl_multi",
    "cross_wise",
    "cross_wise_pair",
    "cross_wise_multi",
    "offline_kd",
    "onmkd_total",
]


# --------------------------------------------------------------------------- checks


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def _check_positive(name: str, value: float) -> None:
    v = float(value)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _check_scores(name: str, scores: torch.Tensor) -> None:
    if not isinstance(scores, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(scores).__name__}")
    if scores.dim() != 2:
        raise ValueError(f"{name} must be a [B, C] score matrix, got shape {_shape(scores)}")
    if not scores.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {scores.dtype}")


def _check_same(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {_shape(a)} but {name_b} has shape {_shape(b)}; they must match")


def _check_labels(labels: torch.Tensor, rows: int, cols: int, what: str) -> None:
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        shape = _shape(labels) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a 1-d integer tensor [B], got {shape}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.shape[0] != rows:
        raise ValueError(f"labels has shape {_shape(labels)} but {what} has {rows} rows; they must match")
    if labels.numel():
        lo, hi = (int(v) for v in torch.aminmax(labels))  # one host sync
        if lo < 0 or hi >= cols:
            raise ValueError(f"labels must lie in [0, {cols}) for {cols} candidate columns, got values in [{lo}, {hi}]")


def _check_vectors(q: torch.Tensor, p: torch.Tensor, q_name: str = "q_a", p_name: str = "p_b") -> None:
    for name, t in ((q_name, q), (p_name, p)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            shape = _shape(t) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 2-d tensor of pooled vectors, got {shape}")
    if q.shape[1] != p.shape[1]:
        raise ValueError(
            f"{q_name} has shape {_shape(q)} but {p_name} has shape {_shape(p)}: "
            "the vector sizes (last dimension) must match for a dot product"
        )


# --------------------------------------------------------------------------- terms


def nll(scores: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    r"""DPR's negative log-likelihood of the positive passage among the candidates.

    .. math::
        L_{nll} = \frac{1}{B} \sum_i -\log \operatorname{softmax}(S_i / \tau)[\,labels_i\,]

    i.e. cross-entropy on the logits ``S / tau``.

    Shapes: ``scores`` ``[B, C]`` raw similarities, ``labels`` ``[B]`` integer columns in
    ``[0, C)``; ``tau > 0``. Returns a scalar tensor (0-d).
    """
    _check_scores("scores", scores)
    _check_labels(labels, scores.shape[0], scores.shape[1], f"scores {_shape(scores)}")
    _check_positive("tau", tau)
    return F.cross_entropy(scores / tau, labels)


def mutual_kl(
    scores_a: torch.Tensor,
    scores_b: torch.Tensor,
    tau: float,
    temperature: float,
    detach: bool = True,
) -> torch.Tensor:
    r"""Deep-Mutual-Learning term for peer *a* learning from peer *b* over the same candidates.

    With logits ``z = S / tau / T`` (``S`` raw cosine scores, ``tau`` the contrastive
    temperature of :func:`nll`, ``T`` the distillation ``temperature``), ``p_b = softmax(z_b)``
    and ``p_a = softmax(z_a)`` row by row:

    .. math::
        L_{kl}(a \leftarrow b) = T^2 \cdot \frac{1}{B} \sum_i \mathrm{KL}(p_{b,i} \,\|\, p_{a,i}),
        \qquad \mathrm{KL}(p \| q) = \sum_c p_c (\log p_c - \log q_c)

    (``batchmean``: summed over candidates, averaged over questions). The ``T²`` factor keeps
    the gradient magnitude roughly independent of ``T`` (Hinton et al.). Both log-distributions
    come from ``log_softmax``, so no log of 0 is ever taken.

    ``detach=True`` (default): ``scores_b`` is treated as a constant target, no gradient
    reaches it. ``detach=False``: gradient flows into both sides.

    Shapes: ``scores_a`` and ``scores_b`` ``[B, C]`` (identical). Returns a scalar tensor, ``>= 0``.
    """
    _check_scores("scores_a", scores_a)
    _check_scores("scores_b", scores_b)
    _check_same("scores_a", scores_a, "scores_b", scores_b)
    _check_positive("tau", tau)
    _check_positive("temperature", temperature)
    if detach:
        scores_b = scores_b.detach()
    scale = tau * temperature
    log_q = F.log_softmax(scores_a / scale, dim=-1)  # learner
    log_p = F.log_softmax(scores_b / scale, dim=-1)  # target
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()
    return kl * (temperature * temperature)


def mutual_kl_multi(
    scores: Sequence[torch.Tensor],
    index: int,
    tau: float,
    temperature: float,
    detach: bool = True,
) -> torch.Tensor:
    r"""Mutual-learning term for peer ``index`` among ``K >= 2`` peers: the mean of
    :func:`mutual_kl` against each other peer.

    .. math::
        L_{kl}(k) = \frac{1}{K-1} \sum_{j \ne k} L_{kl}(k \leftarrow j)

    Shapes: ``scores`` a sequence of ``K`` matrices ``[B, C]`` over the same candidates.
    Returns a scalar tensor. ``ValueError`` when ``K < 2`` or ``index`` is not in ``[0, K)``.
    """
    k_peers = len(scores)
    if k_peers < 2:
        raise ValueError(f"mutual_kl_multi needs at least 2 peers' scores, got {k_peers}")
    if not -k_peers <= index < k_peers:
        raise ValueError(f"index {index} is out of range for {k_peers} peers")
    index %= k_peers
    terms = [
        mutual_kl(scores[index], scores[j], tau, temperature, detach=detach)
        for j in range(k_peers)
        if j != index
    ]
    return torch.stack(terms).mean()


def cross_wise(
    q_a: torch.Tensor,
    p_b: torch.Tensor,
    labels: torch.Tensor,
    tau_c: float,
    detach: bool = False,
) -> torch.Tensor:
    r"""Cross-wise contrastive InfoNCE: peer *a*'s question vectors against peer *b*'s passage
    vectors over the same candidate layout.

    .. math::
        L_{cw}(q_a, p_b) = \frac{1}{B} \sum_i
            -\log \operatorname{softmax}\!\left(\frac{q_a p_b^\top}{\tau_c}\right)_i[\,labels_i\,]

    The vectors are used as given (the encoders already L2-normalise their pooled vectors, so
    ``q_a p_bᵀ`` are cosines).

    ``detach=True``: ``p_b`` (the other peer's side) is a constant; gradient reaches ``q_a``
    only. ``detach=False`` (default): gradient reaches both ``q_a`` and ``p_b``.

    Shapes: ``q_a`` ``[B, H]``, ``p_b`` ``[C, H]``, ``labels`` ``[B]`` in ``[0, C)``;
    ``tau_c > 0``. Returns a scalar tensor.
    """
    _check_vectors(q_a, p_b)
    _check_labels(labels, q_a.shape[0], p_b.shape[0], f"q_a {_shape(q_a)}")
    _check_positive("tau_c", tau_c)
    if detach:
        p_b = p_b.detach()
    return F.cross_entropy(q_a @ p_b.transpose(0, 1) / tau_c, labels)


def cross_wise_pair(
    q_a: torch.Tensor,
    p_a: torch.Tensor,
    q_b: torch.Tensor,
    p_b: torch.Tensor,
    labels: torch.Tensor,
    tau_c: float,
    detach: bool = False,
) -> torch.Tensor:
    r"""Symmetric cross-wise term of a pair of peers: one peer's question vectors against the
    other's passage vectors, and vice versa.

    .. math::
        L_{pair} = \tfrac12 \left( L_{cw}(q_a, p_b) + L_{cw}(q_b, p_a) \right)

    This is *one* loss of the pair, not a per-peer loss: with ``detach=False`` its gradient
    reaches all four inputs, i.e. both peers, so a training loop must add it **once** per pair
    (adding it once per peer would double its weight). With ``detach=True`` each direction
    detaches its passage side (``p_b`` in the first term, ``p_a`` in the second), so gradient
    reaches only the question vectors ``q_a`` and ``q_b`` — still both peers. For a loss whose
    gradient stays inside one peer, use :func:`onmkd_total` with ``cross_detach=True``.

    Shapes: ``q_a``, ``q_b`` ``[B, H]``; ``p_a``, ``p_b`` ``[C, H]``; ``labels`` ``[B]``.
    Returns a scalar tensor.
    """
    _check_vectors(q_a, p_b, "q_a", "p_b")
    _check_vectors(q_b, p_a, "q_b", "p_a")
    _check_same("q_a", q_a, "q_b", q_b)
    _check_same("p_a", p_a, "p_b", p_b)
    return 0.5 * (
        cross_wise(q_a, p_b, labels, tau_c, detach=detach) + cross_wise(q_b, p_a, labels, tau_c, detach=detach)
    )


def _layer(vectors: Mapping[int, torch.Tensor], layer: int, peer: int, side: str) -> torch.Tensor:
    try:
        return vectors[layer]
    except (KeyError, TypeError):
        have = sorted(vectors) if isinstance(vectors, Mapping) else type(vectors).__name__
        raise ValueError(f"{side}_layers[{peer}] has no layer {layer!r} (it has {have})") from None


def _check_layer_map(layer_map: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    pairs = [tuple(m) for m in layer_map]
    if not pairs or any(len(m) != 2 for m in pairs):
        raise ValueError(f"layer_map must be a non-empty list of (layer_of_a, layer_of_b) pairs, got {layer_map!r}")
    return pairs


def cross_wise_multi(
    q_layers: Sequence[Mapping[int, torch.Tensor]],
    p_layers: Sequence[Mapping[int, torch.Tensor]],
    index: int,
    labels: torch.Tensor,
    tau_c: float,
    layer_map: Sequence[tuple[int, int]],
    detach: bool = False,
) -> torch.Tensor:
    r"""Cross-wise term of peer ``index`` among ``K >= 2`` peers: the mean, over every other peer
    ``j`` and every pair ``(l_a, l_b)`` of ``layer_map``, of :func:`cross_wise_pair` of peer
    ``k = index`` at layer ``l_a`` with peer ``j`` at layer ``l_b``.

    .. math::
        L_{cross}(k) = \frac{1}{(K-1)\,|M|} \sum_{j \ne k} \sum_{(l_a, l_b) \in M}
            \tfrac12 \left( L_{cw}(q_k^{l_a}, p_j^{l_b}) + L_{cw}(q_j^{l_b}, p_k^{l_a}) \right)

    ``detach=True``: the other peers' vectors (``q_j`` and ``p_j``) are constants, so the term's
    gradient reaches only peer ``k``. ``detach=False`` (default): it reaches peer ``j`` too.

    Shapes: ``q_layers[k]`` ``{layer: [B, H]}``, ``p_layers[k]`` ``{layer: [C, H]}`` for each of
    the ``K`` peers; ``labels`` ``[B]``; ``layer_map`` a list of ``(layer_of_a, layer_of_b)``.
    Returns a scalar tensor. ``ValueError`` when ``K < 2``, ``index`` is not in ``[0, K)``, the
    map is empty or a peer lacks a layer of the map.
    """
    k_peers = len(q_layers)
    if k_peers < 2 or len(p_layers) != k_peers:
        raise ValueError(f"cross_wise_multi needs at least 2 peers' vectors, got {len(q_layers)} q_layers and {len(p_layers)} p_layers")
    if not -k_peers <= index < k_peers:
        raise ValueError(f"index {index} is out of range for {k_peers} peers")
    k = index % k_peers
    pairs = _check_layer_map(layer_map)
    terms = []
    for j in range(k_peers):
        if j == k:
            continue
        for la, lb in pairs:
            q_k = _layer(q_layers[k], la, k, "q")
            p_k = _layer(p_layers[k], la, k, "p")
            q_j = _layer(q_layers[j], lb, j, "q")
            p_j = _layer(p_layers[j], lb, j, "p")
            if detach:
                q_j, p_j = q_j.detach(), p_j.detach()
            terms.append(cross_wise_pair(q_k, p_k, q_j, p_j, labels, tau_c))
    return torch.stack(terms).mean()


def offline_kd(
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    tau: float,
    temperature: float,
) -> torch.Tensor:
    r"""Offline knowledge distillation from a fixed teacher's scores over the same candidates.

    .. math::
        L_{kd} = T^2 \cdot \frac{1}{B} \sum_i
            \mathrm{KL}\!\left(\operatorname{softmax}(S_{t,i}/\tau/T) \,\|\,
                                \operatorname{softmax}(S_{s,i}/\tau/T)\right)

    Identical to :func:`mutual_kl` with the student as peer *a*, the teacher as peer *b* and
    ``detach=True``: the teacher never receives gradient, whether or not its scores require it.

    Shapes: ``student_scores`` and ``teacher_scores`` ``[B, C]``. Returns a scalar tensor.
    """
    return mutual_kl(student_scores, teacher_scores, tau, temperature, detach=True)


# --------------------------------------------------------------------------- total


def onmkd_total(
    scores: Sequence[torch.Tensor],
    q_layers: Sequence[Mapping[int, torch.Tensor]],
    p_layers: Sequence[Mapping[int, torch.Tensor]],
    labels: torch.Tensor,
    *,
    tau: float,
    alpha: float,
    kl_temperature: float,
    beta: float,
    tau_c: float,
    layer_map: Sequence[tuple[int, int]],
    kl_detach: bool = True,
    cross_detach: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    r"""The ONMKD objective of ``K`` peers, with every weight applied here and nowhere else.

    For each peer ``k``:

    .. math::
        L(k) = L_{nll}(k) + \alpha \, L_{kl}(k) + \beta \, L_{cross}(k)

    - ``L_nll(k) = nll(scores[k], labels, tau)``.
    - ``L_kl(k) = mutual_kl_multi(scores, k, tau, kl_temperature, detach=kl_detach)``: the mean
      over the other peers ``j`` of ``KL(p_j ‖ p_k)`` at temperature ``kl_temperature``.
    - ``L_cross(k) = cross_wise_multi(q_layers, p_layers, k, labels, tau_c, layer_map,
      detach=cross_detach)``: the cross-wise InfoNCE of the ordered pairs ``(a=k, b=j)`` for every other
      peer ``j``, with ``layer_map``'s pairs ``(la, lb)`` meaning "layer ``la`` of *a* with
      layer ``lb`` of *b*", both directions, halved:

      .. math::
          L_{cross}(k) = \frac{1}{(K-1)\,|M|} \sum_{j \ne k} \sum_{(l_a, l_b) \in M}
              \tfrac12 \left( L_{cw}(q_k^{l_a}, p_j^{l_b}) + L_{cw}(q_j^{l_b}, p_k^{l_a}) \right)

      Every ordered pair of peers ``(a, b)``, ``a != b``, is thus used exactly once, as part of
      peer ``a``'s term (for ``K = 2``: ``(0, 1)`` in ``L_cross(0)`` and ``(1, 0)`` in
      ``L_cross(1)``); within it, question→passage and passage→question count equally. For a
      symmetric ``layer_map`` (every ``(la, lb)`` has its ``(lb, la)``) and ``K = 2``,
      ``L_cross(0) == L_cross(1)`` in value.

    Returned loss: ``Σ_k L(k)``, so a single ``backward()`` updates all peers in the same step.

    Detach semantics (what the gradient of the *sum* does):

    - ``kl_detach=True`` (DML): in ``L_kl(k)`` the other peers are constant targets, so the
      gradient reaching peer ``k`` is exactly ``α ∂L_kl(k)``. ``kl_detach=False``: peer ``k``
      also receives gradient as the target of the other peers' terms.
    - ``cross_detach=True``: in ``L_cross(k)`` the other peer's vectors are detached in both
      directions (``p_j`` in the first, ``q_j`` in the second), so peer ``k``'s term sends
      gradient only into peer ``k``'s vectors and the sum's gradient on peer ``k`` is exactly
      ``β ∂L_cross(k)/∂(peer k)``: the per-peer totals are unambiguous.
      ``cross_detach=False`` (default): ``L_cross(k)`` also sends gradient into peer ``j``, so
      peer ``k`` receives gradient from its own term *and* from every ``L_cross(j)``. For
      ``K = 2`` and a symmetric layer map this is exactly **twice** the gradient of the
      detached setting (the summed total is ``2β·L_pair``), which matters when comparing β
      across the two settings. The logged values are the same either way.

    With ``alpha == 0`` the KL terms are not computed, and with ``beta == 0`` neither are the
    cross terms (nor are ``q_layers`` / ``p_layers`` / ``layer_map`` looked at); they are
    logged as 0.0. With both 0 the loss equals ``Σ_k nll(scores[k], labels, tau)`` and its
    gradients those of ``K`` independent DPR students.

    Shapes: ``scores`` ``K`` matrices ``[B, C]``; ``q_layers[k]`` ``{layer: [B, H]}``,
    ``p_layers[k]`` ``{layer: [C, H]}`` (the pooled vectors of peer ``k``; ``H`` must agree
    between the layers a pair of the map compares); ``labels`` ``[B]``; ``layer_map`` a list of
    ``(layer_of_a, layer_of_b)`` (layer keys exactly as in the dicts).

    Returns ``(loss, logs)``: ``loss`` a scalar tensor; ``logs`` a flat dict of floats
    ``nll/k``, ``kl/k``, ``cross/k``, ``total/k`` for each peer ``k`` (unweighted term values,
    ``total/k`` weighted), plus ``total`` (the returned loss).
    """
    use_kl, use_cross = _check_total(scores, q_layers, p_layers, tau=tau, alpha=alpha, beta=beta,
                                     kl_temperature=kl_temperature, tau_c=tau_c, layer_map=layer_map)
    alpha, beta = float(alpha), float(beta)
    total = None
    logs: dict[str, float] = {}
    for k in range(len(scores)):
        l_nll = nll(scores[k], labels, tau)
        l_kl = mutual_kl_multi(scores, k, tau, kl_temperature, detach=kl_detach) if use_kl else None
        l_cross = (cross_wise_multi(q_layers, p_layers, k, labels, tau_c, layer_map, detach=cross_detach)
                   if use_cross else None)
        peer_total = _weighted(l_nll, alpha, l_kl, beta, l_cross)
        total = peer_total if total is None else total + peer_total
        logs.update(_peer_logs(k, l_nll, l_kl, l_cross, peer_total))
    logs["total"] = float(total.detach())
    return total, logs


def _check_total(scores, q_layers, p_layers, *, tau, alpha, beta, kl_temperature, tau_c, layer_map) -> tuple[bool, bool]:
    """:func:`onmkd_total`'s checks of its inputs; returns whether the KL and the cross-wise terms are on."""
    k_peers = len(scores)
    if k_peers < 1:
        raise ValueError("onmkd_total needs at least one peer's scores")
    for k, s in enumerate(scores):
        _check_scores(f"scores[{k}]", s)
        if k:
            _check_same("scores[0]", scores[0], f"scores[{k}]", s)
    _check_positive("tau", tau)
    alpha, beta = float(alpha), float(beta)
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    use_kl, use_cross = alpha > 0, beta > 0
    if (use_kl or use_cross) and k_peers < 2:
        raise ValueError(f"mutual terms (alpha={alpha}, beta={beta}) need at least 2 peers, got {k_peers}")
    if use_kl:
        _check_positive("kl_temperature", kl_temperature)
    if use_cross:
        _check_positive("tau_c", tau_c)
        _check_layer_map(layer_map)
        if len(q_layers) != k_peers or len(p_layers) != k_peers:
            raise ValueError(
                f"{k_peers} peers' scores but {len(q_layers)} q_layers and {len(p_layers)} p_layers"
            )
    return use_kl, use_cross


def _weighted(l_nll, alpha: float, l_kl, beta: float, l_cross) -> torch.Tensor:
    """``L(k) = L_nll + α·L_kl + β·L_cross``, leaving out the terms that are off (None)."""
    peer_total = l_nll
    if l_kl is not None:
        peer_total = peer_total + alpha * l_kl
    if l_cross is not None:
        peer_total = peer_total + beta * l_cross
    return peer_total


def _peer_logs(k: int, l_nll, l_kl, l_cross, peer_total) -> dict[str, float]:
    """Peer ``k``'s logged values: the unweighted terms (0.0 when off) and its weighted total."""
    return {f"nll/{k}": float(l_nll.detach()),
            f"kl/{k}": float(l_kl.detach()) if l_kl is not None else 0.0,
            f"cross/{k}": float(l_cross.detach()) if l_cross is not None else 0.0,
            f"total/{k}": float(peer_total.detach())}
