"""Cheating workers for the verifier's tests and ``scripts/bench_verify.py``: each returns a forged Final.

Every cheat starts from real llama.cpp output, then lies the way a worker that wants to be paid for less (or
other) work would: another model's logits under the packaged model's name and hash, a different temperature
than claimed, a cut or padded output, or another task's commitments.

The "other models" are made from the packaged GGUF with llama.cpp's own quantizer (``llama_model_quantize``
with ``allow_requantize``; ~3 s each here), since only one GGUF ships with the node:

* ``q3_k_m``: a lower quantization of the same weights, the cheaper model a worker might pass off as Q4_K_M;
* ``q2_k``: llama.cpp's Q2_K mixture, 2-bit weights in most layers: so far from the original (logits off
  by 2.8 on average, a third of greedy tokens changed in 32-token runs) that it stands for "a different
  model" of the same architecture and vocabulary, the only kind whose output could pass for ours. A
  really different model would only be further away. (An all-Q2_K "pure" file cannot be made: Gemma's
  640-wide rows are not a multiple of the 256-value K-quant block, and llama.cpp aborts without its
  fallback types. A Q8_0 requantization keeps the Q4_K values and measured within 0.38 logits of the
  original: it *is* the same model.)
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runtimes.inference.commitments import LogitCommitment
from runtimes.interface import Final

MODEL = "gemma-3-270m-q4_k_m"
# llama_ftype values from llama.h
FTYPES = {"q3_k_m": 12, "q2_k": 10}


def requantized(source: Path, cache_dir: Path, name: str) -> Path:
    """``source`` requantized as ``name`` (a key of FTYPES), made once and kept in ``cache_dir/name/``.

    The file carries the packaged model's file name so that a runtime serving it gives it the same model id.
    """
    import llama_cpp

    target = cache_dir / name / source.name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = 1
    params.ftype = FTYPES[name]
    params.allow_requantize = True
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")
    os.replace(partial, target)
    return target


def as_honest(final: Final, honest_evidence: Mapping[str, Any]) -> Final:
    """Another model's result under the honest model's hash and quantization (the lie that makes it pass)."""
    evidence = dict(final.evidence)
    evidence["model_sha256"] = honest_evidence["model_sha256"]
    evidence["quantization"] = honest_evidence["quantization"]
    return dataclasses.replace(final, evidence=evidence)


def claim_temperature(final: Final, temperature: float) -> Final:
    """A result sampled at another temperature, claimed as sampled at ``temperature``."""
    return dataclasses.replace(final, evidence={**final.evidence, "temperature": temperature})


def _with_positions(commitment: Mapping[str, Any], positions: int, filler: LogitCommitment | None = None) -> Any:
    """The commitment cut (or, from ``filler``, extended) to ``positions``, re-encoded consistently."""
    source = LogitCommitment.from_evidence(commitment)
    params = source.params
    blob = b"".join(source.chunks)
    size = params.position_bytes
    extra = b"".join(filler.chunks) if filler is not None else b""
    while extra and len(blob) < positions * size:  # a short filler is repeated
        blob += extra
    blob = blob[: positions * size]
    step = params.chunk_tokens * size
    chunks = tuple(blob[i : i + step] for i in range(0, len(blob), step))
    return LogitCommitment(params=params, positions=positions, chunks=chunks).to_evidence()


def truncated(final: Final, keep: int, *, end_token: int, detokenize: Any) -> Final:
    """The output cut to ``keep`` tokens, claimed to have ended there with ``end_token`` (end of turn).

    Consistent everywhere (tokens, text, counts, commitment), so only the forward pass can tell.
    """
    ids = list(final.output["token_ids"])[:keep]
    text = b"".join(detokenize(t) for t in ids).decode("utf-8", errors="replace")
    output = {**final.output, "token_ids": ids, "tokens_out": keep, "text": text, "finish_reason": "stop"}
    evidence = {
        **final.evidence,
        "end_token": end_token,
        "logit_commitment": _with_positions(final.evidence["logit_commitment"], keep + 1),
    }
    return dataclasses.replace(final, output=output, evidence=evidence)


def padded(final: Final, pad: list[int], *, detokenize: Any, donor: Final) -> Final:
    """``pad`` tokens appended to a shorter honest result, committed with ``donor``'s real commitments."""
    ids = [*final.output["token_ids"], *pad]
    text = b"".join(detokenize(t) for t in ids).decode("utf-8", errors="replace")
    filler = LogitCommitment.from_evidence(donor.evidence["logit_commitment"])
    output = {**final.output, "token_ids": ids, "tokens_out": len(ids), "text": text, "finish_reason": "length"}
    evidence = {
        **final.evidence,
        "end_token": None,
        "logit_commitment": _with_positions(final.evidence["logit_commitment"], len(ids), filler),
    }
    return dataclasses.replace(final, output=output, evidence=evidence)


def copied_commitments(final: Final, donor: Final) -> Final:
    """``final``'s output with ``donor``'s commitments (another task's), fitted to the output's length."""
    positions = LogitCommitment.from_evidence(final.evidence["logit_commitment"]).positions
    donor_commitment = LogitCommitment.from_evidence(donor.evidence["logit_commitment"])
    fitted = _with_positions(donor.evidence["logit_commitment"], positions, donor_commitment)
    return dataclasses.replace(final, evidence={**final.evidence, "logit_commitment": fitted})


def cheap_blender(out_dir: Path, real: str, *, samples_divisor: int = 4) -> Path:
    """A wrapper around the real Blender that renders with 1/``samples_divisor`` of the samples asked for:
    what an operator who wants to be paid for work it did not do would install. The node's runtime cannot
    tell (it passes the job to "Blender" and gets frames back); only a re-render of a frame can."""
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapper = out_dir / "blender"
    wrapper.write_text(f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
if "--" in args and args[-1].startswith("{{"):
    job = json.loads(args[-1])
    if "samples" in job:
        job["samples"] = max(1, job["samples"] // {samples_divisor})
    args[-1] = json.dumps(job)
os.execv({real!r}, [{real!r}, *args])
""")
    wrapper.chmod(0o755)
    return wrapper
