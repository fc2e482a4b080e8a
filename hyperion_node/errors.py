"""The one root of every error this node raises on purpose.

Each subclass says who is at fault, because that decides what happens next:

* ``UserError``      -- the person at the keyboard gave us something wrong: print one line that says
                        what to do, exit non-zero, never a traceback.
* ``RemoteError``    -- a peer sent something malformed or dishonest: drop it, count it, score the peer down.
* ``EnvironmentProblem`` -- the machine is not as we need it (port in use, driver missing, another
                        daemon running): one line naming the fix.
* ``InternalError``  -- our own misuse; a bug.  Propagates.
"""

from __future__ import annotations


class HyperionError(Exception):
    """Root of all deliberate errors. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message a user sees: what is wrong, then what to do about it."""
        if self.hint:
            return f"{self.message} -- {self.hint}"
        return self.message

    def __str__(self) -> str:
        return self.one_line()


class UserError(HyperionError):
    """Bad input from the person using the CLI or the control API."""

    exit_code = 2


class ConfigError(UserError):
    """An invalid configuration value; names the source, the key and what was expected."""

    def __init__(self, message: str, *, source: str, key: str, expected: str | None = None) -> None:
        detail = f"{source}: {key}: {message}"
        if expected:
            detail += f" (expected {expected})"
        super().__init__(detail)
        self.source = source
        self.key = key
        self.expected = expected


class EnvironmentProblem(HyperionError):
    """The machine or its state is not as the node needs it."""

    exit_code = 1


class NodeNotRunning(EnvironmentProblem):
    """A CLI command needs a running daemon and found none."""


class AlreadyRunning(EnvironmentProblem):
    """Another daemon holds the data directory's lock."""


class IdentityError(EnvironmentProblem):
    """The node's key file is missing, corrupt or readable by others. Never silently replaced."""


class RemoteError(HyperionError):
    """A peer sent something malformed, oversized or forged. The peer is at fault."""

    def __init__(self, message: str, *, peer_id: str | None = None) -> None:
        super().__init__(message)
        self.peer_id = peer_id


class RuntimeUnavailable(EnvironmentProblem):
    """A runtime cannot work on this machine (missing binary, model or library)."""


class InternalError(HyperionError):
    """Our own misuse of an API; a bug to fix, not a condition to handle."""

    exit_code = 70  # EX_SOFTWARE from sysexits.h


def only_hyperion_error(group: BaseExceptionGroup[BaseException]) -> HyperionError | None:
    """The first ``HyperionError`` in a group made only of them, else None.

    A component that fails while the daemon starts cancels its siblings, and trio reports the failure inside
    an exception group. When every leaf is one of ours, the user gets that error's one line; anything else
    (a bug) keeps its traceback.
    """
    matched, rest = group.split(HyperionError)
    if matched is None or rest is not None:
        return None
    leaf: BaseException = matched
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf if isinstance(leaf, HyperionError) else None
