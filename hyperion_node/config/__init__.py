"""Configuration: embedded defaults, user file, environment and flags, with provenance."""

from hyperion_node.config.loader import Config, load_config, xdg_data_dir

__all__ = ["Config", "load_config", "xdg_data_dir"]
