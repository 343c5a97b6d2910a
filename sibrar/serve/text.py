"""Text modalities of new items: the run's template filled from the request, encoded by the run's encoder.

A vector modality written by `sibrar encode text` records its template (e.g. "{movie_title}
({release_year}). Genres: {genres}"), separators and sentence-transformers settings in its feature
manifest. A new item's text is rendered with exactly those from the item's title and features and
embedded by the same model, so it lands where the run's own items' texts do.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from sibrar.data.atomic import AtomicTable
from sibrar.data.features import list_feature_manifests
from sibrar.encoders.text import TextEncoderConfig, TextTemplate, render_texts, template_fields

_TYPES = {pl.Utf8: "token", pl.Float64: "float", pl.List(pl.Utf8): "token_seq", pl.List(pl.Float64): "float_seq"}


@dataclass(frozen=True)
class TextFeature:
    """How one text modality of the run was made: the template, its columns' types and the encoder."""

    modality: str
    template: TextTemplate
    encoder: TextEncoderConfig
    types: Mapping[str, str]  # template column -> RecBole type (token, float, token_seq, float_seq)

    def render(self, row: Mapping[str, Any]) -> str | None:
        """The text of one item from its column values (None when every field is empty)."""
        frame = pl.DataFrame({c: [_as_type(row.get(c), t)] for c, t in self.types.items()},
                             schema={c: _dtype(t) for c, t in self.types.items()})
        return render_texts(AtomicTable(frame, dict(self.types)), self.template)[0]


def text_features(dataset_folder: str | Path | None, item_table: pl.DataFrame | None,
                  modalities: set[str]) -> dict[str, TextFeature]:
    """The item text modalities among ``modalities`` that can be rebuilt from columns (by modality name)."""
    if dataset_folder is None or item_table is None:
        return {}
    out = {}
    for path in list_feature_manifests(dataset_folder):
        meta = json.loads(path.read_text(encoding="utf-8"))
        name = str(meta.get("modality"))
        if meta.get("entity") != "item" or name not in modalities or meta.get("encoder") != "sentence-transformers" \
                or not meta.get("template"):
            continue
        columns = template_fields(meta["template"])
        if any(c not in item_table.columns for c in columns):
            continue
        types = {c: _TYPES.get(item_table.schema[c], "token") for c in columns}
        known = {f.name for f in TextEncoderConfig.__dataclass_fields__.values()}
        encoder = TextEncoderConfig(**{k: v for k, v in (meta.get("config") or {}).items() if k in known})
        template = TextTemplate(template=meta["template"], seq_sep=meta.get("seq_sep", ", "), join=meta.get("join") or {})
        out[name] = TextFeature(name, template, encoder, types)
    return out


def _dtype(kind: str) -> Any:
    return {"token": pl.Utf8, "float": pl.Float64, "token_seq": pl.List(pl.Utf8), "float_seq": pl.List(pl.Float64)}[kind]


def _as_type(value: Any, kind: str) -> Any:
    """A request value as the column's type: a title string becomes its words for a token_seq column."""
    if value is None:
        return None
    if kind == "token_seq":
        return [str(v) for v in value] if isinstance(value, list) else str(value).split()
    if kind == "float_seq":
        return [float(v) for v in value] if isinstance(value, list) else [float(value)]
    if kind == "float":
        return float(value)
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)
