"""``[blobs]``: how this node serves and fetches blobs over ``/hyperion/blob/1``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hyperion_node.config_section import Check, section_kwargs

SECTION = "blobs"


@dataclass(frozen=True)
class BlobSettings:
    share_models: bool = True
    max_upload_mib_s: float = 100.0
    streams_per_peer: int = 4
    max_streams: int = 32
    fetch_streams: int = 2
    inline_max_bytes: int = 1024 * 1024
    max_input_mib: int = 1024
    cache_mib: int = 4096

    @classmethod
    def from_values(cls, values: Mapping[str, Any], sources: Mapping[str, str]) -> BlobSettings:
        checks: dict[str, Check] = {
            "max_upload_mib_s": (lambda v: v >= 0, "a number of MiB/s of at least 0 (0: no limit)"),
            "streams_per_peer": (lambda v: v >= 1, "an integer of at least 1"),
            "max_streams": (lambda v: v >= 1, "an integer of at least 1"),
            "fetch_streams": (lambda v: 1 <= v <= 16, "an integer from 1 to 16"),
            "inline_max_bytes": (lambda v: 0 <= v <= 32 * 1024 * 1024, "an integer of bytes from 0 to 33554432"),
            "max_input_mib": (lambda v: v >= 1, "an integer of MiB of at least 1"),
            "cache_mib": (lambda v: v >= 0, "an integer of MiB of at least 0"),
        }
        return cls(**section_kwargs(cls, SECTION, values, sources, checks))
