"""LLM inference on llama.cpp (llama-cpp-python), registered as the ``inference`` runtime.

``LlamaCppRuntime(context)`` is the entry-point factory; ``ModelRegistry`` lists the GGUF models it
serves. The packaged Gemma 3 270M model has the id ``gemma-3-270m-q4_k_m``. ``verify_inference`` (or
``LlamaCppRuntime.verify``) checks another worker's result against the logit commitments in its evidence
(``commitments.py``, ``verifier.py``).

The names are loaded on first use (PEP 562): ``runtimes.inference.registry`` and ``tiers``, which the CLI's
``models`` commands read, then come without the runtime's trio, numpy and llama.cpp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtimes.inference.claims import Verdict
    from runtimes.inference.registry import InferenceSettings, ModelEntry, ModelRegistry
    from runtimes.inference.request import GenerationRequest
    from runtimes.inference.runtime import LlamaCppRuntime, verify_inference

_WHERE = {
    "GenerationRequest": "request",
    "InferenceSettings": "registry",
    "LlamaCppRuntime": "runtime",
    "ModelEntry": "registry",
    "ModelRegistry": "registry",
    "Verdict": "claims",
    "verify_inference": "runtime",
}

__all__ = [
    "GenerationRequest",
    "InferenceSettings",
    "LlamaCppRuntime",
    "ModelEntry",
    "ModelRegistry",
    "Verdict",
    "verify_inference",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'runtimes.inference' has no attribute {name!r}")
    return getattr(importlib.import_module(f"runtimes.inference.{module}"), name)
