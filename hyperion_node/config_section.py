"""Reading one config section into a frozen settings dataclass, with a check per key (outside the config
package, which imports every settings class, so that those can import this).

The loader hands every component the same flat ``{"section.key": value}`` mapping (types already checked
against the embedded defaults); what a component adds is its own bounds. ``section_kwargs`` picks the
dataclass's keys out of the mapping and applies the bounds, naming the file and key of a value outside them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

from hyperion_node.errors import ConfigError

Check = tuple[Callable[[Any], bool], str]  # (value -> within bounds, what is expected, for the message)


def section_kwargs(cls: type, section: str, values: Mapping[str, Any], sources: Mapping[str, str],
                   checks: Mapping[str, Check]) -> dict[str, Any]:
    """The dataclass ``cls``'s fields present under ``section``; ``ConfigError`` for one outside its check."""
    kwargs = {f.name: values[f"{section}.{f.name}"] for f in fields(cls) if f"{section}.{f.name}" in values}
    for name, value in kwargs.items():
        check = checks.get(name)
        if check is not None and not check[0](value):
            key = f"{section}.{name}"
            raise ConfigError(f"got {value!r}", source=sources.get(key, "config"), key=key, expected=check[1])
    return kwargs
