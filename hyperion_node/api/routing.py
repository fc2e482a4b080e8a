"""Routing policies on the requester side: model aliases, canary, shadow and A/B splits, per alias.

A TOML file (``api.routing_file``; ``configs/routing.example.toml`` shows every key) names aliases that clients
ask for as models. Each alias has a primary ``model`` and optionally:

- ``canary = {model, percent}``: that share of the alias's requests goes to the candidate, spread evenly over
  them (with an A/B split too: that share of the requests the split leaves on the primary);
- ``ab = {model, percent}``: the same split, but sticky per ``user`` (OpenAI's field; a request without one is
  drawn per request): one user always sees the same arm;
- ``shadow = {model, percent}``: that share of requests also runs on the shadow model; the client gets the
  primary's answer; the node records whether the two agreed (the same text) and both latencies;
- ``sla = {ttft_p95_ms, per_token_p95_ms, window_s, min_requests, degraded}``: a latency objective for the
  primary. When the p95 over the window misses it, the alias falls back to the ``degraded`` model (a smaller
  model or quantization), says so in an event and in each answer's ``x-hyperion-route`` header (arm
  ``degraded``), and keeps sending one request in ``PROBE_EVERY`` to the primary; when the primary's p95 meets
  the objective again, the alias returns to it (another event).

A file that does not parse or says something wrong is refused with the line at fault; the node keeps the
policies it had (``config reload`` reads the file again). Metrics per alias and arm: requests, errors, latency,
and shadow agreement (``/metrics``, the web dashboard's data).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import tomllib
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from hyperion_node.api import streaming
from hyperion_node.api.metrics import Family, InferenceMetrics
from hyperion_node.errors import ConfigError
from hyperion_node.tasks.events import Final
from hyperion_node.tasks.metrics import Histogram
from hyperion_node.tasks.model import TaskSpec
from hyperion_node.tasks.service import Job
from hyperion_node.trio_types import TaskStatus

ARMS = ("primary", "canary", "b")
_SPLIT_KEYS = {"model", "percent"}
_ALIAS_KEYS = {"model", "canary", "ab", "shadow", "sla"}
_SLA_KEYS = {"ttft_p95_ms", "per_token_p95_ms", "window_s", "min_requests", "degraded"}
PROBE_EVERY = 5  # while an alias is degraded, one request in this many still goes to its primary, to measure it
_NAME = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")


@dataclass(frozen=True)
class Split:
    model: str
    percent: float


@dataclass(frozen=True)
class Alias:
    name: str
    model: str
    canary: Split | None = None
    ab: Split | None = None
    shadow: Split | None = None
    sla: Sla | None = None


@dataclass(frozen=True)
class Sla:
    """A latency objective for an alias's primary model, and the model to fall back to while it is missed."""

    degraded: str
    ttft_p95_ms: float | None = None
    per_token_p95_ms: float | None = None
    window_s: float = 60.0
    min_requests: int = 5


@dataclass(frozen=True)
class Route:
    """Where one request goes: the model to ask, which alias and arm chose it ("" / "primary": no alias)."""

    model: str
    alias: str = ""
    arm: str = "primary"
    shadow: str | None = None  # a model to also run the request on

    def header(self) -> str:
        return f"alias={self.alias}; arm={self.arm}; model={self.model}" + (f"; shadow={self.shadow}" if self.shadow
                                                                           else "")


def _line_of(text: str, alias: str, key: str | None = None) -> int:
    """The line an alias's table (or one of its keys) starts on, for errors that name the line."""
    lines = text.splitlines()
    header = re.compile(r"^\s*\[\s*aliases\.\"?" + re.escape(alias) + r"\"?(\.[^\]]*)?\s*\]")
    start = next((n for n, line in enumerate(lines) if header.match(line)), None)
    if start is None:
        inline = re.compile(r"^\s*\"?" + re.escape(alias) + r"\"?\s*=")
        start = next((n for n, line in enumerate(lines) if inline.match(line)), 0)
    if key is not None:
        keyed = re.compile(r"^\s*" + re.escape(key) + r"\s*=")
        for n in range(start, len(lines)):
            if n > start and lines[n].lstrip().startswith("[") and not header.match(lines[n]):
                break
            if keyed.match(lines[n]):
                return n + 1
    return start + 1


@dataclass
class RoutingPolicies:
    aliases: Mapping[str, Alias] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def load(cls, path: Path) -> RoutingPolicies:
        """The policies in ``path``; ``ConfigError`` naming the file, the line and what is wrong."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read it: {exc.strerror}", source=str(path), key="api.routing_file",
                              expected="a readable TOML file of routing policies") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", source=str(path), key="-",
                              expected="TOML as in configs/routing.example.toml") from exc
        unknown = sorted(set(data) - {"aliases"})
        if unknown:
            raise ConfigError("unknown table", source=f"{path}:1", key=unknown[0], expected="[aliases.<name>] tables")
        aliases: dict[str, Alias] = {}
        for name, table in (data.get("aliases") or {}).items():
            where = f"{path}:{_line_of(text, name)}"
            if not isinstance(table, dict):
                raise ConfigError("an alias is a table", source=where, key=f"aliases.{name}",
                                  expected='[aliases.<name>] with model = "..."')
            if not _NAME.match(name):
                raise ConfigError("not an alias name", source=where, key=f"aliases.{name}",
                                  expected="letters, digits and . _ : / - (up to 128)")
            extra = sorted(set(table) - _ALIAS_KEYS)
            if extra:
                raise ConfigError("unknown key", source=f"{path}:{_line_of(text, name, extra[0])}",
                                  key=f"aliases.{name}.{extra[0]}",
                                  expected="one of: " + ", ".join(sorted(_ALIAS_KEYS)))
            model = table.get("model")
            if not isinstance(model, str) or not _NAME.match(model):
                raise ConfigError(f"got {model!r}", source=f"{path}:{_line_of(text, name, 'model')}",
                                  key=f"aliases.{name}.model", expected="the model the alias stands for")
            splits = {kind: _split(table.get(kind), path, text, name, kind) for kind in ("canary", "ab", "shadow")}
            aliases[name] = Alias(name, model, **splits, sla=_sla(table.get("sla"), path, text, name))
        return cls(aliases, str(path))

    def resolve(self, model: str, user: str | None, draws: Draws, degraded: frozenset[str] = frozenset()) -> Route:
        """The route of a request for ``model`` (an alias, or a model as it is); ``degraded``: the aliases whose
        objective is missed now, whose requests go to their degraded model but for a probe in PROBE_EVERY."""
        alias = self.aliases.get(model)
        if alias is None:
            return Route(model)
        if alias.sla is not None and alias.name in degraded and not draws.hit(alias.name, "probe", 100 / PROBE_EVERY):
            return Route(alias.sla.degraded, alias.name, "degraded")
        arm, target = "primary", alias.model
        if alias.ab is not None:
            b = _sticky(user, alias.name) < alias.ab.percent if user else draws.hit(alias.name, "ab", alias.ab.percent)
            if b:
                arm, target = "b", alias.ab.model
        if arm == "primary" and alias.canary is not None and draws.hit(alias.name, "canary", alias.canary.percent):
            arm, target = "canary", alias.canary.model
        shadow = alias.shadow.model if alias.shadow is not None and \
            draws.hit(alias.name, "shadow", alias.shadow.percent) else None
        return Route(target, alias.name, arm, shadow)


class Draws:
    """Which requests of an alias take a split: exactly ``percent`` of any run of them, as closely as whole
    requests allow (25 of every 100 for 25 %), from a random phase per alias and split, rather than p % give or
    take a coin's luck (Bresenham's stride: request n takes it when floor(p n + phase) steps up)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._count: Counter[tuple[str, str]] = Counter()
        self._phase: dict[tuple[str, str], float] = {}

    def hit(self, alias: str, split: str, percent: float) -> bool:
        key = (alias, split)
        n = self._count[key]
        self._count[key] += 1
        phase = self._phase.setdefault(key, self._rng.random())
        share = percent / 100
        return math.floor((n + 1) * share + phase) > math.floor(n * share + phase)


def _sla(value: Any, path: Path, text: str, alias: str) -> Sla | None:
    if value is None:
        return None
    where = f"{path}:{_line_of(text, alias, 'sla')}"
    expected = '{ ttft_p95_ms = 2000, per_token_p95_ms = 200, window_s = 60, degraded = "a smaller model" }'
    if not isinstance(value, dict) or set(value) - _SLA_KEYS:
        raise ConfigError(f"got {value!r}", source=where, key=f"aliases.{alias}.sla", expected=expected)
    degraded = value.get("degraded")
    if not isinstance(degraded, str) or not _NAME.match(degraded):
        raise ConfigError(f"got {degraded!r}", source=where, key=f"aliases.{alias}.sla.degraded",
                          expected="the model to fall back to while the objective is missed")
    numbers: dict[str, Any] = {}
    for key in ("ttft_p95_ms", "per_token_p95_ms", "window_s"):
        number = value.get(key)
        if number is not None and (isinstance(number, bool) or not isinstance(number, int | float) or number <= 0):
            raise ConfigError(f"got {number!r}", source=where, key=f"aliases.{alias}.sla.{key}",
                              expected="a number above 0")
        if number is not None:
            numbers[key] = float(number)
    if "ttft_p95_ms" not in numbers and "per_token_p95_ms" not in numbers:
        raise ConfigError("no objective", source=where, key=f"aliases.{alias}.sla", expected=expected)
    least = value.get("min_requests", 5)
    if isinstance(least, bool) or not isinstance(least, int) or least < 1:
        raise ConfigError(f"got {least!r}", source=where, key=f"aliases.{alias}.sla.min_requests",
                          expected="an integer >= 1")
    return Sla(degraded=degraded, min_requests=least, **numbers)


def _split(value: Any, path: Path, text: str, alias: str, kind: str) -> Split | None:
    if value is None:
        return None
    where = f"{path}:{_line_of(text, alias, kind)}"
    if not isinstance(value, dict) or set(value) - _SPLIT_KEYS or "model" not in value:
        raise ConfigError(f"got {value!r}", source=where, key=f"aliases.{alias}.{kind}",
                          expected='{ model = "...", percent = 10 }')
    model, percent = value["model"], value.get("percent", 100 if kind == "shadow" else None)
    if not isinstance(model, str) or not _NAME.match(model):
        raise ConfigError(f"got {model!r}", source=where, key=f"aliases.{alias}.{kind}.model", expected="a model id")
    if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
        raise ConfigError(f"got {percent!r}", source=where, key=f"aliases.{alias}.{kind}.percent",
                          expected="a share of requests from 0 to 100")
    return Split(model, float(percent))


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def _sticky(user: str, alias: str) -> float:
    """A user's fixed point in [0, 100) for an alias: the same arm on every request."""
    digest = hashlib.sha256(f"{alias}\0{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


@dataclass
class RoutingStats:
    """Per alias and arm: requests, errors, latency; per alias: shadow runs and how many agreed."""

    requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (alias, arm, outcome)
    latency: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    shadows: Counter[tuple[str, str]] = field(default_factory=Counter)  # (alias, agreed|differed|failed)
    shadow_latency: dict[str, Histogram] = field(default_factory=dict)

    def observe(self, route: Route, ok: bool, seconds: float) -> None:
        if not route.alias:
            return
        self.requests[(route.alias, route.arm, "ok" if ok else "error")] += 1
        self.latency.setdefault((route.alias, route.arm), Histogram()).observe(seconds)

    def observe_shadow(self, route: Route, outcome: str, seconds: float) -> None:
        self.shadows[(route.alias, outcome)] += 1
        self.shadow_latency.setdefault(route.alias, Histogram()).observe(seconds)

    def families(self) -> list[Family]:
        requests = Family("hyperion_routing_requests_total", "counter", "Requests for an alias by arm and outcome")
        for (alias, arm, outcome), n in sorted(self.requests.items()):
            requests.add(n, alias=alias, arm=arm, outcome=outcome)
        latency = Family("hyperion_routing_latency_seconds", "histogram", "Request latency by alias and arm")
        latency.histograms = [({"alias": a, "arm": arm}, h) for (a, arm), h in sorted(self.latency.items())]
        shadows = Family("hyperion_routing_shadow_total", "counter",
                         "Shadow runs by alias: agreed (the same text as the primary), differed or failed")
        for (alias, outcome), n in sorted(self.shadows.items()):
            shadows.add(n, alias=alias, outcome=outcome)
        shadow_latency = Family("hyperion_routing_shadow_latency_seconds", "histogram", "Shadow run latency by alias")
        shadow_latency.histograms = [({"alias": a}, h) for a, h in sorted(self.shadow_latency.items())]
        return [requests, latency, shadows, shadow_latency]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (alias, arm, outcome), n in self.requests.items():
            out.setdefault(alias, {"arms": {}, "shadow": {}})["arms"].setdefault(arm, {})[outcome] = n
        for (alias, outcome), n in self.shadows.items():
            out.setdefault(alias, {"arms": {}, "shadow": {}})["shadow"][outcome] = n
        return out


MAX_SHADOWS = 4  # shadow runs at once; a request beyond it runs no shadow (counted as "skipped")


class Routing:
    """The policies in force (replaced whole by a reload), their statistics, and the shadow runs: a trio
    component whose nursery holds the shadows, which outlive the request that started them."""

    def __init__(self, policies: RoutingPolicies, submit: Callable[[TaskSpec], Job],
                 timeout_s: Callable[[], float],
                 on_event: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None) -> None:
        self.policies = policies
        self.inference = InferenceMetrics()  # tokens, time to first token and per token, per model
        self.degraded: set[str] = set()  # aliases whose objective is missed now: their degraded model serves
        self._windows: dict[str, deque[tuple[float, float | None, float | None]]] = {}
        self._on_event = on_event
        self.stats = RoutingStats()
        self.draws = Draws()
        self._submit = submit
        self._timeout_s = timeout_s
        self._nursery: trio.Nursery | None = None
        self._shadows = 0

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def route(self, model: str, user: Any) -> Route:
        return self.policies.resolve(model, user if isinstance(user, str) and user else None, self.draws,
                                     frozenset(self.degraded))

    def observe(self, route: Route, ok: bool, seconds: float, *, ttft_s: float | None = None,
                tokens: int = 0) -> None:
        """One request's outcome; the primary's latencies also feed its alias's objective (``Sla``): time to
        the first output, and per token after it (``tokens`` generated)."""
        per_token_s = (seconds - ttft_s) / (tokens - 1) if ttft_s is not None and tokens > 1 else None
        self.stats.observe(route, ok, seconds)
        if ok:
            self.inference.observe(route.model, tokens, ttft_s, per_token_s)
        alias = self.policies.aliases.get(route.alias)
        if alias is None or alias.sla is None or route.arm != "primary" or not ok:
            return
        sla, now = alias.sla, trio.current_time()
        window = self._windows.setdefault(alias.name, deque())
        window.append((now, ttft_s, per_token_s))
        while window and window[0][0] < now - sla.window_s:
            window.popleft()
        if len(window) < sla.min_requests:
            return
        ttft = _p95([w[1] for w in window if w[1] is not None])
        per_token = _p95([w[2] for w in window if w[2] is not None])
        missed = []
        if sla.ttft_p95_ms is not None and ttft is not None and ttft * 1000 > sla.ttft_p95_ms:
            missed.append(f"p95 time to first token {ttft * 1000:.0f} ms > {sla.ttft_p95_ms:.0f}")
        if sla.per_token_p95_ms is not None and per_token is not None and per_token * 1000 > sla.per_token_p95_ms:
            missed.append(f"p95 per token {per_token * 1000:.0f} ms > {sla.per_token_p95_ms:.0f}")
        data = {"alias": alias.name, "primary": alias.model, "degraded": sla.degraded, "window_s": sla.window_s,
                "requests": len(window), "ttft_p95_ms": None if ttft is None else round(ttft * 1000, 1),
                "per_token_p95_ms": None if per_token is None else round(per_token * 1000, 1)}
        if missed and alias.name not in self.degraded:
            self.degraded.add(alias.name)
            self._event("routing.degraded", {**data, "why": "; ".join(missed)})
        elif not missed and alias.name in self.degraded:
            self.degraded.discard(alias.name)
            self._event("routing.restored", data)

    def serve(self, route: Route, payload: Mapping[str, Any]) -> Served:
        """The request starting now on ``route``, asking ``payload`` (what a shadow asks too)."""
        return Served(self, route, payload)

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        if self._on_event is not None and self._nursery is not None:
            self._nursery.start_soon(self._on_event, kind, data)

    def shadow(self, route: Route, payload: Mapping[str, Any], answered: str) -> None:
        """Run the request on the route's shadow model too, and record whether it agrees with ``answered``."""
        if route.shadow is None or self._nursery is None:
            return
        if self._shadows >= MAX_SHADOWS:
            self.stats.observe_shadow(route, "skipped", 0.0)
            return
        self._shadows += 1
        self._nursery.start_soon(self._run_shadow, route, dict(payload), answered)

    async def _run_shadow(self, route: Route, payload: dict[str, Any], answered: str) -> None:
        started_at = trio.current_time()
        assert route.shadow is not None
        try:
            job = self._submit(TaskSpec(runtime="inference", item=route.shadow,
                                        payload={**payload, "model": route.shadow}, timeout_s=self._timeout_s()))
            started = await streaming.start(job)
            _, last = await streaming.collect(started)
            if isinstance(last, Final):
                outcome = "agreed" if str(last.output.get("text", "")) == answered else "differed"
            else:
                outcome = "failed"
        except Exception:  # a shadow never fails the node; counted
            outcome = "failed"
        finally:
            self._shadows -= 1
        self.stats.observe_shadow(route, outcome, trio.current_time() - started_at)


class Served:
    """One API request as the routing policies see it: when it began, when its first output came, how it ended
    (then its latencies are observed and its shadow, if the route has one, runs)."""

    def __init__(self, routing: Routing, route: Route, payload: Mapping[str, Any]) -> None:
        self._routing = routing
        self._route = route
        self._payload = payload
        self._began = trio.current_time()
        self._first_at: float | None = None

    def answering(self) -> None:
        """The first output is here (or the request ended before one)."""
        self._first_at = trio.current_time()

    def ended(self, ok: bool, final: Final | None = None) -> None:
        output = final.output if final is not None else {}
        ttft = self._first_at - self._began if self._first_at is not None else None
        self._routing.observe(self._route, ok, trio.current_time() - self._began, ttft_s=ttft,
                              tokens=int(output.get("tokens_out", 0)))
        if ok and final is not None:
            self._routing.shadow(self._route, self._payload, str(output.get("text", "")))
