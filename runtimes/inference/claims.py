"""What an inference result claims, read from a task's payload, output and evidence; no llama.cpp, no trio.

The verifier (``verifier.py``) checks a claim in two parts: this module's consistency checks, which need only
the tokenizer's bytes (are the fields well formed, does the text follow from the tokens, does the finish reason
follow from the count and the last token), and the forward pass, which needs the model. Everything a worker
wrote is the worker's to get right: a malformed field is a failed verdict, never an exception.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runtimes.inference.commitments import LogitCommitment
from runtimes.inference.exceptions import MalformedCommitment
from runtimes.inference.text import TextAssembler
from runtimes.interface import Verdict as Verdict  # defined beside the other runtime types; re-exported


class ClaimRejected(Exception):
    """Internal: a check failed; carries the reason for the failed verdict."""


@dataclass(frozen=True)
class Claim:
    """A result's claims, parsed and checked for internal consistency."""

    token_ids: tuple[int, ...]
    end_token: int | None
    commitment: LogitCommitment
    seed: int
    temperature: float
    top_p: float

    @property
    def positions(self) -> tuple[int, ...]:
        """The token each committed position produced: the generated ones, then the end token if any."""
        return (*self.token_ids, self.end_token) if self.end_token is not None else self.token_ids


def _int(value: Any, what: str, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
        raise ClaimRejected(f"{what} must be an integer in [{low}, {high}), got {value!r}")
    return value


def _float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ClaimRejected(f"{what} must be a number, got {value!r}")
    return float(value)


def read_claim(
    *,
    output: Mapping[str, Any],
    evidence: Mapping[str, Any],
    model: str,
    requested_seed: int | None,
    temperature: float,
    top_p: float,
    sampler: Mapping[str, float | int],
    n_vocab: int,
) -> Claim:
    """Parse and cross-check the claims; raise :class:`ClaimRejected` with the reason on the first lie."""
    if evidence.get("model") != model or output.get("model") != model:
        raise ClaimRejected(f"evidence or output names another model than the task's {model!r}")
    raw_ids = output.get("token_ids")
    if not isinstance(raw_ids, list | tuple):
        raise ClaimRejected("output has no token_ids list")
    token_ids = tuple(_int(t, "a token id", low=0, high=n_vocab) for t in raw_ids)
    if output.get("tokens_out") != len(token_ids) or isinstance(output.get("tokens_out"), bool):
        raise ClaimRejected(f"tokens_out {output.get('tokens_out')!r} is not the {len(token_ids)} token ids")
    raw_end = evidence.get("end_token")
    end_token = None if raw_end is None else _int(raw_end, "end_token", low=0, high=n_vocab)
    seed = _int(evidence.get("seed"), "seed", low=0, high=2**32)
    if requested_seed is not None and seed != requested_seed:
        raise ClaimRejected(f"evidence seed {seed} is not the task's seed {requested_seed}")
    claimed_temperature = _float(evidence.get("temperature"), "temperature")
    claimed_top_p = _float(evidence.get("top_p"), "top_p")
    if (claimed_temperature, claimed_top_p) != (temperature, top_p):
        raise ClaimRejected(
            f"evidence claims temperature {claimed_temperature} / top_p {claimed_top_p}, "
            f"the task asked for {temperature} / {top_p}"
        )
    if evidence.get("sampler") != dict(sampler):
        raise ClaimRejected(f"evidence sampler {evidence.get('sampler')!r} is not this runtime's {dict(sampler)!r}")
    try:
        commitment = LogitCommitment.from_evidence(evidence.get("logit_commitment"))
    except MalformedCommitment as exc:
        raise ClaimRejected(str(exc)) from exc
    expected = len(token_ids) + (end_token is not None)
    if commitment.positions != expected:
        raise ClaimRejected(f"commitment covers {commitment.positions} positions, the output {expected}")
    return Claim(token_ids, end_token, commitment, seed, claimed_temperature, claimed_top_p)


def check_text(
    claim: Claim,
    output: Mapping[str, Any],
    *,
    detokenize: Callable[[int], bytes],
    is_eog: Callable[[int], bool],
    stops: Sequence[str],
    max_tokens: int,
) -> None:
    """The text must be what the tokens decode to, and the finish reason what ended the generation.

    Catches text padded or cut without touching the tokens, and token lists cut short: an honest
    generation ends at max_tokens ("length"), at an end-of-generation token or right after the token that
    completes a stop sequence ("stop"), and nowhere else.
    """
    text = TextAssembler(stops)
    pieces: list[str] = []
    for n, token in enumerate(claim.token_ids):
        if is_eog(token):
            raise ClaimRejected(f"token {n} is an end-of-generation token, yet generation went on")
        pieces.append(text.push(detokenize(token)))
        if text.hit_stop and n != len(claim.token_ids) - 1:
            raise ClaimRejected(f"a stop sequence was complete at token {n}, yet generation went on")
    stopped = text.hit_stop
    pieces.append(text.finish())
    if output.get("text") != "".join(pieces):
        raise ClaimRejected("output text is not what the token ids decode to")
    count = len(claim.token_ids)
    if count > max_tokens:
        raise ClaimRejected(f"{count} tokens exceed max_tokens {max_tokens}")
    finish = output.get("finish_reason")
    if claim.end_token is not None:
        if not is_eog(claim.end_token):
            raise ClaimRejected(f"end_token {claim.end_token} is not an end-of-generation token")
        if stopped or count >= max_tokens or finish != "stop":
            raise ClaimRejected("an end token after a stop sequence or max_tokens, or without finish 'stop'")
    elif stopped:
        if finish != "stop":
            raise ClaimRejected(f"a stop sequence ended the text but finish_reason is {finish!r}")
    elif finish != "length" or count != max_tokens:
        raise ClaimRejected(
            f"finish_reason {finish!r} after {count} of {max_tokens} tokens with neither an end token nor a stop"
        )


def check_schema_output(request: Any, output: Mapping[str, Any]) -> None:
    """A generation under a JSON schema that ended by itself must be JSON: its grammar allows nothing else."""
    if request.json_schema is None or output.get("finish_reason") != "stop":
        return
    try:
        json.loads(str(output.get("text")))
    except ValueError as exc:
        raise ClaimRejected(f"the output of a JSON-schema request is not JSON: {exc}") from None
