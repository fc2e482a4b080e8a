"""Shaped sampling: OpenAI's penalties, ``logit_bias`` and ``response_format`` as llama.cpp samplers, and logprobs.

A request that asks for none of these samples through the fixed chain that ``Llama._init_sampler`` builds
(``generation.SAMPLER_DEFAULTS``), which the verifier replays token by token. A shaped request gets the chain
below: ``logit_bias`` -> penalties -> grammar -> the fixed chain's members (or greedy). Every one of these
acts on the candidates the sampler copies from a logit row, never on the row itself, so the row that goes to
the logit commitment is the model's own and a verifier still checks it against its own forward pass. What a
verifier cannot rebuild cheaply is the choice of each token (a grammar's state and the penalties' counts
follow the whole history), so it checks values, text and finish reason, and for a JSON schema that the
text parses (``verifier.py``, ``docs/api.md``).

``json_schema`` becomes a GBNF grammar with llama-cpp-python's own converter (the one llama.cpp's server
uses), on the worker, so that a requester hands a worker a schema, never grammar text for llama.cpp's parser.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from hyperion_node.errors import UserError
from runtimes.inference.generation import SAMPLER_DEFAULTS
from runtimes.inference.request import GenerationRequest

# llama-cpp-python's default penalty window (Llama.last_n_tokens_size): the last 64 tokens count.
PENALTY_LAST_N = 64


def grammar_for(request: GenerationRequest) -> str | None:
    """The GBNF grammar a request's ``json_schema`` asks for; ``UserError`` if the converter cannot make one."""
    if request.json_schema is None:
        return None
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return str(json_schema_to_gbnf(request.json_schema))
    except Exception as exc:  # the converter raises bare Exceptions, KeyErrors, ValueErrors for what it cannot map
        raise UserError(f"payload field 'json_schema' cannot be turned into a grammar: {exc!r}",
                        hint="use a simpler schema (types, properties, required, enum, arrays)") from exc


def check_vocabulary(request: GenerationRequest, n_vocab: int) -> None:
    for token, _ in request.logit_bias:
        if token >= n_vocab:
            raise UserError(f"payload field 'logit_bias' names token {token}; the model has {n_vocab}")


def shaped_chain(llama_cpp: Any, llm: Any, request: GenerationRequest, seed: int) -> Any:
    """The sampler chain of a shaped request, grammar aside (``ShapedSampler`` holds that); the caller closes it."""
    from llama_cpp._internals import LlamaSampler

    chain = LlamaSampler()  # type: ignore[no-untyped-call]
    try:
        n_vocab = int(llm.n_vocab())
        if request.logit_bias:
            chain.add_logit_bias(n_vocab, dict(request.logit_bias))
        if request.presence_penalty or request.frequency_penalty:
            chain.add_penalties(n_vocab, PENALTY_LAST_N, 1.0, request.frequency_penalty, request.presence_penalty)
        if request.temperature == 0.0:
            chain.add_greedy()  # type: ignore[no-untyped-call]
        else:
            chain.add_top_k(int(SAMPLER_DEFAULTS["top_k"]))
            chain.add_typical(float(SAMPLER_DEFAULTS["typical_p"]), 1)
            chain.add_top_p(request.top_p, 1)
            chain.add_min_p(float(SAMPLER_DEFAULTS["min_p"]), 1)
            chain.add_temp(request.temperature)
            chain.add_dist(seed)
    except BaseException:
        chain.close()  # type: ignore[no-untyped-call]
        raise
    return chain


class ShapedSampler:
    """Picks a shaped request's tokens: the chain above, then the grammar, checked the way llama.cpp's server does.

    Applying a grammar to every candidate costs as much as a decode step with Gemma's 262,144-token vocabulary
    (measured: a JSON schema halved tokens/s). Most tokens the chain picks follow the grammar anyway, so the
    token is picked without it first and checked alone; only when the grammar refuses it are all candidates
    filtered by the grammar and the token picked again (``common_sampler_sample`` in llama.cpp, grammar_first
    false). Both ways pick a token the grammar allows.
    """

    def __init__(self, llama_cpp: Any, llm: Any, request: GenerationRequest, seed: int, grammar: str | None) -> None:
        from llama_cpp._internals import LlamaTokenDataArray

        self._llama = llama_cpp
        self._grammar: Any = None
        if grammar is not None:
            vocab = llama_cpp.llama_model_get_vocab(llm.model)
            self._grammar = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
            if not self._grammar:
                raise UserError("payload field 'json_schema' gave a grammar llama.cpp refused",
                                hint="use a simpler schema")
        try:
            self._chain = shaped_chain(llama_cpp, llm, request, seed)
        except BaseException:
            self.close()
            raise
        self._all = LlamaTokenDataArray(n_vocab=int(llm.n_vocab()))
        self._one = LlamaTokenDataArray(n_vocab=1)
        self.resampled = 0  # tokens the grammar refused at first (for benchmarks)

    def sample(self, row: npt.NDArray[np.float32]) -> int:
        llama = self._llama
        every = self._all
        every.copy_logits(row)
        llama.llama_sampler_apply(self._chain.sampler, ctypes.byref(every.candidates))
        token = int(every.candidates_data.id[every.candidates.selected])
        if self._grammar is not None:
            one = self._one
            one.copy_logits(row[token:token + 1])
            one.candidates_data.id[0] = token
            llama.llama_sampler_apply(self._grammar, ctypes.byref(one.candidates))
            if not math.isfinite(float(one.candidates_data.logit[0])):
                self.resampled += 1
                every.copy_logits(row)
                llama.llama_sampler_apply(self._grammar, ctypes.byref(every.candidates))
                llama.llama_sampler_apply(self._chain.sampler, ctypes.byref(every.candidates))
                token = int(every.candidates_data.id[every.candidates.selected])
            llama.llama_sampler_accept(self._grammar, token)
        llama.llama_sampler_accept(self._chain.sampler, token)
        return token

    def close(self) -> None:
        if self._grammar is not None:
            self._llama.llama_sampler_free(self._grammar)
            self._grammar = None
        chain = getattr(self, "_chain", None)
        if chain is not None:
            chain.close()
            self._chain = None


def token_logprobs(row: npt.NDArray[np.float32], token: int, top: int,
                   piece: Any) -> dict[str, Any]:
    """OpenAI's logprobs entry for ``token`` from the model's own logit row (before any shaping):
    ``piece(id)`` gives a token's bytes."""
    peak = float(row.max())
    log_total = peak + math.log(float(np.exp(row - peak, dtype=np.float64).sum()))

    def entry(token_id: int) -> dict[str, Any]:
        data = bytes(piece(token_id))
        return {"token": data.decode("utf-8", "replace"), "bytes": list(data),
                "logprob": round(float(row[token_id]) - log_total, 6)}

    out = entry(token)
    if top:
        ids = np.argpartition(row, -top)[-top:]
        ids = ids[np.argsort(-row[ids], kind="stable")]
        out["top_logprobs"] = [entry(int(i)) for i in ids]
    else:
        out["top_logprobs"] = []
    return out
