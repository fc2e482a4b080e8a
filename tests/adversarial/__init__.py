"""Real daemons attacked by a real hostile libp2p host (hyperion_node/testing/hostile.py)."""
