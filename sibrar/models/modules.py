"""Building blocks: per-modality projections p_m and the shared branch g."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sibrar.data.modalities import Modality
from sibrar.models.numeric import NumericEncoder, NumericEncoding

# Chosen on validation nDCG@10 (ML-100K and ML-1M item cold start, experiments/README.md): the best
# summed validation of the encodings that see the value; "linear" is the official code's
DEFAULT_NUMERIC_ENCODING: NumericEncoding = "fourier"

Activation = Literal["relu", "selu", "gelu", "tanh", "leaky_relu"]
_ACTIVATIONS = {"relu": nn.ReLU, "selu": nn.SELU, "gelu": nn.GELU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}


@dataclass(frozen=True, kw_only=True)
class BranchConfig:
    """The shared single branch g: [c] + hidden + [d] linear layers.

    The defaults are the item branch (norm after every 2nd linear, before its activation). The
    paper's item-SiBraR user tower is `hidden=(), norm_every=-1, norm_position="after",
    input_dropout=0`: L2 -> Lin(c, d) -> ReLU -> BatchNorm, so user embeddings can be negative.
    """

    hidden: tuple[int, ...] = (256,)
    activation: Activation = "relu"
    norm: Literal["batch", "layer", "none"] = "batch"
    # a norm after every k-th linear layer; -1: after the last linear only. A branch with fewer than
    # k linears gets none (as in the official code: a single-layer branch with k = 2 has no BatchNorm)
    norm_every: int = 2
    # where that norm sits: "before" the layer's activation (Lin -> BN -> ReLU, the item branch) or
    # "after" it (Lin -> ReLU -> BN, the paper's user tower). Without an activation it follows the linear.
    norm_position: Literal["before", "after"] = "before"
    output_activation: bool = True  # activation after the last linear too (item embeddings >= 0 with ReLU)
    normalize_input: bool = True  # L2-normalise p_m(x) before g, so modalities enter on one scale
    input_dropout: float = 0.02


def init_weights(module: nn.Module) -> None:
    """The spec's init (§3.2): Kaiming-uniform (ReLU gain) linears with zero bias; embedding tables,
    tag bags included, N(0, (0.1 / c)²) with c their width (std 0.1/c, not 0.1/√c).

    The spec notes that the official code leaves nn.EmbeddingBag at PyTorch's N(0, 1), but only because
    its init matches the exact type nn.Embedding: a tag bag is an embedding table, and with N(0, 1)
    rows, the L2-normalised branch input and Adam, its directions would move about c/0.1 times more
    slowly than every other table's. The interaction bag stands for a Linear and is re-initialised as
    one in Projection.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
            nn.init.normal_(m.weight, std=0.1 / m.weight.shape[1])
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()


class SharedBranch(nn.Module):
    """g: optional L2-norm and dropout of the input, then the MLP with norms every k-th layer."""

    def __init__(self, in_dim: int, out_dim: int, config: BranchConfig) -> None:
        super().__init__()
        self.config = config
        widths = [in_dim, *config.hidden, out_dim]
        n_linear = len(widths) - 1
        layers: list[nn.Module] = [nn.Dropout(config.input_dropout)] if config.input_dropout > 0 else []
        every = config.norm_every
        for i in range(n_linear):
            last = i == n_linear - 1
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            norm: list[nn.Module] = []
            if config.norm != "none" and ((every > 0 and (i + 1) % every == 0) or (every == -1 and last)):
                norm = [nn.BatchNorm1d(widths[i + 1]) if config.norm == "batch" else nn.LayerNorm(widths[i + 1])]
            act = [_ACTIVATIONS[config.activation]()] if not last or config.output_activation else []
            layers += [*norm, *act] if config.norm_position == "before" else [*act, *norm]
        self.net = nn.Sequential(*layers)
        self._batch_norms = tuple(m for m in layers if isinstance(m, nn.BatchNorm1d))  # registered in net already

    def forward(self, x: Tensor) -> Tensor:  # (P, c) -> (P, d)
        if self.config.normalize_input:
            x = F.normalize(x, dim=-1)
        if self.training and x.shape[0] == 1 and self._batch_norms:
            return self._one_row(x)
        return self.net(x)

    def _one_row(self, x: Tensor) -> Tensor:
        """One row has no batch statistics (a multi-branch modality can draw a single row in a batch): its
        BatchNorms use their running statistics, and leave them as they are, for this call only."""
        for norm in self._batch_norms:
            norm.train(False)
        try:
            return self.net(x)
        finally:
            for norm in self._batch_norms:
                norm.train(True)


class Projection(nn.Module):
    """p_m for one modality: maps entity rows of that modality to width c.

    categorical -> embedding (no activation); tags -> mean embedding bag (padding excluded);
    vector -> MLP with ReLU after every linear; numeric -> the `numeric` encoding (numeric.py), then
    ReLU and the rest of the MLP as for vectors ("bins" is a lookup, no ReLU without hidden layers);
    interactions -> ReLU(W x + b) computed as a sum embedding bag over the entity's training
    interactions (never a dense n x n_other matrix).

    Init (init_weights): embedding tables and tag bags N(0, (0.1 / c)²); the interaction bag is the
    official code's nn.Linear(n_other, ·), so Kaiming-uniform with fan_in = n_other and zero bias.
    """

    def __init__(self, modality: Modality, out_dim: int, hidden: tuple[int, ...] = (),
                 numeric: NumericEncoding = DEFAULT_NUMERIC_ENCODING) -> None:
        super().__init__()
        self.kind = modality.kind
        self.modality = modality  # tensors are data, not parameters: kept out of the state dict
        if self.kind == "categorical":
            self.embed: nn.Module = nn.Embedding(modality.dim, out_dim)
        elif self.kind == "tags":
            self.embed = nn.EmbeddingBag(modality.dim, out_dim, mode="mean", padding_idx=0)
        else:
            first_out = hidden[0] if hidden else out_dim
            if self.kind == "interactions":
                self.embed = nn.EmbeddingBag(modality.dim, first_out, mode="sum")
                self.bias = nn.Parameter(torch.zeros(first_out))
            elif self.kind == "numeric":
                self.embed = NumericEncoder(modality, first_out, numeric)
            else:
                self.embed = nn.Linear(modality.dim, first_out)
            widths = [first_out, *hidden[1:], out_dim] if hidden else [out_dim]
            lookup = self.kind == "numeric" and numeric == "bins"
            rest: list[nn.Module] = [] if lookup and not hidden else [nn.ReLU()]
            for a, b in zip(widths[:-1], widths[1:]):
                rest += [nn.Linear(a, b), nn.ReLU()]
            self.rest = nn.Sequential(*rest)
        init_weights(self)
        if self.kind == "interactions":
            bound = math.sqrt(6.0 / modality.dim)  # kaiming_uniform_ (ReLU gain) with fan_in = n_other
            nn.init.uniform_(self.embed.weight, -bound, bound)
        elif self.kind == "numeric":
            self.embed.reset_bias()

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        """`.to(device)` moves the modality's data tensors along with the parameters."""
        super()._apply(fn, recurse)
        m = self.modality
        self.modality = replace(m, available=fn(m.available), values=fn(m.values))
        return self

    def forward(self, rows: Tensor) -> Tensor:  # rows (P,) entity indices -> (P, c)
        m = self.modality
        if self.kind == "categorical":
            return self.embed(m.values[rows])
        if self.kind == "tags":  # flatten the padded codes so padding never reaches the bag
            codes = m.values[rows]
            present = codes > 0
            lengths = present.sum(dim=1)
            return self.embed(codes[present], torch.cumsum(lengths, 0) - lengths)
        if self.kind == "interactions":
            indices, offsets = csr_rows(m.values, rows)
            return self.rest(self.embed(indices, offsets) + self.bias)
        return self.rest(self.embed(m.values[rows]))


def csr_rows(csr: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Column indices and bag offsets of `rows` of a CSR matrix, for nn.EmbeddingBag. Vectorised."""
    crow, col = csr.crow_indices(), csr.col_indices()
    starts, ends = crow[rows], crow[rows + 1]
    lengths = ends - starts
    offsets = torch.cumsum(lengths, 0) - lengths
    total = int(lengths.sum())
    within = torch.arange(total, device=col.device) - torch.repeat_interleave(offsets, lengths, output_size=total)
    return col[torch.repeat_interleave(starts, lengths, output_size=total) + within], offsets


