"""``[blobs]``: how this node serves and fetches blobs over ``/hyperion/blob/1``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hyperion_node.settings import COUNT, PORT, Section, at_least, between, count, setting


@dataclass(frozen=True)
class BlobSettings(Section):
    SECTION: ClassVar[str] = "blobs"

    share_models: bool = True
    max_upload_mib_s: float = setting(100.0, at_least(0, "a number of MiB/s of at least 0 (0: no limit)"))
    streams_per_peer: int = setting(4, COUNT)
    max_streams: int = setting(32, COUNT)
    lane: bool = True
    lane_port: int = setting(0, PORT)
    fetch_streams: int = setting(2, between(1, 16, "an integer from 1 to 16"))
    inline_max_bytes: int = setting(1024 * 1024, between(0, 32 * 1024 * 1024, "an integer of bytes from 0 to 33554432"))
    max_input_mib: int = setting(1024, count(1, "an integer of MiB of at least 1"))
    cache_mib: int = setting(4096, count(0, "an integer of MiB of at least 0"))
