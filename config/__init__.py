"""Configuration: the pydantic schema, the YAML loader and the error hierarchy (imports nothing of ours)."""

from config.errors import ConfigError
from config.loader import configure_logging, load_log_config, load_pipeline_config
from config.schema import FusionStrategyName, InputSpecConfig, LogConfig, PipelineConfig

__all__ = [
    "ConfigError",
    "FusionStrategyName",
    "InputSpecConfig",
    "LogConfig",
    "PipelineConfig",
    "configure_logging",
    "load_log_config",
    "load_pipeline_config",
]
