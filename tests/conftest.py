"""Settings for the whole suite.

Hypothesis times each example and fails a test whose data generation is slow (``too_slow``) or whose example
takes longer than 200 ms (``deadline``): on a 2-core CI machine that also runs daemons, both happen to correct
code (seen: ``test_api_task_bodies`` failed its health check while another process hashed a model). What the
property tests check is correctness, so the timing checks are off for every one of them.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")
