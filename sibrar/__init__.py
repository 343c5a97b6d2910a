"""sibrar: single-branch multimodal recommendation (SiBraR) robust to cold start and missing modalities."""

from sibrar.config import DataConfig, EvalConfig, RunConfig, SplitConfig, TrainConfig, load_run_config, parse_run_config
from sibrar.errors import ConfigError, DataError, SibrarError

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "DataConfig", "DataError", "EvalConfig", "RunConfig", "SibrarError", "SplitConfig", "TrainConfig",
    "load_run_config", "parse_run_config",
]
