"""Configuration: the typed schema, override validation and Hydra composition (no torch)."""

from sslbench.config.compose import compose, load_run_config
from sslbench.config.identity import config_hash
from sslbench.config.schema import GROUPS, RunConfig, conf_dir, group_options
from sslbench.config.validate import resolve

__all__ = [
    "GROUPS",
    "RunConfig",
    "compose",
    "conf_dir",
    "config_hash",
    "group_options",
    "load_run_config",
    "resolve",
]
