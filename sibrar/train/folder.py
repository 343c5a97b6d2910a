"""Run folders that cannot mix: one writer at a time, no silent overwrite, a run id in every file.

A process that writes a run folder holds an exclusive `flock` on the folder itself (no lock file is
left behind, and the kernel drops the lock when the process dies). Every file of the run carries
the run's id — a comment line at the top of config.yaml, a `run_id` key in the JSON files and the
torch files, a `run_id` column in history.csv, key-value metadata in per_user.parquet — so
`evaluate`, `recommend` and `--resume` can refuse a folder whose files come from different runs
(two writers before this lock existed, or files copied between folders).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from sibrar._io import load_torch, read_bytes, read_json, remove_stale_temp_files
from sibrar.errors import FileReadError, RunFolderError

CONFIG_HEADER = "# sibrar run: "
PARQUET_KEY = "sibrar_run_id"
# What one training run writes (the trainer's checkpoints included); `evaluate-*.json`, `index/` and
# an experiment's per-user values under missing-modality views are written later from the run and are
# removed with it when the folder is trained afresh.
RUN_FILES = ("config.yaml", "manifest.json", "split.json", "history.csv", "metrics.json", "per_user.parquet",
             "model.pt", "checkpoint_last.pt", "checkpoint_best.pt")
VIEWS_PER_USER = "per_user_views.parquet"
DERIVED = ("evaluate-*.json", "index", VIEWS_PER_USER)
FINISHED_MARK = "metrics.json"  # written last by a run that finished


def new_run_id() -> str:
    """A fresh, sortable, unique run id: creation time plus 32 random bits."""
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"


@contextmanager
def folder_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on `run_dir` (created if needed); refuse at once when another process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderError(f"{run_dir}: another sibrar process is writing this run folder; wait for it to "
                                 "finish or choose another --out") from None
        remove_stale_temp_files(run_dir)  # left by a writer that was killed mid-write
        yield
    finally:
        os.close(fd)  # releases the lock


def present_run_files(run_dir: Path) -> list[str]:
    return [name for name in RUN_FILES if (run_dir / name).is_file()]


def claim(run_dir: Path, *, resume: bool, overwrite: bool) -> str | None:
    """The run id to write `run_dir` with, after checking the folder may be written (call under `folder_lock`).

    Resuming keeps the folder's id (the folder must hold one run only). Otherwise a folder holding a
    run is refused unless `overwrite`, in which case the old run's files are deleted first, so nothing
    of it can mix with the new one.
    """
    run_id = claim_allowed(run_dir, resume=resume, overwrite=overwrite)
    if resume:
        return run_id
    clear(run_dir)
    return new_run_id()


def claim_allowed(run_dir: Path, *, resume: bool, overwrite: bool) -> str | None:
    """Raise RunFolderError unless `run_dir` may be written so; when resuming, the folder's run id."""
    if resume:  # a folder from before run ids keeps none, so its files stay consistent
        return check_consistent(run_dir) if present_run_files(run_dir) else new_run_id()
    present = present_run_files(run_dir)
    if present and not overwrite:
        if (run_dir / FINISHED_MARK).is_file():
            raise RunFolderError(f"{run_dir}: holds a finished run ({', '.join(present)}); expected a new or empty "
                                 "folder: pass --force to replace it, or --resume to continue it, or choose another --out")
        raise RunFolderError(f"{run_dir}: holds an interrupted run ({', '.join(present)}); continue it with "
                             f"`sibrar train --resume {run_dir}`, or pass --force to start it over")
    return None


def clear(run_dir: Path) -> None:
    """Delete the files of a previous run (and what was derived from it) from `run_dir`."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for pattern in DERIVED:
        for path in run_dir.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def check_consistent(run_dir: Path) -> str | None:
    """The run id shared by every file of `run_dir` (None for a folder written before run ids existed).

    Raises RunFolderError naming the files of each run when they come from different runs.
    """
    ids = {name: read_run_id(run_dir / name) for name in present_run_files(run_dir)}
    ids.update({p.name: read_run_id(p) for p in sorted(run_dir.glob("evaluate-*.json"))})
    distinct = set(ids.values())
    if len(distinct) <= 1:
        return next(iter(distinct), None)
    groups: dict[str | None, list[str]] = {}
    for name, run_id in ids.items():
        groups.setdefault(run_id, []).append(name)
    described = "; ".join(f"run {run_id or '(no id)'}: {', '.join(names)}" for run_id, names in groups.items())
    raise RunFolderError(f"{run_dir}: its files come from different runs ({described}); expected one run per "
                         "folder: train it again with --force (or into a new --out)")


def read_run_id(path: Path) -> str | None:
    """The run id recorded in one file of a run folder (None where the file records none)."""
    name = path.name
    if name == "config.yaml":
        first = read_bytes(path, "run config").split(b"\n", 1)[0].decode("utf-8", "replace")
        return first[len(CONFIG_HEADER):].strip() if first.startswith(CONFIG_HEADER) else None
    if name.endswith(".json"):
        payload = read_json(path, "run file")
        return payload.get("run_id") if isinstance(payload, dict) else None
    if name.endswith(".pt"):
        payload = load_torch(path, "checkpoint" if name.startswith("checkpoint") else "model file", mmap=True)
        return payload.get("run_id") if isinstance(payload, dict) and isinstance(payload.get("run_id"), str) else None
    if name.endswith(".csv"):
        try:
            frame = pl.read_csv(path, columns=["run_id"], n_rows=1, schema_overrides={"run_id": pl.Utf8})
        except pl.exceptions.ColumnNotFoundError:
            return None
        except pl.exceptions.PolarsError as exc:
            raise FileReadError(f"{path}: the run history is truncated or not CSV ({str(exc).splitlines()[0]}); "
                                "expected the file sibrar wrote") from exc
        return frame["run_id"][0] if frame.height else None
    if name.endswith(".parquet"):
        try:
            return pl.read_parquet_metadata(path).get(PARQUET_KEY) or None
        except pl.exceptions.PolarsError as exc:
            raise FileReadError(f"{path}: the per-user results are truncated or not Parquet "
                                f"({str(exc).splitlines()[0]}); expected the file sibrar wrote") from exc
    return None


def config_text(run_id: str, yaml_text: str) -> str:
    """config.yaml's content: the run id as a comment line (YAML ignores it), then the resolved config."""
    return f"{CONFIG_HEADER}{run_id}\n{yaml_text}"


def strip_config_header(text: str) -> str:
    return text.split("\n", 1)[1] if text.startswith(CONFIG_HEADER) else text
