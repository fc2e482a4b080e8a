"""Fixtures shared by the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtimes.inference.registry import ModelHashes, ensure_packaged_model


@pytest.fixture(scope="session")
def inference_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runtime cache dir holding the packaged Gemma GGUF, assembled once per test session.

    Assembling writes and hashes ~240 MB (seconds); every inference test starts its runtime on this
    directory, which is what a daemon's second start looks like.
    """
    cache_dir = tmp_path_factory.mktemp("inference-cache")
    ensure_packaged_model(cache_dir / "models", ModelHashes(cache_dir / "model-hashes.json"))
    return cache_dir
