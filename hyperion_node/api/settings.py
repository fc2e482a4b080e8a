"""``[api]``: the control API's address, who may reach it by which Host name, and its request bounds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hyperion_node.api.guard import split_host
from hyperion_node.settings import PORT, Section, between, count, each, setting

# api.max_body_bytes below this would refuse the CLI's own requests (a task with a prompt, a small scene).
MIN_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class ApiSettings(Section):
    SECTION: ClassVar[str] = "api"

    host: str
    port: int = setting(rule=PORT)
    allowed_hosts: tuple[str, ...] = setting((), each(
        lambda h: isinstance(h, str) and split_host(h) is not None,
        "host names or addresses as a Host header carries them, each with an optional :port, "
        "e.g. [\"node.lan\", \"node.lan:8443\", \"[fd00::7]\"]"))
    max_body_bytes: int = setting(96 * 1024 * 1024,  # default.toml says why
                                  count(MIN_BODY_BYTES, f"an integer of at least {MIN_BODY_BYTES} (64 KiB)"))
    metrics_public: bool = False
    max_choices: int = setting(4, between(1, 16, "an integer from 1 to 16"))  # default.toml says why

    def __post_init__(self) -> None:
        # A Host header's name is compared without case; kept lower-case, as the guard compares it.
        object.__setattr__(self, "allowed_hosts", tuple(h.lower() if isinstance(h, str) else h
                                                        for h in self.allowed_hosts))
        super().__post_init__()
