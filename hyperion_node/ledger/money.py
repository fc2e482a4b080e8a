"""Amounts of network credits as exact integers.

Receipts carry prices and totals in atto-credits (10^-18 credits, as Ethereum counts wei): integers add up
exactly, so that what ``rewards`` shows reconciles to the last unit with the receipts behind it. Floats would
not (0.1 + 0.2 != 0.3), and a price per pixel-sample can be far below a micro-credit, hence 18 decimals.
Config files and displays use credits as decimal numbers; conversion happens only at those edges.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

ATTO_PER_CREDIT = 10**18


def credits_to_atto(credits: float | int | str | Decimal) -> int:
    """Credits (as written in a config file) to atto-credits, rounding below 10^-18 credits away."""
    try:
        # str() of a float is its shortest round-tripping form: 0.000002 stays 0.000002, not 2.0000000000000003e-06.
        exact = Decimal(str(credits)) if isinstance(credits, float) else Decimal(credits)
    except InvalidOperation as exc:
        raise ValueError(f"{credits!r} is not an amount of credits") from exc
    if not exact.is_finite() or exact < 0:
        raise ValueError(f"{credits!r} is not an amount of credits >= 0")
    return int(exact * ATTO_PER_CREDIT)


def atto_to_credits(atto: int) -> float:
    """For JSON and tables; the exact figure is :func:`format_credits`."""
    return atto / ATTO_PER_CREDIT


def format_credits(atto: int) -> str:
    """The exact decimal amount of credits, without trailing zeros: ``format_credits(2 * 10**12) == '0.000002'``."""
    sign = "-" if atto < 0 else ""
    whole, frac = divmod(abs(atto), ATTO_PER_CREDIT)
    text = f"{whole}.{frac:018d}".rstrip("0").rstrip(".")
    return sign + text
