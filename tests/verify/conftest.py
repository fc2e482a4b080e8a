"""Fixtures for the verifier tests: the packaged model, and cheat models made from it once and cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtimes.inference.registry import ModelHashes, ensure_packaged_model
from tests.verify.cheaters import requantized


@pytest.fixture(scope="session")
def verify_cache_dir(request: pytest.FixtureRequest) -> Path:
    """pytest's cache dir (kept between sessions): the assembled model and the requantized cheat models.

    Assembling (~240 MB) and requantizing (~3 s per model here) then happen once per checkout, not per run.
    """
    cache_dir = Path(request.config.cache.mkdir("hyperion-verify"))
    ensure_packaged_model(cache_dir / "models", ModelHashes(cache_dir / "model-hashes.json"))
    return cache_dir


@pytest.fixture(scope="session")
def cheat_models(verify_cache_dir: Path) -> dict[str, Path]:
    source = verify_cache_dir / "models" / "gemma-3-270m-q4_k_m.gguf"
    return {name: requantized(source, verify_cache_dir / "cheat-models", name) for name in ("q3_k_m", "q2_k")}
