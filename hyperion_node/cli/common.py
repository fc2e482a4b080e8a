"""What every CLI module shares: one line and an exit code per deliberate error, JSON output."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import typer

from hyperion_node.errors import HyperionError, only_hyperion_error

P = ParamSpec("P")
R = TypeVar("R")


def cli_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """One line and an exit code for every deliberate error; bugs keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except HyperionError as exc:
            typer.echo(f"hyperion-node: {exc.one_line()}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except BaseExceptionGroup as group:
            ours = only_hyperion_error(group)
            if ours is None:
                raise
            typer.echo(f"hyperion-node: {ours.one_line()}", err=True)
            raise typer.Exit(ours.exit_code) from None

    return wrapper


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
