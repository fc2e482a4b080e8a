"""``hyperion-node start --demo``: a whole network of virtual nodes in one process, on the real code paths."""
