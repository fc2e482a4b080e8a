"""``python -m runtimes.zk.native``: build the kernel now (scripts/setup.sh), rather than in the first proof."""

import sys

from runtimes.zk import native

if native.load() is None:
    print(f"[setup] ZK native kernel not built ({native.unavailable_reason}); proofs use gmpy2 or Python ints",
          file=sys.stderr)
