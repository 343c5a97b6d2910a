"""The search space of a study: the search file, its parameters, `when:` conditions and subsets.

Optuna hyperparameter search over one run config, judged on a VALIDATION metric only.

A search file holds the run config to start from (`base` data/split/train/eval + one `model`
section) and a `search` section: the objective metric, the sampler and pruner (seeded, never
Optuna's defaults) and the space, keyed by dotted config paths::

    search:
      metric: ndcg@10                  # on validation; early stopping monitors it too
      sampler: {name: tpe, seed: 42, n_startup_trials: 6}
      pruner: {name: median, n_startup_trials: 4, n_warmup_steps: 1}
      space:
        train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
        model.item.branch.hidden: {type: categorical, choices: [[128], [256, 256]]}
        model.item.modalities: {type: subset, items: [genres, year, text], always: [interactions]}
        model.item.temperature: {type: float, low: 0.01, high: 0.5, log: true,
                                 when: {model.item.contrastive_weight: {gt: 0}}}

Every edge of the space (range ends, each choice) is checked to give a valid config before a trial runs.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sibrar.config import RunConfig, apply_overrides, load_yaml, parse_run_config, to_dict
from sibrar.errors import ConfigError
from sibrar.eval.metrics import METRICS
from sibrar.results import lower_is_better
from sibrar.tune.components import PRUNERS, SAMPLERS, check_component

ParamType = Literal["float", "int", "categorical", "subset"]
PARAM_KEYS = {"type", "low", "high", "log", "step", "choices", "items", "always", "min_size", "max_size", "when"}
CONDITIONS = {"in": lambda v, arg: v in arg, "not_in": lambda v, arg: v not in arg,
              "gt": lambda v, arg: v is not None and v > arg, "lt": lambda v, arg: v is not None and v < arg}


@dataclass(frozen=True)
class Param:
    """One searched config value. `when` lists (path, operator, argument) that must all hold."""

    path: str
    type: ParamType
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()  # categorical values (any YAML value), or subset choices as lists
    when: tuple[tuple[str, str, Any], ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.path, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        # Optuna stores categorical choices as primitives: keep each as its JSON text
        return json.loads(trial.suggest_categorical(self.path, [json.dumps(c) for c in self.choices]))

    def contains(self, value: Any) -> bool:
        if self.type in ("float", "int"):
            return isinstance(value, (int, float)) and self.low <= value <= self.high  # type: ignore[operator]
        if self.type == "subset":
            return isinstance(value, list) and any(sorted(value) == sorted(c) for c in self.choices)
        return any(json.dumps(value) == json.dumps(c) for c in self.choices)

    def encode(self, value: Any) -> Any:
        """A config value as Optuna stores it for this parameter (for enqueueing the default)."""
        if self.type in ("float", "int"):
            return value
        if self.type == "subset":  # the stored choice may list the same members in another order
            value = next(c for c in self.choices if sorted(c) == sorted(value))
        return json.dumps(value)

    def active(self, values: Mapping[str, Any]) -> bool:
        return all(CONDITIONS[op](values.get(path), arg) for path, op, arg in self.when)


@dataclass(frozen=True)
class Search:
    name: str
    base: dict[str, Any]  # a raw run config: data, split, train, eval, model
    params: tuple[Param, ...]
    metric: str = "ndcg@10"
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": 42})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict)  # the file as parsed (after overrides), for workers

    @property
    def direction(self) -> str:
        return "minimize" if lower_is_better(self.metric) else "maximize"

    def config(self, values: Mapping[str, Any]) -> RunConfig:
        """The run config of a trial: the base with each searched value set at its path."""
        return config_with(self.base, values, f"{self.source}: trial config")

    def defaults(self) -> dict[str, Any]:
        """Each parameter's value in the unmodified config (None when the path is unset there)."""
        resolved = to_dict(self.config({}))
        return {p.path: lookup(resolved, p.path) for p in self.params}


def config_with(base: Mapping[str, Any], values: Mapping[str, Any], where: str) -> RunConfig:
    """A raw run config with each value set at its dotted path, parsed."""
    raw = apply_overrides(dict(base), [f"{path}={json.dumps(value)}" for path, value in values.items()])
    return parse_run_config(raw, where)


# ------------------------------------------------------------------------------------ parsing


def load_search(path: str | Path, overrides: Sequence[str] = ()) -> Search:
    path = Path(path)
    return parse_search(apply_overrides(load_yaml(path), overrides), str(path), default_name=path.stem)


def parse_search(raw: Mapping[str, Any], where: str = "search", default_name: str = "study") -> Search:
    """Validate a search file completely, before any trial runs."""
    unknown = set(raw) - {"name", "base", "model", "search"}
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}; valid keys: name, base, model, search")
    if not isinstance(raw.get("model"), Mapping):
        raise ConfigError(f"{where}: field 'model' must be the model section to tune (e.g. {{name: sibrar, ...}})")
    search = raw.get("search")
    if not isinstance(search, Mapping) or not isinstance(search.get("space"), Mapping) or not search["space"]:
        raise ConfigError(f"{where}: field 'search.space' must map config paths to parameter specs")
    extra = set(search) - {"metric", "sampler", "pruner", "space"}
    if extra:
        raise ConfigError(f"{where}: unknown key search.{sorted(extra)[0]}; valid keys: metric, sampler, pruner, space")
    base = {**dict(raw.get("base") or {}), "model": dict(raw["model"])}
    metric = str(search.get("metric", "ndcg@10"))
    base = apply_overrides(base, [f"train.monitor={metric}"])  # early stopping and pruning follow the objective
    default = parse_run_config(base, f"{where}: base + model")
    _check_metric(metric, default, where)
    resolved = to_dict(default)
    params = tuple(_parse_param(str(k), v, resolved, f"{where}: search.space.{k}") for k, v in search["space"].items())
    seen: set[str] = set()
    for p in params:
        for path, _, _ in p.when:
            if path not in seen and lookup(resolved, path, missing=KeyError) is KeyError:
                raise ConfigError(f"{where}: search.space.{p.path}.when: {path!r} is neither an earlier parameter nor a config value")
        seen.add(p.path)
    out = Search(str(raw.get("name") or default_name), base, params, metric,
                 check_component(search.get("sampler"), SAMPLERS, {"name": "tpe", "seed": 42}, f"{where}: search.sampler"),
                 check_component(search.get("pruner"), PRUNERS, {"name": "median"}, f"{where}: search.pruner"), where,
                 {"name": str(raw.get("name") or default_name), **{k: v for k, v in raw.items() if k != "name"}})
    for p in params:  # every edge of the space must give a valid config
        for value in _probe_values(p):
            try:
                out.config({p.path: value})
            except ConfigError as exc:
                raise ConfigError(f"{where}: search.space.{p.path} = {value!r} gives an invalid config: {exc}") from exc
    return out


def _check_metric(metric: str, config: RunConfig, where: str) -> None:
    name, _, k = metric.partition("@")
    METRICS.get(name)
    if not k.isdigit() or int(k) not in config.eval.ks:
        raise ConfigError(f"{where}: search.metric {metric!r}: expected METRIC@K with K in eval.ks {list(config.eval.ks)}")


def _parse_param(path: str, spec: Any, resolved: Mapping[str, Any], where: str) -> Param:
    if lookup(resolved, path, missing=KeyError) is KeyError:
        raise ConfigError(f"{where}: unknown parameter {path!r}: no such value in the resolved config "
                          f"(sections: {', '.join(resolved)}); check the spelling against `sibrar train --help` configs")
    if not isinstance(spec, Mapping) or spec.get("type") not in ("float", "int", "categorical", "subset"):
        raise ConfigError(f"{where}: expected a mapping with type float|int|categorical|subset, got {spec!r}")
    bad = set(spec) - PARAM_KEYS
    if bad:
        raise ConfigError(f"{where}: unknown key {sorted(bad)[0]!r}; valid keys: {', '.join(sorted(PARAM_KEYS))}")
    kind = spec["type"]
    when = _parse_when(spec.get("when"), where)
    if kind in ("float", "int"):
        low, high = spec.get("low"), spec.get("high")
        if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or not low < high:
            raise ConfigError(f"{where}: empty or invalid range low={low!r} high={high!r}; expected numbers with low < high")
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise ConfigError(f"{where}: log=true needs low > 0, got low={low!r}")
        if kind == "int" and (int(low) != low or int(high) != high):
            raise ConfigError(f"{where}: int parameter needs integer bounds, got {low!r}..{high!r}")
        return Param(path, kind, float(low), float(high), log, spec.get("step"), when=when)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: 'choices' must be a non-empty list")
        return Param(path, kind, choices=tuple(choices), when=when)
    items, always = spec.get("items"), spec.get("always") or []
    if not isinstance(items, list) or not items or not isinstance(always, list):
        raise ConfigError(f"{where}: a subset needs 'items' (non-empty list) and optional 'always' (list)")
    lo, hi = int(spec.get("min_size", 1)), int(spec.get("max_size", len(items)))
    choices = tuple([*always, *combo] for r in range(lo, hi + 1) for combo in itertools.combinations(items, r))
    if not choices:
        raise ConfigError(f"{where}: no subset of {items} has a size in [{lo}, {hi}]")
    return Param(path, "subset", choices=choices, when=when)


def _parse_when(when: Any, where: str) -> tuple[tuple[str, str, Any], ...]:
    if when is None:
        return ()
    if not isinstance(when, Mapping):
        raise ConfigError(f"{where}.when: expected {{path: [values]}} or {{path: {{gt|lt|in|not_in: value}}}}")
    out = []
    for path, cond in when.items():
        if isinstance(cond, Mapping):
            for op, arg in cond.items():
                if op not in CONDITIONS:
                    raise ConfigError(f"{where}.when.{path}: unknown operator {op!r}; expected one of {', '.join(CONDITIONS)}")
                out.append((str(path), str(op), arg))
        else:
            out.append((str(path), "in", list(cond) if isinstance(cond, list) else [cond]))
    return tuple(out)


def _probe_values(p: Param) -> list[Any]:
    if p.type == "float":
        return [p.low, p.high]
    if p.type == "int":
        return [int(p.low), int(p.high)]  # type: ignore[arg-type]
    return list(p.choices)


def lookup(tree: Mapping[str, Any], path: str, missing: Any = None) -> Any:
    """The value at dotted `path` in a nested dict, or `missing` when a part is absent."""
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return missing
        node = node[part]
    return node
