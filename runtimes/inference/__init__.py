"""LLM inference on llama.cpp (llama-cpp-python), registered as the ``inference`` runtime.

``LlamaCppRuntime(context)`` is the entry-point factory; ``ModelRegistry`` lists the GGUF models it
serves. The packaged Gemma 3 270M model has the id ``gemma-3-270m-q4_k_m``. ``verify_inference`` (or
``LlamaCppRuntime.verify``) checks another worker's result against the logit commitments in its evidence
(``commitments.py``, ``verifier.py``).
"""

from runtimes.inference.claims import Verdict
from runtimes.inference.registry import InferenceSettings, ModelEntry, ModelRegistry
from runtimes.inference.request import GenerationRequest
from runtimes.inference.runtime import LlamaCppRuntime, verify_inference

__all__ = [
    "GenerationRequest",
    "InferenceSettings",
    "LlamaCppRuntime",
    "ModelEntry",
    "ModelRegistry",
    "Verdict",
    "verify_inference",
]
