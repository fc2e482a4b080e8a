"""The one way a component declares its settings and their bounds.

A component's settings are a frozen dataclass deriving from :class:`Section`; each field that has bounds says
so where it is declared, with :func:`setting`::

    @dataclass(frozen=True)
    class VerifySettings(Section):
        SECTION: ClassVar[str] = "verify"
        budget: float = setting(0.01, between(0, 1, "a share from 0 to 1"))

The bounds are checked whenever an instance is made (``__post_init__``), in a test as in the daemon, and a
value outside them raises :class:`InvalidSetting` naming its full key. Bounds between fields (a timeout longer
than an interval) go in :meth:`Section.check`. The configuration loader checks each value's *type* against the
embedded ``default.toml`` (the schema) and builds each section with :meth:`Section.from_values`, which turns an
:class:`InvalidSetting` into a :class:`~hyperion_node.errors.ConfigError` naming the file, variable or flag the
value came from.

Plain dataclasses, not pydantic models: the CLI reads the configuration before most commands, and importing
pydantic and building its models costs about 0.1 s there, a third of the CLI's whole budget
(``docs/architecture.md``). This module imports nothing beyond the standard library and ``errors``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields
from pathlib import PurePath
from typing import Any, ClassVar, Self

from hyperion_node.errors import ConfigError, UserError


class InvalidSetting(UserError):
    """A setting outside its bounds. ``key`` is its full config key, e.g. ``scheduler.breaker.cooldown_s``."""

    def __init__(self, key: str, value: object, expected: str) -> None:
        super().__init__(f"{key}: got {value!r} (expected {expected})")
        self.key = key
        self.value = value
        self.expected = expected


@dataclass(frozen=True)
class Rule:
    """What a value must satisfy, and the words that tell the user what was expected."""

    ok: Callable[[Any], bool]
    expected: str


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def above(low: float, expected: str = "") -> Rule:
    return Rule(lambda v: is_number(v) and v > low, expected or f"a number above {low:g}")


def at_least(low: float, expected: str = "") -> Rule:
    return Rule(lambda v: is_number(v) and v >= low, expected or f"a number >= {low:g}")


def count(low: int = 1, expected: str = "") -> Rule:
    """An integer of at least ``low``."""
    return Rule(lambda v: is_integer(v) and v >= low, expected or f"an integer of at least {low}")


def between(low: float, high: float, expected: str) -> Rule:
    """A number from ``low`` to ``high``, both included."""
    return Rule(lambda v: is_number(v) and low <= v <= high, expected)


def one_of(*choices: str) -> Rule:
    return Rule(lambda v: v in choices, "one of " + ", ".join(choices))


def each(ok: Callable[[Any], bool], expected: str) -> Rule:
    """Every element of a list setting."""
    return Rule(lambda v: all(ok(x) for x in v), expected)


BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
PATHS = Rule(lambda v: isinstance(v, tuple) and all(isinstance(p, str | PurePath) for p in v), "a list of paths")
POSITIVE = above(0)
NON_NEGATIVE = at_least(0)
COUNT = count(1)
FRACTION = Rule(lambda v: is_number(v) and 0 < v <= 1, "a number above 0 and at most 1")
SHARE = between(0, 1, "a share from 0 to 1")
PORT = Rule(lambda v: is_integer(v) and 0 <= v <= 65535, "a port from 0 to 65535 (0: any free port)")


def setting(default: Any = MISSING, rule: Rule | None = None) -> Any:
    """A field with a default (or none) and the bounds its value must keep."""
    return field(default=default, metadata={"rule": rule} if rule is not None else {})


def need(ok: bool, key: str, value: object, expected: str) -> None:
    """For :meth:`Section.check`: refuse ``value`` of ``key`` unless ``ok``."""
    if not ok:
        raise InvalidSetting(key, value, expected)


class Section:
    """Base of every settings dataclass: ``SECTION`` is its config table (``"p2p"``, ``"scheduler.breaker"``)."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            rule: Rule | None = f.metadata.get("rule")
            value = getattr(self, f.name)
            if rule is not None and not rule.ok(value):
                raise InvalidSetting(self.key(f.name), value, rule.expected)
        self.check()

    def check(self) -> None:
        """Bounds between fields; raise with :func:`need`."""

    @classmethod
    def key(cls, name: str) -> str:
        return f"{cls.SECTION}.{name}"

    @classmethod
    def from_values(cls, values: Mapping[str, Any], sources: Mapping[str, str] | None = None,
                    **given: Any) -> Self:
        """The section from the loader's flat ``{"section.key": value}`` mapping (lists as tuples; keys it does
        not have keep their defaults; ``given`` overrides), with a value out of bounds as a
        :class:`ConfigError` that names where it came from."""
        kwargs = {f.name: _frozen(values[cls.key(f.name)]) for f in fields(cls)  # type: ignore[arg-type]
                  if cls.key(f.name) in values}
        with config_errors(sources or {}):
            return cls(**{**kwargs, **given})

    @classmethod
    def from_table(cls, table: Mapping[str, Any], *, source: str, **given: Any) -> Self:
        """The section from its own table, keys bare (a runtime's ``[runtimes.<name>]``, which the loader passes
        through unchecked, since it cannot know a third-party runtime's keys): a key the section does not have
        is refused (``n_thread = 2`` for ``n_threads`` would otherwise be dropped in silence), an integer is
        taken where a number is expected, and a refusal names ``source`` and the bare key."""
        names = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(table) - set(names))
        if unknown:
            raise ConfigError("unknown key", source=source, key=unknown[0],
                              expected="one of: " + ", ".join(sorted(names)))
        kwargs = {name: _as_default(_frozen(value), names[name].default) for name, value in table.items()}
        try:
            return cls(**{**kwargs, **given})
        except InvalidSetting as exc:
            key = exc.key.removeprefix(cls.SECTION + ".")
            raise ConfigError(f"got {exc.value!r}", source=source, key=key, expected=exc.expected) from exc


@contextmanager
def config_errors(sources: Mapping[str, str]) -> Iterator[None]:
    """Turn an :class:`InvalidSetting` raised inside into a :class:`ConfigError` naming the value's source."""
    try:
        yield
    except InvalidSetting as exc:
        source = sources.get(exc.key) or _source_under(sources, exc.key)
        raise ConfigError(f"got {exc.value!r}", source=source, key=exc.key, expected=exc.expected) from exc


def _source_under(sources: Mapping[str, str], key: str) -> str:
    """Where a bound on a whole table (``scheduler.weights``) came from: a source of one of its keys that is not
    the defaults (a bound the defaults alone break is a defect of ours)."""
    under = [src for k, src in sources.items() if k.startswith(key + ".")]
    return next((src for src in under if not src.startswith("defaults")), under[0] if under else "config")


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _as_default(value: Any, default: Any) -> Any:
    """An integer where the default is a float, as a float (``price = 0`` means 0.0)."""
    return float(value) if isinstance(default, float) and is_integer(value) else value
