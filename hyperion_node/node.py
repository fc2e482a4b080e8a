"""One node's parts, built and started the same way for ``hyperion-node start`` and for each virtual node of
``hyperion-node start --demo``: :class:`Node` is what the control API and the dashboard read,
:func:`build_node` wires the components together and :func:`start_components` starts them in order inside
the caller's nursery (each with ``await nursery.start(component.run)``, so the node is ready when it returns).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio

from hyperion_node import __version__
from hyperion_node.api.metrics import Family
from hyperion_node.api.routing import Routing, RoutingPolicies
from hyperion_node.api.server import ApiServer
from hyperion_node.blobs.service import BlobService, Pull
from hyperion_node.blobs.store import BlobStore
from hyperion_node.clock import now_ms
from hyperion_node.config import Config
from hyperion_node.control import ControlError, Controls
from hyperion_node.dashboard.service import Dashboard
from hyperion_node.datadir import DataDir
from hyperion_node.errors import InternalError
from hyperion_node.hardware import HardwareProfile, TelemetrySampler
from hyperion_node.identity import Identity
from hyperion_node.ledger.chain import Ledger
from hyperion_node.ledger.epochs import SignedEpoch
from hyperion_node.ledger.money import atto_to_credits
from hyperion_node.ledger.rewards import StallThresholds, compute_rewards
from hyperion_node.ledger.service import LedgerService
from hyperion_node.p2p.messages import HEALTH_DRAINING, HEALTH_OK, OfferAd
from hyperion_node.p2p.network import LocalState, P2PNetwork, Stack
from hyperion_node.runtime_registry import RuntimeRegistry
from hyperion_node.store import Store
from hyperion_node.tasks.model import TaskSpec
from hyperion_node.tasks.render_job import RenderJob, RenderJobs
from hyperion_node.tasks.render_request import RenderJobRequest
from hyperion_node.tasks.service import Job, Orchestrator
from hyperion_node.tasks.spending import Spending

log = structlog.get_logger(__name__)

MANAGED_MODELS_DIR = "models"  # <data dir>/models: what `models add` and `models pull` put there, the runtime reads


@dataclass
class Node:
    """The running node's parts, as the control API reads them."""

    config: Config
    data_dir: DataDir
    identity: Identity
    store: Store
    hardware_profile: HardwareProfile
    sampler: TelemetrySampler
    runtimes: RuntimeRegistry
    p2p: P2PNetwork = field(init=False)  # built after the node: its LocalState reads the node
    ledger: LedgerService = field(init=False)
    orchestrator: Orchestrator | None = None  # started after the P2P layer, whose heartbeats read load()
    renders: RenderJobs | None = None  # render jobs split across workers, each chunk an orchestrator task
    api: ApiServer | None = None
    blobs: BlobService | None = None  # /hyperion/blob/1: model files served to peers, and model pulls
    dashboard: Dashboard | None = None  # time series for / and `top`, sampled once a second
    controls: Controls = field(init=False)  # the operator's live controls (control.py)
    routing: Routing = field(init=False)  # the API's routing policies (api/routing.py)
    started_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.config.node.name or f"hyperion-{str(self.identity.peer_id)[-8:]}"

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "peer_id": str(self.identity.peer_id), "version": __version__}

    def status(self) -> dict[str, Any]:
        gpus = self.hardware_profile.gpus
        return {
            "name": self.name,
            "version": __version__,
            "pid": os.getpid(),
            "peer_id": str(self.identity.peer_id),
            "uptime_s": round(time.time() - self.started_at, 3),
            "data_dir": str(self.data_dir.root),
            "addresses": {
                "p2p": self.p2p.listen_addrs(),
                "api": self.api.url if self.api else None,
            },
            "hardware": {
                "cpu": self.hardware_profile.cpu.model,
                "cpu_cores": self.hardware_profile.cpu.logical_cores,
                "ram_total_bytes": self.hardware_profile.ram_total_bytes,
                "gpus": [f"{g.name} ({g.vram_total_bytes // 2**20} MiB)" for g in gpus],
                "gpu_status": self.hardware_profile.gpu_status,
            },
            "runtimes": self.runtimes.describe(),
            "peers": {"known": len(self.p2p.table.peers), "live": len(self.p2p.table.live_peers()),
                      "connected": self.p2p.status()["connected"]},
            "blobs": self.blobs.status() if self.blobs is not None else None,
            "controls": self.controls.state(),
        }

    def hardware(self) -> dict[str, Any]:
        latest = self.sampler.latest
        return {
            "profile": self.hardware_profile.to_json(),
            "telemetry": dataclasses.asdict(latest) if latest else None,
        }

    def peers(self) -> list[dict[str, Any]]:
        return self.p2p.table.to_json(trio.current_time())

    def p2p_status(self) -> dict[str, Any]:
        return self.p2p.status()

    async def providers(self, runtime: str, item: str) -> list[dict[str, Any]]:
        records = await self.p2p.find_providers(runtime, item)
        return [
            {"peer_id": r.peer_id, "name": r.name, "addrs": list(r.addrs), "seq": r.seq, "load": r.load,
             "offers": [dataclasses.asdict(o) for o in r.offers if o.runtime == runtime and o.item == item]}
            for r in records
        ]

    async def doctor(self) -> list[dict[str, Any]]:
        """Checks only a running node can make: listen addresses, reachability from a peer, bootstrap
        peers, clock skew. Each result: name, ok (True/False/None = could not check), detail, fix."""
        p2p = self.p2p
        checks: list[dict[str, Any]] = []

        def check(name: str, ok: bool | None, detail: str, fix: str = "") -> None:
            checks.append({"name": name, "ok": ok, "detail": detail, "fix": "" if ok else fix})

        addrs = p2p.listen_addrs()
        only_loopback = all("/ip4/127." in a or "/ip6/::1/" in a for a in addrs)
        check("listen addresses", bool(addrs) and not (only_loopback and not p2p.settings.announce_addrs),
              ", ".join(addrs) or "none",
              'set p2p.listen_host = "0.0.0.0" (or announce an address with p2p.announce_addrs) '
              "so peers on other machines can reach this node")
        live = [e for e in p2p.table.live_peers() if e.connected]
        if not live:
            check("reachable from peers", None, "no connected peer to ask for a dial-back",
                  "connect to a peer first: set p2p.bootstrap, or start another node on this network")
        else:
            try:
                result = await p2p.request_dialback(live[0].peer_id)
            except Exception as exc:  # the asked peer may be old, gone or broken: say so, do not crash
                check("reachable from peers", None, f"dial-back via {live[0].peer_id} failed: {type(exc).__name__}",
                      "try again later, or ask another peer")
            else:
                bad = [f"{a} ({e})" for a, ok, e in result.results if not ok]
                if not result.results:  # the peer sees us at an address we do not listen on: NAT
                    check("reachable from peers", False,
                          f"{live[0].name or live[0].peer_id} sees this node at an address it does not listen on",
                          f"behind NAT: forward TCP port {p2p.settings.tcp_port} on the router and set "
                          "p2p.announce_addrs to the public address")
                else:
                    check("reachable from peers", not bad,
                          f"{live[0].name or live[0].peer_id} dialled " + ", ".join(
                              f"{a}: {'ok' if ok else e}" for a, ok, e in result.results),
                          f"open or forward TCP port {p2p.settings.tcp_port} in the firewall/router, or set "
                          f"p2p.announce_addrs to the forwarded address; unreachable: {', '.join(bad)}")
        if p2p.settings.quic:
            check("QUIC reachable", None,
                  "not checked: a dial-back cannot tell an unanswered UDP port from a closed one",
                  f"make sure UDP port {p2p.settings.quic_port} is open too, or set p2p.quic = false")
        for addr in p2p.settings.bootstrap:
            peer_id = addr.rsplit("/p2p/", 1)[-1]
            entry = p2p.table.get(peer_id)
            reached = entry is not None and entry.state.value in ("alive", "draining")
            check(f"bootstrap {peer_id[-8:]}", reached, addr if reached else f"{addr} is not alive",
                  "check that the bootstrap node runs and its address is right in p2p.bootstrap")
        # Clocks compare on heartbeats, which only subscribers receive: subscribe to a few connected peers.
        with trio.move_on_after(3.0):
            await p2p.hear_from([e.peer_id for e in live[:5]])
        skews = sorted(e.clock_skew_s for e in p2p.table.live_peers() if e.clock_skew_s is not None)
        if skews:
            median = skews[len(skews) // 2]
            check("clock skew", abs(median) <= 2.0, f"median {median:+.2f} s against {len(skews)} peers",
                  "synchronise the clock (e.g. `timedatectl set-ntp true`): receipts carry timestamps")
        else:
            check("clock skew", None, "no peer heartbeats yet to compare clocks with", "")
        return checks

    # -- what the P2P layer advertises about this node ------------------------------------------------------

    def offer_ads(self) -> list[OfferAd]:
        return [
            OfferAd(runtime=o.runtime, item=o.item, unit=o.unit, price_per_unit=o.price_per_unit,
                    capacity=o.capacity, throughput=o.throughput,
                    tier=tier if isinstance(tier := o.details.get("tier"), str) else None)
            for o in self.runtimes.offers()
        ]

    def hardware_ad(self) -> dict[str, Any]:
        profile = self.hardware_profile
        return {
            "cpu": profile.cpu.model, "cores": profile.cpu.logical_cores, "ram_bytes": profile.ram_total_bytes,
            "gpus": [{"name": g.name, "vram_bytes": g.vram_total_bytes} for g in profile.gpus],
        }

    def telemetry_ad(self) -> dict[str, Any]:
        latest = self.sampler.latest
        if latest is None:
            return {}
        return {
            "ram_available_bytes": latest.ram_available_bytes,
            "gpus": [{"util": g.utilization_percent, "vram_free": g.vram_free_bytes, "temp_c": g.temperature_c,
                      "power_w": g.power_watts} for g in latest.gpus],
        }

    def load(self) -> tuple[int, int]:
        """(queue depth, running tasks) of the work this node does for the network, for its heartbeats."""
        return self.orchestrator.load() if self.orchestrator is not None else (0, 0)

    @property
    def _tasks(self) -> Orchestrator:
        if self.orchestrator is None:
            raise InternalError("the orchestrator is not running yet")
        return self.orchestrator

    def free_memory(self) -> int | None:
        latest = self.sampler.latest
        if latest is None:
            return None
        vram = [g.vram_free_bytes for g in latest.gpus if g.vram_free_bytes is not None]
        return max(vram) if vram else latest.ram_available_bytes

    # -- tasks ------------------------------------------------------------------------------------------

    def submit(self, spec: TaskSpec) -> Job:
        return self._tasks.submit(spec)

    def render(self, request: RenderJobRequest) -> RenderJob:
        if self.renders is None:
            raise InternalError("render jobs are not running yet")
        return self.renders.submit(request)

    def default_timeout_s(self) -> float:
        return self.config.tasks.default_timeout_s

    def served_models(self, *, include_gone: bool = False, runtime: str = "inference") -> dict[str, list[str]]:
        return self._tasks.served_models(include_gone=include_gone, runtime=runtime)

    async def tasks(self, limit: int, role: str | None, state: str | None) -> list[dict[str, Any]]:
        history = self._tasks.history
        await self._tasks.history_writer.flush()  # the states still queued for the background flush, too
        records = await self.store.run(lambda: history.recent(limit=limit, role=role, state=state))
        return [r.to_json() for r in records]

    async def task(self, task_id: str) -> list[dict[str, Any]]:
        history = self._tasks.history
        await self._tasks.history_writer.flush()
        records = await self.store.run(history.get, task_id)
        if not records and len(task_id) < 32:
            records = await self.store.run(history.find, task_id)
        return [r.to_json() for r in records]

    def tasks_status(self) -> dict[str, Any]:
        return self._tasks.describe()

    def reputation_of(self, peer_id: str) -> dict[str, Any]:
        view = self._tasks.reputation
        return {"peer_id": peer_id, **dataclasses.asdict(view.get(peer_id)),
                "reliability": round(view.reliability(peer_id), 4), "standing": round(view.standing(peer_id), 4),
                "vouchers": view.trust.vouchers(peer_id)}

    def dashboard_view(self, since: float) -> dict[str, Any]:
        if self.dashboard is None:
            raise InternalError("the dashboard is not running yet")
        return self.dashboard.view(since)

    async def _publish_epoch(self, epoch: SignedEpoch) -> None:
        await self._tasks.publish_epoch(epoch)

    async def rewards(self) -> dict[str, Any]:
        """Earned, pending and disputed, per runtime and period, with stall warnings, from the ledger.
        Failed tasks are the orchestrator's ``task.failed`` events."""
        ledger = Ledger(self.store, str(self.identity.peer_id))
        summaries = await self.store.run(ledger.summaries)
        failed = await self.store.run(self.store.execute, "SELECT count(*) FROM events WHERE kind = 'task.failed'")
        settings = self.config.ledger
        return compute_rewards(
            summaries,
            now_ms=now_ms(),
            available_since_ms=int(self.started_at * 1000),
            failed_tasks=int(failed[0][0]),
            thresholds=StallThresholds(settings.idle_warning_minutes, settings.unsettled_warning_minutes),
        )

    async def metrics(self) -> list[Family]:
        """Everything /metrics exposes, gathered now (see hyperion_node/api/metrics.py)."""
        families: list[Family] = []
        if self.orchestrator is not None:
            metrics = self.orchestrator.metrics
            tasks = Family("hyperion_tasks_total", "counter", "Tasks by runtime, side and outcome")
            for (runtime, side, outcome), n in sorted(metrics.outcomes.items()):
                tasks.add(n, runtime=runtime, side=side, outcome=outcome)
            durations = Family("hyperion_task_duration_seconds", "histogram", "Task duration by runtime and side")
            durations.histograms = [({"runtime": r, "side": side}, h)
                                    for (r, side), h in sorted(metrics.durations.items())]
            queued, running = self.orchestrator.load()
            families += [tasks, durations,
                         Family("hyperion_queue_depth", "gauge", "Admitted tasks waiting for a slot").add(queued),
                         Family("hyperion_running_tasks", "gauge", "Tasks running for peers").add(running)]
        latest = self.sampler.latest
        util = Family("hyperion_gpu_utilization_percent", "gauge", "GPU utilization")
        vram = Family("hyperion_gpu_vram_free_bytes", "gauge", "Free GPU memory")
        temp = Family("hyperion_gpu_temperature_celsius", "gauge", "GPU temperature")
        ram = Family("hyperion_ram_available_bytes", "gauge", "Available RAM")
        if latest is not None:
            for gpu in latest.gpus:
                util.add(gpu.utilization_percent, gpu=str(gpu.index))
                vram.add(gpu.vram_free_bytes, gpu=str(gpu.index))
                temp.add(gpu.temperature_c, gpu=str(gpu.index))
            ram.add(latest.ram_available_bytes)
        families += [util, vram, temp, ram]
        peers = Family("hyperion_peers", "gauge", "Peers in the peer table by state")
        states = Counter(e.state.value for e in self.p2p.table.peers.values())
        for state in ("alive", "suspect", "dead", "draining", "left"):
            peers.add(states.get(state, 0), state=state)
        stats = self.p2p.stats
        gossip = Family("hyperion_p2p_messages_total", "counter", "P2P messages by protocol and direction")
        for protocol, n in sorted(stats.received.items()):
            gossip.add(n, protocol=protocol, direction="in")
        for protocol, n in sorted(stats.sent.items()):
            gossip.add(n, protocol=protocol, direction="out")
        rejected = Family("hyperion_rejected_messages_total", "counter", "Messages from peers dropped, by reason")
        for reason, n in sorted(stats.rejected.items()):
            rejected.add(n, reason=reason)
        families += [peers, gossip, rejected]
        ledger = Ledger(self.store, str(self.identity.peer_id))
        summaries = await self.store.run(ledger.summaries)
        receipts = Family("hyperion_receipts", "gauge", "Receipts in the ledger by status and role")
        for (status, role), n in sorted(Counter((r.status, r.role) for r in summaries).items()):
            receipts.add(n, status=status, role=role)
        credits = Family("hyperion_rewards_credits", "gauge", "Credits earned (settled), pending and disputed")
        earning = [r for r in summaries if r.role == "worker"]
        for status, kind in (("settled", "earned"), ("pending", "pending"), ("disputed", "disputed")):
            credits.add(atto_to_credits(sum(r.total for r in earning if r.status == status)), kind=kind)
        degraded = Family("hyperion_routing_degraded", "gauge",
                          "1 while an alias serves its degraded model because its SLA is missed")
        for name, alias in sorted(self.routing.policies.aliases.items()):
            if alias.sla is not None:
                degraded.add(int(name in self.routing.degraded), alias=name)
        families += [receipts, credits, *self.controls.metrics(), *self.routing.stats.families(), degraded,
                     *self.routing.inference.families()]
        if self.orchestrator is not None:
            checks = Family("hyperion_verify_total", "counter",
                            "Spot checks and dispute cases by outcome (passed, disputed, case_confirmed...)")
            for outcome, n in sorted(self.orchestrator.spot_checker.stats.items()):
                checks.add(n, outcome=outcome)
            sampled = self.orchestrator.spot_checker.sampler.to_map()
            spent = Family("hyperion_verify_spent_share", "gauge",
                           "Checks drawn so far, as a share of the compute bought (goal: verify.budget)")
            spent.add(sampled["spent_share"])
            families += [checks, spent]
        return families

    async def audit(self, task_id: str) -> dict[str, Any]:
        """Check one of this node's own recent results here (``SpotChecker.audit``)."""
        return await self._tasks.spot_checker.audit(task_id)

    def verify_evidence(self) -> dict[str, Any]:
        """The spot checks' sampling account and evidence per worker (``SpotChecker``)."""
        checker = self._tasks.spot_checker
        return {"sampling": checker.sampler.to_map(), "workers": checker.evidence.snapshot()}

    async def record_event(self, kind: str, data: dict[str, Any]) -> None:
        """Record an event and log it (the routing policies' SLA changes)."""
        log.info(kind.replace(".", "_"), **data)
        await self.store.run(self.store.append_event, kind, data)

    async def operate(self, action: str, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        """Carry out an operator's control (``control.py``); ``ControlError`` when it cannot be done as asked."""
        controls, why = self.controls, str(args.get("reason") or "")
        match action:
            case "drain":
                return await controls.drain(who, why)
            case "resume":
                return await controls.resume(who, why)
            case "ban":
                return await controls.ban(str(args["peer_id"]), args.get("for_s"), who, why)
            case "unban":
                return await controls.unban(str(args["peer_id"]), who, why)
            case "runtime":
                return await controls.switch(str(args["runtime"]), bool(args["enabled"]), who, why)
            case "price":
                return await controls.price(str(args["runtime"]), float(args["price_per_unit"]), who, why)
            case "reload":
                return await controls.reload(who, why)
        raise ControlError(f"no control {action!r}")

    def pull_model(self, model: str, providers: list[str] | None = None) -> Pull:
        if self.blobs is None:
            raise InternalError("pull_model() called before the blob service started")
        return self.blobs.pull(model, providers=providers)

    def pulls(self) -> list[Pull]:
        return list(self.blobs.pulls.values()) if self.blobs is not None else []

    async def events(self, since_id: int, limit: int, since_time: float = 0.0) -> list[dict[str, Any]]:
        events = await self.store.run(lambda: self.store.events(since_id=since_id, limit=limit,
                                                                since_time=since_time))
        return [dataclasses.asdict(e) for e in events]


def load_routing(config: Config, data_dir: DataDir) -> RoutingPolicies:
    """The routing policies ``api.routing_file`` names (relative to the data dir), or none."""
    name = config.values.get("api.routing_file") or ""
    return RoutingPolicies.load(data_dir.root / Path(name).expanduser()) if name else RoutingPolicies()


def build_node(config: Config, data_dir: DataDir, store: Store, identity: Identity, profile: HardwareProfile,
               sampler: TelemetrySampler, registry: RuntimeRegistry | None = None,
               stack: Stack | None = None, reload_config: Callable[[], Config] | None = None) -> Node:
    """Wire one node's parts. ``registry`` defaults to the installed runtimes, configured by ``config``; the
    demo passes one built on its simulated runtimes (``RuntimeRegistry(entry_points=...)``), and with
    ``--network memory`` the stack of the in-process fabric its nodes share in place of libp2p
    (``hyperion_demo/fabric.py``)."""
    runtimes = registry or RuntimeRegistry(
        store=store,
        data_dir=data_dir.root,
        hardware=profile.summary(),
        settings=config.runtime_settings,
        disabled=config.runtimes_disabled,
        benchmark_on_start=config.hardware.benchmark_on_start,
        auto_priced=config.pricing.auto,
        auto_credits_per_hour=config.pricing.auto_credits_per_hour,
    )
    node = Node(config=config, data_dir=data_dir, identity=identity, store=store, hardware_profile=profile,
                sampler=sampler, runtimes=runtimes)
    node.p2p = P2PNetwork(
        identity, config.p2p, store,
        LocalState(offers=node.offer_ads, hardware=node.hardware_ad, telemetry=node.telemetry_ad, load=node.load,
                   health=lambda: HEALTH_DRAINING if runtimes.draining else HEALTH_OK),  # an operator's drain
        name=node.name, stack=stack,
    )
    node.routing = Routing(load_routing(config, data_dir), node.submit, node.default_timeout_s,
                           on_event=node.record_event)
    node.controls = Controls(registry=runtimes, table=node.p2p.table, store=store, config=config,
                             spending=Spending(config.spending, store), reload_config=reload_config,
                             reload_routing=lambda cfg: load_routing(cfg, data_dir), routing=node.routing)
    return node


async def start_components(node: Node, nursery: trio.Nursery, *, api_token: str | None,
                           dashboard: bool = True) -> None:
    """Start every component of ``node`` in ``nursery``, in dependency order; with ``api_token`` None there is
    no control API (the demo's virtual nodes are read in-process), with ``dashboard`` False no dashboard
    sampler (the demo shows one node's)."""
    config, store, identity = node.config, node.store, node.identity
    await nursery.start(node.sampler.run)
    await nursery.start(node.runtimes.run)
    await nursery.start(node.p2p.run)
    node.blobs = BlobService(BlobStore(node.data_dir.root), config.blobs, node.p2p,
                             models_dir=node.data_dir.root / MANAGED_MODELS_DIR,
                             shared_files=node.runtimes.shared_files, lane_host=config.p2p.listen_host)
    await nursery.start(node.blobs.run)
    node.ledger = LedgerService(store, identity, epoch_receipts=config.ledger.epoch_receipts,
                                epoch_minutes=config.ledger.epoch_minutes, on_epoch=node._publish_epoch)
    node.orchestrator = Orchestrator(
        identity=identity, store=store, runtimes=node.runtimes, p2p=node.p2p, ledger=node.ledger,
        tasks=config.tasks, scheduler=config.scheduler, hardware=node.hardware_ad,
        free_memory=node.free_memory, verify=config.verify, dealings_interval_s=config.ledger.dealings_interval_s,
        blobs=node.blobs, spending=node.controls.spending)
    await nursery.start(node.ledger.run)
    await nursery.start(node.orchestrator.run)
    node.renders = RenderJobs(node.orchestrator)
    await nursery.start(node.renders.run)
    await nursery.start(node.routing.run)
    if dashboard:
        node.dashboard = Dashboard(node, peer_id=str(identity.peer_id))
        await nursery.start(node.dashboard.run)
    if api_token is not None:
        node.api = ApiServer(node, api_token, config.api, token_path=str(node.data_dir.token_path))
        await nursery.start(node.api.run)
