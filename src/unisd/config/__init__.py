"""Run configuration: typed dataclasses (`schema`), recipes and overrides (`io`)."""

from unisd.config.io import dump_config, load_config, read_run_config, recipe_dict, recipe_names
from unisd.config.schema import ConfigError, RunConfig

__all__ = ["ConfigError", "RunConfig", "dump_config", "load_config", "read_run_config", "recipe_dict",
           "recipe_names"]
