"""The training loop: AdamW, seeded per-epoch randomness, validation early stopping, atomic checkpoints.

Every epoch draws its randomness from generators seeded with (seed, epoch), so a run resumed from
its last checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sibrar._io import atomic_write
from sibrar._malloc import tune_malloc
from sibrar.config import EvalConfig, TrainConfig
from sibrar.data.inputs import ModelInputs
from sibrar.data.splits import Split
from sibrar.errors import ConfigError, TrainingError
from sibrar.eval.evaluator import evaluate
from sibrar.models.base import Batch, Model
from sibrar.train.sampler import interaction_keys, sample_negatives

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
    """Owns the optimizer, the negative sampler and the epoch loop; the model owns its loss."""

    def __init__(self, model: Model, inputs: ModelInputs, split: Split, config: TrainConfig = TrainConfig(),
                 eval_config: EvalConfig = EvalConfig(), *, run_dir: str | Path | None = None,
                 callbacks: Sequence[Callback] = (), progress: bool = True) -> None:
        tune_malloc()
        self.model, self.inputs, self.split = model, inputs, split
        self.config, self.eval_config = config, eval_config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.callbacks = list(callbacks)
        self.progress = progress
        self.device = torch.device(config.device)
        self.model.to(self.device)
        train = split.train
        self.users = torch.as_tensor(train["user_idx"].to_numpy(writable=True), device=self.device)
        self.pos_items = torch.as_tensor(train["item_idx"].to_numpy(writable=True), device=self.device)
        self.keys = interaction_keys(self.users, self.pos_items, inputs.n_items)
        self.candidates = inputs.train_items.to(self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay) if params else None

    def _validate(self) -> dict[str, float]:
        return {f"valid/{k}": v for k, v in evaluate(self.model, self.inputs, self.split, "valid", self.eval_config).summary.items()}

    def _epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.config
        seed = cfg.seed * 1_000_003 + epoch
        torch.manual_seed(seed)  # dropout
        gen = torch.Generator(device=self.device).manual_seed(seed)
        self.model.generator = gen  # type: ignore[assignment]
        self.model.train()
        order = torch.randperm(len(self.users), generator=gen, device=self.device)
        users, pos = self.users[order], self.pos_items[order]
        negatives = sample_negatives(users, cfg.n_negatives, candidates=self.candidates, positive_keys=self.keys,
                                     n_items=self.inputs.n_items, generator=gen)
        sums: dict[str, float] = {}
        n_batches = math.ceil(len(users) / cfg.batch_size)
        bar = tqdm(range(n_batches), desc=f"epoch {epoch}", leave=False, disable=not self.progress, unit="batch")
        for b in bar:
            sl = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
            batch = Batch(users[sl], torch.cat([pos[sl, None], negatives[sl]], dim=1))
            parts = self.model.loss(batch)
            loss = parts["loss"]
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {loss.item()} at epoch {epoch}, batch {b}; lower train.lr or the contrastive weight")
            assert self.optimizer is not None
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if b % 20 == 0:
                bar.set_postfix({k: f"{v / (b + 1):.4f}" for k, v in sums.items()})
        return {f"train/{k}": v / max(1, n_batches) for k, v in sums.items()}

    def fit(self, resume: bool = False) -> TrainResult:
        cfg, monitor = self.config, f"valid/{self.config.monitor}"
        for cb in self.callbacks:
            cb.on_train_begin(self)
        state = self._load_last() if resume else None
        if state is not None:
            self.model.load_state_dict(state["model"])
            if self.optimizer is not None and state.get("optimizer"):
                self.optimizer.load_state_dict(state["optimizer"])
            history, start = state["history"], int(state["epoch"]) + 1
            best_value, best_epoch, bad = float(state["best_value"]), int(state["best_epoch"]), int(state["bad_epochs"])
        else:
            logs = {"epoch": -1, **self._validate()}  # the untrained model is "epoch -1" (spec §4.4)
            self._check_monitor(logs, monitor)
            history, start, bad = [logs], 0, 0
            best_value, best_epoch = logs[monitor], -1
            self._save_best(-1, best_value)
            for cb in self.callbacks:
                cb.on_epoch_end(-1, logs)
        stopped = False
        started = time.perf_counter()
        epochs = cfg.epochs if self.model.trainable else 0
        bar = tqdm(range(start, epochs), desc="training", disable=not self.progress, unit="epoch", initial=start, total=epochs)
        for epoch in bar:
            t0 = time.perf_counter()
            logs = {"epoch": epoch, **self._epoch(epoch)}
            logs.update(self._validate())
            logs["seconds"] = time.perf_counter() - t0
            history.append(logs)
            value = logs[monitor]
            if value > best_value:
                best_value, best_epoch, bad = value, epoch, 0
                self._save_best(epoch, best_value)
            else:
                bad += 1
            self._save_last(epoch, history, best_value, best_epoch, bad)
            bar.set_postfix({"loss": f"{logs.get('train/loss', 0):.4f}", cfg.monitor: f"{value:.4f}", "best": f"{best_value:.4f}"})
            for cb in self.callbacks:
                cb.on_epoch_end(epoch, logs)
            if bad >= cfg.patience and epoch + 1 >= cfg.min_epochs:
                stopped = True
                break
            if cfg.time_limit_s is not None and time.perf_counter() - started > cfg.time_limit_s:
                logs["time_limit_reached"] = 1.0
                break
        self._restore_best()
        result = TrainResult(best_epoch, best_value, history, stopped)
        for cb in self.callbacks:
            cb.on_train_end(result)
        return result

    @staticmethod
    def _check_monitor(logs: dict[str, float], monitor: str) -> None:
        if monitor not in logs:
            valid = sorted(k.removeprefix("valid/") for k in logs if k.startswith("valid/"))
            raise ConfigError(f"train.monitor {monitor.removeprefix('valid/')!r} is not computed; choose one of {', '.join(valid)}")

    # ------------------------------------------------------------------------------ checkpoints

    def _save_best(self, epoch: int, value: float) -> None:
        self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.run_dir is not None:
            save_atomic({"model": self._best_state, "epoch": epoch, "value": value}, self.run_dir / BEST)

    def _save_last(self, epoch: int, history: list[dict[str, float]], best_value: float, best_epoch: int, bad: int) -> None:
        if self.run_dir is None:
            return
        save_atomic({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict() if self.optimizer else {},
                     "epoch": epoch, "history": history, "best_value": best_value, "best_epoch": best_epoch,
                     "bad_epochs": bad}, self.run_dir / LAST)

    def _load_last(self) -> dict[str, Any] | None:
        if self.run_dir is None or not (self.run_dir / LAST).is_file():
            raise TrainingError(f"cannot resume: no {LAST} in {self.run_dir}")
        state = torch.load(self.run_dir / LAST, map_location=self.device, weights_only=True)
        if (self.run_dir / BEST).is_file():
            self._best_state = torch.load(self.run_dir / BEST, map_location=self.device, weights_only=True)["model"]
        return state

    def _restore_best(self) -> None:
        best = getattr(self, "_best_state", None)
        if best is not None:
            self.model.load_state_dict(best)
