"""Loaded by every Python process whose PYTHONPATH holds this folder (tests/test_cluster.py):
with AGGREGATOR_TEST_CRASH_AT naming one of `Staged.STEPS`, the process dies (as kill -9
would) the first time a write on Redis Cluster reaches that step, before it runs."""

import os

_STEP = os.environ.get("AGGREGATOR_TEST_CRASH_AT")
if _STEP:
    from aggregator.store import staged

    def _crash(self: object, writes: object) -> None:
        os._exit(70)

    setattr(staged.Staged, _STEP, _crash)
