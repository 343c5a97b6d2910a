"""A run: config -> data -> split -> model -> training -> test evaluation, all in one folder.

Run folder: config.yaml (resolved), manifest.json (model name, versions, dataset/split hashes,
git commit), split.json, history.csv, metrics.json, per_user.parquet, model.pt (state dict only,
loadable with weights_only=True), checkpoint_{last,best}.pt.

Started by torchrun with several processes, a run joins the process group for its duration
(`sibrar.train.distributed`): every rank loads the data (rank 0 first) and trains its shard;
rank 0 alone writes the run folder and evaluates, and every rank returns rank 0's results.
"""

from __future__ import annotations

import platform
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import yaml

from sibrar._io import atomic_write, load_torch, read_json, read_text, write_json_atomic, write_text_atomic
from sibrar.config import RunConfig, dump_yaml, load_yaml, parse_run_config
from sibrar.data.dataset import Dataset, load_dataset
from sibrar.data.inputs import ModelInputs, build_inputs
from sibrar.data.splits import Split, make_split
from sibrar.errors import ConfigError, FileReadError, TrainingError
from sibrar.eval.evaluator import EvalResult, evaluate
from sibrar.models.base import FULL_VIEW, Model, create_model
from sibrar.train import distributed
from sibrar.train.distributed import run_on_main
from sibrar.train.folder import (
    PARQUET_KEY,
    VIEWS_PER_USER,
    check_consistent,
    claim,
    config_text,
    folder_lock,
    strip_config_header,
)
from sibrar.train.trainer import LAST, Callback, Trainer, TrainResult, save_atomic


@dataclass(frozen=True, eq=False)
class Prepared:
    config: RunConfig
    dataset: Dataset
    split: Split
    inputs: ModelInputs


@dataclass(frozen=True, eq=False)
class RunResult:
    run_dir: Path | None
    model: Model
    prepared: Prepared
    train: TrainResult
    valid: EvalResult
    test: EvalResult | None  # None for tuning trials (train_run(test=False))


def prepare(config: RunConfig, cache: dict[Any, Any] | None = None) -> Prepared:
    """Load, preprocess and split the data of a config (cached by data+split config when given)."""
    key = dump_yaml({"data": config.data, "split": config.split})
    if cache is not None and key in cache:
        dataset, split, inputs = cache[key]
    else:
        dataset = load_dataset(config.data)
        split = make_split(dataset, config.split)
        inputs = build_inputs(dataset, split)
        if cache is not None:
            cache[key] = (dataset, split, inputs)
    return Prepared(config, dataset, split, inputs)


def train_run(config: RunConfig, run_dir: str | Path | None = None, *, callbacks: Sequence[Callback] = (),
              resume: bool = False, progress: bool = True, prepared: Prepared | None = None,
              test: bool = True, overwrite: bool = True) -> RunResult:
    """Train one model and evaluate it on validation (best epoch) and, unless `test=False`, on test.

    Tuning trials pass `test=False` with no run folder: a search never looks at test data. The run
    folder is locked while it is written (a second writer is refused); without `resume`, a folder
    that already holds a run is cleared first, or refused when `overwrite=False` (`sibrar train`
    without --force).
    """
    if not test and run_dir is not None:
        raise ConfigError("a run folder holds test results: train_run(test=False) needs run_dir=None")
    with distributed.process_group(config.train.device), ExitStack() as stack, torch_threads(config.train.threads):
        run_path = distributed.broadcast_object(Path(run_dir) if run_dir is not None else None)  # rank 0's folder
        run_id = None
        if run_path is not None:  # locked before the data is read: a second writer is refused at once

            def lock_and_claim() -> str:
                stack.enter_context(folder_lock(run_path))
                return claim(run_path, resume=resume, overwrite=overwrite)

            run_id = run_on_main(lock_and_claim)
        return _train_run(config, run_path, run_id, callbacks=callbacks, resume=resume, progress=progress,
                          prepared=prepared, test=test)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` CPU intra-op threads (None: as set). Results depend on the thread count."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_run(config: RunConfig, run_path: Path | None, run_id: str | None, *, callbacks: Sequence[Callback],
               resume: bool, progress: bool, prepared: Prepared | None, test: bool) -> RunResult:
    with distributed.main_first():  # rank 0 fetches / caches the data before the other ranks read it
        prep = prepared or prepare(config)
    _check_same_split(prep)
    _check_ks(config, prep)
    if run_path is not None:
        run_on_main(lambda: _write_header(run_path, config, prep, resume, run_id))
    torch.manual_seed(config.train.seed)
    model = create_model(config.model, prep.inputs)
    trainer = Trainer(model, prep.inputs, prep.split, config.train, config.eval, run_dir=run_path,
                      callbacks=callbacks, progress=progress)
    trainer.run_id = run_id
    result = trainer.fit(resume=resume)

    def evaluate_and_write() -> tuple[EvalResult, EvalResult | None]:
        valid = evaluate(model, prep.inputs, prep.split, "valid", config.eval)
        tested = evaluate(model, prep.inputs, prep.split, "test", config.eval) if test else None
        if run_path is not None and tested is not None:
            _write_results(run_path, model, result, valid, tested, run_id)
        return valid, tested

    valid, tested = run_on_main(evaluate_and_write)
    return RunResult(run_path, model, prep, result, valid, tested)


def load_finished_run(config: RunConfig, run_dir: str | Path, prepared: Prepared) -> RunResult | None:
    """The RunResult of a finished run folder trained with exactly ``config`` on this split, else None.

    Lets an experiment pick up where it stopped (``sibrar run --resume``) without retraining: the
    model, history, validation/test metrics and per-user test values are read back from the folder.
    """
    run_dir = Path(run_dir)
    needed = ("config.yaml", "manifest.json", "metrics.json", "per_user.parquet", "history.csv", "model.pt")
    if not all((run_dir / name).is_file() for name in needed):
        return None
    check_consistent(run_dir)
    manifest = read_json(run_dir / "manifest.json", "run manifest")
    if strip_config_header(read_text(run_dir / "config.yaml", "run config")) != dump_yaml(config) or \
            manifest.get("split_hash") != prepared.split.hash:
        return None
    model = _restore_model(run_dir, config, prepared.inputs, config.train.device)
    metrics = read_json(run_dir / "metrics.json", "run metrics")
    per_user = pl.read_parquet(run_dir / "per_user.parquet")
    history = pl.read_csv(run_dir / "history.csv").drop("run_id", strict=False).to_dicts()
    train = TrainResult(int(metrics["best_epoch"]), float(metrics["valid"].get(config.train.monitor, np.nan)), history,
                        bool(metrics.get("stopped_early", False)))
    valid = EvalResult("valid", FULL_VIEW.name, metrics["valid"], {}, np.empty(0, dtype=np.int64))
    test = EvalResult("test", FULL_VIEW.name, metrics["test"],
                      {c: per_user[c].to_numpy() for c in per_user.columns if c != "user_idx"},
                      per_user["user_idx"].to_numpy(), metrics.get("test_groups", {}))
    return RunResult(run_dir, model, prepared, train, valid, test)


def can_continue(config: RunConfig, run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a last checkpoint of ``config`` (up to RESUMABLE_CHANGES) to continue from."""
    run_dir = Path(run_dir)
    if not (run_dir / LAST).is_file() or not (run_dir / "config.yaml").is_file():
        return False
    return _saved_config_difference(run_dir, config) is None


def _saved_config_difference(run_dir: Path, config: RunConfig) -> str | None:
    """The first setting in which ``config`` differs from run_dir/config.yaml, ignoring RESUMABLE_CHANGES."""
    return _config_difference(load_yaml(run_dir / "config.yaml"), yaml.safe_load(dump_yaml(config)))


def _check_same_split(prep: Prepared) -> None:
    """Every rank must train on rank 0's split (same data files and config), or the shards would not fit."""
    main_hash = distributed.broadcast_object(prep.split.hash)
    if main_hash != prep.split.hash:
        raise TrainingError(f"rank {distributed.rank()} built split {prep.split.hash[:12]}…, rank 0 built "
                            f"{main_hash[:12]}…; every process must read the same data files and config")


def _check_ks(config: RunConfig, prep: Prepared) -> None:
    """eval.ks must not exceed the number of items (known once the data is read, before training)."""
    too_big = [k for k in config.eval.ks if k > prep.inputs.n_items]
    if too_big:
        raise ConfigError(f"eval.ks has {too_big[0]}; expected values from 1 to {prep.inputs.n_items:,}, the number "
                          f"of items of {prep.dataset.name}")


def _write_header(run_dir: Path, config: RunConfig, prep: Prepared, resume: bool, run_id: str | None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / "config.yaml"
    differs = _saved_config_difference(run_dir, config) if resume and saved.is_file() else None
    if differs:
        raise ConfigError(f"{saved}: the run was started with a different config ({differs} differs); resume with "
                          f"the same one (only {', '.join(f'train.{k}' for k in RESUMABLE_CHANGES)} may change)")
    write_text_atomic(saved, config_text(run_id, dump_yaml(config)) if run_id else dump_yaml(config))
    write_json_atomic(run_dir / "split.json", {**prep.split.manifest, "run_id": run_id})
    write_json_atomic(run_dir / "manifest.json", {
        "run_id": run_id,
        "model": config.model.name,
        "dataset": prep.dataset.name,
        "synthetic": prep.dataset.synthetic,
        "protocol": prep.split.protocol,
        "dataset_hash": prep.split.manifest["input_hash"],
        "split_hash": prep.split.hash,
        "git_commit": git_commit(),
        "processes": distributed.world_size(),
        "threads": torch.get_num_threads(),  # CPU intra-op threads: the numbers depend on them (train.threads)  # data-parallel ranks: their random streams differ from 1 process's
        "versions": {"sibrar": _version(), "torch": torch.__version__, "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })


RESUMABLE_CHANGES = ("epochs", "device")  # a resumed run may train longer, or elsewhere; nothing else


def _config_difference(old: Any, new: Any, where: str = "") -> str | None:
    """The dotted path of the first difference between two config dicts, ignoring RESUMABLE_CHANGES."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in dict.fromkeys([*old, *new]):
            path = f"{where}.{key}" if where else str(key)
            if where == "train" and key in RESUMABLE_CHANGES:
                continue
            found = _config_difference(old.get(key), new.get(key), path)
            if found:
                return found
        return None
    return None if old == new else (where or "config")


def _write_results(run_dir: Path, model: Model, result: TrainResult, valid: EvalResult, test: EvalResult,
                   run_id: str | None) -> None:
    """The results of a finished run; metrics.json, the mark of a finished run, last."""
    save_atomic({"model": model.state_dict(), "run_id": run_id}, run_dir / "model.pt")
    history = pl.DataFrame(result.history).with_columns(pl.lit(run_id, dtype=pl.Utf8).alias("run_id"))
    write_text_atomic(run_dir / "history.csv", history.write_csv())
    per_user = pl.DataFrame({"user_idx": test.users, **{k: v for k, v in test.per_user.items()}})
    with atomic_write(run_dir / "per_user.parquet") as tmp:
        per_user.write_parquet(tmp, metadata={PARQUET_KEY: run_id or ""})
    write_json_atomic(run_dir / "metrics.json", {
        "run_id": run_id,
        "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
        "valid": valid.summary, "test": test.summary, "test_groups": test.groups,
        "n_test_users": len(test.users),
    })


@dataclass(frozen=True, eq=False)
class LoadedRun:
    run_dir: Path
    config: RunConfig
    model: Model
    prepared: Prepared
    metrics: dict[str, Any]
    run_id: str | None = None


def write_views_per_user(run_dir: str | Path, results: Mapping[str, EvalResult]) -> None:
    """Per-user test values under each missing-modality view (long format, a `view` column) next to per_user.parquet.

    `sibrar seeds --pair` reads them back to test whether one model loses less than another under a view.
    """
    frames = [pl.DataFrame({"view": view, "user_idx": r.users, **r.per_user}) for view, r in results.items()]
    if frames:
        with atomic_write(Path(run_dir) / VIEWS_PER_USER) as tmp:
            pl.concat(frames).write_parquet(tmp)


def load_run(run_dir: str | Path, device: str = "cpu") -> LoadedRun:
    """Rebuild a trained model from its run folder (data re-read and checked against the hashes)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "model.pt").is_file():
        raise ConfigError(f"{run_dir}: not a finished run folder (needs config.yaml and model.pt)")
    run_id = check_consistent(run_dir)  # before the data is read: files of two runs never load together
    config = parse_run_config(load_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
    prep = prepare(config)
    manifest = read_json(run_dir / "manifest.json", "run manifest")
    if manifest.get("split_hash") != prep.split.hash:
        raise TrainingError(f"{run_dir}: the data now gives a different split (hash {prep.split.hash[:12]}… vs "
                            f"{str(manifest.get('split_hash'))[:12]}…); the dataset changed since training")
    model = _restore_model(run_dir, config, prep.inputs, device)
    metrics = read_json(run_dir / "metrics.json", "run metrics") if (run_dir / "metrics.json").is_file() else {}
    return LoadedRun(run_dir, config, model, prep, metrics, run_id)


def _restore_model(run_dir: Path, config: RunConfig, inputs: ModelInputs, device: str) -> Model:
    """The trained model of a run folder (model.pt), on ``device`` in eval mode."""
    model = create_model(config.model, inputs)
    state = load_torch(run_dir / "model.pt", "model file")
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and "run_id" in state:
        state = state["model"]  # {"model": state dict, "run_id": ...}; older runs saved the bare state dict
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise FileReadError(f"{run_dir / 'model.pt'}: does not hold the weights of this run's {config.model.name} "
                            f"model ({str(exc).splitlines()[0][:160]}); expected the model.pt this run wrote") from exc
    return model.to(torch.device(device)).eval()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5,
                             check=False)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sibrar")
    except PackageNotFoundError:
        return "unknown"


def summary_line(result: RunResult, keys: Sequence[str] = ("ndcg@10", "recall@10", "precision@10")) -> str:
    return "  ".join(f"{k} {result.test.summary.get(k, np.nan):.4f}" for k in keys)
