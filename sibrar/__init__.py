"""sibrar: single-branch multimodal recommendation (SiBraR) robust to cold start and missing modalities."""

from sibrar.config import DataConfig, EvalConfig, RunConfig, SplitConfig, TrainConfig, load_run_config, parse_run_config
from sibrar.errors import ConfigError, DataError, SibrarError

# The top of the package: importing the models registers them (sibrar.registry.MODELS), so a config's
# `model.name` resolves for every caller, while sibrar.config itself imports nothing above it.
from sibrar import models  # noqa: E402, F401  isort: skip

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "DataConfig", "DataError", "EvalConfig", "RunConfig", "SibrarError", "SplitConfig", "TrainConfig",
    "load_run_config", "parse_run_config",
]
