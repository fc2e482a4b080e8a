"""``[verify]``: how much settled work is spot-checked, and when a worker is no longer trusted."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from hyperion_node.errors import ConfigError

SECTION = "verify"


@dataclass(frozen=True)
class VerifySettings:
    fraction: float = 0.05
    timeout_s: float = 120.0
    distrust_after_disputes: int = 2
    concurrent: int = 1
    # Chunks of an inference result's logit commitment the forward pass checks, drawn at random (0: every
    # chunk); runtimes/inference/verifier.py explains the trade-off.
    inference_chunks: int = 1

    @classmethod
    def from_values(cls, values: Mapping[str, Any], sources: Mapping[str, str]) -> VerifySettings:
        kwargs = {f.name: values[f"{SECTION}.{f.name}"] for f in fields(cls) if f"{SECTION}.{f.name}" in values}
        checks: dict[str, tuple[Callable[[Any], bool], str]] = {
            "fraction": (lambda v: 0 <= v <= 1, "a share from 0 to 1"),
            "timeout_s": (lambda v: v > 0, "a number of seconds above 0"),
            "distrust_after_disputes": (lambda v: v >= 1, "an integer of at least 1"),
            "concurrent": (lambda v: v >= 1, "an integer of at least 1"),
            "inference_chunks": (lambda v: v >= 0, "an integer of at least 0 (0: every chunk)"),
        }
        for name, value in kwargs.items():
            ok, expected = checks[name]
            if not ok(value):
                key = f"{SECTION}.{name}"
                raise ConfigError(f"got {value!r}", source=sources.get(key, "config"), key=key, expected=expected)
        return cls(**kwargs)
