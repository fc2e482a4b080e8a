"""Layered configuration with provenance: defaults < user file < environment < flags.

The embedded ``default.toml`` (the same file as ``configs/default.toml``) is both the documentation and the
schema: a key exists when the defaults have it, and its default value's type is the type it must have.
Tables under ``[runtimes.<name>]`` that the defaults do not know belong to third-party runtimes and pass
through unchecked; the runtime validates its own table.

Every value remembers where it came from, so ``config show`` can say it and a validation error can name
the file (or variable, or flag) that set the bad value.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from hyperion_node.api.settings import ApiSettings
from hyperion_node.blobs.settings import BlobSettings
from hyperion_node.errors import ConfigError, UserError
from hyperion_node.ledger.settings import LedgerSettings
from hyperion_node.p2p.settings import P2PSettings
from hyperion_node.scheduler.settings import SchedulerSettings
from hyperion_node.settings import POSITIVE, Section, above, one_of, setting
from hyperion_node.tasks.settings import MAX_PRICE_PREFIX, SpendingSettings, TaskSettings
from hyperion_node.verify.settings import VerifySettings

DEFAULTS_SOURCE = "defaults (configs/default.toml)"
ENV_PREFIX = "HYPERION_"
_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("auto", "console", "json")
# Keys that a release renamed: a file that still sets one is refused with the new name (issue #22 removed
# gossipsub and, with it, these).
RENAMED = {"p2p.gossip_degree": "p2p.target_connections",
           "p2p.gossip_rate_per_peer": "p2p.heartbeat_rate_per_peer",
           "ledger.gossip_interval_s": "ledger.dealings_interval_s",
           "runtimes.inference.slots": "runtimes.inference.max_streams"}
# Tables whose sub-tables may be unknown to the defaults (plugins bring their own settings).
_OPEN_TABLES = ("runtimes",)


def default_toml_text() -> str:
    return resources.files("hyperion_node.config").joinpath("default.toml").read_text(encoding="utf-8")


def xdg_data_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_DATA_HOME") or str(Path(environ.get("HOME", str(Path.home()))) / ".local/share")
    return Path(base) / "hyperion"


# The daemon's own sections; every other component declares its section in its ``settings`` module.
@dataclass(frozen=True)
class NodeSettings(Section):
    SECTION: ClassVar[str] = "node"

    data_dir: Path
    name: str


@dataclass(frozen=True)
class LoggingSettings(Section):
    SECTION: ClassVar[str] = "logging"

    level: str = setting(rule=one_of(*_LOG_LEVELS))
    format: str = setting(rule=one_of(*_LOG_FORMATS))
    libp2p_level: str = setting(rule=one_of(*_LOG_LEVELS))

    def __post_init__(self) -> None:
        for name in ("level", "libp2p_level"):  # "INFO" as well as "info"
            object.__setattr__(self, name, str(getattr(self, name)).lower())
        super().__post_init__()


@dataclass(frozen=True)
class HardwareSettings(Section):
    SECTION: ClassVar[str] = "hardware"

    telemetry_interval_s: float = setting(rule=above(0, "a number of seconds above 0"))
    benchmark_on_start: bool = setting()


@dataclass(frozen=True)
class PricingSettings(Section):
    SECTION: ClassVar[str] = "pricing"

    auto: tuple[str, ...]
    auto_credits_per_hour: float = setting(rule=POSITIVE)


@dataclass(frozen=True)
class Config:
    """The effective configuration of one node, with where each value came from."""

    node: NodeSettings
    p2p: P2PSettings
    api: ApiSettings
    logging: LoggingSettings
    hardware: HardwareSettings
    ledger: LedgerSettings
    pricing: PricingSettings
    tasks: TaskSettings
    spending: SpendingSettings
    scheduler: SchedulerSettings
    verify: VerifySettings
    blobs: BlobSettings
    runtimes_disabled: tuple[str, ...]
    runtime_settings: Mapping[str, Mapping[str, Any]]
    values: Mapping[str, Any] = field(repr=False)  # flat "section.key" -> value
    sources: Mapping[str, str] = field(repr=False)  # flat "section.key" -> where it came from

    def show(self) -> list[tuple[str, Any, str]]:
        """(key, value, source) for every key, in file order; an empty ``node.data_dir`` as the directory it
        resolves to (the XDG default), since that is the one the node uses."""
        rows = [(key, self.values[key], self.sources[key]) for key in self.values]
        return [(k, str(self.node.data_dir), f"{src}: XDG default") if k == "node.data_dir" and not v else (k, v, src)
                for k, v, src in rows]


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list of strings"
    return type(value).__name__


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """Check ``value`` against the default's type; ints are accepted where numbers are expected."""
    expected = _type_name(default)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
    else:  # pragma: no cover - the defaults file only holds the types above
        ok = True
    if not ok:
        raise ConfigError(f"got {value!r}", source=source, key=key, expected=expected)
    return value


def _is_open_key(key: str, defaults: Mapping[str, Any]) -> bool:
    """A key under an open table whose sub-table the defaults do not define (a third-party runtime)."""
    parts = key.split(".")
    if len(parts) < 3 or parts[0] not in _OPEN_TABLES:
        return False
    table_prefix = ".".join(parts[:2]) + "."
    return not any(k.startswith(table_prefix) for k in defaults)


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare word: take it as text


def _env_layer(environ: Mapping[str, str]) -> list[tuple[str, Any, str]]:
    layer: list[tuple[str, Any, str]] = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :]
        if rest == "DATA_DIR":
            layer.append(("node.data_dir", raw, f"environment {name}"))
        elif "__" in rest:
            key = ".".join(part.lower() for part in rest.split("__"))
            layer.append((key, _parse_env_value(raw), f"environment {name}"))
        # HYPERION_CONFIG and other single-word variables are not keys.
    return layer


def _file_layer(path: Path) -> list[tuple[str, Any, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise UserError(f"config file {path} does not exist", hint="check the --config path") from exc
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}", hint="fix the syntax at that line") from exc
    return [(key, value, str(path)) for key, value in _flatten(table).items()]


def _flag_layer(data_dir: Path | None, sets: Sequence[str]) -> list[tuple[str, Any, str]]:
    layer: list[tuple[str, Any, str]] = []
    if data_dir is not None:
        layer.append(("node.data_dir", str(data_dir), "flag --data-dir"))
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r} is not of the form section.key=value", hint="e.g. --set api.port=0")
        layer.append((key.strip(), _parse_env_value(raw.strip()), f"flag --set {key.strip()}"))
    return layer


def load_config(
    *,
    config_file: Path | None = None,
    data_dir: Path | None = None,
    sets: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the effective config. Raises ``ConfigError``/``UserError`` naming the source of a bad value."""
    env = os.environ if environ is None else environ
    defaults = _flatten(tomllib.loads(default_toml_text()))
    values: dict[str, Any] = dict(defaults)
    sources = dict.fromkeys(defaults, DEFAULTS_SOURCE)

    env_layer = _env_layer(env)
    flag_layer = _flag_layer(data_dir, sets)

    # Where to look for a user file: the flag, then $HYPERION_CONFIG, then <data dir>/config.toml.
    user_file: Path | None = config_file
    if user_file is None and env.get("HYPERION_CONFIG"):
        user_file = Path(env["HYPERION_CONFIG"])
    if user_file is None:
        explicit_dir = next((v for k, v, _ in reversed(flag_layer + env_layer) if k == "node.data_dir"), None)
        candidate = Path(explicit_dir or xdg_data_dir(env)) / "config.toml"
        user_file = candidate if candidate.is_file() else None
    file_layer = _file_layer(user_file) if user_file is not None else []

    for key, value, source in [*file_layer, *env_layer, *flag_layer]:
        if key in defaults:
            values[key] = _coerce(key, value, defaults[key], source)
        elif key in RENAMED:
            raise ConfigError(f"this key is now {RENAMED[key]}", source=source, key=key,
                              expected=f"{RENAMED[key]}; the renamed keys and their defaults are in "
                                       "docs/configuration.md")
        elif _is_open_key(key, defaults) or (key.startswith(MAX_PRICE_PREFIX) and key.count(".") == 2):
            values[key] = value
        else:
            known = ", ".join(sorted(k for k in defaults if k.split(".")[0] == key.split(".")[0])) or "none"
            raise ConfigError("unknown key", source=source, key=key, expected=f"one of: {known}")
        sources[key] = source
    return _build(values, sources, env)


def _build(values: dict[str, Any], sources: dict[str, str], environ: Mapping[str, str]) -> Config:
    data_dir = Path(values["node.data_dir"]).expanduser() if values["node.data_dir"] else xdg_data_dir(environ)
    runtime_settings: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        parts = key.split(".")
        if parts[0] == "runtimes" and len(parts) >= 3:
            runtime_settings.setdefault(parts[1], {})[".".join(parts[2:])] = value
    return Config(
        node=NodeSettings.from_values(values, sources, data_dir=data_dir.absolute()),
        p2p=P2PSettings.from_values(values, sources),
        api=ApiSettings.from_values(values, sources),
        logging=LoggingSettings.from_values(values, sources),
        hardware=HardwareSettings.from_values(values, sources),
        ledger=LedgerSettings.from_values(values, sources),
        pricing=PricingSettings.from_values(values, sources),
        tasks=TaskSettings.from_values(values, sources),
        spending=SpendingSettings.from_values(values, sources),
        scheduler=SchedulerSettings.from_values(values, sources),
        verify=VerifySettings.from_values(values, sources),
        blobs=BlobSettings.from_values(values, sources),
        runtimes_disabled=tuple(values["runtimes.disabled"]),
        runtime_settings=runtime_settings,
        values=values,
        sources=sources,
    )
