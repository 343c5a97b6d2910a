"""Image encoder: a small open_clip architecture saved to a checkpoint and loaded back, on real photos."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from _encoder_fixtures import make_dataset, photo_paths, save_tiny_clip_checkpoint

from sibrar.cli import main
from sibrar.data.features import read_features
from sibrar.encoders import ImageEncoderConfig, encode_images
from sibrar.encoders.common import paths_from_dir
from sibrar.encoders.image import IMAGE_EXTENSIONS
from sibrar.errors import DataWarning, EncoderError

ARCH = "ViT-S-32-alt"


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    return path, save_tiny_clip_checkpoint(path, ARCH)


@pytest.fixture
def config(tiny_clip: tuple[Path, object]) -> ImageEncoderConfig:
    return ImageEncoderConfig(model=ARCH, pretrained=str(tiny_clip[0]), batch_size=2)


@pytest.fixture
def posters(tmp_path: Path) -> Path:
    """A dataset whose items are named after the photos, plus 'broken' (corrupt file) and 'nofile'."""
    photos = photo_paths()
    ids = [*photos, "broken", "nofile"]
    folder = make_dataset(tmp_path, "posters", "item", {"item_id": ids}, {"item_id": "token"})
    images = folder / "images"
    images.mkdir()
    for path in photos.values():
        shutil.copy(path, images / path.name)
    (images / "broken.png").write_bytes(b"this is not a png")
    return folder


def _encode(folder: Path, config: ImageEncoderConfig, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return encode_images(folder, config=config, progress=False, **kwargs)


def test_photos_encode_like_the_saved_model(posters: Path, config: ImageEncoderConfig, tiny_clip) -> None:
    import torch
    from PIL import Image

    from sibrar.encoders import load_image_model

    report = _encode(posters, config, directory=posters / "images")
    features = read_features(report.manifest_path)
    assert list(features.ids) == list(photo_paths()) and features.vectors.shape == (5, 256)
    np.testing.assert_allclose(np.linalg.norm(features.vectors, axis=1), 1.0, atol=1e-5)
    # the checkpoint round trip: vectors equal the in-memory model that was saved
    _, preprocess = load_image_model(ARCH, str(tiny_clip[0].resolve()), "cpu")  # the encoder's own transform
    with torch.inference_mode():
        pixels = preprocess(Image.open(photo_paths()["chelsea"]).convert("RGB"))[None]
        direct = torch.nn.functional.normalize(tiny_clip[1].encode_image(pixels), dim=-1)[0].numpy()
    np.testing.assert_allclose(features.vectors[1], direct, atol=1e-4)
    assert np.abs(features.vectors[0] - features.vectors[1]).max() > 1e-3  # different photos differ
    assert dict(report.missing) == {"broken": "cannot read image broken.png: UnidentifiedImageError: "
                                    f"cannot identify image file '{posters / 'images' / 'broken.png'}'",
                                    "nofile": "no image file"}
    manifest = features.manifest
    assert manifest["encoder"] == "open_clip" and manifest["weights"].startswith("sha256:")
    assert manifest["n_missing"] == 2 and "CenterCrop" in manifest["preprocess"]


def test_column_of_paths_marks_missing_unreadable_and_corrupt(tmp_path: Path, config: ImageEncoderConfig) -> None:
    photos = photo_paths()
    art = tmp_path / "art"
    art.mkdir()
    shutil.copy(photos["coffee"], art / "coffee.png")
    (art / "folder.png").mkdir()  # exists but cannot be read as a file
    (art / "cut.jpg").write_bytes(photos["rocket"].read_bytes()[:3000])  # truncated JPEG
    columns = {"item_id": ["ok", "gone", "dir", "cut", "blank"],
               "cover": ["art/coffee.png", "art/gone.png", "art/folder.png", "art/cut.jpg", None]}
    folder = make_dataset(tmp_path, "covers", "item", columns, {"item_id": "token", "cover": "token"})
    report = _encode(folder, config, column="cover", base=tmp_path)
    assert report.n_encoded == 1 and report.n_missing == 4
    reasons = dict(report.missing)
    assert reasons["gone"].startswith("file not found") and reasons["blank"] == "no image file"
    assert "IsADirectoryError" in reasons["dir"] and "truncated" in reasons["cut"]
    assert list(read_features(report.manifest_path).ids) == ["ok"]


def test_folder_without_dataset_takes_every_file(posters: Path, config: ImageEncoderConfig, tmp_path: Path) -> None:
    report = _encode(None, config, directory=posters / "images", out=tmp_path / "loose")  # type: ignore[arg-type]
    assert sorted(read_features(report.manifest_path).ids) == sorted(photo_paths())
    assert report.missing == (("broken", report.missing[0][1]),)


def test_stray_and_duplicate_files_are_warned_about(tmp_path: Path) -> None:
    for name in ("a.png", "a.jpg", "b.png", "stray.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    with pytest.warns(DataWarning) as caught:
        ids, paths = paths_from_dir(tmp_path, ["a", "b", "c"], IMAGE_EXTENSIONS)
    messages = " | ".join(str(w.message) for w in caught)
    assert "1 id(s) have several files (first: 'a')" in messages and "1 file(s) match no id (first: 'stray')" in messages
    assert ids == ["a", "b", "c"] and paths == {"a": tmp_path / "a.jpg", "b": tmp_path / "b.png"}


def test_rerun_is_cached_until_a_file_changes(posters: Path, config: ImageEncoderConfig) -> None:
    images = posters / "images"
    assert not _encode(posters, config, directory=images).cached
    assert _encode(posters, config, directory=images).cached
    shutil.copy(photo_paths()["astronaut"], images / "broken.png")  # the corrupt file is repaired
    report = _encode(posters, config, directory=images)
    assert not report.cached and report.n_encoded == 6


def test_bad_model_names_list_what_exists(posters: Path, tiny_clip) -> None:
    with pytest.raises(EncoderError, match=r"unknown open_clip architecture 'ViT-S-32-alt2'; did you mean 'ViT-S-32-alt'"):
        _encode(posters, ImageEncoderConfig(model="ViT-S-32-alt2", pretrained=str(tiny_clip[0])), directory=posters)
    with pytest.raises(EncoderError, match=r"neither a checkpoint file nor a known tag \(tags: .*\); offline"):
        _encode(posters, ImageEncoderConfig(model=ARCH, pretrained="/no/such/ckpt.pt"), directory=posters)


def test_cli_encode_image(posters: Path, tiny_clip, capsys) -> None:
    argv = ["encode", "image", str(posters), "--dir", str(posters / "images"), "--model", ARCH,
            "--pretrained", str(tiny_clip[0]), "--batch-size", "3", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "item/image: 5 encoded, 2 missing, dim 256" in printed and "nofile: no image file" in printed
    assert (posters / "features" / "item_image.parquet").is_file()
