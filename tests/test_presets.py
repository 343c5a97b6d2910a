"""Named presets (sibrar/configs/presets): selectable from run configs and experiment entries, and they train."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from sibrar.config import list_presets, load_run_config, parse_run_config
from sibrar.errors import UnknownNameError
from sibrar.experiment import load_experiment, parse_experiment
from sibrar.models.base import Batch, create_model
from sibrar.train.run import prepare


def test_the_paper_preset_holds_the_paper_ml1m_setup():
    assert {"sibrar-paper-ml1m", "sibrar-cpu"} <= set(list_presets())
    cfg = parse_run_config({"preset": "sibrar-paper-ml1m"})
    model, train = cfg.model, cfg.train
    assert (model.dim, model.item.common_dim) == (128, 512)
    assert model.item.branch.hidden == (512, 512, 512, 256, 256) and model.item.branch.norm_every == 2
    assert model.item.branch.input_dropout == 0.02 and model.item.sampling == "pairwise"
    user = model.user.branch
    assert (user.hidden, user.norm_every, user.norm_position, model.user.common_dim) == ((), -1, "after", 128)
    assert (train.lr, train.weight_decay, train.batch_size, train.epochs, train.patience) == (5e-5, 1e-3, 256, 50, 5)


def test_explicit_keys_win_over_the_preset(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"preset": "sibrar-paper-ml1m", "train": {"lr": 1e-3},
                                    "model": {"item": {"modalities": ["interactions", "genres", "year"]}}}))
    cfg = load_run_config(path, ["model.dim=64"])
    assert cfg.train.lr == 1e-3 and cfg.train.weight_decay == 1e-3  # the rest of the preset stays
    assert cfg.model.dim == 64 and cfg.model.item.common_dim == 512
    assert cfg.model.item.modalities == ("interactions", "genres", "year")


def test_an_experiment_entry_takes_a_preset_between_base_and_its_own_keys():
    raw = {"base": {"train": {"epochs": 3, "lr": 0.5}},
           "models": [{"label": "cpu", "preset": "sibrar-cpu", "train": {"weight_decay": 0.0}},
                      {"label": "plain", "model": {"name": "sibrar"}}]}
    cpu, plain = parse_experiment(raw).models
    assert cpu.config.model.dim == 64 and cpu.config.train.epochs == 3  # base key the preset leaves alone
    assert cpu.config.train.lr == pytest.approx(0.002740849583678438)  # the preset over base
    assert cpu.config.train.weight_decay == 0.0  # the entry over the preset
    assert plain.config.train.lr == 0.5 and plain.config.model.dim == 128


def test_unknown_preset_lists_the_valid_names():
    with pytest.raises(UnknownNameError) as info:
        parse_run_config({"preset": "sibrar-paper-ml1"})
    message = str(info.value)
    assert "did you mean 'sibrar-paper-ml1m'" in message
    assert all(name in message for name in list_presets())
    with pytest.raises(UnknownNameError, match=r"models\[0\]\.preset: unknown preset 'nope'"):
        parse_experiment({"models": [{"preset": "nope"}]})


@pytest.mark.parametrize("name", ["sibrar-paper-ml1m", "sibrar-cpu"])
def test_presets_build_and_take_a_training_step(name: str, synthetic_shared_dir: Path):
    cfg = parse_run_config({"preset": name, "data": {"dataset": str(synthetic_shared_dir), "k_core": 0},
                            "split": {"protocol": "cold_item", "seed": 1},
                            "model": {"item": {"modalities": ["interactions", "genres", "year"]}}})
    prep = prepare(cfg)
    torch.manual_seed(0)
    model = create_model(cfg.model, prep.inputs)
    model.generator = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    users = torch.arange(32) % prep.inputs.n_users
    items = prep.inputs.train_items[torch.arange(32 * 5) % len(prep.inputs.train_items)].reshape(32, 5)
    before = [p.detach().clone() for p in model.parameters()]
    parts = model.loss(Batch(users, items))
    assert torch.isfinite(parts["loss"]) and "infonce_item" in parts
    parts["loss"].backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_the_cpu_preset_is_the_sibrar_of_the_2core_experiments():
    experiment = Path(__file__).resolve().parents[1] / "experiments" / "ml1m-cold-item-2core.yaml"
    spec = next(s for s in load_experiment(experiment).models if s.label.startswith("SiBraR_best"))
    cfg = parse_run_config({"preset": "sibrar-cpu", "train": {"epochs": spec.config.train.epochs},
                            "model": {"item": {"modalities": list(spec.config.model.item.modalities)}}})
    assert cfg.model == spec.config.model
    assert (cfg.train.lr, cfg.train.weight_decay) == (spec.config.train.lr, spec.config.train.weight_decay)
