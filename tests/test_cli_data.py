"""`sibrar data fetch|split|stats` and `sibrar datasets`, in process through `main(argv)`."""

from __future__ import annotations

import json

import pytest

from sibrar.cli import main
from sibrar.data.atomic import read_atomic


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _bad_input(capsys, *argv: str) -> str:
    """Bad input: exit code 2 and exactly one line `sibrar: error: ...` on stderr."""
    code, out, err = _run(capsys, *argv)
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sibrar: error: "), err
    return lines[0]


def test_stats_prints_the_ml100k_counts(capsys, ml100k_dir):
    code, out, _ = _run(capsys, "data", "stats", str(ml100k_dir))
    assert code == 0
    assert "ml-100k: 943 users / 1,682 items / 100,000 interactions" in out
    assert "kg_actor" in out and "genres" in out and "SYNTHETIC" not in out


def test_stats_json_by_fetch_name_from_the_data_root(capsys, ml100k_dir):
    code, out, _ = _run(capsys, "data", "stats", "ml-100k", "--root", str(ml100k_dir.parent), "--json")
    assert code == 0
    stats = json.loads(out)
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100_000)
    assert stats["item_modalities"]["kg_actor"]["kind"] == "tags"


def test_stats_with_rating_threshold_and_k_core(capsys, ml100k_dir):
    code, out, _ = _run(capsys, "data", "stats", str(ml100k_dir), "--rating-threshold", "4", "--k-core", "10", "--json")
    assert code == 0
    assert json.loads(out)["interactions"] == 52_764  # ML-100K, ratings >= 4, 10-core


def test_fetch_of_a_present_dataset_lists_its_files(capsys, ml100k_dir):
    code, out, _ = _run(capsys, "data", "fetch", "ml-100k", "--root", str(ml100k_dir.parent))
    assert code == 0
    assert str(ml100k_dir) in out and "ml-100k.inter" in out and "ml-100k.item" in out


def test_datasets_lists_the_sources(capsys):
    code, out, _ = _run(capsys, "datasets")
    assert code == 0
    assert any(line.startswith("ml-100k ") for line in out.splitlines())
    assert any(line.startswith("ml-1m ") for line in out.splitlines())


def test_split_then_stats_of_the_split_folder(capsys, synthetic_dir):
    code, out, _ = _run(capsys, "data", "split", str(synthetic_dir), "--protocol", "cold_both", "--seed", "3",
                        "--k-core", "0")
    assert code == 0
    folder = synthetic_dir / "splits" / "cold_both-seed3"
    assert str(folder) in out and "dropped" in out
    assert sorted(p.name for p in folder.iterdir()) == [
        "split.json", "synthetic-small.test.inter", "synthetic-small.train.inter", "synthetic-small.valid.inter"]
    manifest = json.loads((folder / "split.json").read_text())
    assert manifest["protocol"] == "cold_both" and manifest["seed"] == 3 and manifest["synthetic"] is True
    assert sum(manifest["counts"].values()) + manifest["dropped"] == manifest["preprocessing"]["after_k_core"]["interactions"]

    code, out, _ = _run(capsys, "data", "stats", str(folder))
    assert code == 0
    assert "(SYNTHETIC)" in out
    test_line = next(line for line in out.splitlines() if line.strip().startswith("test "))
    assert f"{manifest['counts']['test']:>10,} interactions" in test_line


def test_split_with_out_and_ratios(capsys, synthetic_dir, tmp_path):
    out_dir = tmp_path / "mysplit"
    code, _, _ = _run(capsys, "data", "split", str(synthetic_dir), "--protocol", "random", "--ratios", "0.6,0.2,0.2",
                      "--out", str(out_dir), "--k-core", "0")
    assert code == 0
    manifest = json.loads((out_dir / "split.json").read_text())
    assert manifest["ratios"] == [0.6, 0.2, 0.2] and manifest["protocol"] == "random"
    assert read_atomic(out_dir / "synthetic-small.valid.inter").frame.height == manifest["counts"]["valid"]


# ----------------------------------------------------------------------------------- bad input


def test_ratios_not_summing_to_one_exit_2(capsys, synthetic_dir):
    line = _bad_input(capsys, "data", "split", str(synthetic_dir), "--ratios", "0.5,0.1,0.1")
    assert "split.ratios" in line and "[0.5, 0.1, 0.1]" in line
    assert not (synthetic_dir / "splits").exists()


def test_unparsable_ratios_exit_2(capsys, synthetic_dir):
    line = _bad_input(capsys, "data", "split", str(synthetic_dir), "--ratios", "0.8;0.1;0.1")
    assert "--ratios '0.8;0.1;0.1'" in line


def test_unknown_protocol_exit_2(capsys, synthetic_dir):
    line = _bad_input(capsys, "data", "split", str(synthetic_dir), "--protocol", "cold_items")
    assert "--protocol" in line and "'cold_items'" in line and "'cold_item'" in line


def test_malformed_atomic_file_exit_2_names_file_and_line(capsys, synthetic_dir):
    path = synthetic_dir / "synthetic-small.inter"
    with path.open("a") as fh:
        fh.write("u000\ti001\tfive\t1\n")
    n_lines = len(path.read_text().splitlines())
    line = _bad_input(capsys, "data", "stats", str(synthetic_dir))
    assert f"{path}:{n_lines}:" in line and "'five'" in line


def test_empty_after_k_core_exit_2(capsys, synthetic_dir):
    line = _bad_input(capsys, "data", "split", str(synthetic_dir), "--k-core", "500")
    assert "no interactions left" in line and "k_core=500" in line


def test_unknown_dataset_exit_2(capsys, tmp_path):
    line = _bad_input(capsys, "data", "stats", "no-such-dataset", "--root", str(tmp_path))
    assert "'no-such-dataset'" in line and "sibrar data fetch" in line


def test_unknown_source_exit_2(capsys, tmp_path):
    line = _bad_input(capsys, "data", "fetch", "ml-10k", "--root", str(tmp_path))
    assert "unknown dataset source 'ml-10k'" in line


def test_verbose_shows_the_traceback(capsys, tmp_path):
    code, _, err = _run(capsys, "-v", "data", "stats", "no-such-dataset", "--root", str(tmp_path))
    assert code == 2 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("sibrar: error:")


def test_missing_subcommand_is_an_argparse_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["data"])
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err
