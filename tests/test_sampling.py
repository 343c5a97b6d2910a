"""Modality sampling and negative sampling: only allowed picks, seeded, uniform."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from sibrar.models.sampling import sample_modalities
from sibrar.train.sampler import interaction_keys, sample_negatives

# chi-square critical value for p = 1e-4 by degrees of freedom: a loose band, failing only on a real bias
CHI2_1E4 = {1: 15.14, 3: 21.11, 4: 23.51, 11: 37.33}


def chi_square(counts: np.ndarray) -> float:
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def availability(rng: np.random.Generator) -> torch.Tensor:
    """(2000, 5) random availability with every count of available modalities 0..5 present."""
    avail = rng.random((2000, 5)) < rng.uniform(0.1, 0.9, size=(2000, 1))
    avail[:5] = False
    avail[5:10] = True
    avail[10:15] = np.eye(5, dtype=bool)
    return torch.from_numpy(avail)


# ------------------------------------------------------------------- only available modalities


def test_single_picks_one_available_modality(availability):
    chosen, distinct = sample_modalities(availability, "single", generator=gen())
    assert chosen.shape == (len(availability), 1) and chosen.dtype == torch.long
    has_any = availability.any(dim=1)
    assert availability[has_any].gather(1, chosen[has_any]).all()
    assert not distinct.any()  # one modality carries no contrastive pair


def test_pairwise_picks_two_distinct_available_modalities(availability):
    chosen, distinct = sample_modalities(availability, "pairwise", generator=gen())
    assert chosen.shape == (len(availability), 2)
    n_avail = availability.sum(dim=1)
    has_any = n_avail > 0
    assert availability[has_any].gather(1, chosen[has_any]).all()  # both slots available
    two = n_avail >= 2
    assert (chosen[two, 0] != chosen[two, 1]).all()
    assert torch.equal(distinct, two)
    one = n_avail == 1
    assert (chosen[one, 0] == chosen[one, 1]).all()  # the only modality, repeated, flagged not distinct


def test_pairwise_with_exactly_two_available_always_uses_both_in_random_order():
    avail = torch.tensor([[True, False, True, False]]).expand(4000, 4)
    chosen, distinct = sample_modalities(avail, "pairwise", generator=gen(3))
    assert distinct.all()
    assert set(map(tuple, chosen.sort(dim=1).values.tolist())) == {(0, 2)}
    first_is_0 = int((chosen[:, 0] == 0).sum())
    assert chi_square(np.array([first_is_0, 4000 - first_is_0])) < CHI2_1E4[1]


def test_central_takes_the_central_modality_plus_one_other(availability):
    central = 2
    chosen, distinct = sample_modalities(availability, "central", generator=gen(), central=central)
    has_central = availability[:, central]
    others = availability.clone()
    others[:, central] = False
    n_others = others.sum(dim=1)
    assert (chosen[has_central, 0] == central).all()
    with_other = has_central & (n_others > 0)
    assert others[with_other].gather(1, chosen[with_other, 1:]).all()  # second slot: another available one
    assert torch.equal(distinct[has_central], n_others[has_central] > 0)
    alone = has_central & (n_others == 0)
    assert (chosen[alone, 1] == central).all()
    # without the central modality: two distinct other available modalities where there are two
    without = ~has_central & (n_others >= 2)
    assert others[without].gather(1, chosen[without]).all()
    assert (chosen[without, 0] != chosen[without, 1]).all() and distinct[without].all()


def test_central_mode_needs_the_central_index():
    with pytest.raises(ValueError, match="central"):
        sample_modalities(torch.ones(3, 2, dtype=torch.bool), "central", generator=gen())


def test_unknown_sampling_mode_is_refused():
    with pytest.raises(ValueError, match="pairwise"):
        sample_modalities(torch.ones(3, 2, dtype=torch.bool), "triple", generator=gen())  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("mode", ["single", "pairwise", "central"])
def test_sampling_is_reproducible_from_the_generator_seed(availability, mode):
    first = sample_modalities(availability, mode, generator=gen(42), central=0)
    again = sample_modalities(availability, mode, generator=gen(42), central=0)
    other = sample_modalities(availability, mode, generator=gen(43), central=0)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


# ---------------------------------------------------------------------------------- uniformity


def test_single_is_uniform_over_the_available_modalities():
    avail = torch.tensor([[True, True, False, True, True]]).expand(20000, 5)
    chosen, _ = sample_modalities(avail, "single", generator=gen(1))
    counts = np.bincount(chosen[:, 0].numpy(), minlength=5)
    assert counts[2] == 0
    assert chi_square(counts[[0, 1, 3, 4]]) < CHI2_1E4[3]


def test_pairwise_is_uniform_over_ordered_pairs():
    avail = torch.ones(24000, 4, dtype=torch.bool)
    chosen, _ = sample_modalities(avail, "pairwise", generator=gen(2))
    pairs = Counter(map(tuple, chosen.tolist()))
    assert set(pairs) == {(i, j) for i in range(4) for j in range(4) if i != j}
    assert chi_square(np.array(list(pairs.values()))) < CHI2_1E4[11]


def test_central_second_slot_is_uniform_over_the_others():
    avail = torch.ones(20000, 5, dtype=torch.bool)
    chosen, _ = sample_modalities(avail, "central", generator=gen(4), central=1)
    counts = np.bincount(chosen[:, 1].numpy(), minlength=5)
    assert counts[1] == 0
    assert chi_square(counts[[0, 2, 3, 4]]) < CHI2_1E4[3]


def loop_oracle(avail: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int]]:
    """The reference code's way, one rng.choice per row: two distinct available modalities (or one twice)."""
    out = []
    for row in avail:
        have = np.flatnonzero(row)
        pick = rng.choice(have, size=min(2, len(have)), replace=False)
        out.append((int(pick[0]), int(pick[-1])))
    return out


def test_vectorised_pairwise_matches_a_slow_loop_in_distribution(rng):
    patterns = np.array([[1, 1, 1, 0], [1, 0, 1, 1], [0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 1, 1]], dtype=bool)
    reps = 3000
    avail = np.repeat(patterns, reps, axis=0)
    fast, _ = sample_modalities(torch.from_numpy(avail), "pairwise", generator=gen(5))
    fast_pairs = list(map(tuple, fast.tolist()))
    slow_pairs = loop_oracle(avail, rng)
    for p in range(len(patterns)):
        block = slice(p * reps, (p + 1) * reps)
        f, s = Counter(fast_pairs[block]), Counter(slow_pairs[block])
        assert set(f) == set(s), f"pattern {patterns[p].astype(int)}: support differs"
        tv = 0.5 * sum(abs(f[k] - s[k]) for k in set(f) | set(s)) / reps
        assert tv < 0.05, f"pattern {patterns[p].astype(int)}: total variation {tv:.3f}"


# ---------------------------------------------------------------------------- negative sampling


@pytest.fixture
def interactions(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """30 users with 3..15 of the 20 items each."""
    users, items = [], []
    for u in range(30):
        chosen = rng.choice(20, size=int(rng.integers(3, 16)), replace=False)
        users += [u] * len(chosen)
        items += chosen.tolist()
    return torch.tensor(users), torch.tensor(items)


def test_negatives_are_never_training_items_and_only_candidates(interactions):
    users, items = interactions
    keys = interaction_keys(users, items, 20)
    candidates = torch.arange(2, 20)  # items 0 and 1 are not training items here
    query = torch.arange(30).repeat_interleave(50)
    neg = sample_negatives(query, 10, candidates=candidates, positive_keys=keys, n_items=20, generator=gen(7))
    assert neg.shape == (len(query), 10)
    owned = set(zip(users.tolist(), items.tolist()))
    for u, row in zip(query.tolist(), neg.tolist()):
        assert not owned & {(u, i) for i in row}
    assert int(neg.min()) >= 2  # nothing outside the candidates


def test_negatives_are_uniform_over_the_users_remaining_candidates():
    users = torch.tensor([0] * 15)
    items = torch.arange(15)  # user 0 owns items 0..14 of 20: only 15..19 remain
    keys = interaction_keys(users, items, 20)
    neg = sample_negatives(torch.zeros(4000, dtype=torch.long), 5, candidates=torch.arange(20), positive_keys=keys,
                           n_items=20, generator=gen(8))
    counts = np.bincount(neg.flatten().numpy(), minlength=20)
    assert counts[:15].sum() == 0
    assert chi_square(counts[15:]) < CHI2_1E4[4]


def test_negatives_are_reproducible_from_the_generator_seed(interactions):
    users, items = interactions
    keys = interaction_keys(users, items, 20)
    draw = lambda seed: sample_negatives(users, 10, candidates=torch.arange(20), positive_keys=keys, n_items=20,  # noqa: E731
                                         generator=gen(seed))
    assert torch.equal(draw(9), draw(9))
    assert not torch.equal(draw(9), draw(10))
