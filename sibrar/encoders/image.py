"""Image modality: posters / cover art -> open_clip image tower -> a feature file."""

from __future__ import annotations

import functools
import os
import time
import uuid
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sibrar.data.features import Entity
from sibrar.encoders.common import (
    EncodeReport, InputError, cache_key, cached_report, check_entity, collect_files, encode_batches, file_sha256,
    files_digest, finish, folder_sha256, one_line, nearest_names, output_folder, resolve_device,
)
from sibrar.errors import EncoderError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
LOCAL_DIR = "local-dir:"


@dataclass(frozen=True, kw_only=True)
class ImageEncoderConfig:
    """An open_clip image tower and how it is run."""

    model: str = "ViT-B-32"
    """A built-in open_clip architecture, or an open_clip folder ('local-dir:PATH' or just PATH) holding
    open_clip_config.json and the weights."""
    pretrained: str | None = "openai"
    """A local checkpoint file (state dict) or an open_clip pretrained tag (tags download: needs internet);
    None = random initialisation (not reproducible, never cached). Ignored for folders."""
    normalize: bool = True
    """L2-normalise each vector (CLIP embeddings are compared by cosine)."""
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise EncoderError(f"batch_size {self.batch_size} must be at least 1")


def _resolve_model(config: ImageEncoderConfig) -> tuple[str, str | None, str]:
    """(open_clip model name, pretrained argument, weights fingerprint) without importing open_clip."""
    model = config.model
    if not model.startswith(LOCAL_DIR) and Path(model).expanduser().is_dir():
        model = LOCAL_DIR + str(Path(model).expanduser().resolve())
    if model.startswith(LOCAL_DIR):
        folder = Path(model.removeprefix(LOCAL_DIR)).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise EncoderError(f"{folder}: an open_clip model folder needs open_clip_config.json next to the weights")
        return model, None, f"sha256:{folder_sha256(folder)}"
    if config.pretrained is None:
        return model, None, f"random-init:{uuid.uuid4().hex}"  # a fresh key: never served from the cache
    path = Path(config.pretrained).expanduser()
    if path.is_file():
        return model, str(path.resolve()), f"sha256:{file_sha256(path)}"
    from importlib.metadata import version

    return model, config.pretrained, f"tag:{model}/{config.pretrained}/open_clip-{version('open_clip_torch')}"


def _validate(model: str, pretrained: str | None) -> None:
    """Unknown architecture or tag -> EncoderError listing what exists (before the slow model build)."""
    import open_clip

    if model.startswith(LOCAL_DIR):
        return
    names = open_clip.list_models()
    if model not in names:
        raise EncoderError(f"unknown open_clip architecture {model!r}{nearest_names(model, names)} "
                           f"({len(names)} known, e.g. ViT-B-32, ViT-B-16, RN50, ViT-S-32-alt); "
                           "or pass an open_clip model folder")
    if pretrained is not None and not Path(pretrained).is_file():
        tags = open_clip.list_pretrained_tags_by_model(model)
        if pretrained not in tags:
            raise EncoderError(f"pretrained {pretrained!r} for {model} is neither a checkpoint file nor a known tag "
                               f"(tags: {', '.join(tags) or 'none'}); offline, pass a local checkpoint file")


@functools.lru_cache(maxsize=2)
def load_image_model(model: str, pretrained: str | None, device: str = "cpu") -> tuple[Any, Any]:
    """(open_clip model in eval mode, its inference preprocessing); kept for reuse."""
    import open_clip

    try:
        clip, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained, device=device)
    except Exception as exc:  # download, checkpoint-format and config errors all mean "cannot load"
        hint = ("the tag's weights must be downloaded (needs internet); offline, pass a checkpoint file"
                if pretrained is not None and not Path(pretrained).is_file() else
                "check that the checkpoint was saved from this architecture (a state dict)")
        raise EncoderError(f"open_clip model {model!r} with pretrained={pretrained!r} cannot be loaded "
                           f"({one_line(exc, 300)}); {hint}") from exc
    clip.eval()
    return clip, preprocess


def load_image(path: Path, preprocess: Any) -> Any:
    """One image file -> the model's input tensor (3, H, W); InputError if missing, unreadable or corrupt."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                rgb = img.convert("RGB")
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error … on bad files
        raise InputError(f"cannot read image {path.name}: {one_line(exc, 160)}") from None
    return preprocess(rgb)


def embed_images(batch: list[Any], clip: Any, *, normalize: bool, device: str) -> np.ndarray:
    """Preprocessed tensors (3, H, W) -> vectors (B, d) float32."""
    import torch

    with torch.inference_mode():
        pixels = torch.stack(batch).to(device)  # (B, 3, H, W)
        image_emb = clip.encode_image(pixels).float()  # (B, d)
        if normalize:
            image_emb = torch.nn.functional.normalize(image_emb, dim=-1)
    return image_emb.cpu().numpy()


def encode_images(
    dataset: str | Path | None = None, *, entity: Entity = "item", modality: str = "image",
    directory: str | Path | None = None, column: str | None = None, base: str | Path | None = None,
    config: ImageEncoderConfig = ImageEncoderConfig(), device: str = "cpu", out: str | Path | None = None,
    root: str | Path | None = None, force: bool = False, progress: bool = True, workers: int | None = None,
) -> EncodeReport:
    """Encode one image per entity into `<dataset>/features/<entity>_<modality>` (or `out`).

    Images come from `directory` (file stem = entity id, searched recursively) or from a `column`
    of paths (relative to `base`, default the dataset folder). Missing, unreadable or corrupt files
    leave the entity out of the file (missing). Unchanged files and settings make this a no-op.
    `workers` threads decode images (default min(4, CPU count)).
    """
    started = time.perf_counter()
    entity = check_entity(entity)
    inputs = collect_files(dataset, entity=entity, directory=directory, column=column, base=base, root=root,
                           extensions=IMAGE_EXTENSIONS)
    target = output_folder(inputs.folder, out)
    model, pretrained, weights = _resolve_model(config)
    settings = {"encoder": "open_clip", "model": model, "pretrained": pretrained, "weights": weights,
                "normalize": config.normalize}
    key = cache_key(settings, files_digest(inputs))
    if not force and (hit := cached_report(target, entity, modality, key)) is not None:
        return hit

    device = resolve_device(device)
    _validate(model, pretrained)
    clip, preprocess = load_image_model(model, pretrained, device)
    items: list[tuple[str, Path | None]] = [(i, inputs.paths.get(i)) for i in inputs.ids]
    done, vectors, missing = encode_batches(
        items, lambda path: load_image(path, preprocess),
        lambda batch: embed_images(batch, clip, normalize=config.normalize, device=device),
        batch_size=config.batch_size, desc=f"{entity}/{modality}", unit="img", progress=progress,
        workers=workers or min(4, os.cpu_count() or 1))
    missing = [(i, "no image file" if r == "no input" else r) for i, r in missing]
    import open_clip

    return finish(target, entity, modality, done, vectors, missing, key=key, started=started, manifest={
        **settings, "encoder_version": open_clip.__version__, "device": device, "config": asdict(config),
        "preprocess": str(preprocess).replace("\n", " "), "source": inputs.source, "dataset": inputs.name,
    })
