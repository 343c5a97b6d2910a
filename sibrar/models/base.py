"""The one Model interface every recommender implements, views, batches and model registration."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from sibrar.data.inputs import ModelInputs
from sibrar.registry import MODELS, ModelEntry


@dataclass(frozen=True)
class Batch:
    """One training batch: each user with its positive item in column 0 and its own N negatives
    after it, or (with `shared`) only the positive and one set of negatives for the whole batch.

    `dedup`: "entities" runs each tower once per distinct entity of the batch (one modality draw per
    distinct entity) and gathers; "rows" draws modalities per slot, as the reference code does, but
    runs the shared branch once per distinct (entity, modality) row; "none" encodes every slot
    separately (the reference code's pass).
    """

    users: Tensor  # (B,) long
    items: Tensor  # (B, 1+N) long; (B, 1) with shared negatives
    shared: Tensor | None = None  # (S,) long, distinct: negatives scored against every user of the batch
    shared_mask: Tensor | None = None  # (B, S) bool: True where shared[s] is a training item of users[b]
    objective: Literal["bpr", "softmax"] = "bpr"  # pairwise BPR, or sampled softmax (CE of the positive)
    dedup: Literal["entities", "rows", "none"] = "entities"
    contrastive_group: int | None = None  # InfoNCE over groups of at most this many rows (not per-row grids)


@dataclass(frozen=True)
class SideView:
    """Which modalities the entities of one side may use at inference.

    `modalities=None` means the tower's own eval modalities. `missing` forces a modality missing for
    chosen entities: name -> (n,) bool mask (True = treat as missing), e.g. a random 70 % of test
    items without text. Entities still only use modalities they actually have.
    """

    modalities: tuple[str, ...] | None = None
    missing: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class View:
    """A missing-modality scenario: a view per side. The default view uses everything available."""

    user: SideView = SideView()
    item: SideView = SideView()
    name: str = "all"


FULL_VIEW = View()


class Model(nn.Module, ABC):
    """A scorer of (user, item) pairs that can also produce the two embedding matrices.

    Subclasses set `name` and the capability flags, take `(config, inputs)` in `__init__`, and
    implement `loss`, `user_embeddings` and `item_embeddings`. The evaluator, FAISS index and tuner
    only ever call these methods, so every model shares them.
    """

    name: ClassVar[str]
    supports_cold_items: ClassVar[bool] = False  # can embed an item with no training interaction
    supports_cold_users: ClassVar[bool] = False
    trainable: ClassVar[bool] = True  # False for Pop/Rand: the trainer skips the epoch loop
    supports_shared_negatives: ClassVar[bool] = False  # its loss reads Batch.shared / objective / dedup

    def __init__(self, config: Any, inputs: ModelInputs) -> None:
        super().__init__()
        self.config = config
        self.n_users = inputs.n_users
        self.n_items = inputs.n_items

    @abstractmethod
    def loss(self, batch: Batch) -> dict[str, Tensor]:
        """Training loss for a batch: {'loss': total, ...named parts (bpr, infonce_item, ...)}."""

    @abstractmethod
    def user_embeddings(self, users: Tensor, view: View = FULL_VIEW) -> Tensor:
        """(len(users), d) embeddings of `users` under `view`, in eval mode semantics."""

    @abstractmethod
    def item_embeddings(self, items: Tensor, view: View = FULL_VIEW) -> Tensor:
        """(len(items), d) embeddings of `items` under `view`."""

    def score(self, user_emb: Tensor, item_emb: Tensor) -> Tensor:
        """(U, I) scores; a dot product unless a model says otherwise."""
        return user_emb @ item_emb.T

    @torch.no_grad()
    def all_item_embeddings(self, view: View = FULL_VIEW, chunk: int = 65536) -> Tensor:
        """Every item embedded once per evaluation pass, in chunks to bound memory."""
        device = self.device
        parts = [self.item_embeddings(torch.arange(s, min(s + chunk, self.n_items), device=device), view)
                 for s in range(0, self.n_items, chunk)]
        return torch.cat(parts)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")


def register_model(name: str, config_cls: type) -> Callable[[type[Model]], type[Model]]:
    """Class decorator: register a model and its config dataclass under `name` in `sibrar.registry.MODELS`."""

    def decorator(cls: type[Model]) -> type[Model]:
        cls.name = name
        MODELS.register(name)(ModelEntry(cls, config_cls))
        return cls

    return decorator


def create_model(config: Any, inputs: ModelInputs) -> Model:
    """Instantiate the registered model named by `config.name`."""
    return MODELS.get(config.name).cls(config, inputs)
