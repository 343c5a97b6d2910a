"""Training and evaluation speed of SiBraR on ML-1M, and full-ranking throughput on a 1M-item catalogue.

Run by hand (never part of the test suite):

    python benchmarks/train_speed.py --threads 1 --json speed.json   # CPU, 20 timed batches per path
    python benchmarks/train_speed.py --quick --skip-catalogue         # 3 timed batches
    python benchmarks/train_speed.py --ttq small --ttq-epochs 3       # plus time-to-quality (full epochs: slow)
    python benchmarks/train_speed.py --ttq small,paper --ttq-reference old.json   # the old curves of an earlier run
    python benchmarks/train_speed.py --device cuda --batches 50 --clock wall

Stages
  1. ML-1M (ratings >= 3, 5-core, cold_item split, seed 42) is loaded and split (not timed here; see
     benchmarks/data_speed.py).
  2. Training speed for two architectures: `paper` = the paper's item-SiBraR (item tower
     c=512, g = [512,512,512,256,256] -> d=128, BatchNorm every 2nd linear, output ReLU, input L2 +
     dropout 0.02, pairwise sampling over {interactions, genres} + InfoNCE; user tower = interactions
     Lin->ReLU to 128, then L2, Lin(128,128), BN, ReLU), and `small` (c=d=64, g=[64]; user tower plain
     interactions -> 64; single-modality sampling). Two paths, stepped ALTERNATELY batch by batch in
     one process so both see the same load: `old` = today's step (batch 256, 10 negatives per
     positive, every slot encoded, BPR, fp32) and `new` = the fast step (batch 2048, one pass per
     distinct entity, 10 negatives per positive from a pool of 1024 per batch, sampled softmax; --new-batch / --precision override). AdamW.
     Per path: positives per second (median step; the old path's per-epoch negative sampling is timed
     once and spread over its batches), rows through the shared branches per positive, matmul FLOPs
     per positive (forward + backward, torch's FLOP counter) and the fraction of this machine's
     measured GEMM rate they reach. Steps are timed in process CPU seconds unless `--clock wall`:
     on a machine shared with other jobs wall time measures the neighbours.
  3. Per-epoch validation (`evaluate(valid)`, as the trainer calls it) against the score GEMM of all
     users x all items, alternating; then test-set users/s for both candidate protocols ('split' = the
     cold items of the test part, as in the paper; 'all' items), all default metrics at k = 10, 20.
  3b. With `--ttq ARCH`: the old path trained for `--ttq-epochs` full epochs (each path at its default
     lr), then the new path for at most the same seconds, both validated after every epoch; seconds
     until validation nDCG@10 first reaches 95 % / 99 % of the old path's best epoch.
  4. `topk_items` on a generated 1M-item catalogue (random N(0,1) embeddings, d=128, SYNTHETIC) with a
     CSR exclusion of 165 random items per user (ML-1M's mean training profile), k = 20.
Peak memory per stage: VmHWM (resident set incl. torch, the data and earlier models), reset before each stage (/proc/self/clear_refs) when the kernel allows it,
else the process's ru_maxrss; on CUDA also torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import json
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
from provenance import commit, machine
from train_curves import Curve, time_to  # benchmarks/train_curves.py
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode  # benchmarks/provenance.py

from sibrar._io import atomic_write
from sibrar.config import DataConfig, EvalConfig, SplitConfig, TrainConfig
from sibrar.data.dataset import load_dataset
from sibrar.data.inputs import ModelInputs, build_inputs
from sibrar.data.splits import Split, make_split
from sibrar.eval.evaluator import evaluate
from sibrar.eval.ranking import topk_items
from sibrar.models.base import Batch
from sibrar.models.modules import BranchConfig
from sibrar.models.sibrar import SiBraR, SiBraRConfig, TowerConfig
from sibrar.train.trainer import Trainer

WARMUP = 2
CLOCK = time.perf_counter  # training steps; `--clock cpu` (the default) switches to process CPU seconds

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


# today's step (the reference code's): batch 256, 10 negatives per positive, every slot encoded, BPR, fp32
OLD_TRAIN = TrainConfig(batch_size=256, n_negatives=10, lr=5e-5, weight_decay=1e-3, negatives="per_row", dedup="none",
                        objective="bpr", precision="fp32")


def new_train(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig's default step (one pass per distinct entity, per-row negatives from one pool per
    batch, sampled softmax) at batch --new-batch, --precision and --new-set, with the benchmark's optimiser settings."""
    extra = {k: type(getattr(TrainConfig, k))(v) for k, v in (text.split("=", 1) for text in args.new_set)}
    return TrainConfig(lr=5e-5, weight_decay=1e-3, batch_size=args.new_batch, precision=args.precision, **extra)


def negatives_text(c: TrainConfig) -> str:
    return {"per_row": f"{c.n_negatives} negatives/positive", "shared": f"{c.n_shared_negatives} shared negatives",
            "pooled": f"{c.n_negatives} negatives/positive from a pool of {c.n_shared_negatives}"}[c.negatives]


def gemm_flops(device: torch.device, dtype: torch.dtype, n: int = 2048) -> float:
    """This machine's measured dense matmul rate (FLOP/s): median of 5 n x n x n products."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(5):
        synchronize(device)
        t0 = CLOCK()
        a @ b
        synchronize(device)
        times.append(CLOCK() - t0)
    return 2 * n**3 / statistics.median(times)


class Path_:
    """One training path (old or new): its model, optimiser and batch source, stepped one batch at a time."""

    def __init__(self, arch: str, cfg: TrainConfig, inputs: ModelInputs, split: Split, device: torch.device) -> None:
        torch.manual_seed(0)
        self.cfg, self.model = cfg, SiBraR(ARCHITECTURES[arch], inputs)
        self.trainer = Trainer(self.model, inputs, split, dataclasses.replace(cfg, device=str(device)), progress=False)
        self.device, self.b = device, 0
        gen = torch.Generator(device=device).manual_seed(0)
        self.model.generator, self.gen = gen, gen  # type: ignore[assignment]
        self.model.train()
        t = self.trainer
        synchronize(device)
        t0 = CLOCK()
        order = torch.randperm(len(t.users), generator=gen, device=device)
        self.users, self.pos = t.users[order], t.pos_items[order]
        self.negatives = t.epoch_negatives(self.users, gen)
        synchronize(device)
        self.batches_per_epoch = math.ceil(len(t.users) / cfg.batch_size)
        self.epoch_setup_s = CLOCK() - t0  # per-epoch negatives (old path), spread over its batches

    def batch(self) -> Batch:
        sl = slice(self.b * self.cfg.batch_size, (self.b + 1) * self.cfg.batch_size)
        self.b = (self.b + 1) % (self.batches_per_epoch - 1)  # full batches only
        return self.trainer._batch(self.users[sl], self.pos[sl], None if self.negatives is None else self.negatives[sl], self.gen)

    def forward(self, batch: Batch) -> Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16"):
            return self.model.loss(batch)["loss"]

    def step(self) -> float:
        """Seconds of one optimiser step, batch construction included (plus its share of the epoch's negatives)."""
        optimizer = self.trainer.optimizer
        assert optimizer is not None
        synchronize(self.device)
        t0 = CLOCK()
        loss = self.forward(self.batch())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(self.device)
        return CLOCK() - t0 + self.epoch_setup_s / self.batches_per_epoch

    def work(self) -> tuple[float, float]:
        """(branch rows per positive, FLOPs per positive) of one step: rows through the towers' shared
        branches, FLOPs of matmuls in forward + backward (torch's FLOP counter; lookups count 0)."""
        rows = [0]
        hooks = [tower.branch.register_forward_hook(lambda m, i, o: rows.__setitem__(0, rows[0] + len(i[0])))
                 for tower in (self.model.user_tower, self.model.item_tower) if not isinstance(tower.branch, torch.nn.Identity)]
        batch = self.batch()
        with FlopCounterMode(display=False) as counter:
            self.forward(batch).backward()
        for h in hooks:
            h.remove()
        self.model.zero_grad(set_to_none=True)
        return rows[0] / len(batch.users), counter.get_total_flops() / len(batch.users)


def time_training(name: str, inputs: ModelInputs, split: Split, device: torch.device, n_batches: int,
                  args: argparse.Namespace, result: dict) -> tuple[list[Row], SiBraR]:
    """Old and new step alternating batch by batch in one process, so both see the same load."""
    paths = {"old": Path_(name, OLD_TRAIN, inputs, split, device), "new": Path_(name, new_train(args), inputs, split, device)}
    resettable = reset_peak()
    times: dict[str, list[float]] = {"old": [], "new": []}
    for b in range(WARMUP + n_batches):
        for key, path in paths.items():
            t = path.step()
            if b >= WARMUP:
                times[key].append(t)
    peak, gpu = peak_mb(resettable), cuda_peak_mb(device)
    rows, out = [], {}
    flops_rate = {p: gemm_flops(device, torch.bfloat16 if paths[p].cfg.precision == "bf16" else torch.float32) for p in paths}
    for key, path in paths.items():
        per_batch = statistics.median(times[key])
        branch_rows, flops = path.work()
        rate = path.cfg.batch_size / per_batch
        frac = flops * rate / flops_rate[key]
        c = path.cfg
        desc = f"batch {c.batch_size}, {negatives_text(c)}, {c.objective}, dedup {c.dedup}, {c.precision}"
        out[key] = {"interactions_per_s": rate, "s_per_batch": per_batch, "branch_rows_per_positive": branch_rows,
                    "flops_per_positive": flops, "gemm_flops_per_s": flops_rate[key], "gemm_fraction": frac,
                    "train": desc, "s_per_epoch": per_batch * path.batches_per_epoch}
        rows += [Row("train", f"{name} {key}: interactions/s", f"{rate:,.0f}",
                     f"{desc}; median of {n_batches} steps ({per_batch:.3f} s/batch); ~{out[key]['s_per_epoch']:,.0f} s/epoch",
                     peak, gpu),
                 Row("train", f"{name} {key}: branch rows/positive", f"{branch_rows:.2f}", "rows through the shared branches", peak, gpu),
                 Row("train", f"{name} {key}: GFLOP/positive", f"{flops / 1e9:.4f}",
                     f"{frac:.1%} of this machine's {'bf16' if c.precision == 'bf16' else 'fp32'} GEMM rate "
                     f"({flops_rate[key] / 1e9:,.0f} GFLOP/s)", peak, gpu)]
    ratios = [o / n * paths["new"].cfg.batch_size / paths["old"].cfg.batch_size for o, n in zip(times["old"], times["new"])]
    out["speedup_median_same_turn"] = statistics.median(ratios)
    rows.append(Row("train", f"{name}: new / old interactions/s", f"{out['new']['interactions_per_s'] / out['old']['interactions_per_s']:.1f}x",
                    f"median same-turn ratio {statistics.median(ratios):.1f}x (min {min(ratios):.1f}, max {max(ratios):.1f})", peak, gpu))
    result.setdefault("train", {})[name] = out
    return rows, paths["new"].model


def time_evaluation(model: SiBraR, inputs: ModelInputs, split: Split, device: torch.device, result: dict) -> list[Row]:
    """Per-epoch validation (the trainer's call) against the score GEMM of all users x all items,
    alternating, medians of 5; then test-set users/s for both candidate protocols."""
    model.eval()
    evaluate(model, inputs, split, "valid")  # warm: the split's targets are built once and reused
    user_emb = model.user_embeddings(torch.arange(inputs.n_users, device=device)).float()
    item_emb = model.all_item_embeddings().float()
    evals, embeds, gemms = [], [], []
    for _ in range(5):
        synchronize(device)
        t0 = CLOCK()
        evaluate(model, inputs, split, "valid")
        synchronize(device)
        t1 = CLOCK()
        with torch.no_grad():  # the model's own share of it: embedding every item and the evaluated users
            model.all_item_embeddings()
            model.user_embeddings(torch.arange(inputs.n_users, device=device))
        synchronize(device)
        t2 = CLOCK()
        user_emb @ item_emb.T
        synchronize(device)
        evals.append(t1 - t0)
        embeds.append(t2 - t1)
        gemms.append(CLOCK() - t2)
    ev, emb, gemm = statistics.median(evals), statistics.median(embeds), statistics.median(gemms)
    result["eval"] = {"valid_s": ev, "embeddings_s": emb, "score_gemm_s": gemm, "ratio": ev / gemm,
                      "ratio_without_embeddings": (ev - emb) / gemm}
    rows = [Row("eval", "valid evaluation / score GEMM", f"{ev / gemm:.1f}x",
                f"evaluate(valid) {ev:.3f} s vs {inputs.n_users:,} x {inputs.n_items:,} x {item_emb.shape[1]} GEMM "
                f"{gemm:.3f} s; {(ev - emb) / gemm:.1f}x without the model's embedding pass ({emb:.3f} s); medians of 5, "
                "alternating", 0.0, "-")]
    for candidates in ("split", "all"):
        cfg = EvalConfig(candidates=candidates)  # type: ignore[arg-type]
        resettable = reset_peak()
        synchronize(device)
        t0 = time.perf_counter()
        out = evaluate(model, inputs, split, "test", cfg)
        synchronize(device)
        seconds = time.perf_counter() - t0
        n_cand = len(split.candidates("test", candidates))  # type: ignore[arg-type]
        rows.append(Row("eval", f"{split.manifest.get('dataset', 'data')} test, candidates={candidates}: users/s", f"{len(out.users) / seconds:,.0f}",
                        f"{len(out.users):,} users x {n_cand:,} items in {seconds:.2f} s (item embedding + top-20 "
                        f"+ {len(out.summary)} metric values)", peak_mb(resettable), cuda_peak_mb(device)))
    return rows


class _Done(Exception):
    """Raised by `Budget` to end a time-to-quality run."""


class Budget(Curve):
    """A Curve that ends training once validation reaches `target` or the clock passes `seconds`."""

    def __init__(self, monitor: str, clock: str, target: float, seconds: float) -> None:
        super().__init__(monitor, clock)
        self.target, self.seconds = target, seconds

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        super().on_epoch_end(epoch, logs)
        if epoch >= 0 and (logs[self.monitor] >= self.target or self.points[-1][1] >= self.seconds):
            raise _Done


def time_to_quality(name: str, inputs: ModelInputs, split: Split, device: torch.device, args: argparse.Namespace,
                    result: dict) -> list[Row]:
    """The old path trained for `--ttq-epochs` epochs (or its curve read from `--ttq-reference`, a JSON
    this benchmark wrote); then the new path with the same time budget, stopping as soon as it reaches
    99 % of the old path's best. CPU (or wall) seconds until validation nDCG@10 first reaches 95 % /
    99 % of the old best, both including the per-epoch validation."""
    lrs = {"old": args.ttq_lr or 1e-3, "new": args.ttq_lr or TrainConfig().lr}  # each path's default lr unless --ttq-lr
    cfgs = {key: dataclasses.replace(cfg, device=str(device), lr=lrs[key], weight_decay=TrainConfig().weight_decay)
            for key, cfg in (("old", OLD_TRAIN), ("new", new_train(args)))}
    curves: dict[str, list] = {}
    reused = args.ttq_reference and name in json.loads(Path(args.ttq_reference).read_text()).get("time_to_quality", {})
    if reused:
        curves["old"] = [tuple(p) for p in json.loads(Path(args.ttq_reference).read_text())["time_to_quality"][name]["old"]["points"]]
    old_epochs = args.ttq_epochs
    for key in ("old", "new") if not reused else ("new",):
        if key == "old":
            cfg, callback = dataclasses.replace(cfgs[key], epochs=old_epochs, patience=old_epochs), Curve("ndcg@10", args.clock)
        else:
            old_best = max(v for _, _, v in curves["old"])
            cfg = dataclasses.replace(cfgs[key], epochs=1000, patience=1000)
            callback = Budget("ndcg@10", args.clock, 0.99 * old_best, curves["old"][-1][1])
        torch.manual_seed(0)
        model = SiBraR(ARCHITECTURES[name], inputs)
        try:
            Trainer(model, inputs, split, cfg, EvalConfig(), callbacks=[callback], progress=False).fit()
        except _Done:
            pass
        curves[key] = callback.points
    old_best = max(v for _, _, v in curves["old"])
    rows, out = [], {"reference_from": args.ttq_reference if reused else None}
    for key, points in curves.items():
        t95, t99 = time_to(points, 0.95 * old_best), time_to(points, 0.99 * old_best)
        out[key] = {"points": points, "best": max(v for _, _, v in points), "time_to_95": t95, "time_to_99": t99,
                    "lr": lrs[key]}
        fmt = lambda t: "not reached" if t is None else f"{t:,.0f} s"  # noqa: E731
        source = f"; curve from {args.ttq_reference}" if key == "old" and reused else ""
        rows.append(Row("quality", f"{name} {key}: time to 95 % / 99 % of old best", f"{fmt(t95)} / {fmt(t99)}",
                        f"best valid nDCG@10 {out[key]['best']:.4f} in {len(points) - 1} epochs, {points[-1][1]:,.0f} s "
                        f"(old best {old_best:.4f}); lr {lrs[key]:g}; {args.clock} seconds incl. validation{source}", 0.0, "-"))
    result.setdefault("time_to_quality", {})[name] = out
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
    parser.add_argument("--new-batch", type=int, default=2048, help="batch size of the new path (default 2048)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="new path's precision (default fp32)")
    parser.add_argument("--new-set", action="append", default=[], metavar="FIELD=VALUE",
                        help="another train setting of the new path, e.g. negatives=shared (repeatable)")
    parser.add_argument("--ttq", default="", help="architectures to train for time-to-quality, e.g. small (slow: full epochs)")
    parser.add_argument("--ttq-epochs", type=int, default=3, help="epochs of the old path (the new one gets its time)")
    parser.add_argument("--ttq-reference", metavar="JSON",
                        help="read the old path's curves from an earlier --json of this benchmark instead of training it "
                             "(the paper architecture's take ~20 min per epoch on 2 CPU cores)")
    parser.add_argument("--ttq-lr", type=float, default=None,
                        help="lr of both paths in the time-to-quality runs (default: each path's default, 1e-3 for the "
                             "reference at batch 256, TrainConfig's for the new one)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="clock of training steps and time-to-quality: process CPU seconds (default; the machine is shared) or wall; "
                             "wall on cuda")
    parser.add_argument("--skip-catalogue", action="store_true")
    parser.add_argument("--json", help="write the measured figures to this JSON file")
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" and args.device == "cpu" else time.perf_counter
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
    result: dict = {"command": shlex.join([Path(sys.executable).name, *sys.argv]), "commit": commit(), "machine": machine(),
                    "device": str(device), "load_average_start": os.getloadavg()}
    models: dict[str, SiBraR] = {}
    for name in args.architectures.split(","):
        def run_training(name: str = name) -> list[Row]:
            out, models[name] = time_training(name, inputs, split, device, n_batches, args, result)
            return out
        stage(f"train {name}", run_training, rows, started)
    if models:
        first = next(iter(models))
        stage(f"evaluate ({first} model)", lambda: time_evaluation(models[first], inputs, split, device, result), rows, started)
    models.clear()
    for name in filter(None, args.ttq.split(",")):
        stage(f"time to quality {name}", lambda n=name: time_to_quality(n, inputs, split, device, args, result), rows, started)
    gc.collect()
    if not args.skip_catalogue:
        stage("1M catalogue", lambda: time_catalogue(args.catalogue_items, n_cat_users, 128, device, user_chunk), rows, started)

    print()
    print_table(rows)
    print(f"\ntotal time {time.perf_counter() - started:.0f} s; load average at end "
          f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min) on {os.cpu_count()} logical CPUs")
    if args.json:
        result["rows"] = [dataclasses.asdict(r) for r in rows]
        with atomic_write(Path(args.json)) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
