"""Typed, frozen configs: YAML in, dotted `--set a.b=1` overrides, strict conversion, saved with every run.

Field names = YAML keys = `--set` paths = MLflow params = Optuna parameter names.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from sibrar._io import read_text
from sibrar.errors import ConfigError, UnknownNameError
from sibrar.eval.metrics import DEFAULT_METRICS, METRICS
from sibrar.registry import MODELS, unknown_name_message

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
    text = read_text(path, "config", ConfigError)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem}); expected a YAML mapping of config sections") from exc
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
        file, _, path = where.rpartition(": ")  # "FILE: models[0]" -> the file stays outside the quoted key
        hint = f"; did you mean {_join(path, close[0])!r}?" if close else ""
        raise ConfigError(f"{file + ': ' if file else ''}unknown config key {_join(path, key)!r}{hint} "
                          f"valid keys: {', '.join(fields)}")
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
    """Optimisation and model selection. Hyperparameters; `device` is a run-time option."""

    epochs: int = 50
    batch_size: int = 2048  # the fast step's rows per positive fall with the batch (the paper: 256, lr 1e-3)
    lr: float = 2e-3
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
    # CPU intra-op threads for training and evaluation (None: torch's default, the number of cores). The
    # numbers depend on it (float sums are split differently), so a config meant to give the same numbers
    # on every machine fixes it; the value used is recorded in the run's manifest.json either way
    threads: int | None = None
    # The training step. Defaults: the fast step: one tower pass per distinct entity, each positive
    # against its own n_negatives drawn from one pool of n_shared_negatives items per batch (so the item
    # tower encodes at most pool + positives), sampled softmax over those 1 + n_negatives. On validation it
    # matched or beat the reference step at a fraction of its time (README "The training step").
    # The reference step (every slot encoded, N negatives per positive from the whole catalogue, BPR):
    # negatives=per_row, objective=bpr, dedup=none. shared: every positive against the whole pool
    # (scored as one GEMM; lower validation quality here). MF and DeepMF read per-row negatives only:
    # with shared they get per_row.
    negatives: Literal["per_row", "pooled", "shared"] = "pooled"
    n_shared_negatives: int = 1024  # pooled/shared: distinct items per batch (a user's own training items excluded)
    objective: Literal["bpr", "softmax"] = "softmax"  # softmax: cross-entropy of the positive against the negatives
    # entities: one tower pass per distinct user / item of a batch (one modality draw each); rows: draws
    # per slot (the reference's sampling) but one branch pass per distinct (entity, modality); none: per slot
    dedup: Literal["entities", "rows", "none"] = "entities"
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast the forward pass; weights and loss stay fp32
    # deduplicated or shared-negative steps: InfoNCE within groups of at most this many encoded entities
    # (null: one group of all of them, N^2 logits); the reference step keeps its per-row groups
    contrastive_group: int | None = 256

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
    """A RunConfig from a dict; `model.name` picks the model's config class from `sibrar.registry.MODELS`
    (filled when `sibrar.models` is imported, which `import sibrar` does)."""
    data = apply_preset(data, where)
    model = data.pop("model", None) or {"name": "sibrar"}
    if not isinstance(model, Mapping):
        raise ConfigError(f"{_join(where, 'model')}: expected a mapping with a 'name' (one of the registered models)")
    model = {"name": "sibrar", **model}  # the default model, as when the section is absent (`--set model.dim=64`)
    entry = MODELS.get(str(model["name"]))
    model_cfg = from_dict(entry.config_cls, model, _join(where, "model"))
    config = dataclasses.replace(from_dict(RunConfig, data, where), model=model_cfg)
    check_ranges(config, where)
    _check_monitor(config, where)
    return config


# ---------------------------------------------------------------------------------------------
# Presets: named partial run configs (model + train sections) in sibrar/configs/presets/NAME.yaml

PRESET_DIR = Path(__file__).resolve().parent / "configs" / "presets"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: Any, where: str = "preset") -> dict[str, Any]:
    """The sections of preset `name`; an unknown name is an error listing the valid ones."""
    names = list_presets()
    if not isinstance(name, str) or name not in names:
        raise UnknownNameError(f"{where}: {unknown_name_message('preset', str(name), names)}")
    return load_yaml(PRESET_DIR / f"{name}.yaml")


def apply_preset(data: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """`data` with its `preset: NAME` key resolved: the preset's sections, then data's keys over them."""
    data = dict(data)
    if "preset" not in data:
        return data
    name = data.pop("preset")
    return deep_merge(load_preset(name, _join(where, "preset")), data)


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: `extra` over `base`, nested mappings merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
    return out


def _check_monitor(config: RunConfig, where: str) -> None:
    """eval.metrics must be registered and train.monitor one of the validation keys they give, checked
    here so a typo fails before any data is read, not after the first validation pass."""
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


# ---------------------------------------------------------------------------------------------
# Numeric ranges, checked at load time (before any data is fetched or trained)


@dataclass(frozen=True)
class Range:
    """Accepted values of a numeric field: finite, within [low, high] (bounds open where `*_open`)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    allow: tuple[float, ...] = ()  # special values outside the range that mean something (norm_every -1)

    def accepts(self, value: float) -> bool:
        if value in self.allow:
            return True
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def describe(self, integer: bool) -> str:
        kind = "an integer" if integer else "a finite number"
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_num(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {_num(self.high)}")
        extra = f" (or {', '.join(_num(v) for v in self.allow)})" if self.allow else ""
        return f"{kind} {' and '.join(parts)}{extra}" if parts else kind


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


POSITIVE, NON_NEGATIVE, FINITE = Range(0, low_open=True), Range(0), Range()
AT_LEAST_ONE = Range(1)
PROBABILITY = Range(0, 1, high_open=True)
# Field name -> accepted values, for every config section (model configs included, whichever model
# defines them). A float field not listed must still be finite; an int field not listed is unchecked.
# temperature: the lowest τ the paper searched is 1e-3; the contrastive loss refuses lower values too.
RANGES: dict[str, Range] = {
    # data / split
    "k_core": NON_NEGATIVE, "min_count": NON_NEGATIVE, "rating_threshold": FINITE, "min_tag_count": AT_LEAST_ONE,
    "ratios": Range(0, 1), "seed": NON_NEGATIVE,
    # train
    "epochs": NON_NEGATIVE, "batch_size": AT_LEAST_ONE, "lr": POSITIVE, "weight_decay": NON_NEGATIVE,
    "n_negatives": AT_LEAST_ONE, "n_shared_negatives": AT_LEAST_ONE, "contrastive_group": Range(2),
    "patience": AT_LEAST_ONE, "min_epochs": NON_NEGATIVE, "grad_clip": POSITIVE,
    "time_limit_s": POSITIVE, "threads": AT_LEAST_ONE,
    # eval
    "ks": AT_LEAST_ONE, "batch_users": AT_LEAST_ONE,
    # models
    "dim": AT_LEAST_ONE, "common_dim": AT_LEAST_ONE, "preference_dim": AT_LEAST_ONE, "content_dim": AT_LEAST_ONE,
    "content_dims": AT_LEAST_ONE, "hidden": AT_LEAST_ONE, "projection_hidden": AT_LEAST_ONE,
    "temperature": Range(1e-3), "contrastive_weight": NON_NEGATIVE, "input_dropout": PROBABILITY,
    "preference_dropout": Range(0, 1), "dropout": PROBABILITY, "norm_every": Range(1, allow=(-1,)),
    "min_similarity": Range(-1, 1),
}


def check_ranges(config: Any, where: str = "") -> None:
    """Refuse NaN, infinities and out-of-range numbers anywhere in a config tree (see RANGES).

    `where` is the dotted path of `config` as the user wrote it (`train`, `base.train`, ...), so the
    error names the key they typed: `train.lr is nan; expected a finite number > 0`.
    """
    if not dataclasses.is_dataclass(config):
        return
    for f in dataclasses.fields(config):
        _check_value(getattr(config, f.name), RANGES.get(f.name), _join(where, f.name))


def _check_value(value: Any, rule: Range | None, where: str) -> None:
    if dataclasses.is_dataclass(value):
        check_ranges(value, where)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_value(item, rule, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_value(item, rule, f"{where}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        rule = rule if rule is not None else (FINITE if isinstance(value, float) else None)
        if rule is not None and not rule.accepts(value):
            raise ConfigError(f"{where} is {value!r}; expected {rule.describe(isinstance(value, int))}")


def check_value(value: float | int | None, field: str, name: str) -> None:
    """One value against the rule of config field `field`, reported under `name` (e.g. a CLI flag)."""
    if value is not None:
        _check_value(value, RANGES.get(field, FINITE), name)


def load_run_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """YAML file (or defaults when None) + `--set` overrides -> RunConfig."""
    data = load_yaml(path) if path is not None else {}
    try:
        return parse_run_config(apply_overrides(data, overrides))
    except ConfigError as exc:
        if path is None:
            raise
        raise type(exc)(f"{path}: {exc}") from exc  # name the file (the key may also come from --set)
