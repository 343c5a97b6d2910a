"""Malformed inputs, generated here, fed to the `sibrar` command: every one must end in a non-zero exit
and one line `sibrar: error: FILE[:LINE]: ...` naming the file or key, never a traceback.

Categories: encodings (UTF-16, a Latin-1 byte), unreadable files, numeric ranges and NaN, corrupted
checkpoints and FAISS indexes, truncated data files, run folders (finished, mixed, two writers).
Commands run in-process (`main(argv)`) except where a separate process is the point (concurrent
writers, a killed writer, failing before any fetch).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from _runs import small_run_config
from sibrar._io import atomic_write
from sibrar.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str], code: int = 2) -> str:
    """`sibrar ARGV` in-process: exit `code`, exactly one stderr line, no traceback; returns that line."""
    capsys.readouterr()
    assert main([str(a) for a in argv]) == code
    return one_error_line(capsys.readouterr().err)


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("sibrar: error: "), err
    return lines[0]


def sibrar_process(argv: list[str], cwd: Path, **env: str) -> subprocess.Popen[str]:
    """`sibrar ARGV` as a separate process (the package of this checkout, one torch thread)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen([sys.executable, "-m", "sibrar.cli", *map(str, argv)], cwd=cwd, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def trained(synthetic_shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished run folder on the synthetic dataset (tests copy it before changing anything)."""
    folder = tmp_path_factory.mktemp("malformed")
    cfg = small_run_config(folder, synthetic_shared_dir, epochs=2)
    assert main(["train", str(cfg), "--out", str(folder / "run"), "--no-progress"]) == 0
    return cfg, folder / "run"


@pytest.fixture
def dataset_copy(synthetic_shared_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic dataset, free to be broken."""
    return Path(shutil.copytree(synthetic_shared_dir, tmp_path / synthetic_shared_dir.name))


@pytest.fixture
def run_copy(trained: tuple[Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained[1], tmp_path / "run"))


# ------------------------------------------------------------------------------------------ encodings


def test_utf16_atomic_file_names_the_file_and_encoding(dataset_copy, capsys):
    inter = dataset_copy / f"{dataset_copy.name}.inter"
    inter.write_bytes(inter.read_text(encoding="utf-8").encode("utf-16"))
    line = run_cli(["data", "stats", dataset_copy], capsys)
    assert str(inter) in line and "UTF-16" in line and "expected UTF-8" in line


def test_latin1_byte_names_file_line_and_byte(dataset_copy, capsys):
    item = dataset_copy / f"{dataset_copy.name}.item"
    lines = item.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"studio", "studi\u00e9".encode("latin-1"), 1) if b"studio" in lines[3] else lines[3] + b"\xe9"
    item.write_bytes(b"\n".join(lines))
    line = run_cli(["data", "stats", dataset_copy], capsys)
    assert f"{item}:4:" in line and "0xe9" in line and "UTF-8" in line


def test_utf16_config_file(trained, tmp_path, capsys):
    cfg = tmp_path / "run16.yaml"
    cfg.write_bytes(trained[0].read_text(encoding="utf-8").encode("utf-16"))
    line = run_cli(["train", cfg, "--out", tmp_path / "out"], capsys)
    assert str(cfg) in line and "UTF-16" in line
    assert not (tmp_path / "out").exists()


def test_invalid_yaml_names_the_line(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  lr: 0.1\n  epochs: [1, 2\n", encoding="utf-8")
    line = run_cli(["train", cfg, "--out", tmp_path / "out"], capsys)
    assert f"{cfg}:" in line and "YAML" in line


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_new_item_file_in_another_encoding(run_copy, tmp_path, capsys, encoding):
    new_items = tmp_path / "new.item"
    new_items.write_bytes("item_id:token\tgenres:token_seq\nnew1\tCom\u00e9dy Drama\n".encode(encoding))
    line = run_cli(["recommend", run_copy, "--new-item", new_items], capsys)
    assert str(new_items) in line and ("UTF-16" in line if encoding == "utf-16" else "0xe9" in line)


def test_feature_manifest_in_latin1(dataset_copy, capsys):
    manifest = dataset_copy / "features" / "item_text.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"synthetic"', '"synth\u00e9tic"'.encode("latin-1")))
    line = run_cli(["data", "stats", dataset_copy], capsys)
    assert str(manifest) in line and "0xe9" in line


# ---------------------------------------------------------------------------------------- permissions


def test_a_folder_where_a_file_should_be(dataset_copy, capsys):
    user = dataset_copy / f"{dataset_copy.name}.user"
    user.unlink()
    user.mkdir()
    line = run_cli(["data", "stats", dataset_copy], capsys)
    assert str(user) in line and "is a folder" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod-000 file anyway (CI runs as root); "
                                               "test_a_folder_where_a_file_should_be covers unreadable files there")
def test_unreadable_file_is_permission_denied(dataset_copy, capsys):
    inter = dataset_copy / f"{dataset_copy.name}.inter"
    inter.chmod(0)
    try:
        line = run_cli(["data", "stats", dataset_copy], capsys)
    finally:
        inter.chmod(0o644)
    assert str(inter) in line and "permission denied" in line


# ------------------------------------------------------------------------------------- ranges and NaN


@pytest.mark.parametrize(("override", "key"), [
    ("train.weight_decay=-1", "train.weight_decay"),
    ("train.lr=.nan", "train.lr"),
    ("train.lr=nan", "train.lr"),
    ("model.dim=0", "model.dim"),
    ("model.item.temperature=-0.1", "model.item.temperature"),
    ("train.time_limit_s=-1", "train.time_limit_s"),
    ("eval.ks=[-5]", "eval.ks[0]"),
    ("data.k_core=-3", "data.k_core"),
    ("data.rating_threshold=.nan", "data.rating_threshold"),
    ("split.ratios=[.nan, 0.1, 0.1]", "split.ratios"),
    ("train.grad_clip=.inf", "train.grad_clip"),
])
def test_out_of_range_config_values_fail_before_any_work(trained, tmp_path, capsys, override, key):
    out = tmp_path / "out"
    line = run_cli(["train", trained[0], "--set", override, "--out", out], capsys)
    assert key in line and "expected" in line
    assert not out.exists()  # refused before the data was read or the run folder made


def test_eval_k_beyond_the_catalogue_fails_before_training(trained, tmp_path, capsys):
    out = tmp_path / "out"
    line = run_cli(["train", trained[0], "--set", "eval.ks=[100000]", "--set", "train.monitor=ndcg@100000",
                    "--out", out], capsys)
    assert "eval.ks" in line and "100000" in line and "number of items" in line
    assert not (out / "checkpoint_last.pt").exists()


@pytest.mark.parametrize(("argv", "flag"), [
    (["data", "split", "{ds}", "--k-core", "-3", "--out", "{tmp}/split"], "--k-core"),
    (["data", "split", "{ds}", "--rating-threshold", "nan", "--out", "{tmp}/split"], "--rating-threshold"),
    (["data", "stats", "{ds}", "--k-core", "-1"], "--k-core"),
])
def test_out_of_range_flags(synthetic_shared_dir, tmp_path, capsys, argv, flag):
    line = run_cli([a.format(ds=synthetic_shared_dir, tmp=tmp_path) for a in argv], capsys)
    assert flag in line and "expected" in line
    assert not (tmp_path / "split").exists()


def test_tune_with_zero_trials(tmp_path, capsys):
    line = run_cli(["tune", REPO / "experiments" / "tune-sibrar-ml100k-cold-item.yaml", "--trials", "0",
                    "--out", tmp_path / "tune"], capsys)
    assert "--trials" in line and ">= 1" in line
    assert not (tmp_path / "tune").exists()


@pytest.mark.parametrize(("column", "value"), [("rating", -2.0), ("timestamp", -5.0)])
def test_negative_ratings_and_timestamps(dataset_copy, capsys, column, value):
    inter = dataset_copy / f"{dataset_copy.name}.inter"
    frame = pl.read_csv(inter, separator="\t")
    frame = frame.with_columns(pl.when(pl.int_range(pl.len()) == 6).then(value).otherwise(pl.col(f"{column}:float"))
                               .alias(f"{column}:float"))
    frame.write_csv(inter, separator="\t")
    line = run_cli(["data", "stats", dataset_copy], capsys)
    assert f"{inter}:8:" in line and column in line and ">= 0" in line


@pytest.mark.parametrize(("override", "expected"), [
    ("base.model.name=nosuch", "base.model.name: unknown model 'nosuch'"),
    ("base.trian.lr=1", "unknown config key 'base.trian'; did you mean 'base.train'?"),
    ("base.train.lr=.nan", "base.train.lr is nan"),
])
def test_demo_checks_its_overrides_before_fetching(tmp_path, capsys, override, expected):
    """The demo must fail before it fetches (an empty --root stays empty), encodes or trains."""
    root = tmp_path / "root"
    root.mkdir()
    capsys.readouterr()
    assert main(["demo", "--root", str(root), "--out", str(tmp_path / "demo"), "--set", override]) == 2
    out, err = capsys.readouterr()
    assert expected in one_error_line(err)
    assert "[1/3]" not in out and list(root.iterdir()) == [] and not (tmp_path / "demo").exists()


def test_mistyped_view_modality_suggests_the_name(run_copy, capsys):
    line = run_cli(["evaluate", run_copy, "--view", "item:-genre@0.5"], capsys)
    assert "'genre'" in line and "did you mean 'genres'?" in line


def test_unknown_dataset_name_does_not_suggest_a_missing_source(tmp_path, capsys):
    line = run_cli(["data", "stats", "ml-10m", "--root", tmp_path], capsys)
    assert "sibrar data fetch ml-10m" not in line and "did you mean 'ml-1m'?" in line


# ---------------------------------------------------------------------- corrupted checkpoints and indexes


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_model_file(run_copy, capsys, damage):
    model = run_copy / "model.pt"
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x80\x04not a checkpoint" * 20)
    line = run_cli(["evaluate", run_copy], capsys)
    assert str(model) in line and "truncated or corrupt" in line
    assert "weights_only=False" not in line  # torch's advice to unpickle arbitrary code is not passed on


def test_corrupted_last_checkpoint_on_resume(run_copy, capsys):
    (run_copy / "metrics.json").unlink()  # an interrupted run
    last = run_copy / "checkpoint_last.pt"
    last.write_bytes(last.read_bytes()[:100])
    line = run_cli(["train", "--resume", run_copy, "--no-progress"], capsys)
    assert str(last) in line and "truncated or corrupt" in line


def test_corrupted_faiss_index(run_copy, capsys):
    assert main(["index", str(run_copy)]) == 0
    index = run_copy / "index" / "index.faiss"
    index.write_bytes(index.read_bytes()[:64])
    line = run_cli(["recommend", run_copy, "--user", "u001"], capsys)
    assert str(index) in line and "FAISS index" in line and "sibrar index" in line


def test_corrupted_index_manifest(run_copy, capsys):
    assert main(["index", str(run_copy)]) == 0
    manifest = run_copy / "index" / "index.json"
    manifest.write_bytes("{\"format_version\": 1, \"n\u00e9".encode("latin-1"))
    line = run_cli(["recommend", run_copy, "--user", "u001"], capsys)
    assert str(manifest) in line


# ------------------------------------------------------------------------------------ truncated data


def test_truncated_atomic_file_without_checksums_names_the_line(dataset_copy, capsys):
    inter = dataset_copy / f"{dataset_copy.name}.inter"
    data = inter.read_bytes()
    cut = data.index(b"\n", len(data) // 2) + 3  # in the middle of a row
    inter.write_bytes(data[:cut])
    line = run_cli(["data", "stats", dataset_copy], capsys)
    assert f"{inter}:" in line and "fields" in line


def test_truncated_fetched_file_fails_its_checksum(synthetic_shared_dir, tmp_path, capsys):
    """A fetched dataset (checksums.json written by `sibrar data fetch`) refuses a file cut at a row end."""
    from sibrar.data.integrity import record_checksums

    folder = Path(shutil.copytree(synthetic_shared_dir, tmp_path / synthetic_shared_dir.name))
    record_checksums(folder)
    assert main(["data", "stats", str(folder)]) == 0
    inter = folder / f"{folder.name}.inter"
    data = inter.read_bytes()
    inter.write_bytes(data[: data.index(b"\n", len(data) // 2) + 1])  # whole rows: parses, silently shorter
    line = run_cli(["data", "stats", folder], capsys)
    assert str(inter) in line and "truncated" in line and f"sibrar data fetch {folder.name} --force" in line


def test_edited_fetched_file_of_same_size_fails_its_hash(synthetic_shared_dir, tmp_path, capsys):
    from sibrar.data.integrity import record_checksums

    folder = Path(shutil.copytree(synthetic_shared_dir, tmp_path / synthetic_shared_dir.name))
    record_checksums(folder)
    user = folder / f"{folder.name}.user"
    user.write_bytes(user.read_bytes().replace(b"\tF", b"\tM", 1))
    line = run_cli(["data", "stats", folder], capsys)
    assert str(user) in line and "sha256" in line and "--force" in line


def test_truncated_feature_file(dataset_copy, capsys):
    parquet = dataset_copy / "features" / "item_text.parquet"
    parquet.write_bytes(parquet.read_bytes()[:200])
    line = run_cli(["data", "stats", dataset_copy], capsys)
    assert str(parquet) in line and "truncated" in line


# --------------------------------------------------------------------------------------- run folders


def test_existing_finished_run_is_refused_without_force(trained, run_copy, capsys):
    before = (run_copy / "model.pt").read_bytes()
    line = run_cli(["train", trained[0], "--out", run_copy, "--no-progress"], capsys)
    assert str(run_copy) in line and "finished run" in line and "--force" in line
    assert (run_copy / "model.pt").read_bytes() == before
    old_id = yaml.safe_load((run_copy / "manifest.json").read_text())["run_id"]
    assert main(["train", str(trained[0]), "--out", str(run_copy), "--no-progress", "--force",
                 "--set", "train.epochs=1"]) == 0
    from sibrar.train.folder import check_consistent

    assert check_consistent(run_copy) not in (None, old_id)  # every file of the new run, none of the old


def test_folder_mixing_two_runs_is_refused(trained, run_copy, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["train", str(trained[0]), "--out", str(other), "--no-progress", "--set", "train.epochs=1"]) == 0
    shutil.copy(other / "model.pt", run_copy / "model.pt")  # one run's model beside another's config/metrics
    for argv in (["evaluate", run_copy], ["recommend", run_copy, "--user", "u001"]):
        line = run_cli(argv, capsys)
        assert "different runs" in line and "model.pt" in line and "config.yaml" in line
    (run_copy / "metrics.json").unlink()
    line = run_cli(["train", "--resume", run_copy, "--no-progress"], capsys)
    assert "different runs" in line


def test_two_concurrent_writers_one_run_one_refusal(trained, tmp_path):
    out = tmp_path / "same"
    procs = [sibrar_process(["train", trained[0], "--out", out, "--no-progress"], tmp_path) for _ in range(2)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, _, err in results if code == 2)
    line = one_error_line(refused)
    assert str(out) in line and ("another sibrar process" in line or "finished run" in line)
    from sibrar.train.folder import check_consistent

    assert check_consistent(out) is not None  # every file from the one run that wrote
    assert main(["evaluate", str(out)]) == 0


def test_killed_writer_leaves_no_temp_file(trained, tmp_path):
    out = tmp_path / "killed"
    proc = sibrar_process(["train", trained[0], "--out", out, "--no-progress", "--set", "train.epochs=200",
                           "--set", "train.patience=200"], tmp_path)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint_last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
    from sibrar.train.folder import check_consistent

    check_consistent(out)  # what was written belongs to one run, and --resume can continue it


def test_interrupted_atomic_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(KeyboardInterrupt), atomic_write(target) as tmp:
        tmp.write_text("half", encoding="utf-8")
        raise KeyboardInterrupt
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_stale_temp_files_of_a_dead_writer_are_removed_under_the_lock(trained, run_copy):
    stale = run_copy / ".model.pt.abc123.tmp"
    stale.write_bytes(np.zeros(10).tobytes())
    assert main(["train", str(trained[0]), "--out", str(run_copy), "--no-progress", "--force",
                 "--set", "train.epochs=1"]) == 0
    assert not stale.exists()
