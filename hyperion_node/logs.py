"""Logging, configured once at the CLI entry point.

structlog renders both our events and the stdlib records of py-libp2p through one pipeline: readable on a
terminal, JSON lines otherwise (or as ``--log-format`` says). Logs go to stderr so that stdout stays for
what a command prints (the ready line, ``--json`` output).
"""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(*, level: str = "info", fmt: str = "auto", libp2p_level: str = "warning") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if use_json else _identity,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])

    # Importing libp2p runs its own setup_logging(), which stops the "libp2p" logger from propagating
    # and may attach its own handlers. Import it now, then take its records back into our pipeline.
    import libp2p  # noqa: F401

    libp2p_logger = logging.getLogger("libp2p")
    libp2p_logger.handlers[:] = []
    libp2p_logger.propagate = True
    libp2p_logger.setLevel(_LEVELS[libp2p_level])
    # Some libp2p modules set their own logger's level at import (the auto-connector forces INFO), so
    # the parent's level alone does not hold: the handler filters libp2p records by the configured level,
    # and child loggers already created inherit again.
    for name, child in logging.root.manager.loggerDict.items():
        if name.startswith("libp2p.") and isinstance(child, logging.Logger):
            child.setLevel(logging.NOTSET)
    handler.addFilter(_Libp2pLevel(_LEVELS[libp2p_level]))
    # Library chatter that is never useful to an operator at info level.
    for noisy in ("hypercorn.access", "httpx", "httpcore", "multiaddr", "zeroconf", "aioquic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, _LEVELS[level]))


class _Libp2pLevel(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self._level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self._level or not record.name.startswith("libp2p")


def _identity(
    logger: structlog.types.WrappedLogger, name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    return event_dict


def set_level(level: str) -> None:
    """Change the node's log level while it runs (``config reload``)."""
    logging.getLogger().setLevel(_LEVELS[level])
