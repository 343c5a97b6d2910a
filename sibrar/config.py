"""Typed, frozen configs: YAML in, dotted `--set a.b=1` overrides, strict conversion, saved with every run.

Field names = YAML keys = `--set` paths = MLflow params = Optuna parameter names.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from sibrar.errors import ConfigError

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Config sections (model configs live beside their models and are looked up by `model.name`)


@dataclass(frozen=True, kw_only=True)
class ModalitySpec:
    """Where a modality comes from. `column` of the .user/.item file, or a feature file when None."""

    column: str | None = None
    kind: Literal["auto", "categorical", "tags", "numeric", "vector"] = "auto"
    min_tag_count: int = 2  # tags: drop tags carried by fewer entities


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which dataset, how to turn ratings into implicit positives, which side modalities to load."""

    dataset: str = "ml-100k"  # a fetch name (see `sibrar datasets`) or a folder of atomic files
    root: str | None = None  # data root; default $SIBRAR_DATA or ~/.cache/sibrar
    rating_threshold: float | None = None  # keep ratings >= threshold as positives (ML-1M paper: 3)
    min_count: float | None = None  # keep pairs with count/rating >= min_count (listening counts)
    k_core: int = 5  # iterative k-core on users and items until stable; 0 disables
    # name -> spec; None means every column of .user/.item plus every feature file, kinds inferred
    user_modalities: dict[str, ModalitySpec] | None = None
    item_modalities: dict[str, ModalitySpec] | None = None


@dataclass(frozen=True, kw_only=True)
class SplitConfig:
    protocol: Literal["random", "temporal", "cold_item", "cold_user", "cold_both"] = "cold_item"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 42

    def __post_init__(self) -> None:
        if len(self.ratios) != 3 or any(r < 0 for r in self.ratios) or abs(sum(self.ratios) - 1.0) > 1e-6:
            raise ConfigError(f"split.ratios is {list(self.ratios)}; expected three non-negative numbers summing to 1")
        if self.ratios[0] <= 0:
            raise ConfigError(f"split.ratios gives the training part {self.ratios[0]}; expected > 0")


# ---------------------------------------------------------------------------------------------
# YAML / dict <-> dataclass


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` strings (value parsed as YAML) to a nested dict, returning a new dict."""
    out = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=1e-3")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML") from exc
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return out


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from a mapping, strictly: unknown keys and wrong types are ConfigErrors."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f"; did you mean {_join(where, close[0])!r}?" if close else ""
        raise ConfigError(f"unknown config key {_join(where, key)!r}{hint} valid keys: {', '.join(fields)}")
    kwargs = {k: convert(hints[k], v, _join(where, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from exc


def convert(tp: Any, value: Any, where: str) -> Any:
    """Check / coerce one value against a type hint."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return convert(option, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: value {value!r} matches none of {tp}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: value {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        return from_dict(tp, value, where)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        args = get_args(tp) or (Any, Any)
        return {convert(args[0], k, f"{where}.{k}"): convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin in (tuple, list) or tp in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)} ({list(value)!r})")
            return tuple(convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        items = [convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def to_dict(config: Any) -> Any:
    """A plain, YAML-safe dict of a config (tuples become lists)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {k: to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    return config


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation and model selection (spec §4.4). Hyperparameters; `device` is a run-time option."""

    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-6
    n_negatives: int = 10  # uniform over training items, re-drawn when the user has the item
    patience: int = 5  # epochs without improvement of `monitor` on validation before stopping
    monitor: str = "ndcg@10"
    min_epochs: int = 0
    seed: int = 42
    device: str = "cpu"
    grad_clip: float | None = None
    time_limit_s: float | None = None  # stop after the epoch that passes this many seconds (recorded in metrics)
    # CPU: PyTorch's deterministic kernels, so a run repeats exactly (for a given number of threads);
    # without them multi-threaded scatter/index-add backward passes sum in a run-dependent order
    deterministic: bool = True
    # The training step. Defaults: the fast step (one tower pass per distinct entity, shared negatives,
    # sampled softmax), which matched or beat the reference code's step on validation nDCG@10 per CPU
    # second (benchmarks/train_curves.py, README "The training step"); larger batches make it faster
    # still (batch_size=2048: ~9x the positives/s of the reference for the paper architecture; re-tune lr).
    # The reference step (every slot encoded, N negatives per positive, BPR): negatives=per_row,
    # objective=bpr, dedup=none. MF and DeepMF always train that way (their losses read the per-row batch).
    negatives: Literal["per_row", "shared"] = "shared"  # shared: one set per batch, scored against every user
    n_shared_negatives: int = 1024  # distinct items per batch (user's own training items masked per user)
    objective: Literal["bpr", "softmax"] = "softmax"  # softmax: cross-entropy of the positive against the negatives
    # entities: one tower pass per distinct user / item of a batch (one modality draw each); rows: draws
    # per slot (the reference's sampling) but one branch pass per distinct (entity, modality); none: per slot
    dedup: Literal["entities", "rows", "none"] = "entities"
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast the forward pass; weights and loss stay fp32

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "n_negatives", "n_shared_negatives", "patience"):
            if getattr(self, name) < (0 if name == "epochs" else 1):
                raise ConfigError(f"train.{name} is {getattr(self, name)}; expected a positive integer")
        if self.lr <= 0:
            raise ConfigError(f"train.lr is {self.lr}; expected > 0")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    ks: tuple[int, ...] = (10, 20)
    metrics: tuple[str, ...] | None = None  # default: every registered metric
    candidates: Literal["split", "all"] = "split"  # the paper ranks only the split's own items in cold start
    batch_users: int = 512
    seed: int = 0  # seeds random tie-breaking


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One training run: data -> split -> model -> train -> evaluate. Saved resolved with every run."""

    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    model: Any = None  # the registered model's own config dataclass, chosen by `model.name`
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()


def parse_run_config(data: Mapping[str, Any], where: str = "") -> RunConfig:
    """A RunConfig from a dict; `model.name` picks the model's config class from the registry."""
    from sibrar.models.base import MODELS, load_builtin_models

    data = dict(data)
    model = data.pop("model", None) or {"name": "sibrar"}
    if not isinstance(model, Mapping):
        raise ConfigError(f"{_join(where, 'model')}: expected a mapping with a 'name' (one of the registered models)")
    model = {"name": "sibrar", **model}  # the default model, as when the section is absent (`--set model.dim=64`)
    load_builtin_models()
    entry = MODELS.get(str(model["name"]))
    model_cfg = from_dict(entry.config_cls, model, _join(where, "model"))
    base = from_dict(RunConfig, data, where)
    _check_monitor(base, where)
    return dataclasses.replace(base, model=model_cfg)


def _check_monitor(config: RunConfig, where: str) -> None:
    """eval.metrics must be registered and train.monitor one of the validation keys they give, checked
    here so a typo fails before any data is read, not after the first validation pass."""
    from sibrar.errors import UnknownNameError
    from sibrar.eval.metrics import DEFAULT_METRICS, METRICS

    names = DEFAULT_METRICS if config.eval.metrics is None else config.eval.metrics
    for i, name in enumerate(names):
        try:
            METRICS.get(name)
        except UnknownNameError as exc:
            raise UnknownNameError(f"{_join(where, 'eval.metrics')}[{i}]: {exc}") from None
    computed = [f"{name}@{k}" for name in names for k in config.eval.ks]
    if config.train.monitor not in computed:
        close = difflib.get_close_matches(config.train.monitor, computed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{_join(where, 'train.monitor')}: {config.train.monitor!r} is not computed on validation{hint} "
                          f"choose one of {', '.join(computed)} (or change eval.metrics / eval.ks)")


def load_run_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """YAML file (or defaults when None) + `--set` overrides -> RunConfig."""
    data = load_yaml(path) if path is not None else {}
    try:
        return parse_run_config(apply_overrides(data, overrides))
    except ConfigError as exc:
        if path is None:
            raise
        raise type(exc)(f"{path}: {exc}") from exc  # name the file (the key may also come from --set)
