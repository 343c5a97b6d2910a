"""Losses against values worked out by hand: BPR and the symmetric InfoNCE."""

from __future__ import annotations

import math

import pytest
import torch

from sibrar.models.losses import MIN_TEMPERATURE, bpr_loss, sym_infonce


def lse(values: list[float]) -> float:
    """log(sum(exp(v))): the explicit log-sum-exp every expected value below is built from."""
    return math.log(sum(math.exp(v) for v in values))


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def infonce_oracle(a: list[list[float]], b: list[list[float]], tau: float, *, cosine: bool = False,
                   ids: list[int] | None = None, weights: list[float] | None = None) -> float:
    """One group, plain Python: mean_j CE(row j of A) + mean_k CE(column k of A), A = a b^T / tau.

    Off-diagonal pairs with equal ids are left out of the log-sum-exp; weights scale each row's two
    cross-entropies and the sum is divided by the total weight.
    """
    if cosine:
        a = [[x / math.sqrt(sum(y * y for y in row)) for x in row] for row in a]
        b = [[x / math.sqrt(sum(y * y for y in row)) for x in row] for row in b]
    k = len(a)
    logits = [[sum(x * y for x, y in zip(a[j], b[c])) / tau for c in range(k)] for j in range(k)]
    keep = [[ids is None or j == c or ids[j] != ids[c] for c in range(k)] for j in range(k)]
    w = weights or [1.0] * k
    total = 0.0
    for j in range(k):
        row_ce = lse([logits[j][c] for c in range(k) if keep[j][c]]) - logits[j][j]
        col_ce = lse([logits[r][j] for r in range(k) if keep[r][j]]) - logits[j][j]
        total += w[j] * (row_ce + col_ce)
    return total / max(sum(w), 1.0)


def t(x: list) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# ------------------------------------------------------------------------------------------ BPR


def test_bpr_is_mean_softplus_of_negative_margins():
    pos = t([2.0, -1.0])
    neg = t([[1.0, 3.0, 2.0], [-1.0, 0.5, -4.0]])
    # margins s+ - s-: row 0: 1, -1, 0; row 1: 0, -1.5, 3
    expected = (softplus(-1) + softplus(1) + softplus(0) + softplus(0) + softplus(1.5) + softplus(-3)) / 6
    assert bpr_loss(pos, neg).item() == pytest.approx(expected, rel=1e-12)


def test_bpr_accepts_a_column_of_positives_and_equal_scores_give_log2():
    pos = t([[0.7], [0.7]])
    assert bpr_loss(pos, t([[0.7], [0.7]])).item() == pytest.approx(math.log(2), rel=1e-12)
    assert bpr_loss(pos, t([[0.0, 5.0], [1.0, 2.0]])).item() == pytest.approx(
        (softplus(-0.7) + softplus(4.3) + softplus(0.3) + softplus(1.3)) / 4, rel=1e-12)


def test_bpr_falls_as_the_positive_moves_ahead():
    neg = t([[0.0, 0.0]])
    assert bpr_loss(t([5.0]), neg) < bpr_loss(t([0.0]), neg) < bpr_loss(t([-5.0]), neg)


# ------------------------------------------------------------------------------------- InfoNCE


def test_sym_infonce_2x2_dot_by_hand():
    # A = a b^T / 0.5 = [[2, 2], [0, 2]]
    a, b = t([[1.0, 0.0], [0.0, 1.0]]), t([[1.0, 0.0], [1.0, 1.0]])
    rows = (lse([2, 2]) - 2) + (lse([0, 2]) - 2)  # CE of each row, target on the diagonal
    cols = (lse([2, 0]) - 2) + (lse([2, 2]) - 2)  # CE of each column
    expected = rows / 2 + cols / 2  # both directions' means, summed (not averaged)
    assert expected == pytest.approx(math.log(2) + math.log1p(math.exp(-2)))
    assert sym_infonce(a, b, temperature=0.5).item() == pytest.approx(expected, rel=1e-12)


def test_sym_infonce_2x2_cosine_normalises_first():
    a, b = t([[3.0, 0.0], [0.0, 2.0]]), t([[2.0, 0.0], [1.0, 1.0]])
    # unit vectors: a = e1, e2; b = e1, (e1 + e2)/sqrt2; A = [[1, r], [0, r]] / 0.5, r = 1/sqrt2
    r = 1 / math.sqrt(2)
    A = [[2.0, 2 * r], [0.0, 2 * r]]
    expected = ((lse(A[0]) - A[0][0]) + (lse(A[1]) - A[1][1])) / 2 + (
        (lse([A[0][0], A[1][0]]) - A[0][0]) + (lse([A[0][1], A[1][1]]) - A[1][1])) / 2
    got = sym_infonce(a, b, temperature=0.5, similarity="cosine").item()
    assert got == pytest.approx(expected, rel=1e-12)
    assert sym_infonce(a, b, temperature=0.5, similarity="dot").item() != pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("tau", [1.0, 0.1])
def test_sym_infonce_3x3_matches_explicit_logsumexp(similarity, tau):
    a = [[1.0, 0.0, 2.0], [0.5, -1.0, 0.0], [0.0, 1.0, 1.0]]
    b = [[0.8, 0.1, 1.5], [1.0, -0.5, 0.2], [-0.3, 1.2, 0.9]]
    expected = infonce_oracle(a, b, tau, cosine=similarity == "cosine")
    assert sym_infonce(t(a), t(b), temperature=tau, similarity=similarity).item() == pytest.approx(expected, rel=1e-10)


def test_sym_infonce_is_symmetric_in_its_two_views():
    a, b = t([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0], [0.0, 1.0, 1.0]]), t([[0.8, 0.1, 1.5], [1.0, -0.5, 0.2], [-0.3, 1.2, 0.9]])
    assert sym_infonce(a, b, temperature=0.3).item() == pytest.approx(sym_infonce(b, a, temperature=0.3).item(), rel=1e-12)


def test_sym_infonce_per_row_groups_never_mix():
    """Item tower: each batch row's candidates are one group; other rows are not negatives."""
    g0a, g0b = [[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 1.0]]
    g1a, g1b = [[2.0, 1.0], [-1.0, 0.5]], [[0.0, 1.0], [1.0, -1.0]]
    grouped = sym_infonce(t([g0a, g1a]), t([g0b, g1b]), temperature=0.5).item()
    # equal group sizes: the mean over all G*K rows is the mean of the per-group losses
    expected = (infonce_oracle(g0a, g0b, 0.5) + infonce_oracle(g1a, g1b, 0.5)) / 2
    assert grouped == pytest.approx(expected, rel=1e-12)
    as_one_batch = infonce_oracle(g0a + g1a, g0b + g1b, 0.5)  # the user-tower form, for contrast
    assert grouped != pytest.approx(as_one_batch, rel=1e-3)


def test_sym_infonce_batch_group_is_one_group():
    """User tower: a (B, d) pair is one B x B group."""
    a = [[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [-1.0, 0.5]]
    b = [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, -1.0]]
    flat = sym_infonce(t(a), t(b), temperature=0.5).item()
    assert flat == pytest.approx(infonce_oracle(a, b, 0.5), rel=1e-12)
    assert flat == pytest.approx(sym_infonce(t([a]), t([b]), temperature=0.5).item(), rel=1e-12)


def test_duplicate_ids_are_masked_instead_of_counted_as_false_negatives():
    """Entities 0 and 2 are the same item (a repeated negative): identical views, same id."""
    a = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]
    b = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]
    ids = [7, 3, 7]
    # by hand with tau = 1: A = [[1,0,1],[0,1,0],[1,0,1]]; masking drops A[0,2] and A[2,0]
    masked_rows = (lse([1, 0]) - 1) + (lse([0, 1, 0]) - 1) + (lse([0, 1]) - 1)
    expected = 2 * masked_rows / 3  # A is symmetric, so the column CEs equal the row CEs
    got = sym_infonce(t(a), t(b), temperature=1.0, ids=torch.tensor(ids)).item()
    assert got == pytest.approx(expected, rel=1e-12)
    assert got == pytest.approx(infonce_oracle(a, b, 1.0, ids=ids), rel=1e-12)
    unmasked = sym_infonce(t(a), t(b), temperature=1.0).item()
    assert unmasked == pytest.approx(infonce_oracle(a, b, 1.0), rel=1e-12)
    assert unmasked > got + 0.1  # the false negative was a real penalty


def test_duplicate_ids_mask_within_each_group_only():
    a = t([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])
    ids = torch.tensor([[4, 4], [4, 5]])  # group 0 repeats item 4; group 1 has 4 once
    got = sym_infonce(a, a, temperature=1.0, ids=ids).item()
    g0 = infonce_oracle([[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]], 1.0, ids=[4, 4])
    g1 = infonce_oracle([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]], 1.0, ids=[4, 5])
    assert g0 == pytest.approx(0.0, abs=1e-12)  # each row only competes with itself
    assert got == pytest.approx((g0 + g1) / 2, rel=1e-12)


def test_row_weights_drop_rows_but_keep_them_as_negatives():
    a = [[1.0, 0.0, 2.0], [0.5, -1.0, 0.0], [0.0, 1.0, 1.0]]
    b = [[0.8, 0.1, 1.5], [1.0, -0.5, 0.2], [-0.3, 1.2, 0.9]]
    got = sym_infonce(t(a), t(b), temperature=0.5, weights=t([1.0, 0.0, 1.0])).item()
    assert got == pytest.approx(infonce_oracle(a, b, 0.5, weights=[1.0, 0.0, 1.0]), rel=1e-12)
    # not the same as deleting entity 1: it still sits in the denominators of rows 0 and 2
    assert got != pytest.approx(infonce_oracle([a[0], a[2]], [b[0], b[2]], 0.5), rel=1e-3)
    weighted = sym_infonce(t(a), t(b), temperature=0.5, weights=t([2.0, 1.0, 1.0])).item()
    assert weighted == pytest.approx(infonce_oracle(a, b, 0.5, weights=[2.0, 1.0, 1.0]), rel=1e-12)


def test_all_zero_weights_give_zero_loss_not_nan():
    a = t([[1.0, 0.0], [0.0, 1.0]])
    loss = sym_infonce(a, a, temperature=0.1, weights=t([0.0, 0.0]))
    assert loss.item() == 0.0


def test_infonce_gradients_are_finite_with_masked_entries():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], requires_grad=True)
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], requires_grad=True)
    sym_infonce(a, b, temperature=0.05, ids=torch.tensor([1, 2, 1])).backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


# ------------------------------------------------------------------------------ temperature range


def test_smallest_supported_temperature_is_finite_and_exact_for_low_precision_inputs():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 11, 32, generator=gen) * 3, torch.randn(4, 11, 32, generator=gen) * 3
    a16, b16 = a.to(torch.bfloat16), b.to(torch.bfloat16)
    got = sym_infonce(a16, b16, temperature=MIN_TEMPERATURE)
    expected = sym_infonce(a16.double(), b16.double(), temperature=MIN_TEMPERATURE)  # same inputs, fp64
    assert got.dtype == torch.float32 and torch.isfinite(got)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast must not push the logits back to bf16
        assert sym_infonce(a, b, temperature=MIN_TEMPERATURE).item() == pytest.approx(
            sym_infonce(a.double(), b.double(), temperature=MIN_TEMPERATURE).item(), rel=1e-5)


def test_logits_beyond_the_bf16_range_do_not_overflow():
    a = torch.full((1, 3, 4), 200.0, dtype=torch.bfloat16)  # a·b / τ = 1.6e8: far past fp16, coarse in bf16
    b = torch.eye(3, 4, dtype=torch.bfloat16).unsqueeze(0) * 200
    loss = sym_infonce(a, b, temperature=MIN_TEMPERATURE)
    assert torch.isfinite(loss)


def test_temperature_below_the_supported_minimum_is_an_error_not_a_clamp():
    a = torch.randn(3, 4)
    with pytest.raises(ValueError, match="below the supported minimum"):
        sym_infonce(a, a, temperature=MIN_TEMPERATURE / 2)
    assert MIN_TEMPERATURE == 1e-3  # the paper's search range starts there
