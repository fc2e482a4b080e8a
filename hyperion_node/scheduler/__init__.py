"""Choosing the peer that runs a task: pure code, fed by the peer table, capability records and outcomes.

See ``scheduler.py`` for how the requester side calls it and ``settings.py`` for the ``[scheduler]`` keys.
"""
