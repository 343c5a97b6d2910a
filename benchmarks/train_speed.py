"""Training and evaluation speed of SiBraR on ML-1M, and full-ranking throughput on a 1M-item catalogue.

Run by hand (never part of the test suite):

    python benchmarks/train_speed.py                     # CPU, 20 timed batches per architecture
    python benchmarks/train_speed.py --quick             # 3 timed batches, 512 users on the 1M catalogue
    python benchmarks/train_speed.py --device cuda --batches 50

Stages
  1. ML-1M (ratings >= 3, 5-core, cold_item split, seed 42) is loaded and split (not timed here; see
     benchmarks/data_speed.py).
  2. Training speed for two architectures: `paper` = the item-SiBraR of spec §3.3/§13 (item tower
     c=512, g = [512,512,512,256,256] -> d=128, BatchNorm every 2nd linear, output ReLU, input L2 +
     dropout 0.02, pairwise sampling over {interactions, genres} + InfoNCE; user tower = interactions
     Lin->ReLU to 128, then L2, Lin(128,128), BN, ReLU), and `small` (c=d=64, g=[64]; user tower plain
     interactions -> 64; single-modality sampling). Batch 256 positives x (1 + 10) items, AdamW.
     Seconds per epoch are EXTRAPOLATED: one epoch's negative sampling is timed once, then
     `--batches` optimiser steps (after 2 warm-up steps) are timed and scaled to the epoch's batch count.
  3. Evaluation throughput (users/s) of the evaluator's full ranking on ML-1M test users, for both
     candidate protocols ('split' = the cold items of the test part, as in the paper; 'all' items),
     all default metrics at k = 10, 20.
  4. `topk_items` on a generated 1M-item catalogue (random N(0,1) embeddings, d=128, SYNTHETIC) with a
     CSR exclusion of 165 random items per user (ML-1M's mean training profile), k = 20.
Peak memory per stage: VmHWM (resident set incl. torch, the data and earlier models), reset before each stage (/proc/self/clear_refs) when the kernel allows it,
else the process's ru_maxrss; on CUDA also torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import math
import os
import platform
import resource
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from provenance import commit, machine  # benchmarks/provenance.py

from sibrar.config import DataConfig, EvalConfig, SplitConfig, TrainConfig
from sibrar.data.dataset import load_dataset
from sibrar.data.inputs import ModelInputs, build_inputs
from sibrar.data.splits import Split, make_split
from sibrar.eval.evaluator import evaluate
from sibrar.eval.ranking import topk_items
from sibrar.models.base import Batch
from sibrar.models.modules import BranchConfig
from sibrar.models.sibrar import SiBraR, SiBraRConfig, TowerConfig
from sibrar.train.sampler import sample_negatives
from sibrar.train.trainer import Trainer

WARMUP = 2

ARCHITECTURES: dict[str, SiBraRConfig] = {
    "paper": SiBraRConfig(
        dim=128,
        user=TowerConfig(modalities=("interactions",), common_dim=128, sampling="single", contrastive_weight=0.0,
                         branch=BranchConfig(hidden=(), norm="batch", norm_every=-1, output_activation=True,
                                             normalize_input=True, input_dropout=0.0)),
        item=TowerConfig(modalities=("interactions", "genres"), common_dim=512, sampling="pairwise",
                         contrastive_weight=1e-4, temperature=0.05,
                         branch=BranchConfig(hidden=(512, 512, 512, 256, 256), norm="batch", norm_every=2,
                                             output_activation=True, normalize_input=True, input_dropout=0.02)),
    ),
    "small": SiBraRConfig(
        dim=64,
        user=TowerConfig(modalities=("interactions",), common_dim=64, branch=None, sampling="single", contrastive_weight=0.0),
        item=TowerConfig(modalities=("interactions", "genres"), common_dim=64, sampling="single", contrastive_weight=0.0,
                         branch=BranchConfig(hidden=(64,), norm="batch", norm_every=-1, output_activation=False,
                                             normalize_input=False, input_dropout=0.2)),
    ),
}


# ------------------------------------------------------------------------------------ memory


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM); False when not allowed."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb(resettable: bool) -> float:
    if resettable:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cuda_peak_mb(device: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if device.type == "cuda" else "-"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------ stages


@dataclass
class Row:
    stage: str
    what: str
    value: str
    note: str
    peak_rss_mb: float
    peak_gpu_mb: str


def time_training(name: str, inputs: ModelInputs, split: Split, device: torch.device, n_batches: int) -> tuple[list[Row], SiBraR]:
    torch.manual_seed(0)
    model = SiBraR(ARCHITECTURES[name], inputs)
    n_params = sum(p.numel() for p in model.parameters())
    cfg = TrainConfig(batch_size=256, n_negatives=10, lr=5e-5, weight_decay=1e-3, device=str(device))
    trainer = Trainer(model, inputs, split, cfg, progress=False)
    assert trainer.optimizer is not None
    resettable = reset_peak()
    gen = torch.Generator(device=device).manual_seed(0)
    model.generator = gen  # type: ignore[assignment]
    model.train()
    n_train = len(trainer.users)
    batches_per_epoch = math.ceil(n_train / cfg.batch_size)

    synchronize(device)
    t0 = time.perf_counter()
    order = torch.randperm(n_train, generator=gen, device=device)
    users, pos = trainer.users[order], trainer.pos_items[order]
    negatives = sample_negatives(users, cfg.n_negatives, candidates=trainer.candidates, positive_keys=trainer.keys,
                                 n_items=inputs.n_items, generator=gen)
    synchronize(device)
    t_negatives = time.perf_counter() - t0

    times = []
    for b in range(WARMUP + n_batches):
        sl = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
        batch = Batch(users[sl], torch.cat([pos[sl, None], negatives[sl]], dim=1))
        synchronize(device)
        t0 = time.perf_counter()
        loss = model.loss(batch)["loss"]
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        synchronize(device)
        if b >= WARMUP:
            times.append(time.perf_counter() - t0)
    per_batch = statistics.mean(times)
    epoch_s = t_negatives + batches_per_epoch * per_batch
    peak = peak_mb(resettable)
    gpu = cuda_peak_mb(device)
    spread = f"median {statistics.median(times):.3f}, min {min(times):.3f}, max {max(times):.3f} s/batch"
    rows = [
        Row("train", f"{name}: s/batch", f"{per_batch:.3f}", f"{n_batches} timed steps after {WARMUP} warm-up; {spread}", peak, gpu),
        Row("train", f"{name}: s/epoch", f"{epoch_s:,.0f}",
            f"EXTRAPOLATED: {batches_per_epoch} batches x s/batch + {t_negatives:.2f} s epoch negatives", peak, gpu),
        Row("train", f"{name}: interactions/s", f"{cfg.batch_size / per_batch:,.0f}",
            f"positives/s (each with 10 negatives); {n_train:,} train interactions; {n_params / 1e6:.2f} M params", peak, gpu),
    ]
    return rows, model


def time_evaluation(model: SiBraR, inputs: ModelInputs, split: Split, device: torch.device) -> list[Row]:
    rows = []
    for candidates in ("split", "all"):
        cfg = EvalConfig(candidates=candidates)  # type: ignore[arg-type]
        resettable = reset_peak()
        synchronize(device)
        t0 = time.perf_counter()
        result = evaluate(model, inputs, split, "test", cfg)
        synchronize(device)
        seconds = time.perf_counter() - t0
        n_cand = len(split.candidates("test", candidates))  # type: ignore[arg-type]
        rows.append(Row("eval", f"{split.manifest.get('dataset', 'data')} test, candidates={candidates}: users/s", f"{len(result.users) / seconds:,.0f}",
                        f"{len(result.users):,} users x {n_cand:,} items in {seconds:.2f} s (item embedding + top-20 "
                        f"+ {len(result.summary)} metric values)", peak_mb(resettable), cuda_peak_mb(device)))
    return rows


def time_catalogue(n_items: int, n_users: int, dim: int, device: torch.device, user_chunk: int) -> list[Row]:
    """topk_items over a generated catalogue with a CSR exclusion (SYNTHETIC data)."""
    gen = torch.Generator().manual_seed(0)
    item_emb = torch.randn(n_items, dim, generator=gen)
    user_emb = torch.randn(n_users, dim, generator=gen)
    rng = np.random.default_rng(0)
    per_user = 165
    cols = rng.integers(0, n_items, size=n_users * per_user)
    rows_ = np.repeat(np.arange(n_users), per_user)
    exclude = sp.csr_array((np.ones(len(cols), dtype=np.float32), (rows_, cols)), shape=(n_users, n_items))
    item_emb, user_emb = item_emb.to(device), user_emb.to(device)
    gc.collect()
    resettable = reset_peak()
    synchronize(device)
    t0 = time.perf_counter()
    top, _ = topk_items(user_emb, item_emb, 20, exclude=exclude, user_chunk=user_chunk,
                        generator=torch.Generator(device=device).manual_seed(0))
    synchronize(device)
    seconds = time.perf_counter() - t0
    # spot-check exactness on 3 users against a dense top-k (exclusions masked)
    for u in (0, n_users // 2, n_users - 1):
        scores = (item_emb @ user_emb[u]).cpu()
        scores[torch.from_numpy(exclude[[u]].indices.astype(np.int64))] = float("-inf")
        if set(scores.topk(20).indices.tolist()) != set(top[u].cpu().tolist()):
            raise SystemExit(f"topk_items disagrees with a dense top-k for user {u}")
    return [Row("rank", f"{n_items:,}-item catalogue: users/s", f"{n_users / seconds:,.0f}",
                f"{n_users:,} users, d={dim}, k=20, user_chunk={user_chunk}, item_chunk=262,144, {per_user} "
                f"exclusions/user; {seconds:.1f} s; item matrix {item_emb.numel() * 4 / 2**20:.0f} MB", peak_mb(resettable),
                cuda_peak_mb(device))]


# -------------------------------------------------------------------------------- reporting


def print_table(rows: list[Row]) -> None:
    header = ("stage", "measure", "value", "peak RSS MB", "peak GPU MB", "note")
    table = [header, *[(r.stage, r.what, r.value, f"{r.peak_rss_mb:,.0f}", r.peak_gpu_mb, r.note) for r in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for j, row in enumerate(table):
        cells = [c.rjust(w) if 2 <= i <= 4 else c.ljust(w) for i, (c, w) in enumerate(zip(row[:-1], widths))]
        print("| " + " | ".join(cells) + " | " + row[-1])
        if j == 0:
            print("|-" + "-|-".join("-" * w for w in widths) + "-|-" + "-" * 10)


def stage(label: str, fn: Callable[[], list[Row]], rows: list[Row], started: float) -> None:
    before = rss_mb()
    t0 = time.perf_counter()
    rows += fn()
    print(f"  {label} done in {time.perf_counter() - t0:.0f} s ({time.perf_counter() - started:.0f} s elapsed; RSS before "
          f"the stage {before:,.0f} MB; load average {os.getloadavg()[0]:.2f})", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batches", type=int, default=None, help="timed training steps per architecture (default 20; 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="3 timed steps, 512 users on the 1M catalogue")
    parser.add_argument("--catalogue-items", type=int, default=1_000_000)
    parser.add_argument("--catalogue-users", type=int, default=None, help="default 4096 (512 with --quick)")
    parser.add_argument("--user-chunk", type=int, default=None, help="topk_items user_chunk on the catalogue (default 256 on cpu, 1024 on cuda)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--architectures", default="paper,small")
    parser.add_argument("--dataset", default="ml-1m", help="fetch name or folder (default ml-1m under $SIBRAR_DATA)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n_batches = args.batches or (3 if args.quick else 20)
    n_cat_users = args.catalogue_users or (512 if args.quick else 4096)
    user_chunk = args.user_chunk or (1024 if device.type == "cuda" else 256)
    warnings.filterwarnings("ignore", category=UserWarning)  # torch's sparse-CSR beta notice

    started = time.perf_counter()
    print("# train_speed")
    print(f"command : {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"date    : {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}")
    print(f"machine : {machine()}; load average at start {' / '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min)")
    print(f"commit  : {commit()}")
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"versions: python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}; "
          f"device {device}{gpu}; torch threads {torch.get_num_threads()}")
    print(f"mode    : {'quick' if args.quick else 'full'}; {n_batches} timed batches per architecture\n", flush=True)

    t0 = time.perf_counter()
    dataset = load_dataset(DataConfig(dataset=args.dataset, rating_threshold=3, k_core=5))
    split = make_split(dataset, SplitConfig(protocol="cold_item", seed=42))
    inputs = build_inputs(dataset, split)
    print(f"data    : {dataset.name}: {dataset.n_users:,} users, {dataset.n_items:,} items, {dataset.interactions.height:,} "
          f"interactions (ratings >= 3, 5-core); cold_item split train/valid/test = {split.train.height:,} / "
          f"{split.valid.height:,} / {split.test.height:,}; item modalities {', '.join(inputs.item.names)}; "
          f"prepared in {time.perf_counter() - t0:.1f} s\n", flush=True)

    rows: list[Row] = []
    models: dict[str, SiBraR] = {}
    for name in args.architectures.split(","):
        def run_training(name: str = name) -> list[Row]:
            out, models[name] = time_training(name, inputs, split, device, n_batches)
            return out
        stage(f"train {name}", run_training, rows, started)
    if "paper" in models:
        stage("evaluate (paper model)", lambda: time_evaluation(models["paper"].eval(), inputs, split, device), rows, started)
    models.clear()
    gc.collect()
    stage("1M catalogue", lambda: time_catalogue(args.catalogue_items, n_cat_users, 128, device, user_chunk), rows, started)

    print()
    print_table(rows)
    print(f"\ntotal time {time.perf_counter() - started:.0f} s; load average at end "
          f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min) on {os.cpu_count()} logical CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
