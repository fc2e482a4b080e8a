"""Models by memory tier: which quantization of a model a node serves, and what a requester may ask for.

An operator lists several GGUF files of one model (``gemma-3-270m-q8_0.gguf``, ``gemma-3-270m-q4_k_m.gguf``,
``gemma-3-270m-q2_k.gguf``, ...). They form one *family*, named by the file name less its quantization
(``gemma-3-270m``), and the node serves the best of them that fits its memory budget: VRAM when the model
is offloaded to a GPU, RAM otherwise. "Best" follows ``QUALITY``; "fits" is the file plus the KV caches the
node will hold for it (``footprint``). The family is offered under its name, with the chosen quantization,
its tier and the reason in the offer's details, so that requesters see what they would get.

The tiers are the seed's table (TitanCompute): for a 7B model, Premium (8 GB and more) serves Q8_0, Q6_K_L or
Q6_K; High (6-8 GB) Q5_K_M, Q4_K_M or Q4_K_S; Good (4-6 GB) IQ4_XS, Q3_K_L or IQ3_M; Emergency (under 4 GB)
Q2_K or IQ2_M. The node does not read the gigabytes off the table: a 270M model's Q8_0 fits in 4 GB, a 70B's
Q2_K not in 8. It picks by fit, which for a 7B model gives the table's choices, and names the tier of what it
picked. A requester may ask for a minimum tier (``min_tier`` in the payload); a node below it refuses the task
with the reason and the requester tries another provider.

Pure code: no llama.cpp, no trio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hyperion_node.errors import UserError

# Best first. Unquantized and 8-bit files rank above every tier's list; quantizations no tier names rank
# by their bits among those that do.
QUALITY: tuple[str, ...] = (
    "F32", "F16", "BF16",
    "Q8_0", "Q6_K_L", "Q6_K",
    "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S",
    "IQ4_XS", "IQ4_NL", "Q4_1", "Q4_0", "Q3_K_L", "IQ3_M", "Q3_K_M", "IQ3_S", "Q3_K_S", "IQ3_XS", "IQ3_XXS",
    "Q2_K", "Q2_K_S", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S",
)
TIERS: tuple[tuple[str, frozenset[str]], ...] = (  # highest first
    ("premium", frozenset({"F32", "F16", "BF16", "Q8_0", "Q6_K_L", "Q6_K"})),
    ("high", frozenset({"Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S"})),
    ("good", frozenset({"IQ4_XS", "IQ4_NL", "Q4_1", "Q4_0", "Q3_K_L", "IQ3_M", "Q3_K_M", "IQ3_S", "Q3_K_S",
                        "IQ3_XS", "IQ3_XXS"})),
    ("emergency", frozenset({"Q2_K", "Q2_K_S", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S"})),
)
TIER_NAMES: tuple[str, ...] = tuple(name for name, _ in TIERS)


def tier_of(quantization: str) -> str | None:
    """The tier a quantization belongs to, or None for one this table does not know ("unknown")."""
    for name, members in TIERS:
        if quantization in members:
            return name
    return None


def tier_rank(tier: str | None) -> int:
    """Higher is better; an unknown tier ranks below every named one."""
    return len(TIER_NAMES) - TIER_NAMES.index(tier) if tier in TIER_NAMES else 0


def check_min_tier(value: object) -> str | None:
    """A payload's ``min_tier``, validated: None when absent."""
    if value is None:
        return None
    if value not in TIER_NAMES:
        raise UserError(f"payload field 'min_tier' must be one of {', '.join(TIER_NAMES)}, got {value!r}")
    return str(value)


def quality_rank(quantization: str) -> int:
    """Position in ``QUALITY`` (0 is best); unknown quantizations last."""
    return QUALITY.index(quantization) if quantization in QUALITY else len(QUALITY)


def family_name(model_id: str, quantization: str) -> str:
    """The model id less its quantization: ``gemma-3-270m-q4_k_m`` -> ``gemma-3-270m``; the id itself when no
    quantization is named in it."""
    if quantization == "unknown":
        return model_id
    quant = quantization.lower()
    at = model_id.rfind(quant)
    if at < 0:
        return model_id
    name = (model_id[:at] + model_id[at + len(quant):]).strip("-_. ")
    while "--" in name or "__" in name:
        name = name.replace("--", "-").replace("__", "_")
    return name or model_id


@dataclass(frozen=True)
class Choice:
    """The quantization a node serves for a family, and why (said in the log and in the offer)."""

    chosen: int  # index into the variants given to ``choose``
    tier: str | None
    reason: str


def choose(
    quantizations: Sequence[str],
    footprints: Sequence[int],
    budget_bytes: int,
    budget_what: str,
    *,
    fmt: Callable[[int], str] | None = None,
) -> Choice:
    """The best quantization whose footprint fits ``budget_bytes``; the smallest when none does.

    ``budget_what`` says where the budget comes from ("free VRAM of the GPU", "60% of available RAM", ...).
    """
    show = fmt or _gib
    order = sorted(range(len(quantizations)), key=lambda i: (quality_rank(quantizations[i]), footprints[i]))
    skipped: list[str] = []
    for i in order:
        if footprints[i] <= budget_bytes:
            why = f"the best that fits {show(budget_bytes)} ({budget_what}): needs {show(footprints[i])}"
            if skipped:
                why += "; " + ", ".join(skipped) + " would not fit"
            return Choice(i, tier_of(quantizations[i]), f"{quantizations[i]}: {why}")
        skipped.append(f"{quantizations[i]} ({show(footprints[i])})")
    smallest = min(range(len(quantizations)), key=lambda i: footprints[i])
    return Choice(
        smallest,
        tier_of(quantizations[smallest]),
        f"{quantizations[smallest]}: none fits {show(budget_bytes)} ({budget_what}), so the smallest, "
        f"{show(footprints[smallest])}",
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
