"""Loss functions: hand-computed values, gradient routing (detach), and the combined objective."""

from __future__ import annotations

import math

import pytest
import torch

from onmkd.training.losses import (
    cross_wise,
    cross_wise_pair,
    mutual_kl,
    mutual_kl_multi,
    nll,
    offline_kd,
    onmkd_total,
)

D = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add OpenMP hand-off cost (milliseconds per op on a
    busy 2-core machine). Restored afterwards so other test modules keep their setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# A 2 x 3 score matrix (B = 2 questions, C = 3 candidates); positives at columns 0 and 1.
S_A = [[0.5, 0.1, -0.2], [0.3, 0.6, 0.0]]
S_B = [[0.2, 0.4, 0.0], [0.1, 0.1, 0.5]]
LABELS = [0, 1]
TAU = 0.5


def t(x, grad=False):
    return torch.tensor(x, dtype=D, requires_grad=grad)


def lab(x=LABELS):
    return torch.tensor(x, dtype=torch.long)


# ---------------------------------------------------------------- hand arithmetic helpers


def hand_softmax(row):
    e = [math.exp(x) for x in row]
    z = sum(e)
    return [v / z for v in e]


def hand_kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


# ---------------------------------------------------------------- values by hand


def test_nll_by_hand():
    # logits S / 0.5: row 0 = [1.0, 0.2, -0.4] (positive 1.0), row 1 = [0.6, 1.2, 0.0] (positive 1.2)
    row0 = -1.0 + math.log(math.exp(1.0) + math.exp(0.2) + math.exp(-0.4))
    row1 = -1.2 + math.log(math.exp(0.6) + math.exp(1.2) + math.exp(0.0))
    expected = (row0 + row1) / 2
    assert nll(t(S_A), lab(), TAU).item() == pytest.approx(expected, abs=1e-12)


def test_nll_uniform_row_is_log_c():
    assert nll(t([[0.3, 0.3, 0.3]]), lab([2]), 0.05).item() == pytest.approx(math.log(3), abs=1e-12)


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_mutual_kl_by_hand(temp):
    expected = 0.0
    for a_row, b_row in zip(S_A, S_B):
        q = hand_softmax([x / TAU / temp for x in a_row])  # learner (a)
        p = hand_softmax([x / TAU / temp for x in b_row])  # target (b)
        expected += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    expected = temp**2 * expected / 2  # T^2 * batchmean
    got = mutual_kl(t(S_A), t(S_B), TAU, temp).item()
    assert got == pytest.approx(expected, abs=1e-12)


def test_mutual_kl_by_hand_explicit_numbers_t1():
    # Row 0 at T = 1: a-logits [1.0, 0.2, -0.4], b-logits [0.4, 0.8, 0.0].
    za = math.exp(1.0) + math.exp(0.2) + math.exp(-0.4)
    zb = math.exp(0.4) + math.exp(0.8) + math.exp(0.0)
    # KL(p||q) = sum p_c (zb_c - za_c) - log zb + log za for logits zb_c, za_c
    p = [math.exp(0.4) / zb, math.exp(0.8) / zb, math.exp(0.0) / zb]
    row0 = p[0] * (0.4 - 1.0) + p[1] * (0.8 - 0.2) + p[2] * (0.0 + 0.4) - math.log(zb) + math.log(za)
    # Row 1: a-logits [0.6, 1.2, 0.0], b-logits [0.2, 0.2, 1.0].
    za = math.exp(0.6) + math.exp(1.2) + math.exp(0.0)
    zb = 2 * math.exp(0.2) + math.exp(1.0)
    p = [math.exp(0.2) / zb, math.exp(0.2) / zb, math.exp(1.0) / zb]
    row1 = p[0] * (0.2 - 0.6) + p[1] * (0.2 - 1.2) + p[2] * (1.0 - 0.0) - math.log(zb) + math.log(za)
    assert mutual_kl(t(S_A), t(S_B), TAU, 1.0).item() == pytest.approx((row0 + row1) / 2, abs=1e-12)


def test_cross_wise_by_hand():
    q_a = t([[1.0, 0.0], [0.0, 1.0]])
    p_b = t([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    # q_a p_b^T / 0.5: row 0 = [2.0, 0.0, 1.2] (positive col 0), row 1 = [0.0, 2.0, 1.6] (positive col 1)
    row0 = -2.0 + math.log(math.exp(2.0) + math.exp(0.0) + math.exp(1.2))
    row1 = -2.0 + math.log(math.exp(0.0) + math.exp(2.0) + math.exp(1.6))
    assert cross_wise(q_a, p_b, lab(), 0.5).item() == pytest.approx((row0 + row1) / 2, abs=1e-12)


def test_cross_wise_pair_by_hand():
    q_a = t([[1.0, 0.0], [0.0, 1.0]])
    p_b = t([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    q_b = t([[0.6, 0.8], [0.8, 0.6]])
    p_a = t([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    ab = (-2.0 + math.log(math.exp(2.0) + 1 + math.exp(1.2)) + -2.0 + math.log(1 + math.exp(2.0) + math.exp(1.6))) / 2
    # q_b p_a^T / 0.5: row 0 = [1.6, 1.2, 1.2] (pos col 0), row 1 = [1.2, 1.6, 1.6] (pos col 1)
    ba = (
        -1.6 + math.log(math.exp(1.6) + 2 * math.exp(1.2))
        + -1.6 + math.log(math.exp(1.2) + 2 * math.exp(1.6))
    ) / 2
    got = cross_wise_pair(q_a, p_a, q_b, p_b, lab(), 0.5).item()
    assert got == pytest.approx((ab + ba) / 2, abs=1e-12)


def test_offline_kd_by_hand():
    temp = 2.0
    expected = 0.0
    for s_row, t_row in zip(S_A, S_B):
        q = hand_softmax([x / TAU / temp for x in s_row])
        p = hand_softmax([x / TAU / temp for x in t_row])
        expected += hand_kl(p, q)
    expected = temp**2 * expected / 2
    assert offline_kd(t(S_A), t(S_B), TAU, temp).item() == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------- gradients


def test_mutual_kl_detach_routes_gradient():
    a, b = t(S_A, grad=True), t(S_B, grad=True)
    mutual_kl(a, b, TAU, 2.0, detach=True).backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert b.grad is None or b.grad.abs().sum() == 0

    a, b = t(S_A, grad=True), t(S_B, grad=True)
    mutual_kl(a, b, TAU, 2.0, detach=False).backward()
    assert a.grad.abs().sum() > 0
    assert b.grad is not None and b.grad.abs().sum() > 0


def test_cross_wise_detach_routes_gradient():
    g = torch.Generator().manual_seed(0)
    q0, p0 = torch.randn(2, 4, dtype=D, generator=g), torch.randn(6, 4, dtype=D, generator=g)

    q, p = q0.clone().requires_grad_(), p0.clone().requires_grad_()
    cross_wise(q, p, lab(), 0.1, detach=True).backward()
    assert q.grad.abs().sum() > 0
    assert p.grad is None or p.grad.abs().sum() == 0

    q, p = q0.clone().requires_grad_(), p0.clone().requires_grad_()
    cross_wise(q, p, lab(), 0.1, detach=False).backward()
    assert q.grad.abs().sum() > 0
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_offline_kd_never_sends_gradient_to_teacher():
    s, te = t(S_A, grad=True), t(S_B, grad=True)
    offline_kd(s, te, TAU, 1.0).backward()
    assert s.grad.abs().sum() > 0
    assert te.grad is None or te.grad.abs().sum() == 0


def test_gradcheck_nll_and_mutual_kl():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 4, dtype=D, generator=g).requires_grad_()
    s2 = torch.randn(2, 4, dtype=D, generator=g).requires_grad_()
    y = torch.tensor([0, 3])
    assert torch.autograd.gradcheck(lambda x: nll(x, y, 0.3), (s,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda x, z: mutual_kl(x, z, 0.3, 2.0, detach=False), (s, s2), fast_mode=True)
    assert torch.autograd.gradcheck(lambda x: mutual_kl(x, s2, 0.3, 1.0, detach=True), (s,), fast_mode=True)


# ---------------------------------------------------------------- KL properties


def test_mutual_kl_identical_is_zero_and_nonnegative():
    x = t(S_A)
    assert mutual_kl(x, x.clone(), TAU, 1.0).item() == pytest.approx(0.0, abs=1e-14)
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        a = torch.randn(4, 8, dtype=D, generator=g) * 3
        b = torch.randn(4, 8, dtype=D, generator=g) * 3
        assert mutual_kl(a, b, 0.05, 2.0).item() >= 0.0


def test_mutual_kl_extreme_scores_are_finite():
    a = torch.tensor([[1.0, -1.0, -1.0]], dtype=torch.float32)
    b = torch.tensor([[-1.0, 1.0, -1.0]], dtype=torch.float32)
    value = mutual_kl(a, b, 0.001, 1.0)  # logits of +-1000: softmax underflows to exact 0
    assert torch.isfinite(value)


def test_mutual_kl_multi_averages_k3():
    g = torch.Generator().manual_seed(3)
    s = [torch.randn(2, 6, dtype=D, generator=g) for _ in range(3)]
    for k in range(3):
        others = [j for j in range(3) if j != k]
        expected = sum(mutual_kl(s[k], s[j], 0.1, 2.0).item() for j in others) / 2
        assert mutual_kl_multi(s, k, 0.1, 2.0).item() == pytest.approx(expected, abs=1e-12)
    # K = 2 is the plain pairwise term
    assert mutual_kl_multi(s[:2], 1, 0.1, 2.0).item() == pytest.approx(mutual_kl(s[1], s[0], 0.1, 2.0).item())


# ---------------------------------------------------------------- the combined objective


def _peers(k_peers, b=2, h=1, dim=4, layers=(1, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    c = b * (1 + h)
    scores = [torch.randn(b, c, dtype=D, generator=g).requires_grad_() for _ in range(k_peers)]
    q = [{l: torch.randn(b, dim, dtype=D, generator=g).requires_grad_() for l in layers} for _ in range(k_peers)]
    p = [{l: torch.randn(c, dim, dtype=D, generator=g).requires_grad_() for l in layers} for _ in range(k_peers)]
    labels = torch.arange(b)
    return scores, q, p, labels


KW = dict(tau=0.05, kl_temperature=2.0, tau_c=0.1)


@pytest.mark.parametrize("k_peers", [2, 3])
def test_total_with_zero_weights_is_independent_dpr(k_peers):
    scores, _, _, labels = _peers(k_peers)
    loss, logs = onmkd_total(scores, [], [], labels, alpha=0.0, beta=0.0, layer_map=[], **KW)
    loss.backward()
    got = [s.grad.clone() for s in scores]

    ref_scores = [s.detach().clone().requires_grad_() for s in scores]
    ref_terms = [nll(s, labels, KW["tau"]) for s in ref_scores]
    for term in ref_terms:
        term.backward()  # K independent students, one backward each
    assert loss.item() == pytest.approx(sum(x.item() for x in ref_terms), abs=1e-12)
    for k in range(k_peers):
        torch.testing.assert_close(got[k], ref_scores[k].grad, rtol=0, atol=1e-12)
        assert logs[f"kl/{k}"] == 0.0 and logs[f"cross/{k}"] == 0.0
        assert logs[f"nll/{k}"] == pytest.approx(ref_terms[k].item())
        assert logs[f"total/{k}"] == pytest.approx(ref_terms[k].item())
    assert set(logs) == {f"{n}/{k}" for n in ("nll", "kl", "cross", "total") for k in range(k_peers)} | {"total"}
    assert all(type(v) is float for v in logs.values())


@pytest.mark.parametrize("k_peers", [2, 3])
def test_total_matches_definition(k_peers):
    scores, q, p, labels = _peers(k_peers)
    alpha, beta, layer_map = 0.7, 0.3, [(1, 2), (2, 2)]
    loss, logs = onmkd_total(scores, q, p, labels, alpha=alpha, beta=beta, layer_map=layer_map, **KW)
    expected = 0.0
    for k in range(k_peers):
        l_nll = nll(scores[k], labels, KW["tau"]).item()
        l_kl = mutual_kl_multi(scores, k, KW["tau"], KW["kl_temperature"]).item()
        cross_terms = [
            cross_wise_pair(q[k][la], p[k][la], q[j][lb], p[j][lb], labels, KW["tau_c"]).item()
            for j in range(k_peers) if j != k for la, lb in layer_map
        ]
        l_cross = sum(cross_terms) / len(cross_terms)
        assert logs[f"nll/{k}"] == pytest.approx(l_nll, abs=1e-12)
        assert logs[f"kl/{k}"] == pytest.approx(l_kl, abs=1e-12)
        assert logs[f"cross/{k}"] == pytest.approx(l_cross, abs=1e-12)
        assert logs[f"total/{k}"] == pytest.approx(l_nll + alpha * l_kl + beta * l_cross, abs=1e-12)
        expected += l_nll + alpha * l_kl + beta * l_cross
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert logs["total"] == pytest.approx(expected, abs=1e-12)


def test_total_symmetric_layer_map_k2_gives_equal_cross_terms():
    scores, q, p, labels = _peers(2)
    _, logs = onmkd_total(scores, q, p, labels, alpha=0.0, beta=1.0, layer_map=[(1, 1), (2, 2)], **KW)
    assert logs["cross/0"] == pytest.approx(logs["cross/1"], abs=1e-12)


def test_total_cross_detach_keeps_gradient_inside_each_peer():
    scores, q, p, labels = _peers(2)
    beta, layer_map = 0.5, [(1, 2)]
    loss, _ = onmkd_total(scores, q, p, labels, alpha=0.0, beta=beta, layer_map=layer_map,
                          cross_detach=True, **KW)
    loss.backward()
    # Peer 0's gradient must be exactly that of beta * L_cross(0) with peer 1 held constant.
    q0, p0 = q[0][1].detach().clone().requires_grad_(), p[0][1].detach().clone().requires_grad_()
    ref = beta * 0.5 * (cross_wise(q0, p[1][2].detach(), labels, KW["tau_c"])
                        + cross_wise(q[1][2].detach(), p0, labels, KW["tau_c"]))
    ref.backward()
    torch.testing.assert_close(q[0][1].grad, q0.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(p[0][1].grad, p0.grad, rtol=0, atol=1e-12)
    # Layer 2 of peer 0 is used only in L_cross(1), where peer 0 is the constant side.
    assert q[0][2].grad is None and p[0][2].grad is None


def test_total_cross_no_detach_doubles_gradient_for_symmetric_map_k2():
    grads = {}
    for detach in (True, False):
        scores, q, p, labels = _peers(2, seed=5)
        loss, _ = onmkd_total(scores, q, p, labels, alpha=0.0, beta=1.0, layer_map=[(1, 1), (2, 2)],
                              cross_detach=detach, **KW)
        loss.backward()
        grads[detach] = [q[k][l].grad.clone() for k in range(2) for l in (1, 2)]
    for g_detached, g_shared in zip(grads[True], grads[False]):
        torch.testing.assert_close(g_shared, 2 * g_detached, rtol=1e-10, atol=1e-12)


def test_total_kl_detach_gradient_is_own_term():
    scores, q, p, labels = _peers(3)
    loss, _ = onmkd_total(scores, q, p, labels, alpha=2.0, beta=0.0, layer_map=[], kl_detach=True, **KW)
    loss.backward()
    for k in range(3):
        s = [x.detach().clone().requires_grad_() if j == k else x.detach() for j, x in enumerate(scores)]
        ref = nll(s[k], labels, KW["tau"]) + 2.0 * mutual_kl_multi(s, k, KW["tau"], KW["kl_temperature"])
        ref.backward()
        torch.testing.assert_close(scores[k].grad, s[k].grad, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- errors


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\[2, 3\].*\[2, 4\]"):
        mutual_kl(torch.zeros(2, 3), torch.zeros(2, 4), 1.0, 1.0)
    with pytest.raises(ValueError, match=r"\[3\].*2 rows"):
        nll(torch.zeros(2, 3), torch.tensor([0, 1, 2]), 1.0)
    with pytest.raises(ValueError, match=r"\[3\]"):
        nll(torch.zeros(3), torch.tensor([0]), 1.0)
    with pytest.raises(ValueError, match=r"\[2, 4\].*\[6, 5\]"):
        cross_wise(torch.zeros(2, 4), torch.zeros(6, 5), torch.tensor([0, 1]), 0.1)
    with pytest.raises(ValueError, match=r"\[2, 3\].*\[2, 4\]"):
        offline_kd(torch.zeros(2, 3), torch.zeros(2, 4), 1.0, 1.0)
    with pytest.raises(ValueError, match=r"\[2, 3\].*\[2, 4\]"):
        onmkd_total([torch.zeros(2, 3), torch.zeros(2, 4)], [], [], torch.tensor([0, 1]),
                    alpha=0.0, beta=0.0, layer_map=[], **KW)


def test_label_and_parameter_errors():
    with pytest.raises(ValueError, match="labels must lie in"):
        nll(torch.zeros(2, 3), torch.tensor([0, 3]), 1.0)
    with pytest.raises(ValueError, match="integer"):
        nll(torch.zeros(2, 3), torch.tensor([0.0, 1.0]), 1.0)
    with pytest.raises(ValueError, match="tau"):
        nll(torch.zeros(2, 3), torch.tensor([0, 1]), 0.0)
    with pytest.raises(ValueError, match="temperature"):
        mutual_kl(torch.zeros(2, 3), torch.zeros(2, 3), 1.0, -1.0)


def test_mutual_kl_multi_needs_two_peers():
    with pytest.raises(ValueError, match="at least 2"):
        mutual_kl_multi([torch.zeros(2, 3)], 0, 1.0, 1.0)
    with pytest.raises(ValueError, match="out of range"):
        mutual_kl_multi([torch.zeros(2, 3), torch.zeros(2, 3)], 2, 1.0, 1.0)


def test_total_errors():
    scores, q, p, labels = _peers(2)
    with pytest.raises(ValueError, match="no layer 7"):
        onmkd_total(scores, q, p, labels, alpha=0.0, beta=1.0, layer_map=[(7, 1)], **KW)
    with pytest.raises(ValueError, match="layer_map"):
        onmkd_total(scores, q, p, labels, alpha=0.0, beta=1.0, layer_map=[], **KW)
    with pytest.raises(ValueError, match="at least 2 peers"):
        onmkd_total(scores[:1], q[:1], p[:1], labels, alpha=1.0, beta=0.0, layer_map=[], **KW)
