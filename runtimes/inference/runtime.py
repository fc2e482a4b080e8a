"""LLM inference on llama-cpp-python: the ``inference`` runtime.

The runtime is the glue between the node and llama.cpp: the model registry and its warm pool, one batch
engine per loaded model (``batching.py``: up to ``max_streams`` generations in one llama context, one copy
of the weights), benchmark and offers, admission estimates, and the verification of another worker's
result (``verifier.py``). Requests are validated in ``request.py``, prompts tokenized in ``prompts.py``.

Threads and cancellation. llama.cpp blocks, so model loads, tokenizing and verifications run in worker
threads through ``trio.to_thread.run_sync``; generations run in the model's engine thread, which takes
jobs from every caller and decodes them together. Requests beyond ``max_streams`` wait in the engine's
queue (and the worker's admission keeps that queue short: ``tasks.queue_depth``). A cancelled caller
cancels its stream and returns at once; the engine drops the sequence at its next step, so its place and its
KV cells are free within one decode step. Verifications take their own instance of the model from the
pool, one at a time per model.

Tokens do not wait for the network. The engine hands each decoded piece to the event loop
(``TrioToken.run_sync_soon``) and goes on decoding; a sender task in the calling task's nursery, under its
cancel scope, emits them in order. An error in the sender cancels the task, which cancels its stream.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import trio

from hyperion_node.errors import InternalError, RuntimeUnavailable, UserError
from runtimes.inference.batching import BatchEngine, Stream
from runtimes.inference.claims import ClaimRejected, Verdict, check_schema_output, check_text, read_claim
from runtimes.inference.generation import (
    CPU_PROMPT_CHUNK,
    GPU_PROMPT_CHUNK,
    SAMPLER_DEFAULTS,
    Generation,
)
from runtimes.inference.prompts import PromptTokenizer, estimate_prompt_tokens
from runtimes.inference.registry import (
    FALLBACK_KV_BYTES_PER_TOKEN,
    GPU_HEADROOM,
    GgufInfo,
    InferenceSettings,
    ModelEntry,
    ModelHashes,
    ModelPool,
    ModelRegistry,
    TierDecision,
    choose_gpu_layers,
    ensure_packaged_model,
    read_gguf_info,
)
from runtimes.inference.request import GenerationRequest
from runtimes.inference.shaping import check_vocabulary, grammar_for
from runtimes.inference.tiers import tier_of, tier_rank
from runtimes.inference.verifier import CHECKED_CHUNKS, reject, verify_claim
from runtimes.interface import (
    BenchmarkResult,
    Emit,
    Estimate,
    Final,
    Offer,
    Partial,
    RuntimeContext,
    Tally,
    Task,
)

RUNTIME_NAME = "inference"
# Bumped when a change here alters throughput or output, so cached benchmarks are redone.
RUNTIME_REVISION = "2"  # 2: continuous batching

# Under the data dir: model files added with `hyperion-node models add` (hyperion_node/cli/models.py).
MANAGED_MODELS_DIR = "models"
# Share of available RAM used when memory_budget_bytes = 0, leaving room for the OS and other runtimes.
AUTO_MEMORY_SHARE = 0.6
BENCHMARK_PROMPT = "The history of lighthouses begins in the ancient world, where"
BENCHMARK_TOKENS = 32


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error that ended a generation's nursery (the sender's, or the thread's), so that callers
    see the exception itself as before; a Cancelled when only cancellation is in it (the enclosing scope
    catches it); the group when several real errors are."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    errors = [exc for exc in leaves if not isinstance(exc, trio.Cancelled)]
    if len(errors) == 1:
        return errors[0]
    return leaves[0] if not errors else group


# --- the runtime -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Placement:
    n_gpu_layers: int
    reason: str


class LlamaCppRuntime:
    """The ``inference`` runtime; see the module docstring and ``runtimes.interface.Runtime``."""

    name = RUNTIME_NAME

    @staticmethod
    def tally(payload: Mapping[str, Any]) -> Tally:
        """The requester's count of a result, to check a worker's bill (``runtimes.interface.Tally``)."""
        from runtimes.inference.billing import InferenceTally

        return InferenceTally(payload)

    @staticmethod
    def check_share(payload: Mapping[str, Any], output: Mapping[str, Any]) -> float:
        """A spot check's cost as a share of the generation (``runtimes.interface``; ``scoring.check_share``)."""
        from runtimes.inference.scoring import share_of

        return share_of(output)

    @staticmethod
    def check_scores(details: Mapping[str, Any]) -> Mapping[str, float]:
        """A spot check's statistics as scores for the evidence over many results (``scoring.check_scores``)."""
        from runtimes.inference.scoring import check_scores

        return check_scores(details)

    def __init__(self, context: RuntimeContext) -> None:
        self._context = context
        self._settings = InferenceSettings.from_mapping(context.settings, base_dir=context.data_dir)
        self._log = structlog.get_logger("runtimes.inference")
        self._hashes = ModelHashes(context.cache_dir / "model-hashes.json")
        # One hashing thread at a time: two at once would only compete for the same disk.
        self._hash_limiter = trio.CapacityLimiter(1)
        self._registry = ModelRegistry([])
        self._verify_slots: dict[str, trio.CapacityLimiter] = {}
        self._engines: dict[str, _Engine] = {}
        self._engine_lock = threading.Lock()  # engines are made and closed in worker threads
        self._placements: dict[str, _Placement] = {}
        self._prompts = PromptTokenizer()
        self._benchmark: BenchmarkResult | None = None
        self._pool: ModelPool | None = None
        self._llama: Any = None
        self._gpu_offload = False
        try:
            import llama_cpp
        except ImportError as exc:  # reported by start(), where the daemon expects it
            self._import_error: ImportError | None = exc
        else:
            self._import_error = None
            self._llama = llama_cpp

    @property
    def version(self) -> str:
        llama_version = getattr(self._llama, "__version__", "missing")
        return f"{RUNTIME_REVISION}+llama-cpp-python-{llama_version}"

    @property
    def registry(self) -> ModelRegistry:
        return self._registry

    @property
    def settings(self) -> InferenceSettings:
        return self._settings

    def loaded_models(self) -> list[str]:
        """Ids of the models now in memory, least recently used first."""
        return self._pool.loaded() if self._pool is not None else []

    async def start(self) -> None:
        if self._import_error is not None:
            raise RuntimeUnavailable(
                f"llama-cpp-python cannot be imported ({self._import_error})",
                hint="pip install llama-cpp-python (it builds llama.cpp: needs a C++ compiler and cmake)",
            )
        settings = self._settings

        self._gpu_offload = bool(self._llama.llama_supports_gpu_offload())
        budget = settings.memory_budget_bytes or int(
            AUTO_MEMORY_SHARE * self._context.hardware.ram_available_bytes
        )

        def scan() -> tuple[ModelRegistry, list[TierDecision]]:
            packaged = None
            if settings.include_packaged_model:
                packaged = ensure_packaged_model(self._context.cache_dir / "models", self._hashes)
            # The data dir's models folder, where `hyperion-node models add` puts files, beside the configured ones.
            managed = self._context.data_dir / MANAGED_MODELS_DIR
            found = ModelRegistry.scan([*settings.models, *([managed] if managed.is_dir() else [])], packaged=packaged)
            return found.by_tier(self._footprint, *self._tier_budget(budget))

        self._registry, decisions = await trio.to_thread.run_sync(scan)
        if not len(self._registry):
            raise RuntimeUnavailable(
                "the inference runtime has no model to serve",
                hint="set include_packaged_model = true or list .gguf files in [runtimes.inference] models",
            )
        for decision in decisions:
            self._log.info("model quantization chosen", model=decision.family, file=decision.chosen.path.name,
                           why=decision.reason, not_served=list(decision.passed_over))
        self._verify_slots = {entry.model_id: trio.CapacityLimiter(1) for entry in self._registry}
        self._pool = ModelPool(
            load=self._load,
            n_ctx=settings.n_ctx,
            max_loaded_models=settings.max_loaded_models,
            memory_budget_bytes=budget,
        )
        self._log.info(
            "inference runtime started",
            models=self._registry.ids,
            memory_budget_bytes=budget,
            gpu_offload=self._gpu_offload,
        )

    async def benchmark(self) -> BenchmarkResult:
        entry = self._registry.default
        if entry is None:
            raise InternalError("benchmark() called before start()")
        request = GenerationRequest(
            model=entry.model_id,
            prompt=BENCHMARK_PROMPT,
            messages=None,
            max_tokens=BENCHMARK_TOKENS,
            temperature=0.0,
        )
        started = time.perf_counter()
        result = await trio.to_thread.run_sync(
            functools.partial(self._work, entry, request, 0, on_piece=_discard, ignore_eog=True)
        )
        throughput = result.tokens_out / result.generate_seconds if result.generate_seconds > 0 else 0.0
        placement = self._placements[entry.model_id]
        return BenchmarkResult(
            runtime=self.name,
            version=self.version,
            unit="token",
            throughput=throughput,
            seconds=time.perf_counter() - started,
            details={
                "model": entry.model_id,
                "load_seconds": result.load_seconds,
                "prompt_tokens": result.tokens_in,
                "prompt_tokens_per_second": result.tokens_in / result.prompt_seconds
                if result.prompt_seconds > 0
                else None,
                "generated_tokens": result.tokens_out,
                "n_gpu_layers": placement.n_gpu_layers,
                "n_threads": self._n_threads(),
                "n_ctx": self._settings.n_ctx,
                "max_streams": self._settings.max_streams,
            },
        )

    def offers(self, benchmark: BenchmarkResult | None) -> list[Offer]:
        # Remembered for estimate(): the daemon hands over the benchmark, fresh or from its cache, here.
        self._benchmark = benchmark
        measured = benchmark.details.get("model") if benchmark is not None else None
        throughput = benchmark.throughput if benchmark is not None else None
        return [
            Offer(
                runtime=self.name,
                item=entry.model_id,
                unit="token",
                price_per_unit=self._settings.price_per_token,
                capacity=self._settings.max_streams,
                throughput=throughput if measured == entry.model_id else None,
                details={
                    "quantization": entry.quantization,
                    "tier": tier_of(entry.quantization),
                    "size_bytes": entry.size_bytes,
                    "n_ctx": self._settings.n_ctx,
                    **({"tier_reason": entry.tier_reason, "variants": list(entry.variants)}
                       if entry.tier_reason is not None else {}),
                },
            )
            for entry in self._registry
        ]

    def shared_files(self) -> dict[str, Path]:
        """The file behind each offered model, which peers may fetch (``hyperion-node models pull``)."""
        return {entry.model_id: entry.path for entry in self._registry}

    def estimate(self, task: Task) -> Estimate:
        try:
            request = GenerationRequest.from_payload(task.payload)
        except UserError as exc:
            return Estimate(accepted=False, reason=exc.one_line())
        entry = self._registry.get(request.model)
        if entry is None:
            available = ", ".join(self._registry.ids) or "none"
            return Estimate(accepted=False, reason=f"unknown model {request.model!r}; available: {available}")
        below = _below_tier(entry, request)
        if below is not None:
            return Estimate(accepted=False, reason=below)
        n_ctx = self._settings.n_ctx
        tokens_in = estimate_prompt_tokens(request)
        # Tokenizing needs a loaded model; loading one to answer an admission question would be
        # neither cheap nor free of side effects. Past 2 x n_ctx estimated tokens the prompt would need
        # over 8 characters per token to fit, so it is refused without spending time tokenizing it.
        if tokens_in <= 2 * n_ctx and self._pool is not None:
            try:
                counted = self._pool.with_loaded(
                    entry.model_id, lambda llm: len(self._prompts.tokens(llm, request))
                )
            except UserError as exc:
                return Estimate(accepted=False, reason=exc.one_line())
            tokens_in = counted if counted is not None else tokens_in
        if tokens_in + request.max_tokens > n_ctx:
            return Estimate(
                accepted=False,
                reason=f"prompt (~{tokens_in} tokens) plus max_tokens ({request.max_tokens}) "
                f"exceeds the context of {n_ctx} tokens",
            )
        return Estimate(
            accepted=True,
            work_units=float(tokens_in + request.max_tokens),
            seconds=self._estimate_seconds(entry, tokens_in, request.max_tokens),
        )

    async def run(self, task: Task, emit: Emit) -> Final:
        request = GenerationRequest.from_payload(task.payload)
        entry = self._registry.get(request.model)
        if entry is None:
            raise UserError(f"unknown model {request.model!r}; available: {', '.join(self._registry.ids)}")
        below = _below_tier(entry, request)
        if below is not None:
            raise UserError(below, hint="ask without min_tier, or for a lower one, or ask a node with more memory")
        seed = request.seed if request.seed is not None else secrets.randbelow(2**32)

        # Pieces go from the engine thread to a sender task in this nursery without the engine waiting for
        # them to be sent (module docstring). At most one piece per token and one at the end, so the channel
        # holds at most max_tokens + 1.
        loop = trio.lowlevel.current_trio_token()
        send_piece, pieces = trio.open_memory_channel[tuple[str, list[dict[str, Any]]]](math.inf)
        done = trio.Event()
        outcome: list[Generation | BaseException] = []
        logprobs: list[dict[str, Any]] = []  # the next piece's tokens' entries, when the request asks for them

        def deliver(text: str) -> None:  # in the event loop, in the order the engine handed them over
            try:
                send_piece.send_nowait((text, logprobs[:]))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the sender failed; its error ends the task and with it the stream
            logprobs.clear()

        def settle(result: Generation | None, error: BaseException | None) -> None:  # in the event loop
            outcome.append(error if error is not None else result)  # type: ignore[arg-type]
            done.set()

        def on_piece(text: str) -> None:  # in the engine thread: hand over, do not wait
            _soon(loop, deliver, text)

        def on_logprobs(entries: list[dict[str, Any]]) -> None:  # engine thread, right before the piece's on_piece
            _soon(loop, logprobs.extend, entries)

        def on_done(result: Generation | None, error: BaseException | None) -> None:  # engine thread
            _soon(loop, settle, result, error)

        async def forward() -> None:
            async with pieces:
                async for text, entries in pieces:
                    await emit(Partial({"text": text, "logprobs": entries} if request.logprobs else {"text": text}))

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(forward)
                try:
                    model_sha256, engine, prompt = await trio.to_thread.run_sync(
                        self._prepare, entry, request
                    )
                    grammar = grammar_for(request)
                    stream = Stream(request, prompt, seed, on_piece=on_piece, on_done=on_done,
                                    background=task.background, grammar=grammar,
                                    on_logprobs=on_logprobs if request.logprobs else None)
                    engine.submit(stream)
                    try:
                        await done.wait()
                    except BaseException:
                        stream.cancel()
                        engine.wake()
                        raise
                finally:
                    # Every deliver() the engine queued ran before settle() (run_sync_soon is first in, first
                    # out), so the sender now drains what is left and ends.
                    send_piece.close()
        except BaseExceptionGroup as group:
            raise _sole(group) from None
        ended = outcome[0]
        if isinstance(ended, BaseException):
            raise ended
        result = ended
        return Final(
            output={
                "text": result.text,
                "finish_reason": result.finish_reason,
                "tokens_in": result.tokens_in,
                "tokens_out": result.tokens_out,
                "model": entry.model_id,
                # The verifier needs the exact tokens: re-tokenizing the text need not give them back.
                "token_ids": list(result.token_ids),
                **({"logprobs": list(result.logprobs)} if request.logprobs else {}),
            },
            evidence={
                "model": entry.model_id,
                "model_sha256": model_sha256,
                "quantization": entry.quantization,
                "n_gpu_layers": self._placements[entry.model_id].n_gpu_layers,
                "seed": seed,
                "temperature": request.temperature,
                "top_p": request.top_p,
                "llama_cpp_version": str(self._llama.__version__),
                "sampler": dict(SAMPLER_DEFAULTS),
                "end_token": result.end_token,
                "logit_commitment": result.commitment.to_evidence() if result.commitment is not None else None,
            },
            work_units=float(result.tokens_in + result.tokens_out),
        )

    async def verify(
        self,
        payload: Mapping[str, Any],
        output: Mapping[str, Any],
        evidence: Mapping[str, Any],
        *,
        sample: Mapping[str, Any] | None = None,
        chunks: int = CHECKED_CHUNKS,
        rng: random.Random | None = None,
        shortlisted: bool = True,
    ) -> Verdict:
        """Check another worker's result for ``payload`` (its Final's output and evidence); see verifier.py.

        ``sample`` is a render's sampled frame (``runtimes.interface.Verifier``); an inference check reads the
        evidence's commitments instead.
        ``chunks``: how many of the commitment's chunks the forward pass checks, drawn from ``rng`` (the
        OS's unpredictable generator unless a test or benchmark fixes the draw); 0 checks them all.
        ``shortlisted=False``: the slower reading of every row whole (``verifier.verify_claim``), the same
        verdict and statistics; only tests and ``scripts/bench_verify.py`` use it, to compare.
        A verdict, never an exception, for anything the worker wrote. Raises ``UserError`` when this node
        cannot judge: a payload no worker should have accepted, or a model it does not serve.
        """
        request = GenerationRequest.from_payload(payload)
        entry = self._registry.get(request.model)
        if entry is None:
            raise UserError(f"cannot verify model {request.model!r}: not served here ({', '.join(self._registry.ids)})")
        ours = await trio.to_thread.run_sync(
            functools.partial(self._hashes.sha256, entry, check_cancelled=trio.from_thread.check_cancelled),
            limiter=self._hash_limiter,
        )
        if evidence.get("quantization") != entry.quantization:
            if entry.tier_reason is None:  # the model id names one file, and so its quantization
                return Verdict(False, f"evidence quantization {evidence.get('quantization')!r} is not the "
                                      f"model's {entry.quantization}")
            # A family's nodes may each serve another quantization (tiers.py): this node cannot judge that one,
            # and the requester asks another verifier.
            raise UserError(f"cannot verify {request.model} at {evidence.get('quantization')!r}: this node serves "
                            f"{entry.quantization}")
        if evidence.get("model_sha256") != ours:
            return Verdict(False, f"evidence model_sha256 {evidence.get('model_sha256')!r} is not {ours}")
        return await trio.to_thread.run_sync(
            functools.partial(self._verify_work, entry, request, output, evidence, chunks, rng, shortlisted),
            limiter=self._verify_slots[entry.model_id],
        )

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._close_engines)
        if self._pool is not None:
            await trio.to_thread.run_sync(self._pool.close)

    # --- worker-thread side ---------------------------------------------------------------------------

    def _prepare(self, entry: ModelEntry, request: GenerationRequest) -> tuple[str, BatchEngine, list[int]]:
        """In a worker thread: the model file's sha256 for the evidence, the model's engine, the prompt's tokens.

        The hash comes from the cache (a stat and a lookup) once the file has been hashed, which the node
        does at start for the packaged model. A corrupt file still fails the task before generating anything.
        """
        model_sha256 = self._hashes.sha256(entry, check_cancelled=trio.from_thread.check_cancelled)
        engine = self._engine_for(entry).engine
        trio.from_thread.check_cancelled()
        return model_sha256, engine, self._prompt(entry, request)

    def _prompt(self, entry: ModelEntry, request: GenerationRequest) -> list[int]:
        held = self._engines[entry.model_id]
        check_vocabulary(request, int(held.llm.n_vocab()))
        prompt = self._prompts.tokens(held.llm, request)
        if len(prompt) + request.max_tokens > self._settings.n_ctx:
            raise UserError(
                f"prompt ({len(prompt)} tokens) plus max_tokens ({request.max_tokens}) exceeds "
                f"the context of {self._settings.n_ctx} tokens",
                hint="shorten the prompt or lower max_tokens",
            )
        return prompt

    def _engine_for(self, entry: ModelEntry) -> _Engine:
        """The model's engine, made now (its model loaded if need be) if it has none; in a worker thread.

        A new engine first closes idle engines of other models beyond ``max_loaded_models`` and returns their
        instances to the pool, which unloads them as its limits say. An engine with work is never closed, so
        while several models serve at once the limit can be exceeded until they finish.
        """
        if self._pool is None:
            raise InternalError("run() called before start()")
        with self._engine_lock:
            held = self._engines.get(entry.model_id)
            if held is not None:
                return held
            others = sorted(self._engines.values(), key=lambda h: h.made)
            excess = len(others) + 1 - self._settings.max_loaded_models
            for old in others:
                if excess <= 0:
                    break
                if old.engine.busy == 0:
                    self._close_engine(old)
                    excess -= 1
            llm, load_seconds = self._pool.checkout(entry)
            on_gpu = self._placements[entry.model_id].n_gpu_layers != 0
            try:
                engine = BatchEngine(
                    self._llama,
                    llm,
                    max_streams=self._settings.max_streams,
                    n_ctx=self._settings.n_ctx,
                    n_threads=self._n_threads(),
                    prompt_chunk=GPU_PROMPT_CHUNK if on_gpu else CPU_PROMPT_CHUNK,
                )
            except BaseException:
                self._pool.checkin(entry, llm)
                raise
            held = _Engine(entry, llm, engine, load_seconds, time.monotonic())
            self._engines[entry.model_id] = held
            return held

    def _close_engine(self, held: _Engine) -> None:
        """Under ``_engine_lock``."""
        del self._engines[held.entry.model_id]
        held.engine.close()
        if self._pool is not None:
            self._pool.checkin(held.entry, held.llm)

    def _close_engines(self) -> None:
        with self._engine_lock:
            for held in list(self._engines.values()):
                self._close_engine(held)

    def _work(
        self,
        entry: ModelEntry,
        request: GenerationRequest,
        seed: int,
        *,
        on_piece: Callable[[str], None],
        ignore_eog: bool = False,
        commit: bool = True,
    ) -> Generation:
        """One generation through the model's engine, waited for in this worker thread: the benchmark's.

        ``commit=False`` skips the logit commitments; only ``scripts/bench_verify.py`` uses it, to
        measure what they cost.
        """
        fresh = entry.model_id not in self._engines
        held = self._engine_for(entry)
        finished = threading.Event()
        outcome: list[Generation | BaseException | None] = []

        def on_done(result: Generation | None, error: BaseException | None) -> None:
            outcome.append(error if error is not None else result)
            finished.set()

        stream = Stream(
            request, self._prompt(entry, request), seed, on_piece=on_piece, on_done=on_done,
            ignore_eog=ignore_eog, commit=commit,
        )
        held.engine.submit(stream)
        try:
            while not finished.wait(0.05):
                trio.from_thread.check_cancelled()
        except BaseException:
            stream.cancel()
            held.engine.wake()
            raise
        ended = outcome[0]
        if isinstance(ended, BaseException):
            raise ended
        if ended is None:
            raise InternalError("the engine ended a stream without a result")
        return dataclasses.replace(ended, load_seconds=held.load_seconds if fresh else None)

    def _verify_work(
        self,
        entry: ModelEntry,
        request: GenerationRequest,
        output: Mapping[str, Any],
        evidence: Mapping[str, Any],
        chunks: int,
        rng: random.Random | None,
        shortlisted: bool = True,
    ) -> Verdict:
        """The verifier's forward pass, in a worker thread, on an instance of the model of its own."""
        if self._pool is None:
            raise InternalError("verify() called before start()")
        llm, _ = self._pool.checkout(entry)
        try:
            trio.from_thread.check_cancelled()
            vocab = self._llama.llama_model_get_vocab(llm.model)

            def is_eog(token: int) -> bool:
                return bool(self._llama.llama_vocab_is_eog(vocab, token))

            try:
                claim = read_claim(
                    output=output,
                    evidence=evidence,
                    model=entry.model_id,
                    requested_seed=request.seed,
                    temperature=request.temperature,
                    top_p=request.top_p,
                    sampler=SAMPLER_DEFAULTS,
                    n_vocab=int(llm.n_vocab()),
                )
                check_text(
                    claim,
                    output,
                    detokenize=lambda token: bytes(llm.detokenize([token])),
                    is_eog=is_eog,
                    stops=request.stop,
                    max_tokens=request.max_tokens,
                )
                prompt = self._prompts.tokens(llm, request)
                if output.get("tokens_in") != len(prompt):
                    raise ClaimRejected(f"tokens_in {output.get('tokens_in')!r} is not the prompt's {len(prompt)}")
                if len(prompt) + len(claim.positions) > self._settings.n_ctx:
                    raise ClaimRejected(f"prompt and output exceed this verifier's context of {self._settings.n_ctx}")
                check_schema_output(request, output)
            except ClaimRejected as exc:
                return reject(exc)
            return verify_claim(
                llm,
                self._llama,
                prompt,
                claim,
                SAMPLER_DEFAULTS,
                check_cancelled=trio.from_thread.check_cancelled,
                chunks=chunks,
                rng=rng,
                shortlisted=shortlisted,
                replay_tokens=not request.shaped,
            )
        finally:
            self._pool.checkin(entry, llm)

    def _load(self, entry: ModelEntry, info: GgufInfo) -> Any:
        """Construct a ``Llama`` (blocking); called by the pool outside its lock."""
        n_gpu_layers, reason = choose_gpu_layers(
            supports_offload=self._gpu_offload,
            gpus=self._context.hardware.gpus,
            model_bytes=entry.size_bytes,
            block_count=info.block_count,
        )
        self._placements[entry.model_id] = _Placement(n_gpu_layers, reason)
        self._log.info("loading model", model=entry.model_id, n_gpu_layers=n_gpu_layers, why=reason)
        try:
            return self._llama.Llama(
                model_path=str(entry.path),
                n_ctx=self._settings.n_ctx,
                n_threads=self._n_threads(),
                n_threads_batch=self._n_threads(),
                n_gpu_layers=n_gpu_layers,
                # Sliding-window layers keep only their window: a full-size SWA cache exists to reuse
                # prompt prefixes, which generate() never does (generation.py).
                swa_full=False,
                verbose=False,
            )
        except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
            raise RuntimeUnavailable(
                f"llama.cpp cannot load model {entry.model_id} from {entry.path}: {exc}",
                hint="replace the file or remove it from [runtimes.inference] models",
            ) from exc

    # --- helpers -----------------------------------------------------------------------------------

    def _tier_budget(self, ram_budget: int) -> tuple[int, str]:
        """The memory a family's quantization must fit (tiers.py): free VRAM where layers are offloaded, else
        the RAM budget."""
        if self._gpu_offload:
            free = [int(g.get("vram_free_bytes", 0) or 0) for g in self._context.hardware.gpus]
            if max(free, default=0) > 0:
                return max(free), "free VRAM of the GPU"
        if self._settings.memory_budget_bytes:
            return ram_budget, "memory_budget_bytes"
        return ram_budget, f"{AUTO_MEMORY_SHARE:.0%} of available RAM"

    def _footprint(self, entry: ModelEntry) -> int:
        """Memory a model takes here: its weights (with llama.cpp's compute headroom on a GPU) and the KV caches
        of the engine's streams and of one verification. Blocking: reads the GGUF header."""
        try:
            kv = read_gguf_info(entry.path).kv_bytes_per_token or FALLBACK_KV_BYTES_PER_TOKEN
        except (OSError, ValueError):
            kv = FALLBACK_KV_BYTES_PER_TOKEN
        weights = entry.size_bytes * (GPU_HEADROOM if self._gpu_offload else 1.0)
        return int(weights + (self._settings.max_streams + 1) * self._settings.n_ctx * kv)

    def _n_threads(self) -> int:
        if self._settings.n_threads:
            return self._settings.n_threads
        # The CPUs this process may run on (a container's cpuset), not the host's count, less one: llama.cpp's
        # threads spin-wait for each other, so one thread pre-empted by the daemon's event loop or any other
        # process stalls them all. Measured on 2 cores under load: 2 threads 1-4 tokens/s, 1 thread ~21.
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cpus - 1)

    def _estimate_seconds(self, entry: ModelEntry, tokens_in: int, max_tokens: int) -> float | None:
        benchmark = self._benchmark
        if benchmark is None or benchmark.details.get("model") != entry.model_id or benchmark.throughput <= 0:
            return None
        seconds = max_tokens / benchmark.throughput
        prompt_rate = benchmark.details.get("prompt_tokens_per_second")
        if isinstance(prompt_rate, int | float) and prompt_rate > 0:
            seconds += tokens_in / prompt_rate
        return seconds


def _below_tier(entry: ModelEntry, request: GenerationRequest) -> str | None:
    """Why this node's quantization of the model is below the request's ``min_tier``; None when it is not."""
    if request.min_tier is None:
        return None
    tier = tier_of(entry.quantization)
    if tier_rank(tier) >= tier_rank(request.min_tier):
        return None
    return (f"this node serves {entry.model_id} at {entry.quantization} ({tier or 'no'} tier), below the "
            f"requested minimum {request.min_tier!r}")


@dataclass(frozen=True)
class _Engine:
    """A model's batch engine and the pool instance it holds while it exists."""

    entry: ModelEntry
    llm: Any
    engine: BatchEngine
    load_seconds: float | None
    made: float


def _soon(loop: trio.lowlevel.TrioToken, fn: Callable[..., None], *args: Any) -> None:
    """``loop.run_sync_soon(fn, *args)`` from the engine thread; nothing to do once the event loop has ended."""
    try:
        loop.run_sync_soon(fn, *args)
    except trio.RunFinishedError:
        pass


def _discard(_text: str) -> None:
    """Benchmark output goes nowhere."""


async def verify_inference(
    runtime: LlamaCppRuntime,
    payload: Mapping[str, Any],
    output: Mapping[str, Any],
    evidence: Mapping[str, Any],
    *,
    chunks: int = CHECKED_CHUNKS,
) -> Verdict:
    """``runtime.verify(payload, output, evidence, chunks=...)``: the entry point the rest of the node calls."""
    return await runtime.verify(payload, output, evidence, chunks=chunks)
