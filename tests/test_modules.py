"""Building blocks against the spec: branch layer order, init scales, numeric encodings that see the value."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from sibrar.data import modalities as M
from sibrar.models.modules import BranchConfig, Projection, SharedBranch
from sibrar.models.numeric import NUMERIC_ENCODINGS
from sibrar.models.sibrar import paper_user_tower


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def layer_types(branch: SharedBranch) -> list[type]:
    return [type(m) for m in branch.net]


def test_paper_user_tower_is_linear_relu_batchnorm():
    branch = SharedBranch(128, 128, paper_user_tower().branch)
    assert layer_types(branch) == [nn.Linear, nn.ReLU, nn.BatchNorm1d]
    assert branch.config.normalize_input


def test_item_branch_keeps_batchnorm_before_relu_every_second_layer():
    config = BranchConfig(hidden=(512, 512, 512, 256, 256), input_dropout=0.02)
    L, B, R = nn.Linear, nn.BatchNorm1d, nn.ReLU  # noqa: N806
    assert layer_types(SharedBranch(512, 128, config)) == [
        nn.Dropout, L, R, L, B, R, L, R, L, B, R, L, R, L, B, R]  # BN after every k = 2 linears, six linears


def test_single_layer_branch_with_norm_every_two_has_no_batchnorm():
    branch = SharedBranch(64, 32, BranchConfig(hidden=(), norm_every=2, input_dropout=0.0))
    assert layer_types(branch) == [nn.Linear, nn.ReLU]
    asked = SharedBranch(64, 32, BranchConfig(hidden=(), norm_every=-1, input_dropout=0.0))
    assert layer_types(asked) == [nn.Linear, nn.BatchNorm1d, nn.ReLU]


def test_a_single_training_row_uses_the_running_statistics_and_leaves_them_alone():
    """A multi-branch modality can draw one row in a batch; BatchNorm has no batch statistics for it."""
    branch = SharedBranch(8, 4, BranchConfig(hidden=(16,), input_dropout=0.0)).train()
    norm = branch._batch_norms[0]
    branch(torch.randn(32, 8))  # a normal batch moves the running statistics
    mean, var, seen = norm.running_mean.clone(), norm.running_var.clone(), int(norm.num_batches_tracked)
    x = torch.randn(1, 8, requires_grad=True)
    out = branch(x)  # used to raise "Expected more than 1 value per channel when training"
    assert out.shape == (1, 4) and branch.training and norm.training
    assert torch.equal(norm.running_mean, mean) and torch.equal(norm.running_var, var)
    assert int(norm.num_batches_tracked) == seen
    assert torch.allclose(out, branch.eval()(x))  # exactly what inference gives that row
    branch.train()
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # and it still trains


def test_norm_after_the_activation_lets_outputs_go_negative():
    x = torch.randn(256, 32)
    after = SharedBranch(32, 16, BranchConfig(hidden=(), norm_every=-1, norm_position="after", input_dropout=0.0))
    before = SharedBranch(32, 16, BranchConfig(hidden=(), norm_every=-1, norm_position="before", input_dropout=0.0))
    assert (before(x) >= 0).all()
    assert (after(x) < 0).float().mean() > 0.3  # batch statistics centre each feature


# ------------------------------------------------------------------------------------- init


def modality_data(n: int = 3000, n_other: int = 1500) -> dict[str, M.Modality]:
    gen = np.random.default_rng(0)
    rows = np.repeat(np.arange(n), 20)
    cols = gen.integers(0, n_other, len(rows))
    from sibrar.data.inputs import csr_from_pairs

    inter = M.Modality("interactions", "interactions", torch.ones(n, dtype=torch.bool), csr_from_pairs(rows, cols, (n, n_other)))
    cat = M.categorical("studio", [f"s{i}" for i in gen.integers(0, 2000, n)])
    tag = M.tags("genres", [[f"g{j}" for j in gen.choice(50, 3, replace=False)] for _ in range(n)])
    return {"interactions": inter, "studio": cat, "genres": tag}


def test_init_scales_follow_the_official_code():
    data = modality_data()
    c = 256
    table = Projection(data["studio"], c).embed.weight
    assert table.std().item() == pytest.approx(0.1 / c, rel=0.05)  # N(0, (0.1/c)²), not 0.1/√c
    bag = Projection(data["interactions"], c).embed.weight  # stands for nn.Linear(n_other, c)
    bound = math.sqrt(6.0 / data["interactions"].dim)
    assert bag.abs().max().item() <= bound and bag.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    tags = Projection(data["genres"], c).embed.weight  # a tag bag is an embedding table too; padding row 0
    assert tags[1:].std().item() == pytest.approx(0.1 / c, rel=0.05) and not tags[0].any()
    linear = Projection(M.vector("text", np.ones((5, 300)), np.ones(5, dtype=bool)), c).embed
    assert linear.weight.abs().max().item() <= math.sqrt(6.0 / 300) and not linear.bias.any()


# ------------------------------------------------------------------------------------- numeric


def years(values: list[float], fit_rows: list[int] | None = None) -> M.Modality:
    return M.fit_scale(M.numeric("year", np.asarray(values, dtype=float)), None if fit_rows is None else np.asarray(fit_rows))


YEARS = [1930.0, 1960.0, 1975.0, 1985.0, 1990.0, 1994.0, 1995.0, 1996.0, 1997.0, 1998.0]


def directions(encoding: str, modality: M.Modality) -> torch.Tensor:
    """What the shared branch sees at initialisation: the L2-normalised projection of each value."""
    with torch.no_grad():
        return F.normalize(Projection(modality, 64, numeric=encoding)(torch.arange(modality.n)), dim=-1)


@pytest.mark.parametrize("encoding", [e for e in NUMERIC_ENCODINGS if e != "linear"])
def test_two_different_years_map_to_different_directions_at_init(encoding):
    d = directions(encoding, years(YEARS))
    cos = d @ d.T
    off = cos[~torch.eye(len(YEARS), dtype=torch.bool)]
    assert off.max().item() < 1 - 1e-5, cos  # every pair of distinct years differs in direction ...
    assert cos[0, -1].item() < 0.9 and cos[2, -1].item() < 0.99, cos  # ... clearly so when decades apart
    assert torch.isfinite(d).all() and (d.norm(dim=1) > 0.99).all()


def test_the_official_linear_encoding_is_blind_to_the_value_at_init():
    d = directions("linear", years(YEARS))
    assert d[0].norm() == 0  # the minimum year is the zero vector
    assert (d[1:] @ d[1:].T).min().item() > 0.9999  # every other year the same direction


def test_numeric_statistics_come_from_the_fit_rows_only():
    values = [1990.0, 1991.0, 1992.0, 1993.0, 1940.0, 1950.0]
    fitted = years(values, fit_rows=[0, 1, 2, 3])
    assert fitted.scale == (1990.0, 1993.0)
    assert fitted.quantiles.shape == (1, M.N_QUANTILES + 1)
    assert fitted.quantiles[0, 0] == 0.0 and fitted.quantiles[0, -1] == 1.0
    assert fitted.moments[0, 0].item() == pytest.approx(0.5) and fitted.moments[1, 0].item() == pytest.approx(math.sqrt(5 / 36))
    assert torch.equal(fitted.values[4:], torch.zeros(2, 1))  # held-out values below the range clip to 0


def test_bins_interpolate_between_the_knot_embeddings():
    modality = years(YEARS)
    proj = Projection(modality, 8, numeric="bins")
    knots, table = proj.embed.knots[0], proj.embed.table.weight
    assert (knots[1:] > knots[:-1]).all()  # ten distinct years: distinct quantiles
    x = torch.stack([knots[3], (knots[3] + knots[4]) / 2, knots[4]]).reshape(3, 1)
    with torch.no_grad():
        out = proj.embed(x)
        beyond = proj.embed(torch.tensor([[0.0], [1.0]]))
    table = table.detach()
    torch.testing.assert_close(out[0], table[3])
    torch.testing.assert_close(out[1], (table[3] + table[4]) / 2)
    torch.testing.assert_close(out[2], table[4])
    torch.testing.assert_close(beyond, table[[0, M.N_QUANTILES]].detach())


@pytest.mark.parametrize("encoding", NUMERIC_ENCODINGS)
def test_numeric_modalities_with_several_columns_encode_each_column(encoding):
    gen = np.random.default_rng(1)
    values = gen.normal(size=(40, 2)) * [1.0, 100.0]
    values[3] = np.nan  # a missing row
    modality = M.fit_scale(M.numeric("stats", values), np.arange(30))
    assert modality.quantiles.shape == (2, M.N_QUANTILES + 1) and modality.moments.shape == (2, 2)
    with torch.no_grad():
        out = Projection(modality, 16, numeric=encoding)(torch.arange(40))
    assert out.shape == (40, 16) and torch.isfinite(out).all()
    swapped = modality.values.clone()
    swapped[:, 1] = swapped[torch.arange(39, -1, -1), 1]  # change only the second column
    with torch.no_grad():
        proj = Projection(modality, 16, numeric=encoding)
        first = proj(torch.arange(40))
        proj.modality = dataclasses.replace(modality, values=swapped)
        assert not torch.allclose(first, proj(torch.arange(40)))  # the second column reaches the output
