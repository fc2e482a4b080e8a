"""Blobs over ``/hyperion/blob/1`` (``hyperion_node/protocols/blob.py``): the provider side, which serves the
model files this node serves (and what it fetched) to peers within its upload limits, and the fetcher side,
which pulls a blob from several providers at once, chunk by chunk, each checked before it is written.

A model pull (``hyperion-node models pull ID``) asks the peers that offer the model which file they serve
(FIND), takes the blob most of them name, fetches its manifest from any of them (checked against the address),
then its chunks from all of them at once, ``fetch_streams`` streams each. A chunk that fails its hash is
refused, counted, its provider scored down and dropped from this fetch, and the chunk asked of another. The
download lives in ``blobs/partial`` (``store.py``): killed and asked again, a pull goes on from the chunks it
had verified. The finished file is checked against the whole-file hash and its GGUF header before it is
moved into ``<data dir>/models``, where the inference runtime finds it at the node's next start.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from hyperion_node.blobs.lane import Lane, LaneBroken, LaneServer
from hyperion_node.blobs.manifest import BadManifest, Manifest
from hyperion_node.blobs.settings import BlobSettings
from hyperion_node.blobs.store import BlobStore, Partial, Shared, safe_model_name
from hyperion_node.errors import UserError
from hyperion_node.p2p.limits import PeerSlots
from hyperion_node.protocols import blob as blob_protocol
from hyperion_node.protocols.blob import MAX_ANSWER_BYTES, MAX_REQUEST_BYTES, MAX_RUN, Request
from hyperion_node.protocols.machine import ProtocolViolation
from hyperion_node.tasks.messages import FrameReader, MalformedFrame
from hyperion_node.tasks.streams import (
    STREAM_ERRORS,
    STREAM_ERRORS_OR_TIMEOUT,
    open_with_first_frame,
    read_frame,
    reset_quietly,
)

log = structlog.get_logger(__name__)

BLOB_PROTOCOL = TProtocol(blob_protocol.PROTOCOL_ID)
REQUEST_TIMEOUT_S = 10.0  # for a provider to send the request's first frame, and between chunks after
FIND_TIMEOUT_S = 60.0  # a provider hashes a model when first asked for it: ~1 s a GiB
FIND_PROVIDERS = 8  # peers asked which file they serve for a model
FLUSH_EVERY_S = 1.0  # a download's bitmap reaches the disk at least this often
FAILURES_TO_DROP = 3  # failed requests after which a provider is left out of this fetch
# What a request to a provider may end with besides an answer: it went away or timed out, or broke the protocol.
FETCH_ERRORS: tuple[type[BaseException], ...] = (*STREAM_ERRORS_OR_TIMEOUT, MalformedFrame, ProtocolViolation)
LANE_ERRORS: tuple[type[BaseException], ...] = (*FETCH_ERRORS, LaneBroken)  # a lane not to be had


class FetchFailed(UserError):
    """A blob could not be fetched: no provider, every provider failed, or the file did not check out."""


class ByteRate:
    """Paces writes so that all of them together stay under ``rate`` bytes per second (0: no limit); a burst
    of a quarter of a second passes unpaced."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._free_at = 0.0

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = trio.current_time()
        self._free_at = max(now, self._free_at) + n / self.rate
        wait = self._free_at - now - 0.25
        if wait > 0:
            await trio.sleep(wait)


@dataclass
class Pull:
    """One model pull, as ``models pull`` and ``GET /api/models/pulls`` show it."""

    model: str
    state: str = "finding"  # finding, fetching, verifying, done, failed
    blob: str | None = None
    name: str | None = None
    size: int = 0
    done_bytes: int = 0
    resumed_bytes: int = 0  # verified before this pull started (an earlier, interrupted one)
    providers: list[str] = field(default_factory=list)
    lanes: list[str] = field(default_factory=list)  # providers that sent a run of chunks over their lane
    refused_chunks: int = 0
    dropped: dict[str, str] = field(default_factory=dict)  # provider -> why it was left out
    path: str | None = None
    error: str | None = None
    hint: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Fetch:
    """One fetch's shared state between its provider workers."""

    partial: Partial
    queue: deque[int]
    providers: list[str]
    on_progress: Callable[[int], None]
    failures: Counter[str] = field(default_factory=Counter)
    dropped: dict[str, str] = field(default_factory=dict)
    pull: Pull | None = None
    flushed_at: float = 0.0
    no_lane: set[str] = field(default_factory=set)  # providers whose lane is off, unreachable or broke


class _RunTaker:
    """Takes the chunks of one GET: each must be the next one asked for and match its hash."""

    def __init__(self, service: BlobService, job: _Fetch, run: list[int]) -> None:
        self.service, self.job, self.run = service, job, run
        self.received: set[int] = set()

    async def take(self, kind: str, body: dict[str, Any]) -> bool:
        """One answer frame over the stream."""
        if kind != blob_protocol.T_CHUNK:
            return False  # NONE: it does not have the chunk after all
        job, index, data = self.job, body["index"], body["data"]
        expected = self.run[len(self.received)] if len(self.received) < len(self.run) else -1
        ok = index == expected and await trio.to_thread.run_sync(_check_and_write, job.partial, index, data)
        if not ok:
            raise BadManifest("bad_chunk", f"chunk {index} does not match its hash")
        await self.took(index)
        return len(self.received) < len(self.run)  # all asked for: done, whatever else comes

    async def took(self, index: int) -> None:
        """Chunk ``index`` is checked and written (over the stream or the lane)."""
        job = self.job
        self.received.add(index)
        job.on_progress(job.partial.manifest.chunk_length(index))
        if trio.current_time() - job.flushed_at >= FLUSH_EVERY_S:
            job.flushed_at = trio.current_time()
            await trio.to_thread.run_sync(job.partial.flush)


def _check_and_write(partial: Partial, index: int, data: bytes) -> bool:
    if not partial.manifest.chunk_ok(index, data):
        return False
    partial.write(index, data)
    return True


class BlobService:
    """A trio component: serves ``/hyperion/blob/1`` and runs pulls."""

    def __init__(self, store: BlobStore, settings: BlobSettings, p2p: Any, *, models_dir: Path,
                 shared_files: Callable[[], list[tuple[str, str, Path]]], lane_host: str = "127.0.0.1") -> None:
        self.store = store
        self.settings = settings
        self.p2p = p2p
        self.models_dir = models_dir
        self._shared_files = shared_files
        self._files: dict[tuple[str, str], Path] = {}  # what may be shared, hashed on first ask
        self._by_item: dict[tuple[str, str], Shared] = {}
        self._hashing = trio.Lock()
        self._slots = PeerSlots(per_peer=settings.streams_per_peer, total=settings.max_streams)
        self._upload = ByteRate(settings.max_upload_mib_s * 1024 * 1024)
        self.pulls: dict[str, Pull] = {}
        self.stats: Counter[str] = Counter()
        self._nursery: trio.Nursery | None = None
        self._fetching: dict[str, trio.Lock] = {}
        self.lane: LaneServer | None = None
        if settings.lane and p2p.host is not None:
            self.lane = LaneServer(store, host=lane_host, port=settings.lane_port, take_place=self._slots.take,
                                   give_place=self._slots.give, pace=self._upload.take, refuse=self._refused,
                                   penalize=p2p.table.penalize, stats=self.stats)

    # -- component ---------------------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.p2p.host is not None:
                self.p2p.host.set_stream_handler(BLOB_PROTOCOL, self.handle)
            if self.lane is not None:
                try:
                    await nursery.start(self.lane.run)
                except OSError as exc:  # the port is taken: fetchers use the stream, as from a node behind a NAT
                    log.warning("blob_lane_off", port=self.settings.lane_port, error=str(exc),
                                hint="set [blobs] lane_port to a free port, or 0 for any")
                    self.lane = None
            if self.settings.share_models:
                self._files = {(runtime, item): path for runtime, item, path in self._shared_files()}
            task_status.started()
            await trio.sleep_forever()

    async def shared_item(self, runtime: str, item: str) -> Shared | None:
        """The blob of a file a runtime serves, hashed when a peer first asks for it (once per file and
        mtime: the store keeps the address), so that a node nobody pulls from never reads its models."""
        shared = self._by_item.get((runtime, item))
        path = self._files.get((runtime, item))
        if shared is not None or path is None:
            return shared
        async with self._hashing:
            if (runtime, item) not in self._by_item:
                try:
                    self._by_item[(runtime, item)] = await trio.to_thread.run_sync(self.store.share, path)
                except OSError as exc:
                    log.warning("blob_share_failed", runtime=runtime, item=item, path=str(path), error=str(exc))
                    return None
                log.info("blob_shared", runtime=runtime, item=item, blob=self._by_item[(runtime, item)].address)
        return self._by_item[(runtime, item)]

    def status(self) -> dict[str, Any]:
        return {"shared": [{"runtime": r, "item": i, "path": str(p),
                            "blob": self._by_item[(r, i)].address if (r, i) in self._by_item else None}
                           for (r, i), p in self._files.items()],
                "stats": dict(self.stats), "streams": self._slots.held(),
                "lane": {"port": self.lane.port} if self.lane is not None else None}

    # -- provider side -----------------------------------------------------------------------------------

    async def handle(self, stream: INetStream) -> None:
        remote = str(stream.muxed_conn.peer_id)
        if not self._slots.take(remote):  # too many streams at once: refused, nobody penalised
            self.p2p.stats.reject("blob", "busy")
            await reset_quietly(stream)
            return
        try:
            await self._answer(stream, remote)
        except (MalformedFrame, ProtocolViolation, trio.TooSlowError) as exc:
            reason = "timeout" if isinstance(exc, trio.TooSlowError) else exc.reason
            self.p2p.stats.reject("blob", reason)
            self.p2p.table.penalize(remote, reason)
            log.info("stream_rejected", protocol=BLOB_PROTOCOL, peer=remote, reason=reason)
            await reset_quietly(stream)
        except STREAM_ERRORS:  # the fetcher went away (it cancelled, or has the chunks from elsewhere)
            await reset_quietly(stream)
        finally:
            self._slots.give(remote)

    async def _answer(self, stream: INetStream, remote: str) -> None:
        conversation = blob_protocol.provider_side()
        with trio.fail_after(REQUEST_TIMEOUT_S):
            data = await read_frame(stream, FrameReader(MAX_REQUEST_BYTES))
        request = Request.decode(data)
        conversation.received(request.kind, peer_id=remote)
        if request.kind == blob_protocol.T_FIND:
            shared = await self.shared_item(request.runtime, request.item)
            if shared is None:
                conversation.sending(blob_protocol.T_NONE)
                await stream.write(blob_protocol.encode_none("not served here"))
            else:
                conversation.sending(blob_protocol.T_FOUND)
                await stream.write(blob_protocol.encode_found(shared.address, shared.name, shared.manifest.size))
        elif request.kind == blob_protocol.T_MANIFEST:
            shared = self.store.shared.get(request.blob)
            if shared is None:
                conversation.sending(blob_protocol.T_NONE)
                await stream.write(blob_protocol.encode_none("not served here"))
            else:
                conversation.sending(blob_protocol.T_MANIFEST)
                await stream.write(blob_protocol.encode_manifest(shared.manifest.encode()))
        elif request.kind == blob_protocol.T_LANE:
            grant = None
            if self.lane is not None and request.blob in self.store.shared:
                grant = self.lane.grant(remote, request.blob)
            if grant is None:
                conversation.sending(blob_protocol.T_NONE)
                await stream.write(blob_protocol.encode_none("no lane here"))
            else:
                assert self.lane is not None
                conversation.sending(blob_protocol.T_LANE)
                await stream.write(blob_protocol.encode_lane(self.lane.port, grant.token, grant.key))
        else:
            for index in range(request.index, request.index + request.count):
                chunk = await trio.to_thread.run_sync(self.store.read_chunk, request.blob, index)
                if chunk is None:
                    conversation.sending(blob_protocol.T_NONE)
                    await stream.write(blob_protocol.encode_none("no such chunk here"))
                    break
                await self._upload.take(len(chunk))
                conversation.sending(blob_protocol.T_CHUNK)
                await stream.write(blob_protocol.encode_chunk(index, chunk))
                self.stats["served_bytes"] += len(chunk)
        await stream.close()

    # -- fetcher side ------------------------------------------------------------------------------------

    async def _request(self, peer: str, request: Request, on_answer: Callable[[str, dict[str, Any]], Any], *,
                       wait_s: float = REQUEST_TIMEOUT_S) -> tuple[str, int] | None:
        """Send ``request`` to ``peer`` and hand each answer to ``on_answer`` until the provider closes; returns
        the address the stream came from (host, port), where known."""
        assert self.p2p.host is not None
        conversation = blob_protocol.fetcher_side()
        conversation.sending(request.kind)
        stream = await open_with_first_frame(self.p2p.host, ID.from_base58(peer), BLOB_PROTOCOL, request.encode())
        remote: tuple[str, int] | None = getattr(stream, "get_remote_address", lambda: None)()
        reader = FrameReader(MAX_ANSWER_BYTES)
        try:
            while not conversation.done:
                with trio.fail_after(wait_s):
                    frame = await read_frame(stream, reader)
                kind, body = blob_protocol.decode_answer(frame)
                conversation.received(kind, peer_id=peer)
                if await on_answer(kind, body) is False:
                    break
        finally:
            await reset_quietly(stream)
        return remote

    async def find(self, peer: str, runtime: str, item: str) -> dict[str, Any] | None:
        """Which blob ``peer`` serves for ``runtime/item``: {blob, name, size}, or None."""
        found: list[dict[str, Any]] = []

        async def take(kind: str, body: dict[str, Any]) -> None:
            if kind == blob_protocol.T_FOUND:
                found.append(body)

        await self._request(peer, Request(blob_protocol.T_FIND, runtime=runtime, item=item), take,
                            wait_s=FIND_TIMEOUT_S)
        return found[0] if found else None

    async def manifest_from(self, peers: list[str], address: str) -> Manifest:
        """The manifest of ``address`` from the first of ``peers`` whose copy hashes to it."""
        for peer in peers:
            got: list[Manifest] = []

            async def take(kind: str, body: dict[str, Any], got: list[Manifest] = got) -> None:
                if kind == blob_protocol.T_MANIFEST:
                    got.append(Manifest.decode(body["data"], address))

            try:
                await self._request(peer, Request(blob_protocol.T_MANIFEST, blob=address), take)
            except BadManifest as exc:
                self._misbehaved(peer, f"manifest_{exc.reason}")
                continue
            except FETCH_ERRORS as exc:
                log.info("blob_manifest_failed", peer=peer, error=type(exc).__name__)
                continue
            if got:
                return got[0]
        raise FetchFailed(f"no provider sent the manifest of blob {address[:16]}",
                          hint="try again later, or name another peer with --from")

    async def fetch(self, partial: Partial, providers: list[str], on_progress: Callable[[int], None], *,
                    pull: Pull | None = None) -> None:
        """Fetch every missing chunk of ``partial`` from ``providers`` at once; raises ``FetchFailed`` when
        chunks are still missing and every provider has been dropped. ``pull`` shows refusals as they come."""
        job = _Fetch(partial, deque(partial.missing()), list(providers), on_progress, pull=pull)
        job.flushed_at = trio.current_time()
        try:
            while job.queue and job.providers:
                async with trio.open_nursery() as nursery:
                    for peer in list(job.providers):
                        for _ in range(self.settings.fetch_streams):
                            nursery.start_soon(self._worker, job, peer)
                job.queue = deque(partial.missing())
        finally:
            await trio.to_thread.run_sync(partial.flush)
        if job.queue:
            why = "; ".join(f"{p[-8:]}: {r}" for p, r in job.dropped.items()) or "none answered"
            raise FetchFailed(f"{len(job.queue)} of {partial.manifest.count} chunks could not be fetched ({why})",
                              hint="run the same command again to go on from the verified chunks")

    async def _worker(self, job: _Fetch, peer: str) -> None:
        lane = await self._open_lane(job, peer)
        try:
            await self._fetch_runs(job, peer, lane)
        finally:
            if lane is not None:
                await lane.aclose()

    async def _open_lane(self, job: _Fetch, peer: str) -> Lane | None:
        """A lane to ``peer`` for this fetch (``blobs/lane.py``), or None: then chunks come over the stream."""
        if not self.settings.lane or peer in job.no_lane:
            return None
        granted: dict[str, Any] = {}

        async def take(kind: str, body: dict[str, Any]) -> None:
            if kind == blob_protocol.T_LANE:
                granted.update(body)

        try:
            remote = await self._request(peer, Request(blob_protocol.T_LANE, blob=job.partial.address), take)
            if not granted or remote is None:
                raise LaneBroken("no lane offered")
            lane = await Lane.open(remote[0], granted["port"], granted["token"], granted["key"],
                                   job.partial.manifest)
        except LANE_ERRORS as exc:
            job.no_lane.add(peer)
            log.info("blob_lane_not_used", peer=peer, why=str(exc) or type(exc).__name__)
            return None
        return lane

    async def _fetch_runs(self, job: _Fetch, peer: str, lane: Lane | None) -> None:
        while job.queue and peer in job.providers:
            run = [job.queue.popleft()]
            while job.queue and len(run) < MAX_RUN and job.queue[0] == run[-1] + 1:
                run.append(job.queue.popleft())
            taker = _RunTaker(self, job, run)
            lane_broke = False
            try:
                if lane is not None:
                    try:
                        await lane.fetch(job.partial, run, taker.took, wait_s=REQUEST_TIMEOUT_S)
                        if job.pull is not None and peer not in job.pull.lanes:
                            job.pull.lanes.append(peer)
                    except LaneBroken as exc:  # the rest of this fetch from this provider goes over the stream
                        log.info("blob_lane_broken", peer=peer, why=str(exc))
                        job.no_lane.add(peer)
                        await lane.aclose()
                        lane, lane_broke = None, True
                else:
                    await self._request(peer, Request(blob_protocol.T_GET, blob=job.partial.address, index=run[0],
                                                      count=len(run)), taker.take)
            except BadManifest:
                if job.pull is not None:
                    job.pull.refused_chunks += 1
                self._drop(job, peer, "sent a chunk that does not match its hash")
                self._misbehaved(peer, "bad_chunk")
            except (MalformedFrame, ProtocolViolation) as exc:
                self._drop(job, peer, f"broke the protocol ({exc})")
                self._misbehaved(peer, getattr(exc, "reason", "malformed"))
            except STREAM_ERRORS_OR_TIMEOUT as exc:
                job.failures[peer] += 1
                if job.failures[peer] >= FAILURES_TO_DROP:
                    self._drop(job, peer, f"failed {job.failures[peer]} times ({type(exc).__name__})")
            missed = [i for i in run if i not in taker.received]
            if missed and peer in job.providers and not job.failures[peer] and not lane_broke:
                self._drop(job, peer, "does not have the blob")
            job.queue.extendleft(reversed(missed))

    def _drop(self, job: _Fetch, peer: str, why: str) -> None:
        if peer in job.providers:
            job.providers.remove(peer)
            job.dropped[peer] = why
            if job.pull is not None:
                job.pull.dropped[peer] = why
            log.info("blob_provider_dropped", peer=peer, why=why, left=len(job.providers))

    def _refused(self, reason: str) -> None:
        """Counted (a lane connection refused before it showed a grant has no peer to score)."""
        self.stats[f"refused:{reason}"] += 1
        self.p2p.stats.reject("blob", reason)

    def _misbehaved(self, peer: str, reason: str) -> None:
        self._refused(reason)
        self.p2p.table.penalize(peer, reason)

    # -- task inputs by address (hyperion_node/tasks/inputs.py) -------------------------------------------

    @property
    def inline_max_bytes(self) -> int:
        return self.settings.inline_max_bytes

    @property
    def max_input_bytes(self) -> int:
        return self.settings.max_input_mib * 1024 * 1024

    async def offer(self, data: bytes) -> str:
        shared = await trio.to_thread.run_sync(self.store.keep, data)
        await trio.to_thread.run_sync(self.store.evict, self.settings.cache_mib * 1024 * 1024, shared.address)
        self.stats["inputs_offered"] += 1
        return shared.address

    async def fetch_input(self, peer: str, address: str, size: int) -> bytes:
        lock = self._fetching.setdefault(address, trio.Lock())  # two tasks naming one input fetch it once
        async with lock:
            path = self.store.cached(address)
            if path is not None:
                self.stats["inputs_cached"] += 1
            else:
                path = await self._fetch_input(peer, address, size)
            manifest = self.store.manifest(address)
            if manifest is not None:
                await trio.to_thread.run_sync(self.store.share_cached, manifest)  # for spot checks, other workers
        self._fetching.pop(address, None)
        data = await trio.to_thread.run_sync(path.read_bytes)
        if len(data) != size:
            raise FetchFailed(f"input {address[:16]} is {len(data)} bytes, the task says {size}")
        return data

    async def _fetch_input(self, peer: str, address: str, size: int) -> Path:
        manifest = await self.manifest_from([peer], address)
        if manifest.size != size:
            self._misbehaved(peer, "input_size_mismatch")
            raise FetchFailed(f"input {address[:16]} is {manifest.size} bytes, the task says {size}")
        partial = await trio.to_thread.run_sync(self.store.partial, manifest)
        target = self.store.cache_dir / address

        def finish() -> None:
            partial.finish(target)
            self.store.evict(self.settings.cache_mib * 1024 * 1024, address)

        try:
            await self.fetch(partial, [peer], lambda n: self.stats.update(fetched_bytes=n))
            await trio.to_thread.run_sync(finish)
        except BadManifest as exc:
            raise FetchFailed(f"input {address[:16]} does not match its manifest ({exc})") from exc
        finally:
            await trio.to_thread.run_sync(partial.close)
        self.stats["inputs_fetched"] += 1
        return target

    # -- model pulls -------------------------------------------------------------------------------------

    def pull(self, model: str, *, providers: list[str] | None = None) -> Pull:
        """Start pulling ``model`` (or return the pull already under way); progress in ``self.pulls``."""
        running = self.pulls.get(model)
        if running is not None and running.state not in ("done", "failed"):
            return running
        if self._nursery is None:
            raise UserError("the blob service is not running yet", hint="try again in a few seconds")
        pull = Pull(model)
        self.pulls[model] = pull
        self._nursery.start_soon(self._pull, pull, providers)
        return pull

    async def _pull(self, pull: Pull, only_from: list[str] | None) -> None:
        try:
            await self._pull_steps(pull, only_from)
        except UserError as exc:
            pull.state, pull.error, pull.hint = "failed", exc.message, exc.hint
        except Exception as exc:  # a bug: say so in the pull, keep the node
            log.exception("blob_pull_crashed", model=pull.model)
            pull.state, pull.error = "failed", f"internal error: {type(exc).__name__}: {exc}"
        else:
            pull.state = "done"
        pull.finished_at = time.time()
        log.info("model_pull_" + pull.state, model=pull.model, blob=pull.blob, path=pull.path, error=pull.error,
                 bytes=pull.done_bytes - pull.resumed_bytes, providers=len(pull.providers),
                 refused_chunks=pull.refused_chunks)

    async def _pull_steps(self, pull: Pull, only_from: list[str] | None) -> None:
        me = self.p2p.peer_id
        if only_from:
            peers = [p for p in only_from if p != me]
        else:
            peers = [r.peer_id for r in await self.p2p.find_providers("inference", pull.model) if r.peer_id != me]
        if not peers:
            raise FetchFailed(f"no peer offers the model {pull.model!r}",
                              hint="check the id with `hyperion-node providers inference ID`, or wait for peers")
        answers: dict[str, dict[str, Any]] = {}

        async def ask(peer: str) -> None:
            with trio.move_on_after(FIND_TIMEOUT_S):
                if not await self.p2p.reach(peer):  # the stream may still find it through the peerstore
                    log.info("blob_provider_not_dialled", peer=peer)
                try:
                    found = await self.find(peer, "inference", pull.model)
                except FETCH_ERRORS as exc:
                    log.info("blob_find_failed", peer=peer, error=type(exc).__name__)
                    return
                if found is not None:
                    answers[peer] = found

        async with trio.open_nursery() as nursery:
            for peer in peers[:FIND_PROVIDERS]:
                nursery.start_soon(ask, peer)
        if not answers:
            raise FetchFailed(f"none of the {len(peers)} peers asked for {pull.model!r} shares it",
                              hint="they may not serve it, be unreachable, or run with [blobs] share_models = false; "
                                   "try later or another peer")
        votes = Counter(a["blob"] for a in answers.values())
        pull.blob = votes.most_common(1)[0][0]
        providers = [p for p, a in answers.items() if a["blob"] == pull.blob]
        pull.providers = providers
        pull.name = safe_model_name(next(answers[p]["name"] for p in providers), pull.model)
        manifest = await self.manifest_from(providers, pull.blob)
        pull.size = manifest.size
        target = self.models_dir / pull.name
        if target.exists():
            shared = await trio.to_thread.run_sync(self.store.share, target)
            if shared.address == pull.blob:
                pull.done_bytes, pull.path = manifest.size, str(target)
                return
            raise FetchFailed(f"{target} exists and is another file",
                              hint=f"remove it first (`hyperion-node models remove {target.stem}`)")
        partial = await trio.to_thread.run_sync(self.store.partial, manifest)
        pull.done_bytes = pull.resumed_bytes = partial.bytes_done
        pull.state = "fetching"

        def progress(n: int) -> None:
            pull.done_bytes += n
            self.stats["fetched_bytes"] += n

        try:
            await self.fetch(partial, providers, progress, pull=pull)
            pull.state = "verifying"
            await trio.to_thread.run_sync(self._finish_model, partial, target)
        finally:
            await trio.to_thread.run_sync(partial.close)
        pull.path = str(target)
        self._files.setdefault(("inference", pull.model), target)  # a provider for the next puller at once

    def _finish_model(self, partial: Partial, target: Path) -> None:
        """Whole-file hash (what the fetch did not feed it) and the GGUF header, read side by side, then the
        file is moved into the models folder."""
        try:
            partial.finish(target, check=_gguf_header)
        except _NotAModel as exc:
            raise FetchFailed(f"the fetched file is not a readable GGUF model ({exc})",
                              hint="the providers serve a broken file; pull from another peer with --from") from exc
        except BadManifest as exc:
            raise FetchFailed(f"the fetched file does not match its manifest ({exc})",
                              hint="run the pull again: the file was discarded") from exc


class _NotAModel(Exception):
    """A fetched model file whose GGUF header does not read."""


def _gguf_header(path: Path) -> None:
    from runtimes.inference.registry import read_gguf_info

    try:
        read_gguf_info(path)
    except (OSError, ValueError) as exc:
        raise _NotAModel(str(exc)) from exc
