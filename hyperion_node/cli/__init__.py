"""The `hyperion-node` command line."""
