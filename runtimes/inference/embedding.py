"""Text embeddings on llama.cpp, registered as the ``embedding`` runtime: a capability of its own.

A node offers embeddings of a model when its operator lists the model under ``[runtimes.embedding]``
(``include_packaged_model = true`` for the packaged Gemma 3 270M, or ``models = [paths]``): the offer is
``("embedding", model id)``, advertised, routed and receipted like generation, and ``POST /v1/embeddings`` /
``POST /api/embed`` reach it. It is off by default because an embedder holds a model copy of its own (llama.cpp
makes embeddings with a context in embedding mode, which cannot also generate).

A request is ``{"model", "input": [text, ...]}``; the answer is one unit-length vector per text (mean pooling
over the text's tokens, as llama.cpp's server does for a model without a pooling type of its own), and the
bill is the texts' tokens. A verifier embeds some of the texts again with the same file and compares by cosine:
an honest vector agrees to within what batch shapes change (measured >= 0.9986); a vector for another text
does not (<= 0.70 measured), nor one from another model's space.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import structlog
import trio

from hyperion_node.errors import InternalError, RuntimeUnavailable, UserError
from hyperion_node.settings import BOOL, PATHS, Section, at_least, count, setting
from runtimes.inference.registry import ModelEntry, ModelHashes, ModelRegistry, ensure_packaged_model
from runtimes.interface import (
    BenchmarkResult,
    Emit,
    Estimate,
    Final,
    Offer,
    RuntimeContext,
    Tally,
    Task,
    Verdict,
)

RUNTIME_NAME = "embedding"
RUNTIME_REVISION = "1"
SETTINGS_SOURCE = "[runtimes.embedding]"
# A verifier re-embeds this many of a request's texts, drawn from the OS's random source.
CHECKED_INPUTS = 2
# Cosine an honest vector keeps with the verifier's own. The verifier embeds a text in another batch than the
# worker did, and batch shapes move the numbers: over 30 random batches of 8 texts (the packaged model, CPU), the
# same text alone and batched kept a cosine of 0.9986 at worst; two different texts reached 0.70 at most.
COSINE_FLOOR = 0.99
_SYSTEM_RANDOM = random.SystemRandom()
BENCHMARK_TEXTS = ["The lighthouse keeper climbed the stairs at dusk."] * 8


@dataclass(frozen=True)
class EmbeddingSettings(Section):
    """The ``[runtimes.embedding]`` table, validated."""

    SECTION: ClassVar[str] = "runtimes.embedding"

    models: tuple[Path, ...] = setting((), PATHS)
    include_packaged_model: bool = setting(False, BOOL)
    n_ctx: int = setting(512, count(16, "an integer >= 16"))  # tokens per text at most
    n_threads: int = setting(0, count(0, "an integer >= 0"))  # 0: one less than the CPUs this process may use
    max_inputs: int = setting(32, count(1, "an integer >= 1"))  # texts per request
    price_per_token: float = setting(0.0000005, at_least(0))

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any], *, base_dir: Path) -> EmbeddingSettings:
        table = cls.from_table(settings, source=SETTINGS_SOURCE)
        return dataclasses.replace(table, models=tuple(base_dir / Path(m).expanduser() for m in table.models))


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    texts: tuple[str, ...]

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], *, max_inputs: int | None = None) -> EmbeddingRequest:
        model, texts = payload.get("model"), payload.get("input")
        if not isinstance(model, str) or not model:
            raise UserError("payload field 'model' must be a model id (a non-empty string)")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            raise UserError("payload field 'input' must be a non-empty text or a list of non-empty texts")
        if max_inputs is not None and len(texts) > max_inputs:
            raise UserError(f"{len(texts)} texts in one request; this node embeds at most {max_inputs}",
                            hint="split the texts over several requests")
        return cls(model, tuple(texts))


class EmbeddingTally:
    """The requester's check of an embedding bill: one vector per text, and tokens the texts can hold."""

    def __init__(self, payload: Mapping[str, Any]) -> None:
        try:
            self.request: EmbeddingRequest | None = EmbeddingRequest.from_payload(payload)
        except UserError:
            self.request = None

    def partial(self, data: Mapping[str, Any]) -> None:
        pass  # an embedding streams nothing

    def units(self, output: Mapping[str, Any]) -> tuple[int, int] | str:
        if self.request is None:
            return "the task's payload is not a valid embedding request"
        vectors, tokens = output.get("embeddings"), output.get("tokens_in")
        if not isinstance(vectors, list) or len(vectors) != len(self.request.texts):
            return f"{len(vectors) if isinstance(vectors, list) else 'no'} vectors for {len(self.request.texts)} texts"
        if isinstance(tokens, bool) or not isinstance(tokens, int):
            return "tokens_in must be a whole number"
        # At least a token per text; at most one per UTF-8 byte plus BOS and EOS (byte-fallback tokenizers).
        most = sum(len(t.encode()) + 2 for t in self.request.texts)
        if not len(self.request.texts) <= tokens <= most:
            return f"{tokens} tokens billed; these texts hold from {len(self.request.texts)} to {most}"
        return tokens, tokens


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norms if norms else 0.0


class LlamaEmbeddingRuntime:
    """The ``embedding`` runtime (module docstring): one embedding-mode llama context per model, loaded on first use."""

    name = RUNTIME_NAME

    @staticmethod
    def tally(payload: Mapping[str, Any]) -> Tally:
        return EmbeddingTally(payload)

    @staticmethod
    def check_share(payload: Mapping[str, Any], output: Mapping[str, Any]) -> float:
        """A spot check embeds ``CHECKED_INPUTS`` of the texts again: that share of the work."""
        texts = payload.get("input")
        count = len(texts) if isinstance(texts, list) else 1
        return min(1.0, CHECKED_INPUTS / max(1, count))

    def __init__(self, context: RuntimeContext) -> None:
        self._context = context
        self._settings = EmbeddingSettings.from_mapping(context.settings, base_dir=context.data_dir)
        self._log = structlog.get_logger("runtimes.embedding")
        self._hashes = ModelHashes(context.cache_dir / "model-hashes.json")
        self._registry = ModelRegistry([])
        self._models: dict[str, Any] = {}
        self._limiters: dict[str, trio.CapacityLimiter] = {}  # one embedding at a time per model copy
        try:
            import llama_cpp
        except ImportError:
            self._llama: Any = None
        else:
            self._llama = llama_cpp

    @property
    def version(self) -> str:
        return f"{RUNTIME_REVISION}+llama-cpp-python-{getattr(self._llama, '__version__', 'missing')}"

    @property
    def registry(self) -> ModelRegistry:
        return self._registry

    async def start(self) -> None:
        if self._llama is None:
            raise RuntimeUnavailable("llama-cpp-python cannot be imported", hint="pip install llama-cpp-python")
        settings = self._settings

        def scan() -> ModelRegistry:
            packaged = None
            if settings.include_packaged_model:
                packaged = ensure_packaged_model(self._context.cache_dir / "models", self._hashes)
            return ModelRegistry.scan(list(settings.models), packaged=packaged)

        self._registry = await trio.to_thread.run_sync(scan)
        self._limiters = {entry.model_id: trio.CapacityLimiter(1) for entry in self._registry}
        self._log.info("embedding runtime started", models=self._registry.ids)

    async def benchmark(self) -> BenchmarkResult:
        entry = self._registry.default
        started = time.perf_counter()
        if entry is None:  # nothing offered: nothing to measure
            return BenchmarkResult(runtime=self.name, version=self.version, unit="token", throughput=0.0, seconds=0.0)
        _, tokens, _ = await self._embed(entry, BENCHMARK_TEXTS)
        seconds = time.perf_counter() - started
        return BenchmarkResult(runtime=self.name, version=self.version, unit="token",
                               throughput=tokens / seconds if seconds > 0 else 0.0, seconds=seconds,
                               details={"model": entry.model_id, "texts": len(BENCHMARK_TEXTS)})

    def offers(self, benchmark: BenchmarkResult | None) -> list[Offer]:
        throughput = benchmark.throughput if benchmark is not None and benchmark.throughput > 0 else None
        return [Offer(runtime=self.name, item=entry.model_id, unit="token",
                      price_per_unit=self._settings.price_per_token, capacity=1, throughput=throughput,
                      details={"quantization": entry.quantization, "size_bytes": entry.size_bytes,
                               "n_ctx": self._settings.n_ctx, "max_inputs": self._settings.max_inputs,
                               "pooling": "mean"})
                for entry in self._registry]

    def shared_files(self) -> dict[str, Path]:
        return {}  # the inference runtime shares the same files (blobs/service.py)

    def estimate(self, task: Task) -> Estimate:
        try:
            request = EmbeddingRequest.from_payload(task.payload, max_inputs=self._settings.max_inputs)
        except UserError as exc:
            return Estimate(accepted=False, reason=exc.one_line())
        if self._registry.get(request.model) is None:
            return Estimate(accepted=False, reason=f"unknown model {request.model!r}; available: "
                                                   f"{', '.join(self._registry.ids) or 'none'}")
        return Estimate(accepted=True, work_units=float(sum(len(t) // 4 + 2 for t in request.texts)))

    async def run(self, task: Task, emit: Emit) -> Final:
        request = EmbeddingRequest.from_payload(task.payload, max_inputs=self._settings.max_inputs)
        entry = self._registry.get(request.model)
        if entry is None:
            raise UserError(f"unknown model {request.model!r}; available: {', '.join(self._registry.ids) or 'none'}")
        vectors, tokens, sha256 = await self._embed(entry, list(request.texts))
        return Final(
            output={"model": entry.model_id, "embeddings": vectors, "tokens_in": tokens,
                    "dimensions": len(vectors[0])},
            evidence={"model": entry.model_id, "model_sha256": sha256, "quantization": entry.quantization,
                      "pooling": "mean", "normalized": True, "llama_cpp_version": str(self._llama.__version__)},
            work_units=float(tokens),
        )

    async def verify(self, payload: Mapping[str, Any], output: Mapping[str, Any], evidence: Mapping[str, Any], *,
                     sample: Mapping[str, Any] | None = None, chunks: int = CHECKED_INPUTS,
                     rng: random.Random | None = None) -> Verdict:
        """Embed ``chunks`` of the texts again (0: all) and compare by cosine (module docstring)."""
        request = EmbeddingRequest.from_payload(payload)
        entry = self._registry.get(request.model)
        if entry is None:
            raise UserError(f"cannot verify embeddings of {request.model!r}: not served here")
        ours = await trio.to_thread.run_sync(
            functools.partial(self._hashes.sha256, entry, check_cancelled=trio.from_thread.check_cancelled))
        if evidence.get("model_sha256") != ours:
            return Verdict(False, f"evidence model_sha256 {evidence.get('model_sha256')!r} is not {ours}")
        vectors = output.get("embeddings")
        if not isinstance(vectors, list) or len(vectors) != len(request.texts) or not all(
                isinstance(v, list) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
                for v in vectors):
            return Verdict(False, "the output is not one vector of numbers per text")
        count = len(request.texts) if chunks <= 0 else min(chunks, len(request.texts))
        picked = sorted((rng or _SYSTEM_RANDOM).sample(range(len(request.texts)), count))
        again, _, _ = await self._embed(entry, [request.texts[i] for i in picked])
        cosines = []
        for i, vector in zip(picked, again, strict=True):
            if len(vectors[i]) != len(vector):
                return Verdict(False, f"vector {i} has {len(vectors[i])} dimensions, the model's have {len(vector)}")
            cosines.append(cosine(vectors[i], vector))
        details = {"checked": picked, "cosines": [round(c, 9) for c in cosines], "floor": COSINE_FLOOR}
        worst = min(cosines)
        if worst < COSINE_FLOOR:
            return Verdict(False, f"vector {picked[cosines.index(worst)]} is at cosine {worst:.6f} from this node's "
                                  f"embedding of the same text (honest: > {COSINE_FLOOR})", details)
        return Verdict(True, "ok", details)

    async def aclose(self) -> None:
        models, self._models = self._models, {}
        for llm in models.values():
            await trio.to_thread.run_sync(llm.close)

    async def _embed(self, entry: ModelEntry, texts: list[str]) -> tuple[list[list[float]], int, str]:
        """Unit vectors for ``texts``, their token count, and the model file's hash (in a worker thread)."""
        limiter = self._limiters.get(entry.model_id)
        if limiter is None:
            raise InternalError("embedding before start()")

        def work() -> tuple[list[list[float]], int, str]:
            sha256 = self._hashes.sha256(entry, check_cancelled=trio.from_thread.check_cancelled)
            llm = self._models.get(entry.model_id)
            if llm is None:
                llm = self._models[entry.model_id] = self._load(entry)
            for n, text in enumerate(texts):
                length = len(llm.tokenize(text.encode(), add_bos=True))
                if length > self._settings.n_ctx:
                    raise UserError(f"text {n} is {length} tokens; this node embeds at most {self._settings.n_ctx}",
                                    hint="shorten or split the text")
            trio.from_thread.check_cancelled()
            vectors, tokens = llm.embed(texts, normalize=True, truncate=False, return_count=True)
            return [[float(x) for x in v] for v in vectors], int(tokens), sha256

        return await trio.to_thread.run_sync(work, limiter=limiter)

    def _load(self, entry: ModelEntry) -> Any:
        threads = self._settings.n_threads or max(1, len(os.sched_getaffinity(0)) - 1)
        gpu_layers = -1 if self._llama.llama_supports_gpu_offload() else 0  # a small model: all of it, or none
        return self._llama.Llama(
            model_path=str(entry.path), embedding=True, n_ctx=self._settings.n_ctx, n_batch=self._settings.n_ctx,
            n_ubatch=self._settings.n_ctx, n_threads=threads, n_threads_batch=threads, n_gpu_layers=gpu_layers,
            pooling_type=self._llama.LLAMA_POOLING_TYPE_MEAN, verbose=False)
