"""Encodings of numeric modalities (year, age, any `float` column) into the first width of p_m.

The official code feeds the min-max scaled number x in [0, 1] to ReLU(w·x + b) with b = 0: every
x > 0 then gives the same direction (and x = 0 the zero vector), and the shared branch L2-normalises
its input, so until the biases learn, a numeric modality says nothing about its value. The encodings
here make distinct values distinct directions from the first step. Statistics (mean, std, quantiles)
come from the data layer, fitted on training entities only (`sibrar.data.modalities.fit_scale`), and
are kept as buffers, so a saved model encodes new entities with the statistics it was trained with.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from sibrar.data.modalities import Modality

NumericEncoding = Literal["linear", "standardize", "bins", "fourier"]
NUMERIC_ENCODINGS: tuple[NumericEncoding, ...] = ("linear", "standardize", "bins", "fourier")
FOURIER_OCTAVES = 6  # sin/cos(π 2^j x), j < 6: periods from 2 down to 1/16 of the training range


class NumericEncoder(nn.Module):
    """(P, k) scaled numbers -> (P, out_dim) pre-activation features.

    linear       w·x + b, b = 0 (the official code; blind to the value at initialisation)
    standardize  w·(x - mean)/std + b with b drawn like w, so the ReLU kinks spread over the data
    bins         learned vectors at the training quantiles, linearly interpolated between them
    fourier      w·[x, sin(π 2^j x), cos(π 2^j x)] + b, a fixed multi-scale map, then a linear
    `bins` is a lookup (like a categorical modality); the others are linears, followed by a ReLU in
    Projection.
    """

    def __init__(self, modality: Modality, out_dim: int, encoding: NumericEncoding) -> None:
        super().__init__()
        if encoding not in NUMERIC_ENCODINGS:
            raise ValueError(f"numeric encoding {encoding!r}; expected one of {', '.join(NUMERIC_ENCODINGS)}")
        self.encoding = encoding
        k = modality.dim
        if encoding in ("standardize", "bins") and (modality.quantiles is None or modality.moments is None):
            raise ValueError(f"numeric modality {modality.name!r} has no fitted statistics; scale it with fit_scale")
        if encoding == "bins":
            knots = modality.quantiles.float().clone()  # (k, Q+1), sorted per column
            self.register_buffer("knots", knots)
            self.table = nn.Embedding(knots.numel(), out_dim)
            return
        if encoding == "standardize":
            self.register_buffer("mean", modality.moments[0].float().clone())  # (k,)
            self.register_buffer("std", modality.moments[1].float().clamp_min(1e-6))
        width = k * (1 + 2 * FOURIER_OCTAVES) if encoding == "fourier" else k
        self.linear = nn.Linear(width, out_dim)

    def reset_bias(self) -> None:
        """standardize: bias ~ U(±√(6/k)) like the weight (after init_weights zeroed it)."""
        if self.encoding == "standardize":
            bound = math.sqrt(6.0 / self.linear.in_features)
            nn.init.uniform_(self.linear.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:  # (P, k) -> (P, out_dim)
        if self.encoding == "bins":
            return self._interpolate(x)
        if self.encoding == "standardize":
            x = (x - self.mean) / self.std
        elif self.encoding == "fourier":
            freq = math.pi * 2.0 ** torch.arange(FOURIER_OCTAVES, device=x.device, dtype=x.dtype)
            angle = x.unsqueeze(-1) * freq  # (P, k, F)
            x = torch.cat([x, angle.sin().flatten(1), angle.cos().flatten(1)], dim=1)
        return self.linear(x)

    def _interpolate(self, x: Tensor) -> Tensor:
        knots = self.knots  # (k, Q+1)
        k, n_knots = knots.shape
        j = torch.searchsorted(knots, x.T.contiguous(), right=True).T - 1  # (P, k) interval index
        j = j.clamp(0, n_knots - 2)
        cols = torch.arange(k, device=x.device)
        lo, hi = knots[cols, j], knots[cols, j + 1]
        t = ((x - lo) / (hi - lo).clamp_min(1e-12)).clamp(0.0, 1.0).unsqueeze(-1)  # (P, k, 1)
        base = cols * n_knots + j  # (P, k) row of the lower knot in the table
        mixed = (1 - t) * self.table(base) + t * self.table(base + 1)  # (P, k, out)
        return mixed.sum(dim=1)
