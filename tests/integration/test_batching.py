"""Continuous batching on the real packaged model and the real llama.cpp: several streams, one model copy.

The runtime's engine (``runtimes/inference/batching.py``) decodes every running generation in one
``llama_decode`` per step. These tests check what a user and a verifier rely on: each stream keeps its own
stops, lengths, seed and commitments; greedy output batched is the output alone but for near ties, which batch
shapes can tip (llama.cpp's kernels sum in another order for another shape); every batched result passes
the verifier's forward-pass check; a request joins running streams; a cancelled stream frees its place at
once. The last test puts 8 concurrent ``openai`` client streams through one daemon and verifies its ledger.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest
import trio

from hyperion_node.errors import UserError
from hyperion_node.testing.process import NodeProcess, hyperion_executable
from runtimes.inference import LlamaCppRuntime
from runtimes.inference.commitments import PRIME, LogitCommitment, distance, evaluate
from runtimes.inference.runtime import verify_inference
from runtimes.interface import Final, Partial, Task
from tests.integration.test_inference_runtime import MODEL, started

N_CTX = 256  # tokens per stream: these tests' prompts and outputs are short
PROMPTS = [
    "The history of lighthouses begins",
    "Write a haiku about rain:",
    "List three colours:",
    "def fibonacci(n):",
]
COUNTING = "1, 2, 3, 4,"
LONG_COUNT = "1, 2, 3, 4, 5, 6, 7, 8,"  # greedy counting goes on without an end of turn (test_inference_runtime.py)


def task(payload: Mapping[str, Any]) -> Task:
    return Task(task_id="t", runtime="inference", payload={"model": MODEL, **payload})


class Pieces:
    """A stream's pieces as they come, and an event once three have."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.three = trio.Event()

    async def emit(self, partial: Partial) -> None:
        self.texts.append(partial.data["text"])
        if len(self.texts) >= 3:
            self.three.set()


async def run(runtime: LlamaCppRuntime, payload: Mapping[str, Any], pieces: Pieces | None = None) -> Final:
    return await runtime.run(task(payload), (pieces or Pieces()).emit)


async def run_together(runtime: LlamaCppRuntime, payloads: Sequence[Mapping[str, Any]]) -> list[Final]:
    finals: list[Final | None] = [None] * len(payloads)

    async def one(i: int) -> None:
        finals[i] = await run(runtime, payloads[i])

    async with trio.open_nursery() as nursery:
        for i in range(len(payloads)):
            nursery.start_soon(one, i)
    return [f for f in finals if f is not None]


# Batch shape moves a logit by up to ~0.8 here (one prompt of 5 tokens alone against 28 tokens of 4 prompts:
# the same row differs by 0.78 at most over 262,144 logits): a greedy choice between two logits closer than
# that can go either way. "List three colours:" is such a tie: 18.668 against 18.582.
NEAR_TIE = 0.8


def tie_gap(final: Final, position: int, chosen: int, other: int) -> float | None:
    """How far ``other`` was below ``chosen`` at ``position``, in logits, read off the result's commitment;
    None when ``other`` was not among its committed top-k."""
    commitment = LogitCommitment.from_evidence(final.evidence["logit_commitment"])
    coeffs = commitment.coefficients(position)
    scale = commitment.params.scale
    top = evaluate(coeffs, chosen % PRIME)
    runner = evaluate(coeffs, other % PRIME)
    gap = distance(top, runner)
    if gap > 64 * scale:  # the polynomial at an id it was not made from: a random field element
        return None
    return gap / scale


def engine(runtime: LlamaCppRuntime) -> Any:
    return runtime._engines[MODEL].engine


async def test_greedy_batched_is_greedy_alone_and_every_batched_result_passes_the_verifier(
    inference_cache_dir: Path, tmp_path: Path
) -> None:
    greedy = [{"prompt": p, "max_tokens": 20, "temperature": 0.0} for p in PROMPTS]
    sampled = [{"prompt": p, "max_tokens": 20, "temperature": 0.8, "seed": 40 + n} for n, p in enumerate(PROMPTS[:2])]
    async with started(inference_cache_dir, tmp_path, n_ctx=N_CTX, max_streams=4) as runtime:
        alone = [await run(runtime, p) for p in greedy]
        assert engine(runtime).peak_streams == 1
        together = await run_together(runtime, [*greedy, *sampled])  # six requests, four streams: two wait
        assert engine(runtime).peak_streams == 4
        same = 0
        for one, batched in zip(alone, together, strict=False):
            ours, theirs = one.output["token_ids"], batched.output["token_ids"]
            if ours == theirs:
                same += 1
                continue
            # Where they part, the batched run's token must be the runner-up of a near tie in the run alone.
            at = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b)
            gap = tie_gap(one, at, ours[at], theirs[at])
            assert gap is not None, f"position {at}: the batched token {theirs[at]} is not in the lone run's top 4"
            assert gap <= NEAR_TIE, f"position {at}: batched and alone part at a gap of {gap:.3f} logits"
        assert same >= 1, "no greedy result is the same batched as alone"
        verdicts = [
            await verify_inference(runtime, {"model": MODEL, **payload}, final.output, final.evidence, chunks=0)
            for payload, final in zip([*greedy, *sampled], together, strict=True)
        ]
    failed = [(v.reason, v.details) for v in verdicts if not v.ok]
    assert failed == [], "an honest batched result failed the verifier's check of every chunk"
    assert [f.evidence["seed"] for f in together[4:]] == [40, 41]


async def test_each_stream_keeps_its_own_stop_sequence_and_length(inference_cache_dir: Path, tmp_path: Path) -> None:
    payloads = [
        {"prompt": COUNTING, "max_tokens": 40, "stop": [", 9"], "deterministic": True},
        {"prompt": COUNTING, "max_tokens": 3, "deterministic": True},
        {"prompt": COUNTING, "max_tokens": 40, "stop": [" 7"], "deterministic": True},
        {"prompt": COUNTING, "max_tokens": 11, "deterministic": True},
    ]
    async with started(inference_cache_dir, tmp_path, n_ctx=N_CTX, max_streams=4) as runtime:
        finals = await run_together(runtime, payloads)
    stop9, three, stop7, eleven = (f.output for f in finals)
    assert (stop9["finish_reason"], stop9["text"].strip()) == ("stop", "5, 6, 7, 8")
    assert (stop7["finish_reason"], stop7["text"].strip()) == ("stop", "5, 6,")
    assert (three["finish_reason"], three["tokens_out"]) == ("length", 3)
    assert (eleven["finish_reason"], eleven["tokens_out"]) == ("length", 11)
    assert eleven["text"].startswith(three["text"])


async def test_a_request_joins_running_streams_and_a_cancelled_stream_frees_its_place(
    inference_cache_dir: Path, tmp_path: Path
) -> None:
    """Two streams: a long one runs, a second joins it; the first is cancelled, and a third request, which
    has no place until then, gets the freed one and ends while the second still runs."""
    first_pieces, second_pieces = Pieces(), Pieces()
    order: list[str] = []
    async with started(inference_cache_dir, tmp_path, n_ctx=N_CTX, max_streams=2) as runtime:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                scope = trio.CancelScope()

                async def cancelled_stream() -> None:
                    with scope:
                        await run(runtime, {"prompt": LONG_COUNT, "max_tokens": 200, "deterministic": True},
                                  first_pieces)

                async def second() -> None:
                    final = await run(runtime, {"prompt": LONG_COUNT, "max_tokens": 120, "deterministic": True},
                                      second_pieces)
                    order.append(f"second {final.output['tokens_out']}")

                nursery.start_soon(cancelled_stream)
                await first_pieces.three.wait()
                nursery.start_soon(second)
                await second_pieces.three.wait()
                assert engine(runtime).busy == 2, "the second request runs beside the first"
                assert len(first_pieces.texts) > 3, "the first stream went on while the second joined"
                scope.cancel()
                third = await run(runtime, {"prompt": "Hello", "max_tokens": 2})
                order.append("third")
            assert engine(runtime).busy == 0
    assert scope.cancelled_caught
    assert len(first_pieces.texts) < 100
    assert third.output["tokens_out"] == 2
    assert order[0] == "third", f"the third request waited for the second stream to end: {order}"
    assert order[1] == "second 120"


@pytest.mark.process
def test_eight_openai_streams_through_one_node_complete_and_their_receipts_verify(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n", sets=[
        "p2p.mdns=false", "hardware.benchmark_on_start=false", 'runtimes.disabled=["zk-groth16", "render-blender"]',
        "runtimes.inference.max_streams=8", "runtimes.inference.n_ctx=256", "runtimes.inference.n_threads=1",
        "tasks.queue_depth=0"]).start()
    try:
        client = openai.OpenAI(base_url=node.api_url + "/v1", api_key=node.token, max_retries=0, timeout=300)
        results: dict[int, tuple[str, str | None, int]] = {}
        errors: list[BaseException] = []

        def stream(i: int) -> None:
            try:
                kwargs: dict[str, Any] = {"stop": [", 9"]} if i % 2 else {}
                chunks = list(client.completions.create(model=MODEL, prompt=COUNTING, max_tokens=8 + 2 * i,
                                                        temperature=0, stream=True,
                                                        stream_options={"include_usage": True}, **kwargs))
                text = "".join(c.choices[0].text for c in chunks if c.choices)
                finish = next((c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason),
                              None)
                usage = next(c.usage for c in chunks if c.usage is not None)
                results[i] = (text, finish, usage.completion_tokens)
            except BaseException as exc:  # reported below, with the stream's number
                errors.append(exc)

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert errors == []
        assert sorted(results) == list(range(8))
        for i, (text, finish, tokens_out) in results.items():
            numbers = [n.strip() for n in text.split(",") if n.strip()]
            if finish == "stop":  # only where the stop sequence was asked for, and cut right before it
                assert (i % 2, numbers) == (1, ["5", "6", "7", "8"]), (i, text)
            else:
                assert (finish, tokens_out) == ("length", 8 + 2 * i), (i, text)
        # Gemma's tokens here are " ", a digit, ",": ", 9" is complete at the 14th.
        assert [results[i][1] for i in (1, 3, 5, 7)] == ["length", "stop", "stop", "stop"], results
    finally:
        node.stop()
    verified = subprocess.run([hyperion_executable(), "ledger", "verify", "--data-dir", str(tmp_path / "n")],
                              capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("ok:"), verified.stdout
    assert "8 receipts" in verified.stdout, verified.stdout


def test_the_engine_refuses_a_stream_that_could_outgrow_its_cells(inference_cache_dir: Path) -> None:
    """llama.cpp aborts the process on a position past a sequence's KV cells: the engine refuses such a stream
    before it reaches llama_decode (the runtime checks the same before submitting), and serves the next."""
    import llama_cpp

    from runtimes.inference.batching import BatchEngine, Stream
    from runtimes.inference.request import GenerationRequest

    llm = llama_cpp.Llama(model_path=str(inference_cache_dir / "models" / f"{MODEL}.gguf"), n_ctx=64, n_threads=1,
                          n_threads_batch=1, swa_full=False, verbose=False)
    engine = BatchEngine(llama_cpp, llm, max_streams=2, n_ctx=64, n_threads=1, prompt_chunk=32)
    try:
        outcomes: list[tuple[Any, BaseException | None]] = []
        done = threading.Event()

        def finished(result: Any, error: BaseException | None) -> None:
            outcomes.append((result, error))
            done.set()

        def stream(prompt: list[int], max_tokens: int) -> Stream:
            request = GenerationRequest(model=MODEL, prompt="-", messages=None, max_tokens=max_tokens, temperature=0.0)
            return Stream(request, prompt, 0, on_piece=lambda _text: None, on_done=finished)

        with pytest.raises(UserError, match="exceeds the context of 64 tokens"):
            engine.submit(stream(llm.tokenize(b"word " * 60), 8))
        engine.submit(stream(llm.tokenize(b"Hello"), 3))
        assert done.wait(60), "the engine answered"
        result, error = outcomes[-1]
        assert error is None
        assert result.tokens_out == 3
    finally:
        engine.close()
        llm.close()


def test_a_strangers_stream_yields_to_a_paying_requesters(inference_cache_dir: Path) -> None:
    """A background stream (its requester has not paid this node) joins one step in BACKGROUND_EVERY while a
    foreground stream runs, and every step once it runs alone: it still finishes, with its full length."""
    import llama_cpp

    from runtimes.inference.batching import BACKGROUND_EVERY, BatchEngine, Stream
    from runtimes.inference.request import GenerationRequest

    llm = llama_cpp.Llama(model_path=str(inference_cache_dir / "models" / f"{MODEL}.gguf"), n_ctx=128, n_threads=1,
                          n_threads_batch=1, swa_full=False, verbose=False)
    engine = BatchEngine(llama_cpp, llm, max_streams=2, n_ctx=128, n_threads=1, prompt_chunk=32)
    try:
        lock = threading.Lock()
        pieces = {"stranger": 0, "payer": 0}
        at_payers_end: dict[str, int] = {}
        results: dict[str, Any] = {}
        done = {"stranger": threading.Event(), "payer": threading.Event()}

        def stream(name: str, max_tokens: int, *, background: bool) -> Stream:
            def piece(_text: str) -> None:
                with lock:
                    pieces[name] += 1

            def finished(result: Any, error: BaseException | None) -> None:
                with lock:
                    results[name] = error or result
                    if name == "payer":
                        at_payers_end.update(pieces)
                done[name].set()

            request = GenerationRequest(model=MODEL, prompt="-", messages=None, max_tokens=max_tokens,
                                        temperature=0.0)
            return Stream(request, llm.tokenize(LONG_COUNT.encode()), 0, on_piece=piece, on_done=finished,
                          ignore_eog=True, background=background)

        engine.submit(stream("stranger", 48, background=True))
        engine.submit(stream("payer", 24, background=False))
        assert done["payer"].wait(120), "the payer's stream ended"
        assert done["stranger"].wait(120), "the stranger's stream ended"
        assert results["payer"].tokens_out == 24
        assert results["stranger"].tokens_out == 48  # it yields, it is not starved
        # While the payer ran (about 24 steps), the stranger took part in one step in BACKGROUND_EVERY (4): about
        # 6 tokens; as a stream like any other it would have had 24.
        assert BACKGROUND_EVERY >= 3
        assert at_payers_end["stranger"] <= 24 // 3, at_payers_end
    finally:
        engine.close()
        llm.close()
