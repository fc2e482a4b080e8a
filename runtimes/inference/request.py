"""What an inference task asks for: ``GenerationRequest``, validated from a task payload.

Every field a worker reads from a payload is checked here, so that a bad payload is refused with a
``UserError`` naming the field before any model is touched, and the verifier reads the same request the
worker did.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hyperion_node.errors import UserError
from runtimes.inference.tiers import check_min_tier

# At most this many stop sequences, as in the OpenAI completions API the payload imitates.
MAX_STOP_SEQUENCES = 4
# OpenAI's bounds: logit_bias holds up to 300 tokens, each biased by -100 to 100; top_logprobs up to 20.
MAX_LOGIT_BIAS = 300
MAX_TOP_LOGPROBS = 20
# A JSON schema is turned into a llama.cpp grammar on the worker: bounded so that a requester cannot hand
# it a schema whose grammar takes long to build or to apply.
MAX_SCHEMA_BYTES = 16 * 1024

_ROLES = frozenset({"system", "user", "assistant"})


@dataclass(frozen=True)
class GenerationRequest:
    """A validated task payload."""

    model: str
    prompt: str | None
    messages: tuple[Mapping[str, str], ...] | None
    max_tokens: int = 128
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int | None = None  # None: a random seed, recorded in the evidence
    stop: tuple[str, ...] = ()
    min_tier: str | None = None  # the lowest quantization tier acceptable (tiers.py); None: any
    # Shaping (OpenAI's penalties, logit_bias, response_format): applied by the sampler chain to the
    # candidates, never to the model's logits, so the logit commitments and their checks stand; the
    # verifier does not replay the tokens of a shaped generation (see ``shaped``).
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias), ids checked against the vocabulary
    json_schema: str | None = None  # canonical JSON of the schema the output must follow (a grammar)
    logprobs: bool = False  # report each generated token's log-probability
    top_logprobs: int = 0  # and this many of the likeliest alternatives at each position

    @property
    def shaped(self) -> bool:
        """Whether the sampler chain does more than the fixed one (generation.SAMPLER_DEFAULTS): then a
        verifier checks the committed logits, the text and the finish reason, not each token's choice."""
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias or self.json_schema)

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> GenerationRequest:
        """Validate a payload; raise ``UserError`` naming the field at fault."""
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise UserError("payload field 'model' must be a model id (a non-empty string)")
        prompt, messages = payload.get("prompt"), payload.get("messages")
        if (prompt is None) == (messages is None):
            raise UserError("payload needs exactly one of 'prompt' (a string) or 'messages' (a list)")
        if prompt is not None and not isinstance(prompt, str):
            raise UserError("payload field 'prompt' must be a string")
        chat: tuple[Mapping[str, str], ...] | None = None
        if messages is not None:
            if not isinstance(messages, list) or not messages:
                raise UserError("payload field 'messages' must be a non-empty list")
            for message in messages:
                if not (
                    isinstance(message, Mapping)
                    and message.get("role") in _ROLES
                    and isinstance(message.get("content"), str)
                ):
                    raise UserError(
                        "each message must be {'role': 'system'|'user'|'assistant', 'content': str}"
                    )
            chat = tuple({"role": m["role"], "content": m["content"]} for m in messages)
        max_tokens = payload.get("max_tokens", cls.max_tokens)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise UserError(f"payload field 'max_tokens' must be an integer >= 1, got {max_tokens!r}")
        temperature = _number(payload, "temperature", cls.temperature, low=0.0, high=2.0)
        top_p = _number(payload, "top_p", cls.top_p, low=0.0, high=1.0)
        if top_p == 0.0:
            raise UserError("payload field 'top_p' must be > 0")
        seed = payload.get("seed")
        valid_seed = isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32
        if seed is not None and not valid_seed:
            # llama.cpp's sampler takes a uint32 seed.
            raise UserError(f"payload field 'seed' must be an integer in [0, 2**32), got {seed!r}")
        stop = payload.get("stop", [])
        stops = (stop,) if isinstance(stop, str) else stop
        if (
            not isinstance(stops, list | tuple)
            or len(stops) > MAX_STOP_SEQUENCES
            or not all(isinstance(s, str) and s for s in stops)
        ):
            raise UserError(
                f"payload field 'stop' must be a string or up to {MAX_STOP_SEQUENCES} non-empty strings"
            )
        deterministic = payload.get("deterministic", False)
        if not isinstance(deterministic, bool):
            raise UserError("payload field 'deterministic' must be true or false")
        if deterministic:
            # Greedy decoding with a fixed seed: the same task gives the same text on the same build.
            temperature, seed = 0.0, 0
        logprobs = payload.get("logprobs", False)
        if not isinstance(logprobs, bool):
            raise UserError("payload field 'logprobs' must be true or false")
        top_logprobs = payload.get("top_logprobs", 0)
        if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int) \
                or not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise UserError(f"payload field 'top_logprobs' must be an integer from 0 to {MAX_TOP_LOGPROBS}")
        return cls(
            model=model,
            prompt=prompt,
            messages=chat,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=tuple(stops),
            min_tier=check_min_tier(payload.get("min_tier")),
            presence_penalty=_number(payload, "presence_penalty", 0.0, low=-2.0, high=2.0),
            frequency_penalty=_number(payload, "frequency_penalty", 0.0, low=-2.0, high=2.0),
            logit_bias=_logit_bias(payload.get("logit_bias")),
            json_schema=_json_schema(payload.get("json_schema")),
            logprobs=logprobs or top_logprobs > 0,
            top_logprobs=top_logprobs,
        )


def _number(payload: Mapping[str, Any], key: str, default: float, *, low: float, high: float) -> float:
    value = payload.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise UserError(f"payload field {key!r} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def _logit_bias(value: Any) -> tuple[tuple[int, float], ...]:
    """OpenAI's ``{"token id": bias}`` as sorted pairs (ids as text, as JSON objects require)."""
    if value is None:
        return ()
    if not isinstance(value, Mapping) or len(value) > MAX_LOGIT_BIAS:
        raise UserError(f"payload field 'logit_bias' must map up to {MAX_LOGIT_BIAS} token ids to biases")
    pairs: dict[int, float] = {}
    for key, bias in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise UserError(f"payload field 'logit_bias' has a key {key!r} that is not a token id") from None
        if token < 0 or isinstance(bias, bool) or not isinstance(bias, int | float) or not -100 <= bias <= 100:
            raise UserError(f"payload field 'logit_bias' needs token ids >= 0 and biases from -100 to 100, got "
                            f"{key!r}: {bias!r}")
        pairs[token] = float(bias)
    return tuple(sorted(pairs.items()))


def _json_schema(value: Any) -> str | None:
    """The schema as canonical JSON text (what the worker turns into a grammar), bounded in size."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise UserError("payload field 'json_schema' must be a JSON schema (an object; {} for any JSON object)")
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    if len(text) > MAX_SCHEMA_BYTES:
        raise UserError(f"payload field 'json_schema' is {len(text)} bytes; at most {MAX_SCHEMA_BYTES}")
    return text
