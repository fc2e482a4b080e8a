"""The CLI answers at once: importing it loads none of the daemon's heavy dependencies.

`hyperion-node status` in a loop, `watch hyperion-node peers` and scripts pay the CLI's start-up on every
call; libp2p alone costs most of a second. The commands that run node code (`start`, `doctor`, `hardware`,
`ledger`, `submit`) import what they need when they run. Timings are in docs/performance.md
(scripts/bench_cli.py); this test checks the cause, not the clock.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hyperion_node.datadir import DataDir
from hyperion_node.identity import load_identity

HEAVY = ("libp2p", "llama_cpp", "fastapi", "numpy", "httpx", "structlog", "trio", "hypercorn", "nacl")


def test_importing_the_cli_loads_no_heavy_dependency() -> None:
    code = ("import json, sys, hyperion_node.cli.app; "
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                       text=True).stdout)
    assert loaded == []


def test_id_prints_the_peer_id_without_loading_libp2p(tmp_path: Path) -> None:
    code = ("import sys; from hyperion_node.cli.app import main\n"
            "sys.argv = ['hyperion-node', 'id', '-d', sys.argv[1]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('libp2p' in sys.modules)")
    dd = DataDir(tmp_path / "node")
    dd.ensure()
    expected = str(load_identity(dd, create=True).peer_id)
    out = subprocess.run([sys.executable, "-c", code, str(dd.root)], check=True, capture_output=True,
                         text=True).stdout.split()
    assert out == [expected, "False"]
