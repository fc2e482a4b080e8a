"""``[p2p]``: how this node listens, finds peers and keeps its connections (configs/default.toml says why each
default is what it is)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hyperion_node.settings import COUNT, PORT, POSITIVE, Section, count, each, is_number, need, setting

_MULTIADDRS = each(lambda a: isinstance(a, str) and a.startswith("/"),
                   "multiaddrs such as /ip4/1.2.3.4/tcp/4001/p2p/<id>")


@dataclass(frozen=True)
class P2PSettings(Section):
    SECTION: ClassVar[str] = "p2p"

    listen_host: str
    tcp_port: int = setting(rule=PORT)
    announce_addrs: tuple[str, ...] = setting(rule=_MULTIADDRS)
    bootstrap: tuple[str, ...] = setting(rule=_MULTIADDRS)
    quic: bool = False
    quic_port: int = setting(4001, PORT)
    mdns: bool = True
    dht_random_walk: bool = True
    dht_refresh_s: float = setting(600.0, POSITIVE)
    heartbeat_interval_s: float = setting(5.0, POSITIVE)
    suspect_after_s: float = 15.0
    dead_after_s: float = 30.0
    record_ttl_s: float = setting(600.0, POSITIVE)
    target_connections: int = setting(8, count(2))
    heartbeat_rate_per_peer: float = setting(5.0, POSITIVE)
    census_interval_s: float = setting(300.0, POSITIVE)
    dial_timeout_s: float = setting(5.0, POSITIVE)
    peer_cache_size: int = setting(64, COUNT)
    max_connections: int = setting(64, COUNT)

    def check(self) -> None:
        need(is_number(self.suspect_after_s) and self.suspect_after_s > self.heartbeat_interval_s,
             self.key("suspect_after_s"), self.suspect_after_s, "more seconds than p2p.heartbeat_interval_s")
        need(is_number(self.dead_after_s) and self.dead_after_s > self.suspect_after_s,
             self.key("dead_after_s"), self.dead_after_s, "more seconds than p2p.suspect_after_s")
