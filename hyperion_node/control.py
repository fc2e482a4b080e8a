"""The operator's live controls: drain and resume, ban and unban, a runtime off and on, a price, a config reload.

Each takes effect in the running node at once, with no restart, and leaves an ``operator.<action>`` event that
says who (the API token's name, or ``SIGHUP``), when and why; ``/metrics`` counts them and shows the state.

- **drain** stops taking new work: the runtime registry offers nothing, so the next advert withdraws every
  offer (peers stop routing here) and the worker answers a task that still arrives BUSY, so its requester tries
  another worker at once; running tasks finish and are paid as usual. **resume** undoes it.
- **ban** closes a peer's connections and refuses its streams on every protocol, as a score ban does, for a
  while or until **unban**, whatever its score.
- **runtime off** withdraws one runtime's offers and refuses its new tasks the same way; **on** undoes it.
- **price** replaces one runtime's price per unit in its offers (adverts, admission and new receipts).
- **reload** reads the configuration again (the same file, environment and flags the node started with) and
  applies the keys that can change live (``LIVE``: the log level, which runtimes are off, runtime prices, the
  spending limits); a changed key that needs a restart is refused by name and
  keeps its running value.

Bans, switched-off runtimes, prices and drains last until the node stops; a restart starts from the
configuration (what ``reload`` reads).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from hyperion_node import logs
from hyperion_node.api.metrics import Family
from hyperion_node.api.routing import Routing, RoutingPolicies
from hyperion_node.config.loader import Config
from hyperion_node.errors import HyperionError, UserError
from hyperion_node.p2p.peer_table import PeerTable
from hyperion_node.runtime_registry import RuntimeRegistry
from hyperion_node.store.db import Store
from hyperion_node.tasks.spending import Spending

log = structlog.get_logger("hyperion_node.control")

# Keys a reload applies to the running node; any other key that changed is refused by name.
LIVE = ("logging.level", "runtimes.disabled", "spending.*", "api.routing_file")
LIVE_PREFIXES = ("price_per_",)  # runtimes.<name>.price_per_<unit>: the runtime's price


class ControlError(UserError):
    """A control that cannot be carried out as asked (an unknown runtime, a bad price)."""


@dataclass
class Controls:
    registry: RuntimeRegistry
    table: PeerTable
    store: Store
    config: Config
    spending: Spending  # this node's limits as a requester, which the orchestrator reads on every task
    reload_config: Callable[[], Config] | None = None  # how the node was configured; None: reload refused
    reload_routing: Callable[[Config], RoutingPolicies] | None = None  # the routing file a config names
    routing: Routing | None = None
    actions: Counter[str] = field(default_factory=Counter)

    async def _record(self, action: str, who: str, why: str, **data: Any) -> dict[str, Any]:
        self.actions[action] += 1
        event = {"who": who, "why": why or "(no reason given)", **data}
        await self.store.run(self.store.append_event, f"operator.{action}", event)
        log.info("operator_control", action=action, **event)
        return {"action": action, **event, "state": self.state()}

    def state(self) -> dict[str, Any]:
        held = [e for e in self.table.peers.values() if e.held]
        return {"draining": self.registry.draining, "switched_off": sorted(self.registry.switched_off),
                "prices": dict(sorted(self.registry.prices.items())),
                "banned": [{"peer_id": e.peer_id, "until": e.held_until} for e in held]}

    async def drain(self, who: str, why: str) -> dict[str, Any]:
        self.registry.draining = True
        return await self._record("drain", who, why)

    async def resume(self, who: str, why: str) -> dict[str, Any]:
        self.registry.draining = False
        return await self._record("resume", who, why)

    async def ban(self, peer_id: str, duration_s: float | None, who: str, why: str) -> dict[str, Any]:
        if not why:
            raise ControlError("a ban needs a reason", hint="say why: --reason '...'")
        if duration_s is not None and duration_s <= 0:
            raise ControlError(f"a ban lasts a positive time, not {duration_s} s", hint="--for 1h, 30m, 90s")
        self.table.ban(peer_id, duration_s)
        return await self._record("ban", who, why, peer_id=peer_id, duration_s=duration_s)

    async def unban(self, peer_id: str, who: str, why: str) -> dict[str, Any]:
        was = self.table.unban(peer_id)
        return await self._record("unban", who, why, peer_id=peer_id, was_banned=was)

    def _runtime(self, name: str) -> None:
        if name not in self.registry.loaded:
            running = ", ".join(sorted(self.registry.loaded)) or "none"
            raise ControlError(f"no runtime {name!r} runs on this node", hint=f"one of: {running}")

    async def switch(self, name: str, on: bool, who: str, why: str) -> dict[str, Any]:
        self._runtime(name)
        (self.registry.switched_off.discard if on else self.registry.switched_off.add)(name)
        return await self._record("runtime_on" if on else "runtime_off", who, why, runtime=name)

    async def price(self, name: str, value: float, who: str, why: str) -> dict[str, Any]:
        self._runtime(name)
        if not value >= 0 or value == float("inf"):
            raise ControlError(f"a price is a number >= 0, not {value}")
        self.registry.prices[name] = float(value)
        return await self._record("price", who, why, runtime=name, price_per_unit=float(value))

    async def reload(self, who: str, why: str) -> dict[str, Any]:
        if self.reload_config is None:
            raise ControlError("this node was not started from a configuration it can read again")
        try:
            new = self.reload_config()
            policies = self.reload_routing(new) if self.reload_routing is not None else None
        except HyperionError as exc:
            raise ControlError(f"the configuration does not load: {exc.one_line()}",
                               hint="fix it; the node keeps running on the configuration it has") from exc
        applied, refused = self._apply(new)
        if policies is not None and self.routing is not None:  # the file is read again, changed or not
            self.routing.policies = policies
            if new.values.get("api.routing_file"):
                applied["routing"] = sorted(policies.aliases)  # the aliases now in force
        return await self._record("reload", who, why, applied=applied, refused=refused)

    def _apply(self, new: Config) -> tuple[dict[str, Any], list[str]]:
        old_values, new_values = self.config.values, new.values
        changed = sorted(k for k in set(old_values) | set(new_values)
                         if k != "node.data_dir" and old_values.get(k) != new_values.get(k))
        applied: dict[str, Any] = {}
        refused: list[str] = []
        for key in changed:
            value = new_values.get(key)
            parts = key.split(".")
            if key == "logging.level" and isinstance(value, str):
                logs.set_level(new.logging.level)  # lower-cased by its section
            elif key == "runtimes.disabled" and isinstance(value, list | tuple):
                unknown = [n for n in value if n not in self.registry.loaded]
                if unknown:  # a runtime that did not start cannot be switched on without a restart
                    refused.append(key)
                    continue
                self.registry.switched_off = set(value)
            elif key == "api.routing_file":
                pass  # read again below, whatever changed
            elif parts[0] == "spending":
                self.spending.settings = new.spending  # checked by the loader, applied whole
            elif (len(parts) == 3 and parts[0] == "runtimes" and parts[2].startswith(LIVE_PREFIXES)
                  and parts[1] in self.registry.loaded and isinstance(value, int | float)
                  and not isinstance(value, bool) and value >= 0):
                self.registry.prices[parts[1]] = float(value)
            else:
                refused.append(key)
                continue
            applied[key] = value
        self.config = _merged(self.config, new, applied)
        return applied, refused

    def metrics(self) -> list[Family]:
        actions = Family("hyperion_operator_actions_total", "counter", "Operator controls carried out, by action")
        for action, n in sorted(self.actions.items()):
            actions.add(n, action=action)
        runtimes = Family("hyperion_runtime_enabled", "gauge", "1 when a runtime takes new work (not switched off)")
        for name in sorted(self.registry.loaded):
            runtimes.add(0 if name in self.registry.switched_off else 1, runtime=name)
        banned = sum(1 for e in self.table.peers.values() if e.held)
        return [actions, runtimes,
                Family("hyperion_draining", "gauge", "1 while the operator has the node draining").add(
                    int(self.registry.draining)),
                Family("hyperion_operator_bans", "gauge", "Peers banned by the operator").add(banned)]


def _merged(old: Config, new: Config, applied: Mapping[str, Any]) -> Config:
    """The running configuration after a reload: the old one, with the applied keys' values (so that the next
    reload compares against what runs)."""
    return dataclasses.replace(old, values={**old.values, **applied})
