"""The training methods: what each one trains and which loss weights it uses, in one table.

A method decides how many students are trained together and which terms of
``L_nll + α·L_kl + β·L_cross`` (or ``L_nll + α·L_kd`` with a teacher) are on; ``loss.alpha`` and
``loss.beta`` of a config are read through :func:`loss_weights` alone. The config's validation,
the trainer, the sweep's same-depth baselines, the paper's roles and the report's labels all read
:data:`METHODS`, so adding a method is one entry here (and a label or colour in the figures if it
should not be drawn as "other").

Standard library only: :mod:`onmkd.config` reads the table to validate ``train.method``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onmkd.config import RunConfig


@dataclass(frozen=True)
class Method:
    name: str
    label: str          # in tables and figures: "OnMKD", "DPR", ...
    summary: str        # in the help of train.method
    peers: bool         # True: K >= 2 peers trained together; False: one student
    kl: bool = False    # loss.alpha weighs a KL term: to the other peers, or with ``teacher`` to loss.teacher
    cross: bool = False  # loss.beta weighs the cross-wise term between peers
    teacher: bool = False  # the KL target is loss.teacher's scores (offline distillation)
    role: str = "same-depth baseline"  # its role in a report: "onmkd" for the method under study


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("onmkd", "OnMKD", "onmkd", peers=True, kl=True, cross=True, role="onmkd"),
    Method("dml", "DML", "dml (onmkd without the cross-wise term)", peers=True, kl=True),
    Method("dpr", "DPR", "dpr (NLL alone, one student)", peers=False),
    Method("kd", "KD", "kd (offline distillation from loss.teacher)", peers=False, kl=True, teacher=True),
    Method("independent", "Independent peers",
           "independent (K peers trained side by side on the labels alone, no KL or cross-wise term; the best "
           "on dev is kept: OnMKD's best-of-K pick without its mutual terms)", peers=True),
)}


def methods_help() -> str:
    """The help text of ``train.method``: the methods' summaries, "onmkd, dml (...), dpr (...) or kd (...)"."""
    names = [m.summary for m in METHODS.values()]
    return ", ".join(names[:-1]) + " or " + names[-1]


def method_role(method: str) -> str:
    """A trained run's role in a report: ``onmkd`` for the method under study, else a same-depth baseline."""
    return METHODS[method].role if method in METHODS else "same-depth baseline"


def method_label(method: str) -> str:
    """The method's name in tables and figures ("OnMKD", "DPR", ...); an unknown one as it is."""
    return METHODS[method].label if method in METHODS else method


def loss_weights(cfg: RunConfig) -> tuple[float, float]:
    """``(α, β)`` that ``cfg``'s method trains with: the config's weights of the terms the method
    has, 0.0 for the others (so a dml or dpr config's ``loss.beta`` is never read)."""
    m = METHODS[cfg.train.method]
    return (cfg.loss.alpha if m.kl else 0.0), (cfg.loss.beta if m.cross else 0.0)


def check_peers(method: str, peers: int) -> str | None:
    """The problem with training ``peers`` students by ``method`` (a message for ``model.peers``), or None."""
    m = METHODS[method]
    if m.peers and peers < 2:
        return f"{method} needs at least 2 peers, got {peers} (use train.method = 'dpr' for one student)"
    if not m.peers and peers != 1:
        return f"{method} trains one student; set model.peers = 1 (got {peers})"
    return None


def as_method(cfg: RunConfig, method: str) -> RunConfig:
    """``cfg`` trained by ``method`` instead, everything else alike (the sweep's same-depth baselines).

    One-student methods keep the first peer's initialisation. Methods of several peers keep the
    peers and set the weights of the terms they lack to 0 in the config (dml: ``loss.beta = 0``),
    so the run's ``config.json`` shows what it trained with.
    """
    m = METHODS[method]
    train = dataclasses.replace(cfg.train, method=method)
    if not m.peers:
        model = dataclasses.replace(cfg.model, peers=1, peer=(cfg.peer_inits()[0],))
        return dataclasses.replace(cfg, model=model, train=train)
    loss = cfg.loss
    if not m.kl:
        loss = dataclasses.replace(loss, alpha=0.0)
    if not m.cross:
        loss = dataclasses.replace(loss, beta=0.0)
    return dataclasses.replace(cfg, loss=loss, train=train)
