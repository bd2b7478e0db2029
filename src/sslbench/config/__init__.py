"""Configuration: the typed schema, override validation and Hydra composition (no torch)."""

from sslbench.config.compose import ConfigError, compose, config_hash, load_run_config, resolve
from sslbench.config.schema import GROUPS, RunConfig, conf_dir, group_options

__all__ = [
    "GROUPS",
    "ConfigError",
    "RunConfig",
    "compose",
    "conf_dir",
    "config_hash",
    "group_options",
    "load_run_config",
    "resolve",
]
