"""Typed request and response bodies of `sibrar serve` (they make the OpenAPI document at /docs)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# A feature value: a category (str), tags (list of str), a number, or a vector (list of numbers).
FeatureValue = str | float | list[str] | list[float] | None
Id = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
MAX_K = 1000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is a 422 naming it, not silently ignored


class Health(BaseModel):
    status: str
    run: str
    model: str
    index: str
    n_users: int
    n_items: int = Field(description="items that can be recommended (added included, removed excluded)")
    n_added: int
    item_modalities: list[str] = Field(description="feature names POST /items accepts")
    user_modalities: list[str] = Field(description="feature names POST /recommendations accepts")


class Feature(BaseModel):
    name: str
    kind: str = Field(description="categorical (a string), tags (a list of strings), numeric (a number), vector")
    values: list[str] | None = Field(None, description="the values the run knows (categorical and tags)")
    dim: int | None = None


class Features(BaseModel):
    item: list[Feature]
    user: list[Feature]


class Item(BaseModel):
    item_id: str
    title: str | None = None


class ScoredItem(Item):
    rank: int
    score: float


class Recommendations(BaseModel):
    user_id: str | None = Field(None, description="None for a new user (POST /recommendations)")
    k: int
    items: list[ScoredItem]


class Similar(BaseModel):
    item_id: str
    title: str | None = None
    k: int
    items: list[ScoredItem]


class UserInfo(BaseModel):
    user_id: str
    history: list[Item] = Field(description="items the user interacted with in training/validation (never recommended)")


class ItemList(BaseModel):
    n_items: int = Field(description="live items (removed ones are not listed)")
    items: list[Item]


class UserList(BaseModel):
    n_users: int
    user_ids: list[str]


class NewUser(_Strict):
    """A user the model has never seen: a few items they liked and/or their side information."""

    item_ids: list[Id] = Field(default_factory=list, max_length=1000, description="items of the run the user liked")
    features: dict[str, FeatureValue] = Field(default_factory=dict, description="user modalities, e.g. {\"age\": 30}")
    k: int = Field(10, ge=1, le=MAX_K)


class NewItem(_Strict):
    """An item described by its side information only, e.g. {"genres": ["Comedy"], "year": 1999}."""

    item_id: Id
    title: str | None = Field(None, max_length=500)
    features: dict[str, FeatureValue] = Field(description="item modalities by name (see GET /health)")


class Audience(BaseModel):
    user_id: str
    rank: int = Field(description="the new item's rank in this user's top-k")
    score: float


class AddedItem(BaseModel):
    item_id: str
    title: str | None = None
    n_items: int
    fits: list[Audience] = Field(description="users (among the best-scoring 50) whose top-k now holds the item")
    k: int


class Removed(BaseModel):
    item_id: str
    n_items: int


class Problem(BaseModel):
    detail: str
