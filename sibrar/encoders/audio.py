"""Audio modality: clips -> fixed-size log-mel / MFCC / chroma / spectral statistics -> a feature file.

No learned weights: every frame of a clip (STFT, hann window) yields log-mel energies, MFCCs, a
chroma profile and six spectral descriptors, plus a spectral flux between frames; the clip vector
holds the mean and standard deviation of each over all frames. Long clips are decoded and analysed
`chunk_seconds` at a time and pooled exactly (running sums), so memory does not grow with length.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from sibrar.data.features import Entity
from sibrar.encoders.common import (
    EncodeReport, InputError, cache_key, cached_report, check_entity, collect_files, encode_batches, files_digest,
    finish, one_line, output_folder,
)
from sibrar.errors import EncoderError

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au"})
FEATURE_VERSION = 1  # bump when the computation changes: it is part of the cache key
_SPECTRAL = ("centroid", "bandwidth", "rolloff85", "flatness", "log_rms", "zcr")
_PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


@dataclass(frozen=True, kw_only=True)
class AudioEncoderConfig:
    """Signal-processing settings of the audio representation (all of them change the vectors)."""

    sample_rate: int = 22050
    """Clips are mixed to mono and resampled to this rate (Hz) before analysis."""
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 64
    n_mfcc: int = 20
    fmin: float = 20.0
    fmax: float | None = None
    """Upper edge of the mel bands (Hz); None = sample_rate / 2."""
    chunk_seconds: float = 30.0
    """Seconds decoded and analysed at a time; bounds memory for long clips."""
    max_seconds: float | None = None
    """Analyse at most this many seconds from the start of each clip; None = the whole clip."""
    normalize: bool = False
    """L2-normalise each clip vector (off by default: the statistics have their own scales)."""

    def __post_init__(self) -> None:
        problems = []
        if self.sample_rate < 1000:
            problems.append(f"sample_rate {self.sample_rate} Hz is below 1000")
        if not 0 < self.hop_length <= self.n_fft:
            problems.append(f"hop_length {self.hop_length} must be in 1..n_fft ({self.n_fft})")
        if not 0 < self.n_mfcc <= self.n_mels:
            problems.append(f"n_mfcc {self.n_mfcc} must be in 1..n_mels ({self.n_mels})")
        if self.chunk_seconds * self.sample_rate < 2 * self.n_fft:
            problems.append(f"chunk_seconds {self.chunk_seconds} is shorter than two FFT windows")
        if self.max_seconds is not None and self.max_seconds <= 0:
            problems.append(f"max_seconds {self.max_seconds} must be positive")
        if not 0 <= self.fmin < (self.fmax or self.sample_rate / 2) <= self.sample_rate / 2:
            problems.append(f"need 0 <= fmin ({self.fmin}) < fmax ({self.fmax}) <= sample_rate / 2")
        if problems:
            raise EncoderError("audio encoder config: " + "; ".join(problems))

    @property
    def dim(self) -> int:
        return len(feature_names(self))


def feature_names(config: AudioEncoderConfig) -> list[str]:
    """Names of the vector's dimensions, in order (mean block, std block, then flux)."""
    frame = ([f"log_mel_{i}" for i in range(config.n_mels)] + [f"mfcc_{i}" for i in range(config.n_mfcc)]
             + [f"chroma_{p}" for p in _PITCH_CLASSES] + list(_SPECTRAL))
    return [f"{n}_mean" for n in frame] + [f"{n}_std" for n in frame] + ["flux_mean", "flux_std"]


@functools.lru_cache(maxsize=8)
def _filterbanks(config: AudioEncoderConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mel (n_mels, F), chroma (12, F), DCT (n_mfcc, n_mels), bin frequencies (F,)) for this config."""
    n_freqs = config.n_fft // 2 + 1
    freqs = torch.linspace(0, config.sample_rate / 2, n_freqs, dtype=torch.float64)  # (F,)

    def hz_to_mel(f: torch.Tensor) -> torch.Tensor:  # HTK formula
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    fmax = config.fmax or config.sample_rate / 2
    mel_edges = torch.linspace(float(hz_to_mel(torch.tensor(config.fmin))), float(hz_to_mel(torch.tensor(fmax))),
                               config.n_mels + 2, dtype=torch.float64)
    hz_edges = 700.0 * (10 ** (mel_edges / 2595.0) - 1.0)  # (n_mels + 2,)
    lower, center, upper = hz_edges[:-2, None], hz_edges[1:-1, None], hz_edges[2:, None]
    rising = (freqs[None] - lower) / (center - lower).clamp_min(1e-9)
    falling = (upper - freqs[None]) / (upper - center).clamp_min(1e-9)
    mel = torch.clamp(torch.minimum(rising, falling), min=0.0)  # (n_mels, F) triangles, peak 1

    audible = (freqs >= 65.4) & (freqs <= min(5000.0, config.sample_rate / 2))  # C2 .. ~D#8
    pitch_class = (torch.round(12 * torch.log2(freqs.clamp_min(1e-9) / 440.0) + 69) % 12).long()
    chroma = torch.zeros(12, n_freqs, dtype=torch.float64)
    chroma[pitch_class[audible], torch.nonzero(audible).squeeze(1)] = 1.0  # (12, F)

    k = torch.arange(config.n_mfcc, dtype=torch.float64)[:, None]
    n = torch.arange(config.n_mels, dtype=torch.float64)[None]
    dct = torch.cos(math.pi / config.n_mels * (n + 0.5) * k) * math.sqrt(2.0 / config.n_mels)
    dct[0] /= math.sqrt(2.0)  # orthonormal DCT-II: (n_mfcc, n_mels)
    return mel.float(), chroma.float(), dct.float(), freqs.float()


class _Moments:
    """Running sum and sum of squares per row, so chunk statistics pool into exact clip statistics."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None
        self.count = 0

    def add(self, values: torch.Tensor) -> None:  # (rows, T)
        values = values.double()
        s, q = values.sum(dim=1), (values * values).sum(dim=1)
        self.total = s if self.total is None else self.total + s
        self.squares = q if self.squares is None else self.squares + q
        self.count += values.shape[1]

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.total is None or self.squares is None or self.count == 0:
            raise InputError("clip too short to analyse")
        mean = self.total / self.count
        return mean, (self.squares / self.count - mean * mean).clamp_min(0.0).sqrt()


def frame_features(samples: torch.Tensor, config: AudioEncoderConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Mono samples (N,) at config.sample_rate -> (per-frame features (D, T), spectral flux (T - 1,))."""
    if samples.numel() < config.n_fft:
        samples = torch.nn.functional.pad(samples, (0, config.n_fft - samples.numel()))
    mel_fb, chroma_fb, dct, freqs = _filterbanks(config)
    window = torch.hann_window(config.n_fft)
    spec = torch.stft(samples, config.n_fft, config.hop_length, window=window, center=True, pad_mode="reflect",
                      return_complex=True)  # (F, T)
    power = (spec.abs() * (2.0 / window.sum())) ** 2  # full-scale sine -> ~1
    log_mel = torch.log10(mel_fb @ power + 1e-10)  # (n_mels, T)
    mfcc = dct @ log_mel  # (n_mfcc, T)
    pitch = chroma_fb @ power  # (12, T)
    pitch_sum = pitch.sum(dim=0, keepdim=True)
    chroma = torch.where(pitch_sum > 1e-10, pitch / pitch_sum.clamp_min(1e-10), torch.full_like(pitch, 1 / 12))

    nyquist = config.sample_rate / 2
    total = power.sum(dim=0).clamp_min(1e-12)  # (T,)
    centroid = (freqs[:, None] * power).sum(dim=0) / total
    bandwidth = ((((freqs[:, None] - centroid[None]) ** 2) * power).sum(dim=0) / total).sqrt()
    cumulative = power.cumsum(dim=0) / total
    at_85 = torch.searchsorted(cumulative.T.contiguous(), torch.full((power.shape[1], 1), 0.85))  # (T, 1)
    rolloff = freqs[at_85.clamp_max(len(freqs) - 1)].squeeze(1)
    flatness = torch.exp(torch.log(power + 1e-12).mean(dim=0)) / (power.mean(dim=0) + 1e-12)

    padded = torch.nn.functional.pad(samples[None, None], (config.n_fft // 2, config.n_fft // 2), mode="reflect")[0, 0]
    frames = padded.unfold(0, config.n_fft, config.hop_length)  # (T, n_fft)
    log_rms = torch.log10(frames.pow(2).mean(dim=1).sqrt() + 1e-5)
    zcr = (torch.diff(torch.signbit(frames).to(torch.int8), dim=1) != 0).float().mean(dim=1)
    spectral = torch.stack([centroid / nyquist, bandwidth / nyquist, rolloff / nyquist, flatness, log_rms, zcr])
    flux = torch.relu(torch.diff(log_mel, dim=1)).mean(dim=0)  # (T - 1,)
    return torch.cat([log_mel, mfcc, chroma, spectral]), flux  # (n_mels + n_mfcc + 12 + 6, T)


def pooled_features(chunks: Iterator[np.ndarray], config: AudioEncoderConfig) -> np.ndarray:
    """Chunks of mono samples -> the clip vector (config.dim,) float32 (mean/std over every frame)."""
    frames, fluxes = _Moments(), _Moments()
    with torch.inference_mode():
        for i, chunk in enumerate(chunks):
            if i > 0 and len(chunk) < config.n_fft:
                continue  # a tail shorter than one window adds nothing but padding
            values, flux = frame_features(torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)), config)
            frames.add(values)
            if flux.numel():
                fluxes.add(flux[None])
        mean, std = frames.mean_std()
        flux_stats = torch.cat(fluxes.mean_std()) if fluxes.count else torch.zeros(2, dtype=torch.float64)
    vector = torch.cat([mean, std, flux_stats]).float().numpy()
    if config.normalize:
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
    return vector


def clip_features(samples: np.ndarray, sample_rate: int, config: AudioEncoderConfig = AudioEncoderConfig()) -> np.ndarray:
    """In-memory audio (N,) or (N, channels) at `sample_rate` -> the clip vector (config.dim,)."""
    samples = np.asarray(samples, dtype=np.float32)
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    if mono.size == 0:
        raise InputError("no audio samples")
    if config.max_seconds is not None:
        mono = mono[: int(config.max_seconds * sample_rate)]
    step = int(config.chunk_seconds * sample_rate)
    return pooled_features((_resample(mono[s:s + step], sample_rate, config.sample_rate)
                            for s in range(0, len(mono), step)), config)


def _resample(mono: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    if source_rate == target_rate:
        return mono
    from scipy.signal import resample_poly

    g = math.gcd(source_rate, target_rate)
    return resample_poly(mono, target_rate // g, source_rate // g).astype(np.float32)


def read_chunks(path: Path, config: AudioEncoderConfig) -> Iterator[np.ndarray]:
    """Decode a clip (wav/flac/ogg/opus/… via soundfile) chunk by chunk: mono, resampled; InputError if bad."""
    import soundfile as sf

    if not path.is_file():
        raise InputError(f"file not found: {path}" if not path.exists() else f"not a file: {path}")
    try:
        handle = sf.SoundFile(path)
    except Exception as exc:  # soundfile raises LibsndfileError (RuntimeError), TypeError or OSError
        raise InputError(f"cannot decode {path.name}: {one_line(exc, 160)}") from None
    with handle:
        native = handle.samplerate
        if handle.frames == 0:
            raise InputError(f"no audio samples in {path.name}")
        block = int(config.chunk_seconds * native)
        remaining = int(config.max_seconds * native) if config.max_seconds is not None else None
        while remaining is None or remaining > 0:
            n = block if remaining is None else min(block, remaining)
            try:
                data = handle.read(n, dtype="float32", always_2d=True)  # (n, channels)
            except Exception as exc:
                raise InputError(f"decoding {path.name} failed: {one_line(exc, 160)}") from None
            if len(data) == 0:
                break
            if remaining is not None:
                remaining -= len(data)
            yield _resample(data.mean(axis=1), native, config.sample_rate)


def audio_file_features(path: Path, config: AudioEncoderConfig = AudioEncoderConfig()) -> np.ndarray:
    """One audio file -> the clip vector (config.dim,) float32; InputError if missing, unreadable or corrupt."""
    vector = pooled_features(read_chunks(Path(path), config), config)
    if not np.isfinite(vector).all():
        raise InputError(f"{Path(path).name}: non-finite audio features (corrupt samples?)")
    return vector


def encode_audio(
    dataset: str | Path | None = None, *, entity: Entity = "item", modality: str = "audio",
    directory: str | Path | None = None, column: str | None = None, base: str | Path | None = None,
    config: AudioEncoderConfig = AudioEncoderConfig(), out: str | Path | None = None,
    root: str | Path | None = None, force: bool = False, progress: bool = True, workers: int = 1,
) -> EncodeReport:
    """Encode one audio clip per entity into `<dataset>/features/<entity>_<modality>` (or `out`).

    Clips come from `directory` (file stem = entity id, searched recursively) or from a `column` of
    paths (relative to `base`, default the dataset folder). Missing, unreadable, corrupt or empty files
    leave the entity out of the file (missing). Unchanged files and settings make this a no-op.
    Runs on the CPU (a few FFTs per second of audio; decoding dominates); `workers` > 1 analyses
    that many clips at once in threads.
    """
    started = time.perf_counter()
    entity = check_entity(entity)
    inputs = collect_files(dataset, entity=entity, directory=directory, column=column, base=base, root=root,
                           extensions=AUDIO_EXTENSIONS)
    target = output_folder(inputs.folder, out)
    settings = {"encoder": "sibrar-audio-stats", "feature_version": FEATURE_VERSION, "weights": "none (signal processing)",
                "normalize": config.normalize, "config": asdict(config)}
    key = cache_key(settings, files_digest(inputs))
    if not force and (hit := cached_report(target, entity, modality, key)) is not None:
        return hit

    items: list[tuple[str, Path | None]] = [(i, inputs.paths.get(i)) for i in inputs.ids]
    done, vectors, missing = encode_batches(
        items, lambda path: audio_file_features(path, config), lambda batch: np.stack(batch),
        batch_size=workers, desc=f"{entity}/{modality}", unit="clip", progress=progress, workers=workers)
    missing = [(i, "no audio file" if r == "no input" else r) for i, r in missing]
    import soundfile as sf

    return finish(target, entity, modality, done, vectors, missing, key=key, started=started, manifest={
        **settings, "encoder_version": f"soundfile-{sf.__version__}/libsndfile-{sf.__libsndfile_version__}",
        "feature_names": feature_names(config), "source": inputs.source, "dataset": inputs.name,
    })
