"""Task orchestration: the ``/hyperion/task/1`` protocol, the worker and requester sides, task history.

Kept free of imports here: the config loader reads ``tasks.settings`` without pulling in libp2p.
"""
