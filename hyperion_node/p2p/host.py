"""The node's libp2p host: identity key, TCP listener, Noise encryption, Yamux multiplexing.

This is the node's seat in the network; discovery, adverts and gossip are layered on top of it. The host
is created with the node's own Ed25519 key so that the peer ID printed by ``hyperion-node id`` is the one
peers see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import structlog
import trio
from libp2p import new_host

from hyperion_node.config.loader import P2PSettings
from hyperion_node.errors import EnvironmentProblem
from hyperion_node.identity import Identity
from hyperion_node.trio_types import TaskStatus

log = structlog.get_logger(__name__)


def listen_multiaddrs(settings: P2PSettings) -> list[multiaddr.Multiaddr]:
    host = settings.listen_host
    proto = "ip6" if ":" in host else "ip4"
    return [multiaddr.Multiaddr(f"/{proto}/{host}/tcp/{settings.tcp_port}")]


@dataclass
class P2PHost:
    """Owns the libp2p host for the daemon's lifetime. ``host`` is set between ``started()`` and exit."""

    identity: Identity
    settings: P2PSettings
    host: Any = field(default=None, init=False)  # libp2p.abc.IHost; libp2p ships partial type information

    def listen_addrs(self) -> list[str]:
        """Addresses actually bound (port 0 resolved), with our /p2p/<peer ID> suffix."""
        if self.host is None:
            return []
        return [str(addr) for addr in self.host.get_addrs()]

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        addrs = listen_multiaddrs(self.settings)
        announce: Sequence[multiaddr.Multiaddr] | None = (
            [multiaddr.Multiaddr(a) for a in self.settings.announce_addrs] or None
        )
        host = new_host(
            key_pair=self.identity.key_pair,
            listen_addrs=addrs,
            muxer_preference="YAMUX",
            announce_addrs=announce,
        )
        try:
            async with host.run(listen_addrs=addrs):
                if not host.get_transport_addrs():
                    raise EnvironmentProblem(
                        f"the P2P host could not listen on {addrs[0]}",
                        hint="is the port in use? set p2p.tcp_port (0 picks a free one)",
                    )
                self.host = host
                log.info("p2p_listening", addrs=self.listen_addrs())
                task_status.started()
                await trio.sleep_forever()
        except OSError as exc:
            raise EnvironmentProblem(
                f"the P2P host could not listen on {addrs[0]}: {exc.strerror or exc}",
                hint="is the port in use? set p2p.tcp_port (0 picks a free one)",
            ) from exc
        finally:
            self.host = None
