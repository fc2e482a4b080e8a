"""The node's libp2p presence."""
