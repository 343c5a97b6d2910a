"""The training loop: AdamW, seeded per-epoch randomness, validation early stopping, atomic checkpoints.

Every epoch draws its randomness from generators seeded with (seed, epoch), so a run resumed from
its last checkpoint continues exactly as the uninterrupted run would have.

Under torchrun (several processes, see `sibrar.train.distributed`) the same loop is data parallel:
every rank draws the same (seed, epoch) permutation and trains on its own shard of it, with its
own (seed, epoch, rank) stream for negatives, modality sampling and dropout; gradients are
averaged over ranks after each backward and BatchNorm layers become SyncBatchNorm. `batch_size`
stays the global batch: each rank takes ceil(batch_size / world) rows per step, so one config means
the same optimisation (batch, steps per epoch, lr) whatever the number of processes. Only rank 0
validates, writes checkpoints and runs callbacks; its logs and decisions (best epoch, early stop,
time limit) are broadcast, so every rank walks the same epochs and ends with the same weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sibrar._io import atomic_write, load_torch
from sibrar._malloc import tune_malloc
from sibrar.config import EvalConfig, TrainConfig
from sibrar.data.inputs import ModelInputs
from sibrar.data.splits import Split
from sibrar.errors import ConfigError, TrainingError
from sibrar.eval.evaluator import evaluate
from sibrar.models.base import Batch, Model
from sibrar.train import distributed
from sibrar.train.distributed import run_on_main
from sibrar.train.sampler import (interaction_keys, sample_negatives, sample_shared_negatives, shared_negative_mask,
                                  training_csr)

LAST, BEST = "checkpoint_last.pt", "checkpoint_best.pt"


class Callback:
    """Hooks for outside code (tracking, tuning). Raising from `on_epoch_end` stops training."""

    def on_train_begin(self, trainer: Trainer) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...
    def on_train_end(self, result: TrainResult) -> None: ...


@dataclass
class TrainResult:
    best_epoch: int
    best_value: float
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


def save_atomic(payload: Any, path: Path) -> None:
    """torch.save through a temp file + rename: a crash never leaves a truncated checkpoint."""
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)


class Trainer:
    """Owns the optimizer, the negative sampler and the epoch loop; the model owns its loss.

    Multi-process runs synchronise gradients by hand rather than through DistributedDataParallel:
    models train through `Model.loss`, not `forward` (DDP only hooks `forward`), and a SiBraR step's
    graph differs between ranks (a modality with no rows in a local batch, eval-only projections),
    which would need DDP's `find_unused_parameters` and let its bucketed all-reduces interleave
    differently on each rank with SyncBatchNorm's own backward all-reduces. Averaging all gradients in
    one collective after `backward` (`distributed.average_gradients`) gives every rank the same
    gradient DDP would, with every collective in the same order on every rank; what it gives up is
    overlapping communication with the backward pass, negligible at these model sizes. The process
    group itself is joined by the caller (`train_run` does, via `distributed.process_group`).
    """

    def __init__(self, model: Model, inputs: ModelInputs, split: Split, config: TrainConfig = TrainConfig(),
                 eval_config: EvalConfig = EvalConfig(), *, run_dir: str | Path | None = None,
                 callbacks: Sequence[Callback] = (), progress: bool = True) -> None:
        tune_malloc()
        self.model, self.inputs, self.split = model, inputs, split
        self.config, self.eval_config = config, eval_config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.callbacks = list(callbacks)
        self.progress = progress
        self.run_id: str | None = None  # written into every checkpoint (see sibrar.train.folder)
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.is_main = self.rank == 0
        self.device = distributed.local_device(config.device)
        params = [p for p in model.parameters() if p.requires_grad]
        if self.world > 1 and params:
            distributed.convert_sync_batchnorm(self.model)  # in place: a Model is never a BatchNorm itself
        self.model.to(self.device)
        if self.world > 1:
            distributed.broadcast_module(self.model)  # every rank starts from rank 0's weights
        train = split.train
        self.users = torch.as_tensor(train["user_idx"].to_numpy(writable=True), device=self.device)
        self.pos_items = torch.as_tensor(train["item_idx"].to_numpy(writable=True), device=self.device)
        self.keys = interaction_keys(self.users, self.pos_items, inputs.n_items)
        self.candidates = inputs.train_items.to(self.device)
        self.train_csr = training_csr(self.keys, inputs.n_users, inputs.n_items)
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay) if params else None

    @property
    def shares_negatives(self) -> bool:
        """Shared negatives where the config asks for them and the model's loss reads them."""
        return self.config.negatives == "shared" and self.model.supports_shared_negatives

    def epoch_negatives(self, users: Tensor, gen: torch.Generator) -> Tensor | None:
        """(len(users), n_negatives) per-row negatives for an epoch's rows (the reference step), or
        None where every batch draws its own (shared and pooled)."""
        if self.shares_negatives or self.config.negatives == "pooled":
            return None
        return sample_negatives(users, self.config.n_negatives, candidates=self.candidates, positive_keys=self.keys,
                                n_items=self.inputs.n_items, generator=gen)

    def _batch(self, users: Tensor, pos: Tensor, negatives: Tensor | None, gen: torch.Generator) -> Batch:
        cfg = self.config
        if negatives is None and cfg.negatives == "pooled":  # each row's own negatives, from one pool per batch
            pool = sample_shared_negatives(cfg.n_shared_negatives, candidates=self.candidates, generator=gen)
            negatives = sample_negatives(users, cfg.n_negatives, candidates=pool, positive_keys=self.keys,
                                         n_items=self.inputs.n_items, generator=gen)
        if negatives is not None:
            return Batch(users, torch.cat([pos[:, None], negatives], dim=1), objective=cfg.objective, dedup=cfg.dedup,
                         contrastive_group=cfg.contrastive_group)
        shared = sample_shared_negatives(cfg.n_shared_negatives, candidates=self.candidates, generator=gen)
        mask = shared_negative_mask(users, shared, *self.train_csr, n_items=self.inputs.n_items)
        return Batch(users, pos[:, None], shared=shared, shared_mask=mask, objective=cfg.objective, dedup=cfg.dedup,
                     contrastive_group=cfg.contrastive_group)

    def _validate(self) -> dict[str, float]:
        """Validation metrics; called through `run_on_main`, so only rank 0 evaluates."""
        return {f"valid/{k}": v for k, v in evaluate(self.model, self.inputs, self.split, "valid", self.eval_config).summary.items()}

    def _epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.config
        seed = cfg.seed * 1_000_003 + epoch
        torch.manual_seed(seed)  # dropout
        gen = torch.Generator(device=self.device).manual_seed(seed)
        self.model.generator = gen  # type: ignore[assignment]
        self.model.train()
        order = torch.randperm(len(self.users), generator=gen, device=self.device)
        batch_size = cfg.batch_size
        if self.world > 1:  # the shared permutation's shard, and this rank's own random stream
            order = distributed.shard(order, self.rank, self.world)
            batch_size = math.ceil(cfg.batch_size / self.world)
            rank_seed = (seed * 1_000_003 + self.rank + 1) % 2**63
            torch.manual_seed(rank_seed)
            gen = torch.Generator(device=self.device).manual_seed(rank_seed)
            self.model.generator = gen  # type: ignore[assignment]
        users, pos = self.users[order], self.pos_items[order]
        negatives = self.epoch_negatives(users, gen)
        sums: dict[str, Any] = {}  # running sums as tensors: no host-device sync per batch
        sync = self.device.type == "cpu"
        n_batches = math.ceil(len(users) / batch_size)  # the same on every rank (equal shards)
        bar = tqdm(range(n_batches), desc=f"epoch {epoch}", leave=False, disable=not (self.progress and self.is_main),
                   unit="batch")
        for b in bar:
            sl = slice(b * batch_size, (b + 1) * batch_size)
            batch = self._batch(users[sl], pos[sl], None if negatives is None else negatives[sl], gen)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                parts = self.model.loss(batch)
            loss = parts["loss"]
            if (sync or b % 20 == 0) and not torch.isfinite(loss):  # on a GPU only every 20th batch waits for it
                raise TrainingError(f"loss became {loss.item()} at epoch {epoch}, batch {b}; lower train.lr or the contrastive weight")
            assert self.optimizer is not None
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.world > 1:
                distributed.average_gradients(self.params)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            for k, v in parts.items():
                sums[k] = sums[k] + v.detach().double() if k in sums else v.detach().double()  # float64, as before
            if b % 20 == 0 and bar.disable is False:
                bar.set_postfix({k: f"{float(v) / (b + 1):.4f}" for k, v in sums.items()})
        if not all(math.isfinite(float(v)) for v in sums.values()):
            raise TrainingError(f"loss became non-finite in epoch {epoch}; lower train.lr or the contrastive weight")
        sums = {k: float(v) for k, v in sums.items()}
        if self.world > 1:  # mean over every rank's batches
            sums = {k: v / self.world for k, v in distributed.all_reduce_sums(sums, self.device).items()}
        return {f"train/{k}": v / max(1, n_batches) for k, v in sums.items()}

    def fit(self, resume: bool = False) -> TrainResult:
        """Train (or resume) to the end or early stop; the model keeps the best validation epoch."""
        with self.algorithms():
            return self._fit(resume)

    @contextmanager
    def algorithms(self) -> Iterator[None]:
        """torch's algorithm settings of training: deterministic on CPU when the config asks for it,
        without NaN-filling new tensors; restored afterwards."""
        deterministic = self.config.deterministic and self.device.type == "cpu"
        before = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
        torch.use_deterministic_algorithms(deterministic or before[0])
        torch.utils.deterministic.fill_uninitialized_memory = False  # NaN-filling every new tensor costs ~20 %
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(before[0])
            torch.utils.deterministic.fill_uninitialized_memory = before[1]

    def _fit(self, resume: bool) -> TrainResult:
        cfg, monitor = self.config, f"valid/{self.config.monitor}"
        run_on_main(lambda: [cb.on_train_begin(self) for cb in self.callbacks])
        state = run_on_main(self._load_last) if resume else None
        if state is not None:
            self.model.load_state_dict(state["model"])
            if self.optimizer is not None and state.get("optimizer"):
                self.optimizer.load_state_dict(state["optimizer"])
            if state.get("best_model") is not None:
                self._best_state = state["best_model"]
            history, start = state["history"], int(state["epoch"]) + 1
            best_value, best_epoch, bad = float(state["best_value"]), int(state["best_epoch"]), int(state["bad_epochs"])
        else:
            logs = run_on_main(lambda: {"epoch": -1, **self._validate()})  # the untrained model is "epoch -1"
            self._check_monitor(logs, monitor)
            history, start, bad = [logs], 0, 0
            best_value, best_epoch = logs[monitor], -1
            self._save_best(-1, best_value)
            run_on_main(lambda: [cb.on_epoch_end(-1, logs) for cb in self.callbacks])
        stopped = False
        started = time.perf_counter()
        epochs = cfg.epochs if self.model.trainable else 0
        bar = tqdm(range(start, epochs), desc="training", disable=not (self.progress and self.is_main), unit="epoch",
                   initial=start, total=epochs)
        for epoch in bar:
            t0 = time.perf_counter()
            logs = {"epoch": epoch, **self._epoch(epoch)}
            logs = run_on_main(lambda: {**logs, **self._validate(), "seconds": time.perf_counter() - t0})  # noqa: B023
            history.append(logs)
            value = logs[monitor]
            if value > best_value:
                best_value, best_epoch, bad = value, epoch, 0
                self._save_best(epoch, best_value)
            else:
                bad += 1
            self._save_last(epoch, history, best_value, best_epoch, bad)
            bar.set_postfix({"loss": f"{logs.get('train/loss', 0):.4f}", cfg.monitor: f"{value:.4f}", "best": f"{best_value:.4f}"})
            run_on_main(lambda: [cb.on_epoch_end(epoch, logs) for cb in self.callbacks])  # noqa: B023
            if bad >= cfg.patience and epoch + 1 >= cfg.min_epochs:
                stopped = True
                break
            if run_on_main(lambda: cfg.time_limit_s is not None and time.perf_counter() - started > cfg.time_limit_s):
                logs["time_limit_reached"] = 1.0
                break
        self._restore_best()
        result = TrainResult(best_epoch, best_value, history, stopped)
        run_on_main(lambda: [cb.on_train_end(result) for cb in self.callbacks])
        return result

    @staticmethod
    def _check_monitor(logs: dict[str, float], monitor: str) -> None:
        if monitor not in logs:
            valid = sorted(k.removeprefix("valid/") for k in logs if k.startswith("valid/"))
            raise ConfigError(f"train.monitor {monitor.removeprefix('valid/')!r} is not computed; choose one of {', '.join(valid)}")

    # ------------------------------------------------------------------------------ checkpoints

    def _save_best(self, epoch: int, value: float) -> None:
        self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}  # on every rank
        if self.run_dir is not None:
            path, best = self.run_dir / BEST, self._best_state
            run_on_main(lambda: save_atomic({"model": best, "epoch": epoch, "value": value, "run_id": self.run_id}, path))

    def _save_last(self, epoch: int, history: list[dict[str, float]], best_value: float, best_epoch: int, bad: int) -> None:
        if self.run_dir is None:
            return
        run_dir = self.run_dir
        run_on_main(lambda: save_atomic({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict() if self.optimizer else {},
            "epoch": epoch, "history": history, "best_value": best_value, "best_epoch": best_epoch,
            "bad_epochs": bad, "run_id": self.run_id}, run_dir / LAST))

    def _load_last(self) -> dict[str, Any]:
        """The last checkpoint, with the best epoch's weights under "best_model" (None if absent).

        Read on rank 0 only and broadcast, so the run folder need not be visible to the other ranks
        (mapped to the CPU then: pickled CUDA tensors would land on rank 0's GPU).
        """
        if self.run_dir is None or not (self.run_dir / LAST).is_file():
            raise TrainingError(f"cannot resume: no {LAST} in {self.run_dir}")
        where = self.device if self.world == 1 else torch.device("cpu")
        state = load_torch(self.run_dir / LAST, "checkpoint", where)
        best = self.run_dir / BEST
        state["best_model"] = load_torch(best, "checkpoint", where)["model"] if best.is_file() else None
        return state

    def _restore_best(self) -> None:
        best = getattr(self, "_best_state", None)
        if best is not None:
            self.model.load_state_dict(best)
