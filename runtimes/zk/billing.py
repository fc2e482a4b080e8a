"""What a Groth16 proof may be billed (``runtimes.interface.Tally``): the constraints of the key the requester
sent, which it parses itself. Pure: nothing is proved."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtimes.zk.exceptions import MalformedInput
from runtimes.zk.zkey import parse_zkey


class ZkTally:
    def __init__(self, payload: Mapping[str, Any]) -> None:
        zkey = payload.get("zkey")
        self.constraints: int | None = None
        if isinstance(zkey, bytes):
            try:
                self.constraints = parse_zkey(zkey, label="task zkey").constraints
            except MalformedInput:
                self.constraints = None

    def partial(self, data: Mapping[str, Any]) -> None:
        return None

    def units(self, output: Mapping[str, Any]) -> tuple[int, int] | str:
        if self.constraints is None:
            return "the task's payload holds no proving key this node can read"
        return self.constraints, self.constraints
