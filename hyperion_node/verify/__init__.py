"""Spot checks of other peers' work: ``/hyperion/verify/2``, verdicts, disputes. See ``service.py``.

Kept free of imports here: the config loader reads ``verify.settings`` without pulling in libp2p.
"""
