"""Continuous batching: one loaded model serves up to ``max_streams`` generations in one llama context.

A ``BatchEngine`` owns a llama context of its own, made on the weights of one loaded ``Llama``
(``llama_init_from_model``: the weights are not copied), with ``max_streams`` sequences and a KV cache of
``n_ctx`` cells for each. One engine thread runs the decode loop. Each step builds one ``llama_batch``:
the last sampled token of every running sequence, then up to ``prompt_chunk`` tokens of prompts still being
prefilled, then calls ``llama_decode`` once for all of it. A request that arrives while others run joins at
the next step: its prompt is prefilled inside the same loop, a chunk per step, so running streams keep
producing tokens meanwhile and the newcomer's first token comes within a few steps.

Each sequence keeps what made a single generation checkable (``generation.py``'s ``Generation``):

- its own sampler chain, built by ``Llama._init_sampler`` with its seed, temperature and top_p, exactly as
  ``Llama.generate`` builds one (the verifier rebuilds the same chain to replay it); llama.cpp's
  ``llama_sampler_sample`` reads the sequence's own row of the batch's logits;
- its own stop sequences and incremental UTF-8 decoding (``text.TextAssembler``);
- its own logit commitments: the row that produced each token goes to its ``CommitmentBuilder``.

What batching changes is the arithmetic, not the model: the row a sequence gets was computed in a batch of
some shape, and llama.cpp's kernels sum in a different order for another shape. A single generation fed its
prompt in fixed chunks for that reason; here the shapes depend on what else runs. The verifier never relied
on equal shapes (it checks one batched prefill against one-token decodes) and its tolerances cover the
difference; tests/integration/test_batching.py shows batched results passing it, and that greedy output
batched matches the same request alone.

Cancelling a stream (``Stream.cancel``) takes effect at the next step: its sequence is removed from the KV
cache (``llama_memory_seq_rm``) and its place goes to the next waiting request. The engine never blocks
on the event loop: pieces and results leave through the stream's callbacks, which the runtime points at
``TrioToken.run_sync_soon``; a step's pieces are handed over right before its ``llama_decode``, which runs
without the GIL, so the event loop sends them while the thread decodes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hyperion_node.errors import InternalError, RuntimeUnavailable, UserError
from runtimes.inference.commitments import CommitmentBuilder, CommitmentParams
from runtimes.inference.generation import DEFAULT_COMMITMENT, SAMPLER_DEFAULTS, Generation
from runtimes.inference.request import GenerationRequest
from runtimes.inference.shaping import ShapedSampler, token_logprobs
from runtimes.inference.text import TextAssembler

# Prompt chunks one step may prefill when it carries prompts alone (``BatchEngine._plan``): a burst of requests
# is prefilled together, as llama.cpp alone would; a cancelled prompt still stops within this many chunks.
IDLE_PREFILL_CHUNKS = 8
# A background stream (Stream.background) joins one step in this many while a foreground stream runs: an
# unpaid requester's task advances at a quarter of its speed instead of slowing paying requesters' streams by
# a whole stream's share (issue #21: a flood's one admitted task took the honest p95 from 0.42 to 1.06 s).
BACKGROUND_EVERY = 4


class StreamCancelled(Exception):
    """A stream's ``on_done`` error when it was cancelled; its caller has already gone."""


@dataclass(eq=False)
class Stream:
    """One generation asked of an engine. The callbacks run in the engine thread and must not block."""

    request: GenerationRequest
    prompt: Sequence[int]
    seed: int
    on_piece: Callable[[str], None]
    on_done: Callable[[Generation | None, BaseException | None], None]
    ignore_eog: bool = False  # keep going past end-of-turn: benchmarks that need a fixed token count
    commit: bool = True  # logit commitments; off only to measure what they cost (scripts/bench_verify.py)
    commitment: CommitmentParams = DEFAULT_COMMITMENT
    # A stranger's (its requester has not paid this node): while other streams run, it takes part in one
    # step in BACKGROUND_EVERY, so that it costs them about 1/BACKGROUND_EVERY of a stream, not one.
    background: bool = False
    grammar: str | None = None  # a shaped request's GBNF (shaping.grammar_for), built before submitting
    # With logprobs asked for: the entries of the tokens behind the next piece, handed over right before it.
    on_logprobs: Callable[[list[dict[str, Any]]], None] | None = None
    cancelled: bool = field(default=False, init=False)

    def cancel(self) -> None:
        """Stop at the engine's next step (from any thread); ``on_done`` then gets ``StreamCancelled``."""
        self.cancelled = True


class _Running:
    """Engine-thread state of one admitted stream: its sequence id, sampler chain, text and commitments."""

    def __init__(self, stream: Stream, seq_id: int, chain: Any) -> None:
        self.stream = stream
        self.seq_id = seq_id
        self.chain = chain
        self.shaped: ShapedSampler | None = None  # a shaped request's sampler (shaping.py), instead of the chain
        self.text = TextAssembler(stream.request.stop)
        self.builder = CommitmentBuilder(stream.commitment) if stream.commit else None
        self.fed = 0  # prompt tokens in the KV cache
        self.n_past = 0  # positions in the KV cache
        self.next_token: int | None = None  # sampled, to be decoded at the next step
        self.token_ids: list[int] = []
        self.logprobs: list[dict[str, Any]] = []  # one per token_ids entry, when the request asks for them
        self.unsent: list[tuple[str, list[dict[str, Any]]]] = []  # pieces, each with its tokens' logprobs
        self.logprobs_sent = 0
        self.pieces: list[str] = []
        self.finish_reason = "length"
        self.end_token: int | None = None
        self.started = time.perf_counter()
        self.prompt_done: float | None = None

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.stream.prompt)

    def put(self, text: str) -> None:
        if text:
            self.pieces.append(text)
            self.unsent.append((text, self.logprobs[self.logprobs_sent:]))
            self.logprobs_sent = len(self.logprobs)

    def flush(self) -> None:
        for text, logprobs in self.unsent:
            if logprobs and self.stream.on_logprobs is not None:
                self.stream.on_logprobs(logprobs)
            self.stream.on_piece(text)
        self.unsent.clear()

    def result(self) -> Generation:
        prompt_done = self.prompt_done if self.prompt_done is not None else time.perf_counter()
        return Generation(
            text="".join(self.pieces),
            finish_reason=self.finish_reason,
            tokens_in=len(self.stream.prompt),
            tokens_out=len(self.token_ids),
            prompt_seconds=prompt_done - self.started,
            generate_seconds=time.perf_counter() - prompt_done,
            token_ids=tuple(self.token_ids),
            end_token=self.end_token,
            commitment=self.builder.build() if self.builder is not None else None,
            logprobs=tuple(self.logprobs),
        )


class BatchEngine:
    """The decode loop for one loaded model; see the module docstring.

    ``llm`` is a loaded ``Llama``, used for its weights, its tokenizer and ``_init_sampler``; the engine
    never touches its context, so the caller must not hand the same ``Llama`` to anyone who calls
    ``set_seed`` or ``_init_sampler`` on it while the engine runs. ``close`` frees the engine's context;
    the ``Llama`` stays the caller's.
    """

    def __init__(
        self,
        llama_cpp: Any,
        llm: Any,
        *,
        max_streams: int,
        n_ctx: int,
        n_threads: int,
        prompt_chunk: int,
    ) -> None:
        if max_streams < 1 or prompt_chunk < 1:
            raise InternalError(f"BatchEngine needs max_streams, prompt_chunk >= 1: {max_streams}, {prompt_chunk}")
        self._llama = llama_cpp
        self._llm = llm
        self.max_streams = max_streams
        self.n_ctx = n_ctx  # cells per sequence
        self._prompt_chunk = prompt_chunk
        self._n_batch = max(512, max_streams + IDLE_PREFILL_CHUNKS * prompt_chunk)
        # The loaded Llama's own context parameters (flash attention off, its rope and yarn settings): the
        # verifier's instance is made the same way, and another attention kernel would round differently.
        base = llm.context_params
        params = type(base).from_buffer_copy(base)
        params.n_ctx = n_ctx * max_streams
        params.n_seq_max = max_streams
        params.n_batch = self._n_batch
        params.n_ubatch = min(512, self._n_batch)
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.kv_unified = False  # n_ctx cells for each sequence: one long prompt cannot crowd out the rest
        params.swa_full = False  # no prefix reuse, so sliding-window layers keep only their window
        self._ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not self._ctx:
            raise RuntimeUnavailable(
                f"llama.cpp could not make a context of {max_streams} x {n_ctx} tokens",
                hint="lower [runtimes.inference] max_streams or n_ctx",
            )
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._n_vocab = int(llm.n_vocab())
        self._cond = threading.Condition()
        self._pending: deque[Stream] = deque()
        self._running: list[_Running] = []  # admission order: prompts are prefilled first come, first served
        self._free_ids = list(range(max_streams - 1, -1, -1))
        self._closing = False
        self.steps = 0  # llama_decode calls, for tests and benchmarks
        self.peak_streams = 0
        self._thread = threading.Thread(target=self._loop, name="hyperion-batch", daemon=True)
        self._thread.start()

    # --- any thread --------------------------------------------------------------------------------

    def submit(self, stream: Stream) -> None:
        """Queue a stream; it starts at the next step with a free sequence.

        A stream that could outgrow its sequence's ``n_ctx`` cells is refused here: llama.cpp aborts the whole
        process on a position past them rather than returning an error.
        """
        if len(stream.prompt) + stream.request.max_tokens > self.n_ctx:
            raise UserError(
                f"prompt ({len(stream.prompt)} tokens) plus max_tokens ({stream.request.max_tokens}) exceeds "
                f"the context of {self.n_ctx} tokens",
                hint="shorten the prompt or lower max_tokens",
            )
        with self._cond:
            if self._closing:
                raise RuntimeUnavailable("the inference engine is shutting down", hint="retry on another node")
            self._pending.append(stream)
            self._cond.notify()

    def wake(self) -> None:
        """Make an idle loop look at its streams again (after a cancel)."""
        with self._cond:
            self._cond.notify()

    @property
    def busy(self) -> int:
        """Streams running or waiting."""
        with self._cond:
            return len(self._running) + len(self._pending)

    def close(self) -> None:
        """Fail what runs and waits, stop the loop, free the context (blocking: up to one step)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        self._llama.llama_batch_free(self._batch)
        self._llama.llama_free(self._ctx)

    # --- the engine thread ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not self._running and not self._pending:
                    self._cond.wait()
                if self._closing:
                    break
                admitted = self._admit()
            try:
                for running in admitted:
                    self._start(running)
                if self._running:
                    self._step()
            except Exception as exc:  # a failed step fails its streams, not the engine
                for running in list(self._running):
                    self._end(running, None, exc)
                self._llama.llama_memory_clear(self._memory, True)
        gone = RuntimeUnavailable("the inference engine shut down", hint="retry on another node")
        for running in list(self._running):
            self._end(running, None, gone)
        with self._cond:
            pending, self._pending = list(self._pending), deque()
        for stream in pending:
            stream.on_done(None, gone)

    def _admit(self) -> list[_Running]:
        """Pending streams onto free sequences (under the lock); cancelled ones are dropped on the way."""
        admitted = []
        while self._pending and self._free_ids:
            stream = self._pending.popleft()
            if stream.cancelled:
                stream.on_done(None, StreamCancelled())
                continue
            self._free_ids.sort(reverse=True)  # the lowest free id: sequences stay packed from 0
            running = _Running(stream, self._free_ids.pop(), None)
            self._running.append(running)
            admitted.append(running)
        self.peak_streams = max(self.peak_streams, len(self._running))
        return admitted

    def _start(self, running: _Running) -> None:
        # The chain Llama.generate would build for this request (generation.py, verifier.SamplerReplay). A greedy
        # request needs none: _sample takes the row's argmax, which is what that chain (neutral penalties, then
        # llama.cpp's greedy sampler, the first of equal maxima) picks, without copying 262,144 candidates.
        request = running.stream.request
        if request.shaped:
            try:
                running.shaped = ShapedSampler(self._llama, self._llm, request, running.stream.seed,
                                               running.stream.grammar)
            except Exception as exc:  # this stream's own grammar: it fails alone, before its first step
                self._end(running, None, exc)
            return
        if request.temperature == 0.0:
            return
        self._llm.set_seed(running.stream.seed)
        running.chain = self._llm._init_sampler(temp=request.temperature, top_p=request.top_p, **SAMPLER_DEFAULTS)

    def _step(self) -> None:
        llama = self._llama
        for running in list(self._running):
            if running.stream.cancelled:
                self._end(running, None, StreamCancelled())
        if not self._running:
            return
        # Background streams sit out all but one step in BACKGROUND_EVERY while a foreground one runs.
        taking = self._running
        if self.steps % BACKGROUND_EVERY and any(not r.stream.background for r in self._running):
            taking = [r for r in self._running if not r.stream.background]
        # (stream, token, position, logits wanted): every running stream's next token, then prompt tokens of
        # streams still prefilling, first come first served, up to the prompt budget (``_plan``).
        entries: list[tuple[_Running, int, int, bool]] = []
        budget, decode = self._plan(taking)
        for running in taking:
            if decode and running.next_token is not None:
                entries.append((running, running.next_token, running.n_past, True))
                running.n_past += 1
                running.next_token = None
        for running in taking:
            if budget == 0:
                break
            if running.prefilling:
                prompt = running.stream.prompt
                take = min(budget, len(prompt) - running.fed)
                for i in range(running.fed, running.fed + take):
                    entries.append((running, prompt[i], running.n_past, i == len(prompt) - 1))
                    running.n_past += 1
                running.fed += take
                budget -= take
        # In sequence order: with a KV cache per sequence, llama.cpp splits a batch whose sequences come out of
        # order into one micro-batch per sequence (measured: 8 streams in descending order took 300 ms a step,
        # in ascending order 100 ms, as one alone takes 40). A stream's own tokens keep their order.
        entries.sort(key=lambda e: e[0].seq_id)
        batch = self._batch
        rows: list[tuple[_Running, int]] = []
        for n, (running, token, position, logits) in enumerate(entries):
            batch.token[n] = token
            batch.pos[n] = position
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = running.seq_id
            batch.logits[n] = logits
            if logits:
                rows.append((running, n))
        n = len(entries)
        batch.n_tokens = n
        for running in self._running:
            running.flush()  # handed over now: llama_decode below runs without the GIL
        code = llama.llama_decode(self._ctx, batch)
        self.steps += 1
        if code != 0:
            raise InternalError(f"llama_decode returned {code} for a batch of {n} tokens")
        for running, index in rows:
            self._sample(running, index)

    def _plan(self, taking: list[_Running]) -> tuple[int, bool]:
        """This step's prompt-token budget, and whether running streams decode in it.

        - Newcomers' prompts that fit ``IDLE_PREFILL_CHUNKS`` chunks together (a burst of short requests, or
          one that joins running streams): a step of those prompts alone, as vLLM schedules prefills first and
          llama.cpp alone would prefill them in one batch. Their first tokens then wait for one step, not for
          steps that also carry every running stream's token; a running stream pauses for that one step (up
          to 256 prompt tokens: ~1 s on the 2-core CPU, milliseconds on a GPU).
        - A longer prompt: one chunk of it beside every running stream's token, so that it does not stall the
          others for its whole prefill.
        """
        waiting = sum(len(s.stream.prompt) - s.fed for s in taking if s.prefilling)
        decoding = any(s.next_token is not None for s in taking)
        if not decoding or 0 < waiting <= IDLE_PREFILL_CHUNKS * self._prompt_chunk:
            return IDLE_PREFILL_CHUNKS * self._prompt_chunk, False
        return self._prompt_chunk, True

    def _sample(self, running: _Running, index: int) -> None:
        llama = self._llama
        stream = running.stream
        if running.prompt_done is None:
            running.prompt_done = time.perf_counter()
        # The row that produced the token: a view of llama.cpp's buffer, read at once (before the next decode).
        row = np.ctypeslib.as_array(llama.llama_get_logits_ith(self._ctx, index), shape=(self._n_vocab,))
        if running.shaped is not None:
            token = running.shaped.sample(row)
        elif running.chain is None:
            token = int(np.argmax(row))
        else:
            token = int(llama.llama_sampler_sample(running.chain.sampler, self._ctx, index))
        if running.builder is not None:
            running.builder.add(row)
        end = bool(llama.llama_vocab_is_eog(self._vocab, token)) and not stream.ignore_eog
        if not end:
            if stream.request.logprobs:
                running.logprobs.append(token_logprobs(row, token, stream.request.top_logprobs,
                                                       lambda t: self._llm.detokenize([t], special=True)))
            running.token_ids.append(token)
            running.put(running.text.push(self._llm.detokenize([token])))
        if end:
            running.finish_reason, running.end_token = "stop", token
        elif running.text.hit_stop:
            running.finish_reason = "stop"
        elif len(running.token_ids) < stream.request.max_tokens:
            running.next_token = token
            return
        running.put(running.text.finish())
        self._end(running, running.result(), None)

    def _end(self, running: _Running, result: Generation | None, error: BaseException | None) -> None:
        """Free the stream's sequence and report it."""
        if running not in self._running:
            return
        self._llama.llama_memory_seq_rm(self._memory, running.seq_id, -1, -1)
        if running.chain is not None:
            running.chain.close()
        if running.shaped is not None:
            running.shaped.close()
        with self._cond:
            self._running.remove(running)
            self._free_ids.append(running.seq_id)
        if error is None:
            running.flush()
        running.stream.on_done(result, error)

