"""Write docs/configuration.md from configs/default.toml and docs/configuration.head.md (issue #23).

    python scripts/gen_config_docs.py          # write the page
    python scripts/gen_config_docs.py --check  # exit 1 when the checked-in page is stale (the unit tests check it too)

The work is done by hyperion_node.config.docs; this is its command line, run against this checkout.
"""

from __future__ import annotations

from pathlib import Path

from hyperion_node.config.docs import main

if __name__ == "__main__":
    raise SystemExit(main(root=Path(__file__).resolve().parent.parent))
