"""Text encoder: templates from columns, the bundled all-MiniLM-L6-v2 weights, missing texts, the cache, the CLI."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from _encoder_fixtures import make_dataset

from sibrar.cli import main
from sibrar.data.atomic import read_atomic
from sibrar.data.features import read_features
from sibrar.encoders import TextEncoderConfig, TextTemplate, encode_text, load_text_model, render_texts
from sibrar.errors import DataError, DataWarning, EncoderError

TEMPLATE = "{movie_title} ({release_year}). Genres: {class}"
TITLES = [["Toy", "Story"], ["Toy", "Story", "2"], ["Heat"], None, ["GoldenEye"]]
COLUMNS = {
    "item_id": ["1", "2", "3", "4", "5"],
    "movie_title": TITLES,
    "release_year": [1995.0, 1999.0, 1995.0, None, 1995.0],
    "class": [["Animation", "Children's", "Comedy"], ["Animation", "Children's", "Comedy"],
              ["Action", "Crime", "Thriller"], None, ["Action", "Adventure", "Thriller"]],
}
TYPES = {"item_id": "token", "movie_title": "token_seq", "release_year": "float", "class": "token_seq"}


@pytest.fixture(scope="session")
def minilm():
    return load_text_model("all-MiniLM-L6-v2", "cpu")


@pytest.fixture
def movies(tmp_path: Path) -> Path:
    return make_dataset(tmp_path, "movies", "item", COLUMNS, TYPES)


def _encode(folder: Path, **kwargs):
    kwargs.setdefault("template", TEMPLATE)
    kwargs.setdefault("join", {"movie_title": " "})
    kwargs.setdefault("config", TextEncoderConfig(batch_size=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return encode_text(folder, progress=False, **kwargs)


def test_render_texts_joins_sequences_and_drops_float_zeros(movies: Path) -> None:
    table = read_atomic(movies / "movies.item")
    texts = render_texts(table, TextTemplate(template=TEMPLATE, join={"movie_title": " "}))
    assert texts[0] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    assert texts[3] is None  # every field empty -> no text
    spaced = render_texts(table, TextTemplate(template="{class}", seq_sep=" "))
    assert spaced[2] == "Action Crime Thriller"


def test_template_with_unknown_column_names_the_columns(movies: Path) -> None:
    with pytest.raises(DataError, match=r"\{movie_titel\}.*did you mean 'movie_title'.*columns: item_id"):
        _encode(movies, template="{movie_titel}")
    with pytest.raises(EncoderError, match="plain column name"):
        _encode(movies, template="{class[0]}")


def test_encode_text_matches_minilm_and_keys_vectors_by_id(movies: Path, minilm) -> None:
    report = _encode(movies)
    features = read_features(report.manifest_path)
    assert features.vectors.shape == (4, 384) and list(features.ids) == ["1", "2", "3", "5"]
    np.testing.assert_allclose(np.linalg.norm(features.vectors, axis=1), 1.0, atol=1e-5)
    direct = minilm.encode(["Heat (1995). Genres: Action, Crime, Thriller"], normalize_embeddings=True)
    np.testing.assert_allclose(features.vectors[2], direct[0], atol=1e-5)
    sims = features.vectors @ features.vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.1  # Toy Story is closer to Toy Story 2 than to Heat
    manifest = features.manifest
    assert manifest["encoder"] == "sentence-transformers" and manifest["weights"].startswith("sha256:")
    assert manifest["template"] == TEMPLATE and manifest["normalize"] is True and manifest["dim"] == 384
    assert manifest["n_encoded"] == 4 and manifest["n_missing"] == 1 and "created" in manifest


def test_empty_text_is_missing_and_reported(movies: Path) -> None:
    with pytest.warns(DataWarning, match=r"1 of 5 items could not be encoded"):
        report = encode_text(movies, template=TEMPLATE, progress=False)
    assert report.n_missing == 1 and report.missing == (("4", "empty text"),)
    assert "4: empty text" in report.summary()
    manifest = json.loads(report.manifest_path.read_text())
    assert manifest["first_missing"] == [["4", "empty text"]]
    assert "4" not in read_features(report.manifest_path).ids


def test_user_texts_go_to_a_user_feature_file(tmp_path: Path) -> None:
    users = {"user_id": ["u1", "u2"], "occupation": ["engineer", "writer"], "age": [31.0, 47.0]}
    folder = make_dataset(tmp_path, "people", "user", users, {"user_id": "token", "occupation": "token", "age": "float"})
    report = _encode(folder, entity="user", modality="demographics", template="A {age}-year-old {occupation}.", join={})
    features = read_features(report.manifest_path)
    assert report.manifest_path.name == "user_demographics.json" and features.entity == "user"
    assert list(features.ids) == ["u1", "u2"] and features.vectors.shape == (2, 384)


def test_max_length_truncates_long_texts(tmp_path: Path) -> None:
    texts = {"item_id": ["a", "b"], "plot": ["one two three four five six", "one two three four nine ten"]}
    folder = make_dataset(tmp_path, "plots", "item", texts, {"item_id": "token", "plot": "token"})
    short = read_features(_encode(folder, template=None, column="plot", config=TextEncoderConfig(max_length=6)).manifest_path)
    np.testing.assert_allclose(short.vectors[0], short.vectors[1], atol=1e-6)  # differences lie past token 4
    assert short.manifest["max_length_used"] == 6
    full = read_features(_encode(folder, template=None, column="plot", force=True).manifest_path)
    assert not np.allclose(full.vectors[0], full.vectors[1], atol=1e-3)
    with pytest.raises(EncoderError, match=r"max_length 4096 exceeds what 'all-MiniLM-L6-v2' can read \(512 tokens\)"):
        _encode(folder, template=None, column="plot", config=TextEncoderConfig(max_length=4096))


def test_rerun_with_unchanged_inputs_is_a_noop(movies: Path) -> None:
    first = _encode(movies)
    stamp = first.manifest_path.stat().st_mtime_ns
    again = _encode(movies)
    assert again.cached and again.n_encoded == first.n_encoded and again.missing == first.missing
    assert first.manifest_path.stat().st_mtime_ns == stamp
    assert not _encode(movies, template="{movie_title}").cached  # new template -> new texts
    assert not _encode(movies, force=True).cached


def test_unknown_model_offline_lists_the_bundled_model(movies: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = TextEncoderConfig(model="no-such-org/no-such-model")
    with pytest.raises(EncoderError, match=r"cannot be loaded.*local options: all-MiniLM-L6-v2 \(bundled: /"):
        _encode(movies, config=config)


def test_cli_encode_text_writes_features_and_reports(movies: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["encode", "text", str(movies), "--template", TEMPLATE, "--join", "movie_title= ", "--out", str(out),
            "--batch-size", "4", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "item/text: 4 encoded, 1 missing, dim 384" in printed and "4: empty text" in printed
    assert read_features(out / "item_text.json").vectors.shape == (4, 384)
    assert main(argv) == 0 and "up to date (cached)" in capsys.readouterr().out
    assert main(["encode", "text", str(movies), "--column", "nope", "--no-progress"]) == 2
    assert "no-column" not in capsys.readouterr().err
