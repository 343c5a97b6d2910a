"""Run configs: strict YAML + --set parsing, errors that name the path and the fix, checks before training."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sibrar.config import (
    EvalConfig,
    RunConfig,
    SplitConfig,
    TrainConfig,
    apply_overrides,
    dump_yaml,
    from_dict,
    load_run_config,
    parse_run_config,
)
from sibrar.errors import ConfigError, UnknownNameError
from sibrar.eval.evaluator import evaluate, missing_view, subset_view
from sibrar.models.sibrar import SiBraRConfig
from sibrar.train.run import prepare, train_run


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------- strictness


@pytest.mark.parametrize(("data", "path", "suggestion"), [
    ({"train": {"lrr": 1e-3}}, "train.lrr", "train.lr"),
    ({"eval": {"k": [10]}}, "eval.k", "eval.ks"),
    ({"model": {"name": "sibrar", "item": {"branch": {"hiden": [64]}}}}, "model.item.branch.hiden", "model.item.branch.hidden"),
    ({"data": {"datset": "ml-1m"}}, "data.datset", "data.dataset"),
])
def test_unknown_key_names_the_dotted_path_and_the_nearest_key(data, path, suggestion):
    with pytest.raises(ConfigError) as info:
        parse_run_config(data)
    message = str(info.value)
    assert repr(path) in message and f"did you mean {suggestion!r}" in message


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    cfg = write_yaml(tmp_path / "run.yaml", {"train": {"epochz": 3}})
    with pytest.raises(ConfigError, match=r"run\.yaml.*'train\.epochz'.*did you mean 'train\.epochs'"):
        load_run_config(cfg)


@pytest.mark.parametrize(("data", "fragments"), [
    ({"train": {"epochs": "ten"}}, ["train.epochs", "integer", "'ten'"]),
    ({"train": {"epochs": True}}, ["train.epochs", "integer", "True"]),  # a bool is not an int here
    ({"train": {"lr": "fast"}}, ["train.lr", "number", "'fast'"]),
    ({"model": {"name": "sibrar", "item": {"modalities": "genres"}}}, ["model.item.modalities", "list", "'genres'"]),
    ({"model": {"name": "sibrar", "item": {"sampling": "pair"}}}, ["model.item.sampling", "'pair'", "'pairwise'"]),
    ({"split": {"ratios": [0.8, 0.2]}}, ["split.ratios", "3 values"]),
    ({"train": {"batch_size": 0}}, ["train.batch_size", "positive"]),
])
def test_wrong_type_names_field_expected_type_and_value(data, fragments):
    with pytest.raises(ConfigError) as info:
        parse_run_config(data)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_numbers_are_coerced_only_where_harmless():
    cfg = parse_run_config({"train": {"lr": 1, "weight_decay": "1e-3"}})  # YAML reads 1e-3 as a string
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.weight_decay == pytest.approx(1e-3)


def test_cross_field_rules_run_in_post_init():
    with pytest.raises(ConfigError, match="summing to 1"):
        from_dict(SplitConfig, {"ratios": [0.5, 0.1, 0.1]}, "split")


# ------------------------------------------------------------------------------- overrides


def test_set_overrides_win_over_the_file_and_keep_the_rest(tmp_path):
    cfg_file = write_yaml(tmp_path / "run.yaml", {
        "train": {"lr": 0.1, "epochs": 9, "batch_size": 128},
        "model": {"name": "sibrar", "dim": 32, "item": {"modalities": ["interactions", "genres"]}},
    })
    cfg = load_run_config(cfg_file, ["train.lr=1e-3", "train.epochs=3", "model.item.modalities=[interactions, text]",
                                     "model.item.branch.hidden=[8, 8]", "eval.ks=[5]", "train.monitor=ndcg@5"])
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.train.epochs == 3
    assert cfg.train.batch_size == 128 and cfg.model.dim == 32  # untouched file values
    assert cfg.model.item.modalities == ("interactions", "text")
    assert cfg.model.item.branch.hidden == (8, 8)
    assert cfg.eval.ks == (5,)


def test_set_on_defaults_and_on_a_model_field_without_a_name():
    cfg = load_run_config(None, ["model.dim=24", "train.seed=3"])
    assert isinstance(cfg.model, SiBraRConfig) and cfg.model.dim == 24 and cfg.train.seed == 3


def test_bad_overrides_are_config_errors():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ConfigError, match="did you mean 'train.patience'"):
        load_run_config(None, ["train.patiense=3"])


def test_overrides_do_not_mutate_the_input():
    data = {"train": {"lr": 0.1}}
    apply_overrides(data, ["train.lr=0.2"])
    assert data == {"train": {"lr": 0.1}}


def test_resolved_config_round_trips_through_yaml():
    cfg = load_run_config(None, ["model.item.modalities=[interactions, genres, text]", "model.item.projection_hidden={text: [32]}",
                                 "data.item_modalities={genres: {column: genres, kind: tags}}", "train.grad_clip=1.0"])
    again = parse_run_config(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg


# ---------------------------------------------------------------------------- registry names


def test_unknown_model_name_lists_the_valid_names():
    with pytest.raises(UnknownNameError) as info:
        parse_run_config({"model": {"name": "sibrr"}})
    message = str(info.value)
    assert "did you mean 'sibrar'" in message and "valid:" in message
    for name in ("sibrar", "pop", "mf"):
        assert name in message


def test_unknown_metric_in_monitor_fails_when_the_config_is_read():
    with pytest.raises(ConfigError) as info:
        parse_run_config({"train": {"monitor": "ndcg@5"}, "eval": {"ks": [10, 20]}})
    message = str(info.value)
    assert "train.monitor" in message and "ndcg@10" in message  # what would work
    with pytest.raises(ConfigError, match="train.monitor.*'ndgc@10'.*did you mean 'ndcg@10'"):
        parse_run_config({"train": {"monitor": "ndgc@10"}})
    with pytest.raises(UnknownNameError, match=r"eval\.metrics\[1\].*'recal'.*did you mean 'recall'"):
        parse_run_config({"eval": {"metrics": ["ndcg", "recal"]}})
    parse_run_config({"train": {"monitor": "recall@20"}, "eval": {"metrics": ["recall"]}})  # fine


# ------------------------------------------------------------------- modalities vs the dataset


def small(synthetic_dir: Path, *overrides: str) -> RunConfig:
    return load_run_config(None, [f"data.dataset={synthetic_dir}", "data.k_core=0", "model.dim=8", "model.item.common_dim=8",
                                  "model.item.branch.hidden=[8]", "train.epochs=1", "eval.ks=[10]", *overrides])


def test_model_modality_missing_from_the_data_fails_before_training(synthetic_shared_dir, tmp_path):
    cfg = small(synthetic_shared_dir, "model.item.modalities=[interactions, plot]")
    with pytest.raises(ConfigError) as info:
        train_run(cfg, tmp_path / "run", progress=False)
    message = str(info.value)
    assert "model.item.modalities" in message and "'plot'" in message and "genres" in message  # lists what exists
    assert not (tmp_path / "run" / "checkpoint_best.pt").exists() and not (tmp_path / "run" / "model.pt").exists()


def test_eval_modality_missing_from_the_data_fails_too(synthetic_shared_dir):
    cfg = small(synthetic_shared_dir, "model.item.eval_modalities=[genres, plot]")
    with pytest.raises(ConfigError, match="'plot'"):
        train_run(cfg, None, progress=False)


def test_data_modality_missing_from_the_files_fails_when_loading(synthetic_shared_dir):
    cfg = small(synthetic_shared_dir, "data.item_modalities={plot: {column: plot}}")
    with pytest.raises(ConfigError, match=r"data\.item_modalities\.plot.*'plot' not found"):
        prepare(cfg)


def test_view_naming_a_missing_modality_is_an_error(synthetic_shared_dir):
    cfg = small(synthetic_shared_dir, "model.item.modalities=[interactions, genres]")
    prep = prepare(cfg)
    from sibrar.models.base import create_model

    model = create_model(cfg.model, prep.inputs)
    for view in (subset_view(("plot",)), subset_view(("genres", "plot")), missing_view(prep.inputs.n_items, "plot", 0.5),
                 subset_view(("text",))):  # text exists in the data but not in this tower
        with pytest.raises(ConfigError, match="view names item modality"):
            evaluate(model, prep.inputs, prep.split, "valid", cfg.eval, view=view)
    evaluate(model, prep.inputs, prep.split, "valid", cfg.eval, view=missing_view(prep.inputs.n_items, "genres", 0.5))


def test_trainer_rejects_an_uncomputed_monitor_before_the_first_epoch(synthetic_shared_dir, tmp_path):
    """A RunConfig built in code skips the parser's check; the trainer still refuses before training."""
    import dataclasses

    cfg = small(synthetic_shared_dir)
    cfg = dataclasses.replace(cfg, train=TrainConfig(epochs=1, monitor="ndcg@5"), eval=EvalConfig(ks=(10,)))
    with pytest.raises(ConfigError, match="train.monitor 'ndcg@5'"):
        train_run(cfg, tmp_path, progress=False)
    assert not (tmp_path / "checkpoint_last.pt").exists()
