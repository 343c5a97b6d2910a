"""The Optuna samplers and pruners a search may name, checked against their signatures, and built."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import optuna

from sibrar.errors import ConfigError

SAMPLERS = {"tpe": ("TPESampler", True), "random": ("RandomSampler", True), "gp": ("GPSampler", True),
            "cmaes": ("CmaEsSampler", True), "qmc": ("QMCSampler", True)}
PRUNERS = {"median": ("MedianPruner", False), "percentile": ("PercentilePruner", False),
           "hyperband": ("HyperbandPruner", False), "successive_halving": ("SuccessiveHalvingPruner", False),
           "none": ("NopPruner", False)}


def check_component(spec: Any, table: Mapping[str, tuple[str, bool]], default: dict[str, Any], where: str) -> dict[str, Any]:
    """A sampler/pruner spec `{name, ...options}` with its options checked against the Optuna class."""
    spec = dict(default if spec is None else spec) if isinstance(spec, Mapping) or spec is None else None
    if spec is None or spec.get("name") not in table:
        raise ConfigError(f"{where}: expected {{name: {'|'.join(table)}, ...options}}")
    cls_name, seeded = table[spec["name"]]
    if seeded:
        spec.setdefault("seed", 42)
    cls = getattr(optuna.samplers if seeded else optuna.pruners, cls_name)
    allowed = set(inspect.signature(cls).parameters)
    bad = set(spec) - {"name"} - allowed
    if bad:
        raise ConfigError(f"{where}: {cls_name} has no option {sorted(bad)[0]!r}; options: {', '.join(sorted(allowed))}")
    return spec


def build_component(spec: Mapping[str, Any], table: Mapping[str, tuple[str, bool]], seed_offset: int = 0) -> Any:
    """The Optuna sampler or pruner of a checked spec; a sampler's seed is shifted by `seed_offset`."""
    cls_name, seeded = table[spec["name"]]
    options = {k: v for k, v in spec.items() if k != "name"}
    if seeded:  # parallel workers must not propose identical points
        options["seed"] = int(options["seed"]) + seed_offset
    return getattr(optuna.samplers if seeded else optuna.pruners, cls_name)(**options)
