"""Runtimes that ship with Hyperion Node; each is registered under the ``hyperion.runtimes`` entry points."""
