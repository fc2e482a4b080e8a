"""Hyperion Node: a node for decentralized compute networks."""

__version__ = "0.1.0"
