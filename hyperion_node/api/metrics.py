"""``/metrics``: the node's state in Prometheus's text exposition format (version 0.0.4), as pure code.

The node gathers a list of :class:`Family` (``Node.metrics``); :func:`render` writes them. Names follow
Prometheus's conventions: a ``hyperion_`` prefix, base units in the name (``_seconds``, ``_bytes``),
``_total`` on counters. It needs the API token like the rest of the API (peer counts, telemetry and credits
are the operator's business), which Prometheus sends from its scrape config
(``authorization: {credentials_file: ...}``); ``api.metrics_public = true`` serves it without one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hyperion_node.tasks.metrics import Histogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Family:
    name: str
    kind: str  # counter, gauge or histogram
    help: str
    samples: list[tuple[Mapping[str, str], float]] = field(default_factory=list)
    histograms: list[tuple[Mapping[str, str], Histogram]] = field(default_factory=list)

    def add(self, value: float | None, **labels: str) -> Family:
        if value is not None and math.isfinite(value):
            self.samples.append((labels, float(value)))
        return self


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items())) + "}"


def _number(value: float) -> str:
    return repr(int(value)) if value == int(value) and abs(value) < 2**53 else repr(value)


def render(families: Sequence[Family]) -> str:
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            lines.append(f"{family.name}{_labels(labels)} {_number(value)}")
        for labels, hist in family.histograms:
            for bound, count in hist.cumulative():
                lines.append(f"{family.name}_bucket{_labels({**labels, 'le': bound})} {count}")
            lines.append(f"{family.name}_sum{_labels(labels)} {_number(hist.total)}")
            lines.append(f"{family.name}_count{_labels(labels)} {hist.n}")
    return "\n".join(lines) + "\n"
